"""Public matcher API: ``dmm_match``, ``DMMMatcher``, argument checking and backend dispatch."""

from __future__ import annotations

import math
import numbers
import os

import torch
from torch import nn

from dmm_deploy.matching.reference import (
    VARIANTS,
    MatchInfo,
    check_variant,
    greedy_init,
    match_reference,
    valid_mask,
)

__all__ = ["BACKENDS", "VARIANTS", "DMMMatcher", "dmm_match", "triton_available"]

BACKENDS = ("auto", "torch", "triton")


def triton_available() -> bool:
    """True when the fused Triton kernels can be imported (they need the ``triton`` package)."""
    try:
        from dmm_deploy.matching import triton_backend  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_lr(lr) -> float:
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    return float(lr)


def _check_sizes(sizes, b: int, n: int, m: int, device) -> torch.Tensor:
    if not isinstance(sizes, torch.Tensor):
        raise TypeError(
            f"sizes must be an integer tensor of shape ({b}, 2), got {type(sizes).__name__}"
        )
    if sizes.dtype.is_floating_point or sizes.dtype.is_complex or sizes.dtype == torch.bool:
        raise TypeError(f"sizes must be an integer tensor, got dtype {sizes.dtype}")
    if tuple(sizes.shape) != (b, 2):
        raise ValueError(
            f"sizes must have shape ({b}, 2) (one (n_b, m_b) per problem), got {tuple(sizes.shape)}"
        )
    sizes = sizes.to(device=device, dtype=torch.int64)
    if torch.compiler.is_compiling():  # a value check needs a host sync: not in a traced graph
        return sizes
    if bool(((sizes < 1) | (sizes[:, 0] > n)[:, None] | (sizes[:, 1] > m)[:, None]).any()):
        raise ValueError(
            f"sizes must satisfy 1 <= n_b <= {n} and 1 <= m_b <= {m} for every problem"
        )
    return sizes


def _check_finite(name: str, t: torch.Tensor, valid: torch.Tensor | None) -> None:
    bad = ~torch.isfinite(t)
    if valid is not None:
        bad = bad & valid
    if bool(bad.any()):
        raise ValueError(f"{name} contains NaN or Inf")


def _resolve_backend(backend: str, cost: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if cost.is_cuda and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError(
                "backend='triton' needs the fused Triton kernels, which could not be imported "
                "(install triton, which comes with CUDA builds of torch)"
            )
        if not cost.is_cuda and not _interpreting():
            raise ValueError(
                "backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run the kernels "
                f"in Triton's interpreter on the CPU); cost is on {cost.device}"
            )
    return backend


def dmm_match(
    cost: torch.Tensor,
    x_init: torch.Tensor | str | None = None,
    *,
    n_grad: int = 40,
    n_proj: int = 5,
    lr: float = 0.01,
    sizes: torch.Tensor | None = None,
    backend: str = "auto",
    return_info: bool = False,
    check_finite: bool = True,
    variant: str = "listing1",
):
    """Differentiable mask matching (DMM-Net, Listing 1 of the supplement), batched.

    Approximately solves, for every problem, ``min_X Tr(C X^T)`` subject to
    ``X 1_m = 1_n``, ``X^T 1_n <= 1_m``, ``X >= 0`` by ``n_grad`` projected-gradient steps
    ``X <- X - lr * C``, each followed by ``n_proj`` cycles of Dykstra's projections onto the
    rows, columns and non-negativity sets (corrections persist across outer steps), and
    returns the mean of all iterates, ``x_init`` included.

    Args:
        cost: floating tensor ``(n, m)`` or ``(B, n, m)``; any real values, any n, m >= 1.
        x_init: start of the iteration: a tensor of cost's shape and dtype, ``None`` (zeros),
            or ``"greedy"`` (the original DMM-Net start, see :func:`greedy_init`).
        n_grad: number of outer (projected-gradient) steps, a positive integer.
        n_proj: Dykstra cycles per outer step, a positive integer.
        lr: gradient step, a positive finite number.
        sizes: optional integer tensor ``(B, 2)`` of per-problem ``(n_b, m_b)`` for padded
            batches (3-D cost only): problem ``b`` is ``cost[b, :n_b, :m_b]``, solved as if
            alone; the output is zero outside it and padding values are ignored.
        backend: ``"torch"`` (the batched reference), ``"triton"`` (the fused kernels, CUDA
            tensors or ``TRITON_INTERPRET=1``), or ``"auto"`` (Triton for CUDA tensors when
            available, otherwise torch).
        return_info: also return a :class:`MatchInfo` (objective and feasibility error per
            outer step, feasibility per inner step); computed by the torch reference.
        check_finite: reject NaN/Inf in ``cost``/``x_init`` (costs one device sync; turn off
            in hot loops whose inputs are known to be finite). Inside ``torch.compile`` this
            check and the range check of ``sizes`` are skipped (they would break the graph).
        variant: ``"listing1"`` (default; the specification above) or ``"original"``: the
            solver of the original DMM-Net code, which its released checkpoints were evaluated
            with. It averages ``x_init`` and the iterates right after each gradient step (before
            that step's projections), each cycle projects non-negativity, then columns, then
            rows, and it stops early per problem: a cycle that leaves ``X`` exactly unchanged
            ends its outer step, and an outer step whose ``||X * C||`` (after the gradient
            step) equals the previous one's (0 before the first) is the last. The exits are
            per-problem masks (no data-dependent control flow), in every backend.

    Cost scale: the iteration count is fixed, so the result is only close to feasible when
    ``lr * (cost range) * m`` is about 1 or below. Measured at 40 x 5 over 1000 random
    problems (n <= 10, m <= 100, zero start, costs uniform in ``[0, s)``), the median / max
    row-sum violation of ``listing1`` is 0.024 / 0.1 at lr 0.1, s = 0.25, but 0.27 / 0.66 at
    s = 1 and 21 / 58 at s = 100; at lr 0.01 it stays <= 0.03 up to s = 1. Scale costs to
    O(1) (DMM-Net's cosine + IoU cost lies in [-1, 0]) or raise ``n_grad``. The ``original``
    variant's mean is infeasible by construction (it averages pre-projection iterates) and is
    meant for the row argmax. ``return_info=True`` reports ``MatchInfo.violation`` (the worst
    constraint violation of the returned assignment) and the feasibility per step. No warning
    is raised on large violations: checking would cost a device sync on every call and break
    CUDA-graph capture and ``torch.compile`` graphs, while the check belongs to whoever
    chooses the cost scale; ``return_info`` is the way to look.

    Returns:
        The mean of the iterates, same shape and dtype as ``cost``; with ``return_info`` a
        tuple ``(assignment, info)``.

    Raises:
        TypeError / ValueError naming the offending argument. Inputs are never modified.
    """
    if not isinstance(cost, torch.Tensor):
        raise TypeError(f"cost must be a torch.Tensor, got {type(cost).__name__}")
    if not cost.dtype.is_floating_point:
        raise TypeError(f"cost must be a floating-point tensor, got dtype {cost.dtype}")
    if cost.ndim not in (2, 3):
        raise ValueError(f"cost must have shape (n, m) or (B, n, m), got {tuple(cost.shape)}")
    if cost.shape[-1] < 1 or cost.shape[-2] < 1:
        raise ValueError(f"cost must have n >= 1 and m >= 1, got shape {tuple(cost.shape)}")
    n_grad = _check_positive_int("n_grad", n_grad)
    n_proj = _check_positive_int("n_proj", n_proj)
    lr = _check_lr(lr)
    variant = check_variant(variant)
    squeeze = cost.ndim == 2
    c3 = cost.unsqueeze(0) if squeeze else cost
    b, n, m = c3.shape
    if sizes is not None:
        if squeeze:
            raise ValueError("sizes is only meaningful for a batched (B, n, m) cost")
        sizes = _check_sizes(sizes, b, n, m, cost.device)
    backend = _resolve_backend(backend, cost)

    if x_init is None:
        x3 = torch.zeros_like(c3)
    elif isinstance(x_init, str):
        if x_init != "greedy":
            raise ValueError(f"x_init must be a tensor, None or 'greedy', got {x_init!r}")
        x3 = greedy_init(c3.detach(), sizes)
    elif isinstance(x_init, torch.Tensor):
        if x_init.shape != cost.shape:
            raise ValueError(
                f"x_init must have cost's shape {tuple(cost.shape)}, got {tuple(x_init.shape)}"
            )
        if x_init.dtype != cost.dtype:
            raise TypeError(f"x_init must have cost's dtype {cost.dtype}, got {x_init.dtype}")
        if x_init.device != cost.device:
            raise ValueError(f"x_init must be on cost's device {cost.device}, got {x_init.device}")
        x3 = x_init.unsqueeze(0) if squeeze else x_init
    else:
        raise TypeError(f"x_init must be a tensor, None or 'greedy', got {type(x_init).__name__}")

    if check_finite and not torch.compiler.is_compiling():
        valid = None
        if sizes is not None:
            rows, cols = valid_mask(sizes, n, m)
            valid = rows & cols
        _check_finite("cost", c3, valid)
        if isinstance(x_init, torch.Tensor):
            _check_finite("x_init", x3, valid)

    if return_info or backend == "torch":
        res = match_reference(c3, x3, n_grad, n_proj, lr, sizes, return_info, variant=variant)
    else:
        from dmm_deploy.matching.triton_backend import triton_match

        res = triton_match(c3, x3, n_grad, n_proj, lr, sizes, variant=variant)
    if return_info:
        out, info = res
        if squeeze:
            out = out[0]
            info = MatchInfo(*(t[0] for t in info))
        return out, info
    return res[0] if squeeze else res


class DMMMatcher(nn.Module):
    """The matching layer as a module: ``n_grad``, ``n_proj``, ``lr``, ``init``, ``backend``, ``variant``.

    ``forward(cost, x_init=None, sizes=None)`` calls :func:`dmm_match`; ``x_init=None`` uses
    the module's ``init`` (``"zeros"`` or ``"greedy"``).

    ``cuda_graph=True`` replays the fused forward from captured CUDA graphs
    (:class:`~dmm_deploy.matching.triton_backend.CudaGraphMatcher`, one graph per shape) for
    batched CUDA inputs when autograd is off (inference at small batches, where launch
    overhead dominates); every other call goes through :func:`dmm_match` as usual. Inputs
    are then not checked for NaN/Inf (that check would sync the device).
    """

    def __init__(
        self,
        n_grad: int = 40,
        n_proj: int = 5,
        lr: float = 0.01,
        init: str = "zeros",
        backend: str = "auto",
        variant: str = "listing1",
        cuda_graph: bool = False,
    ) -> None:
        super().__init__()
        self.n_grad = _check_positive_int("n_grad", n_grad)
        self.n_proj = _check_positive_int("n_proj", n_proj)
        self.lr = _check_lr(lr)
        if init not in ("zeros", "greedy"):
            raise ValueError(f"init must be 'zeros' or 'greedy', got {init!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.init = init
        self.backend = backend
        self.variant = check_variant(variant)
        if not isinstance(cuda_graph, bool):
            raise TypeError(f"cuda_graph must be a bool, got {type(cuda_graph).__name__}")
        self.cuda_graph = cuda_graph
        self._graphs = None  # CudaGraphMatcher, made at the first graphed call

    def forward(
        self,
        cost: torch.Tensor,
        x_init: torch.Tensor | None = None,
        sizes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if x_init is None and self.init == "greedy":
            x_init = "greedy"
        if (
            self.cuda_graph
            and isinstance(cost, torch.Tensor)
            and cost.is_cuda
            and cost.ndim == 3
            and not torch.is_grad_enabled()
            and self.backend != "torch"
            and triton_available()
        ):
            return self._graphed(cost, x_init, sizes)
        return dmm_match(
            cost,
            x_init,
            n_grad=self.n_grad,
            n_proj=self.n_proj,
            lr=self.lr,
            sizes=sizes,
            backend=self.backend,
            variant=self.variant,
        )

    def _graphed(self, cost, x_init, sizes) -> torch.Tensor:
        from dmm_deploy.matching.triton_backend import CudaGraphMatcher

        if x_init is None:
            x_init = torch.zeros_like(cost)
        elif isinstance(x_init, str):
            x_init = greedy_init(cost, sizes)
        if self._graphs is None:
            self._graphs = CudaGraphMatcher(self.n_grad, self.n_proj, self.lr, self.variant)
        return self._graphs(cost, x_init, sizes)

    def extra_repr(self) -> str:
        return (
            f"n_grad={self.n_grad}, n_proj={self.n_proj}, lr={self.lr}, "
            f"init={self.init!r}, backend={self.backend!r}, variant={self.variant!r}, "
            f"cuda_graph={self.cuda_graph}"
        )
