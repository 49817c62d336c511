"""Literal, per-problem transcription of the original DMM-Net matching solver.

Source (facts read from the original code, ZENGXH/DMM_Net): ``relax_matching`` in
``dmm/modules/submodules/relax_match.py`` (with its ``project_row`` / ``project_col``), as
called at test time by ``MatchModel.match_with_first_frame`` in ``dmm/modules/match_model.py``,
which ignores the returned last iterate and uses ``sum(X_list) / len(X_list)``.

Kept in the tests to hold ``match_reference(..., variant="original")`` and the Triton kernels
to. Every detail of the original's semantics, as transcribed here:

* Start: the original always starts from its greedy row-min init (:func:`original_init`, the
  same rule as :func:`dmm_deploy.matching.greedy_init`); here the start is an argument.
* ``X_list`` starts with the start ``X``. Each outer step ``i``: ``X = X - lr * C``; then
  ``norm_i = ||X * C||_F`` (Frobenius norm of the element-wise product, taken on the iterate
  right after the gradient step) is appended to ``cost`` (which starts as ``[0]``), and that
  same iterate is appended to ``X_list`` (before any projection: (a) of issue 9).
* Inner loop, ``proj_iter`` cycles, Dykstra corrections ``P[0], P[1], P[2]`` zero at the start
  and persistent across outer steps. One cycle, from ``X_start = X``:
  ``X = X + P[0]; Y = relu(X); P[0] = X - Y`` (non-negativity), then
  ``X = Y + P[1]; Y = project_col(X); P[1] = X - Y`` (columns ``X^T 1 <= 1``: a column whose
  sum exceeds 1 is shifted by ``(sum - 1) / n``, others kept), then
  ``X = Y + P[2]; Y = project_row(X); P[2] = X - Y`` (rows ``X 1 = 1``), ``X = Y``: order
  non-negativity, columns, rows ((b) of issue 9).
* Inner early exit: after a cycle (its corrections already updated), if
  ``||X - X_start||_F == 0`` exactly, the remaining cycles of this outer step are skipped.
* Outer early exit: after the inner loop of step ``i``, if ``cost[-2] == cost[-1]``
  (exact equality of ``norm_{i-1}`` and ``norm_i``, with ``norm_{-1} = 0``, so at ``i = 0`` it
  fires iff ``X * C`` is all zeros after the first gradient step), no further outer step runs.
  The iterate of the stopping step is already in ``X_list``.
* Output: ``sum(X_list) / len(X_list)``, the mean of the start and the pre-projection iterates
  of the steps that ran ((c) of issue 9).

Changes from the original: float64-capable (helper tensors take ``X``'s dtype and device,
the column mask is cast to ``X``'s dtype), norms compared as tensors' ``.item()`` values as the
original does, the start passed in, timing/logging dropped, and a record of which exits fired
returned alongside the mean.
"""

import torch
import torch.nn.functional as F


def project_row(X):
    """p(X) = X - 1/m (X 1_m - 1_n) 1_m^T ; X shape n x m"""
    X_row_sum = X.sum(dim=1, keepdim=True)  # n x 1
    one_m = torch.ones(1, X.shape[1], dtype=X.dtype, device=X.device)  # 1 x m
    return X - (X_row_sum - 1).mm(one_m) / X.shape[1]


def project_col(X):
    """p(X) = X if X^T 1_n <= 1_m else X - 1/n 1_n (1_n^T X - 1_m^T) ; per column"""
    X_col_sum = X.sum(dim=0, keepdim=True)  # 1 x m
    one_n = torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)  # n x 1
    mask = (X_col_sum <= 1).to(X.dtype)
    P = X - (one_n).mm(X_col_sum - 1) / X.shape[0]
    return X * mask + (1 - mask) * P


def original_init(C):
    """The original's start: keep each column's argmin row, others set to max(C); one-hot argmin."""
    X = torch.zeros_like(C)
    C_rowmin = C.clone()
    for j in range(C_rowmin.shape[1]):
        best = torch.argmin(C_rowmin[:, j])
        for i in range(C_rowmin.shape[0]):
            if i != best:
                C_rowmin[i, j] = C.max()
    _, idx = torch.min(C_rowmin, dim=1)
    X[torch.arange(C.shape[0]).long(), idx.long()] = 1.0
    return X


def relax_matching(C, X_init, max_iter, proj_iter, lr):
    """Mean of the original's iterates for one problem ``C`` (n x m), and a record of the exits.

    Returns ``(mean, record)``; ``record`` is a dict with ``outer_steps`` (outer steps that ran),
    ``outer_exit`` (True when the outer early exit fired before ``max_iter`` steps had run, or
    at the last step), and ``inner_cycles`` (cycles run in each outer step).
    """
    X = X_init
    X_list = [X]
    P = [torch.zeros_like(C) for _ in range(3)]
    cost = [0]
    inner_cycles = []
    outer_exit = False
    for _i in range(max_iter):
        X = X - lr * C  # gradient step
        cost.append((X * C).norm().item())
        X_list.append(X)
        cycles = 0
        for _j in range(proj_iter):
            X_start = X.clone()
            X = X + P[0]
            Y = F.relu(X)  # non-negativity
            P[0] = X - Y

            X = Y + P[1]
            Y = project_col(X)  # columns
            P[1] = X - Y

            X = Y + P[2]
            Y = project_row(X)  # rows
            P[2] = X - Y

            X = Y
            cycles += 1
            if (X - X_start).norm().item() == 0:
                break
        inner_cycles.append(cycles)
        if cost[-2] == cost[-1]:
            outer_exit = True
            break
    mean = sum(X_list) / len(X_list)
    record = {
        "outer_steps": len(X_list) - 1,
        "outer_exit": outer_exit,
        "inner_cycles": inner_cycles,
    }
    return mean, record
