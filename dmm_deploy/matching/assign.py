"""Discrete read-outs of a (relaxed) assignment: argmax per row and the exact LP optimum."""

from __future__ import annotations

import torch

from dmm_deploy.matching.reference import valid_mask

__all__ = ["exact_assign", "hard_assign"]


def _as_batch(t: torch.Tensor, name: str, sizes: torch.Tensor | None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (n, m) or (B, n, m), got {tuple(t.shape)}")
    if sizes is not None and t.ndim == 2:
        raise ValueError("sizes is only meaningful for a batched (B, n, m) input")
    t3 = t.unsqueeze(0) if t.ndim == 2 else t
    if sizes is not None:
        b, n, m = t3.shape
        if not isinstance(sizes, torch.Tensor) or tuple(sizes.shape) != (b, 2):
            raise ValueError(f"sizes must be an integer tensor of shape ({b}, 2)")
        sizes = sizes.to(device=t.device, dtype=torch.int64)
        if bool(((sizes < 1) | (sizes[:, :1] > n) | (sizes[:, 1:] > m)).any()):
            raise ValueError(f"sizes must satisfy 1 <= n_b <= {n} and 1 <= m_b <= {m}")
    return t3, sizes


def hard_assign(x: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """Each row's argmax column (the first on ties) as an int64 tensor ``(n,)`` or ``(B, n)``.

    A row is empty, and gets ``-1``, when it lies outside ``n_b`` of a padded batch or when it
    holds no positive entry (within ``m_b``).
    """
    x3, sizes = _as_batch(x, "x", sizes)
    _, n, m = x3.shape
    vals = x3
    if sizes is not None:
        rows, cols = valid_mask(sizes, n, m)
        vals = torch.where(rows & cols, x3, torch.zeros((), dtype=x3.dtype, device=x3.device))
    best, idx = vals.max(dim=-1)
    idx = torch.where(best > 0, idx, torch.full_like(idx, -1))
    return idx[0] if x.ndim == 2 else idx


def exact_assign(cost: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """The exact optimum of the matching LP, as each row's column (int64, ``(n,)`` or ``(B, n)``).

    For ``n_b <= m_b`` the LP ``min Tr(C X^T)``, ``X 1 = 1``, ``X^T 1 <= 1``, ``X >= 0`` has an
    integral optimum: the rectangular linear assignment solved by
    ``scipy.optimize.linear_sum_assignment`` (imported here, lazily). Padded rows get ``-1``.
    Runs on the CPU, one problem at a time (it is a reference, not a fast path).
    """
    c3, sizes = _as_batch(cost, "cost", sizes)
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as e:  # pragma: no cover - scipy is in the test extra
        raise ImportError("exact_assign needs scipy (pip install scipy)") from e
    b, n, m = c3.shape
    dims = sizes.tolist() if sizes is not None else [(n, m)] * b
    if any(nb > mb for nb, mb in dims):
        raise ValueError(
            "exact_assign needs n <= m for every problem (each row takes its own column)"
        )
    c_np = c3.detach().to("cpu", torch.float64).numpy()
    out = torch.full((b, n), -1, dtype=torch.int64)
    for i, (nb, mb) in enumerate(dims):
        r, c = linear_sum_assignment(c_np[i, :nb, :mb])
        out[i, torch.as_tensor(r)] = torch.as_tensor(c, dtype=torch.int64)
    out = out.to(cost.device)
    return out[0] if cost.ndim == 2 else out
