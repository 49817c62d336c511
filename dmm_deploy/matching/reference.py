"""Batched PyTorch reference of the DMM matching layer.

This is the one reference implementation of the project: the public API, the ONNX export,
the tests and the benchmarks all run this code. It agrees with the specification
(Listing 1 of the DMM-Net supplement, ``shared/spec/listing1.py``) problem by problem,
but keeps the state of a problem in the compact form that the structure of the three
constraint sets allows:

* the row set ``{X 1_m = 1_n}`` is affine, so its Dykstra correction never changes the
  projected point: the row step is simply ``X - (X 1_m - 1) / m`` and needs no state;
* the column correction of Listing 1 is constant along each column, so it is stored as an
  ``m``-vector ``p1``;
* the non-negativity correction ``P2`` is a full ``n x m`` tensor.

Both reductions of one inner step (row sums and column sums) are taken from the same
iterate, so one inner step is two reductions, a handful of vector operations, and five
element-wise operations over the full ``(B, n, m)`` tensor (six with padding masks)::

    a   = (X.sum(-1) - 1) / m           # row projection shift                (B, n, 1)
    s   = X.sum(-2) - sum(a) + q1       # column sums seen by the column set  (B, 1, m)
    q1' = relu(s - 1)                   # n x the new column correction       (B, 1, m)
    X3  = X - a + (q1 - q1') / n + P2   # three full element-wise ops
    X   = relu(X3); P2 = X3 - X         # two more
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "VARIANTS",
    "MatchInfo",
    "check_variant",
    "greedy_init",
    "match_reference",
    "valid_mask",
]


class MatchInfo(NamedTuple):
    """Convergence record of one matching, per problem.

    objective: ``(B, n_grad)`` ``Tr(C X^T)`` of the iterate after each outer step.
    feasibility: ``(B, n_grad)`` max violation of the three constraint sets
        (``|X 1 - 1|``, ``max(X^T 1 - 1, 0)``, ``max(-X, 0)``) after each outer step.
    inner_feasibility: ``(B, n_grad, n_proj)`` the same violation after every Dykstra cycle.
    violation: ``(B,)`` the same max violation of the returned assignment (the mean), the
        number to look at before trusting a result: rows that should sum to 1 but do not
        show up here (see the cost-scale note of :func:`dmm_deploy.matching.dmm_match`).
    steps: ``(B,)`` integer number of outer steps whose iterate is in the mean: ``n_grad``
        for ``variant="listing1"``, fewer where the early exit of ``"original"`` fired.

    With ``variant="original"`` the per-step records of a problem hold their last value
    after its outer early exit fired, and ``inner_feasibility`` of a skipped cycle repeats
    the one before it.
    """

    objective: torch.Tensor
    feasibility: torch.Tensor
    inner_feasibility: torch.Tensor
    violation: torch.Tensor
    steps: torch.Tensor


def valid_mask(sizes: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column validity of a padded batch.

    sizes: ``(B, 2)`` integer tensor of ``(n_b, m_b)``.
    Returns ``rows (B, n, 1)`` and ``cols (B, 1, m)`` boolean tensors.
    """
    dev = sizes.device
    rows = torch.arange(n, device=dev)[None, :, None] < sizes[:, 0, None, None]
    cols = torch.arange(m, device=dev)[None, None, :] < sizes[:, 1, None, None]
    return rows, cols


def _feasibility(x: torch.Tensor, rows, cols) -> torch.Tensor:
    """Max constraint violation of each problem of ``x`` (B, n, m) -> (B,)."""
    r = x.sum(-1, keepdim=True) - 1
    c = x.sum(-2, keepdim=True) - 1
    if rows is not None:
        r = r * rows
        c = c * cols
    row_err = r.abs().amax(dim=(-2, -1))
    col_err = F.relu(c).amax(dim=(-2, -1))
    neg_err = F.relu(-x).amax(dim=(-2, -1))
    return torch.maximum(torch.maximum(row_err, col_err), neg_err)


VARIANTS = ("listing1", "original")


def check_variant(variant) -> str:
    """``variant`` if it is one of :data:`VARIANTS`, else one ``ValueError`` naming it."""
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return variant


def match_reference(
    cost: torch.Tensor,
    x_init: torch.Tensor,
    n_grad: int,
    n_proj: int,
    lr: float,
    sizes: torch.Tensor | None = None,
    return_info: bool = False,
    variant: str = "listing1",
):
    """Mean of the projected-gradient iterates of the DMM solver, for a batch of problems.

    cost, x_init: ``(B, n, m)`` floating tensors (no validation here: see ``dmm_match``).
    sizes: optional ``(B, 2)`` integer tensor of per-problem ``(n_b, m_b)``; problem ``b`` is
        ``cost[b, :n_b, :m_b]`` and is solved exactly as if it were alone; the output is zero
        outside it and whatever the padding holds is ignored.
    variant: ``"listing1"`` (the specification, Listing 1: the mean of ``x_init`` and the
        projected iterates) or ``"original"`` (the original code's solver, see
        :func:`_match_original`).
    Arithmetic runs in ``float32`` for half-precision inputs (``float64`` stays ``float64``);
    the result has the dtype of ``cost``. Differentiable in ``cost`` and ``x_init``.
    Returns the ``(B, n, m)`` mean of the iterates (``x_init`` included), and a
    :class:`MatchInfo` as well when ``return_info`` is true.
    """
    original = check_variant(variant) == "original"
    out_dtype = cost.dtype
    work = torch.promote_types(cost.dtype, torch.float32)
    if cost.dtype != work:
        cost = cost.to(work)
    x = x_init if x_init.dtype == work else x_init.to(work)
    _, n, m = cost.shape
    if sizes is None:
        rows = cols = mask = None
        n_f, m_f = n, m  # ints, kept symbolic when traced with dynamic shapes
        step = cost * lr
    else:
        rows, cols = valid_mask(sizes, n, m)
        mask = (rows & cols).to(work)
        # the counts of valid rows / columns: sizes clamped to [0, n] x [0, m] as the kernels
        # do, so no value of sizes (unchecked inside torch.compile) reads outside the problem
        # or divides by zero (an empty problem gives zeros)
        n_f = rows.to(work).sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1, 1)
        m_f = cols.to(work).sum(dim=2, keepdim=True).clamp(min=1)
        rows, cols = rows.to(work), cols.to(work)
        cost = torch.where(mask > 0, cost, 0.0)
        step = cost * lr
        x = torch.where(mask > 0, x, 0.0)
    solve = _match_original if original else _match_listing1
    total, count, records = solve(
        cost, step, x, n_grad, n_proj, n_f, m_f, rows, cols, mask, return_info
    )
    out = total / count
    if not return_info:
        return out.to(out_dtype)
    b = cost.shape[0]
    objective, feasibility, inner = records
    empty = cost.new_zeros(b, 0)
    info = MatchInfo(
        objective=torch.stack(objective, dim=-1) if objective else empty,
        feasibility=torch.stack(feasibility, dim=-1) if feasibility else empty,
        inner_feasibility=(torch.stack(inner, dim=-2) if inner else cost.new_zeros(b, 0, n_proj)),
        violation=_feasibility(out.detach(), rows, cols),
        steps=(count.detach().reshape(-1) - 1).round().to(torch.int64)
        if isinstance(count, torch.Tensor)
        else torch.full((b,), n_grad, dtype=torch.int64, device=cost.device),
    )
    return out.to(out_dtype), info


def _match_listing1(cost, step, x, n_grad, n_proj, n_f, m_f, rows, cols, mask, return_info):
    """Listing 1 in the compact state of the module docstring; returns (total, count, records)."""
    inv_n, inv_m = 1.0 / n_f, 1.0 / m_f
    # q1 = n * p1 (B, 1, m): the column correction as it enters the column sums; p2 (B, n, m):
    # the non-negativity correction. Both start at zero, left implicit (None) so that the
    # first cycle carries no no-op nodes.
    q1 = p2 = None
    total = x
    objective, feasibility, inner = [], [], []
    for _ in range(n_grad):
        x = x - step
        inner_step = []
        for _ in range(n_proj):
            a = (x.sum(-1, keepdim=True) - 1) * inv_m
            if rows is not None:
                a = a * rows
            s = x.sum(-2, keepdim=True) - a.sum(-2, keepdim=True)
            if q1 is not None:
                s = s + q1
            q1_new = F.relu(s - 1)
            if cols is not None:
                q1_new = q1_new * cols
            d = (-q1_new if q1 is None else q1 - q1_new) * inv_n
            x3 = x - a + d
            if p2 is not None:
                x3 = x3 + p2
            if mask is not None:
                x3 = x3 * mask
            x = F.relu(x3)
            p2 = x3 - x
            q1 = q1_new
            if return_info:
                inner_step.append(_feasibility(x.detach(), rows, cols))
        total = total + x
        if return_info:
            inner.append(torch.stack(inner_step, dim=-1))
            objective.append((cost * x).detach().sum(dim=(-2, -1)))
            feasibility.append(_feasibility(x.detach(), rows, cols))
    return total, n_grad + 1, (objective, feasibility, inner)


def _match_original(cost, step, x, n_grad, n_proj, n_f, m_f, rows, cols, mask, return_info):
    """The original code's solver, ``variant="original"``; returns (total, count, records).

    Semantics (those of ``tests/spec_relax_match.py``, the literal transcription): each outer
    step takes the gradient step and adds that iterate, before its projections, to the mean;
    each Dykstra cycle projects onto non-negativity, then the columns ``X^T 1 <= 1``, then
    the rows ``X 1 = 1``; a cycle after which ``X`` is exactly unchanged is the last of its
    outer step; an outer step whose ``||X * C||_F`` (right after its gradient step) equals the
    previous step's (0 before the first) is the last; the mean divides by the iterates taken.

    Both exits are per-problem frozen masks instead of ``break``: the loops always run
    ``n_grad x n_proj`` times (so the graph unrolls, exports without Loop/If and serves
    padded batches) and a skipped cycle or step leaves the state and the mean untouched.

    Compact state. The row set is affine and its Dykstra correction lies in its normal space
    (constant along rows), so adding it before the row projection never changes the result:
    it is dropped. The column correction is constant along columns: an ``m``-vector
    ``q1 = n * p1``. The non-negativity correction ``P0`` is full; instead of ``X`` and ``P0``
    the state keeps ``X`` and ``Z = X + P0`` (the next relu input), because one cycle moves
    ``X`` and ``Z`` by the same rank-one-structured shift ``D = d 1^T - 1 a^T``::

        Y  = relu(Z)                                      non-negativity
        cs = colsum(Y) + q1;  q1' = [cs > 1] (cs - 1)     columns (q1' = 0 where cs <= 1)
        d  = (q1 - q1') / n                               (B, 1, m)
        a  = (rowsum(Y) + sum(d) - 1) / m                 rows, both sums from Y  (B, n, 1)
        X' = Y + D;   Z' = Z + D                          (P0' = Z - Y, so X' + P0' = Z + D)

    A skipped cycle sets ``d = a = 0`` (so ``Z`` and ``q1`` stay) and keeps ``X`` by a
    ``where``; the gradient step moves both ``X`` and ``Z`` by ``-lr C``. Five full-size
    element-wise operations per cycle (relu, ``D``, ``X'``, ``Z'``, ``X' - X`` for the exit
    test, one ``where``), one more with padding masks.

    In float arithmetic an exit fires when an update rounds to nothing, so the step at which
    a rounding-triggered exit fires can depend on the order of the arithmetic (this compact
    form, the literal transcription, float32 or float64); exits at exact fixed points fire at
    the same step in all of them.
    """
    b = cost.shape[0]
    z = x  # X + P0 with P0 = 0
    q1 = torch.zeros_like(cost[:, :1, :])  # (B, 1, m)
    total = x
    count = x.new_ones(b, 1, 1)
    prev_norm = x.new_zeros(b, 1, 1)
    stopped = torch.zeros(b, 1, 1, dtype=torch.bool, device=x.device)
    objective, feasibility, inner = [], [], []
    for _ in range(n_grad):
        running = ~stopped
        x = x - step
        z = z - step
        norm = torch.linalg.vector_norm((x * cost).detach(), dim=(-2, -1), keepdim=True)
        total = total + torch.where(running, x, 0.0)
        count = count + running.to(x.dtype)
        idle = stopped
        inner_step = []
        for _ in range(n_proj):
            applied = ~idle
            y = F.relu(z)
            cs = y.sum(-2, keepdim=True) + q1
            q1_new = torch.where(cs > 1, cs - 1, 0.0)
            if cols is not None:
                q1_new = q1_new * cols
            q1_new = torch.where(applied, q1_new, q1)
            d = (q1 - q1_new) / n_f
            a = (y.sum(-1, keepdim=True) + d.sum(-1, keepdim=True) - 1) / m_f
            a = torch.where(applied, a, 0.0)
            if rows is not None:
                a = a * rows
            shift = d - a
            if mask is not None:
                shift = shift * mask
            x_new = y + shift
            moved = torch.linalg.vector_norm((x_new - x).detach(), dim=(-2, -1), keepdim=True)
            x = torch.where(applied, x_new, x)
            z = z + shift
            q1 = q1_new
            idle = idle | (moved == 0)
            if return_info:
                inner_step.append(_feasibility(x.detach(), rows, cols))
        stopped = stopped | (norm == prev_norm)
        prev_norm = norm
        if return_info:
            r = running.reshape(-1)
            obj = (cost * x).detach().sum(dim=(-2, -1))
            feas = _feasibility(x.detach(), rows, cols)
            if objective:  # hold the last value once the problem has stopped
                obj = torch.where(r, obj, objective[-1])
                feas = torch.where(r, feas, feasibility[-1])
                inner_step = [torch.where(r, f, inner[-1][:, -1]) for f in inner_step]
            objective.append(obj)
            feasibility.append(feas)
            inner.append(torch.stack(inner_step, dim=-1))
    return total, count, (objective, feasibility, inner)


def greedy_init(cost: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """The original DMM-Net start: a one-hot assignment per row, chosen greedily.

    For a problem ``C`` (n x m): every column keeps only the entry of its lowest-cost row
    (the first such row on ties); every other entry is replaced by ``max(C)``. Each row then
    takes a one-hot 1 at the column of its lowest remaining value (the first on ties). A row
    that is the lowest of no column therefore lands on the first column whose remaining value
    equals ``max(C)``, exactly as the original code does. With ``sizes`` only
    ``C[:n_b, :m_b]`` takes part and the result is zero outside it.

    cost: ``(B, n, m)``. Returns a tensor of cost's shape and dtype, without gradient.
    """
    with torch.no_grad():
        _, n, m = cost.shape
        c = cost
        if sizes is not None:
            rows, cols = valid_mask(sizes, n, m)
            valid = rows & cols
            # padded rows can never be a column's minimum; padded columns are never picked
            c = torch.where(valid, cost, torch.inf)
            cmax = torch.where(valid, cost, -torch.inf).amax(dim=(-2, -1), keepdim=True)
        else:
            cmax = cost.amax(dim=(-2, -1), keepdim=True)
        col_winner = c.argmin(dim=-2, keepdim=True)  # (B, 1, m)
        is_winner = torch.arange(n, device=cost.device)[None, :, None] == col_winner
        remaining = torch.where(is_winner, c, cmax.expand_as(c))
        if sizes is not None:
            remaining = torch.where(cols, remaining, torch.inf)
        choice = remaining.argmin(dim=-1, keepdim=True)  # (B, n, 1)
        x = torch.zeros_like(cost).scatter_(-1, choice, 1.0)
        if sizes is not None:
            x = x * rows
        return x
