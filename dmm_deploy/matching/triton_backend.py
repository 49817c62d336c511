"""The ``backend="triton"`` path of :func:`dmm_deploy.matching.dmm_match`.

Two ``torch.library`` custom operators wrap the fused kernels of :mod:`kernels.matcher`:

* ``dmm_deploy::dmm_match_fwd(cost, x_init, sizes, n_grad, n_proj, lr, save_bits, variant)
  -> (out, r_bits, a_bits)``: one launch for the batch; with ``save_bits`` it also returns the
  int64 bit planes (relu pattern and active columns of every inner step) the backward needs;
* ``dmm_deploy::dmm_match_bwd(grad_out, r_bits, a_bits, sizes, n_grad, n_proj, lr, variant)
  -> (grad_cost, grad_x_init)``: the reverse sweep, one launch.

``variant`` is ``"listing1"`` (the specification, the default) or ``"original"`` (the original
DMM-Net code's solver: projection order, mean of the pre-projection iterates, early exits as
per-problem frozen masks; see :mod:`kernels.matcher`).

Both have fake (meta) implementations, so ``torch.compile(fullgraph=True)`` and
``torch.export`` trace them without running a kernel or breaking the graph. The backward is
registered on the forward op with ``torch.library.register_autograd`` (PyTorch wraps the pair
in a ``torch.autograd.Function``), so the op is differentiable wherever it is called from;
only the two bit planes (and ``sizes``) are saved for backward, their size is given by
:func:`kernels.matcher.bits_bytes_per_problem`. :func:`decompositions` maps the forward op
back to the batched reference, so an exported program can be lowered to plain aten ops (for
ONNX, say) with ``ExportedProgram.run_decompositions(decompositions())``.

:class:`CudaGraphMatcher` replays a captured CUDA graph of the forward launch for small batches
at inference (where the launch itself, not the kernel, dominates: B = 1, 5 x 50).

Documented fallback: problems beyond the kernels' limits (``n > 64`` or ``m > 1024``) and
float64 inputs are solved by the reference (:func:`match_reference`), which gives the same
answer more slowly; :func:`triton_supported` says which path a shape takes.
"""

from __future__ import annotations

import torch

from dmm_deploy.matching.reference import match_reference
from kernels import matcher as _kernels

__all__ = ["CudaGraphMatcher", "decompositions", "triton_match", "triton_supported"]

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@torch.library.custom_op("dmm_deploy::dmm_match_fwd", mutates_args=())
def dmm_match_fwd(
    cost: torch.Tensor,
    x_init: torch.Tensor,
    sizes: torch.Tensor | None,
    n_grad: int,
    n_proj: int,
    lr: float,
    save_bits: bool,
    variant: str = "listing1",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused forward: ``(mean of the iterates, r_bits, a_bits)``; bits empty unless save_bits."""
    return _kernels.matcher_forward(
        cost, x_init, n_grad, n_proj, lr, sizes, save_bits, variant=variant
    )


@dmm_match_fwd.register_fake
def _(cost, x_init, sizes, n_grad, n_proj, lr, save_bits, variant="listing1"):
    batch, n, m = cost.shape
    out = cost.new_empty((batch, n, m))
    if not save_bits:
        empty = cost.new_empty((0,), dtype=torch.int64)
        return out, empty, empty.clone()
    r_shape, a_shape = _kernels.bits_shapes(batch, n, m, n_grad, n_proj, variant)
    return (
        out,
        cost.new_empty(r_shape, dtype=torch.int64),
        cost.new_empty(a_shape, dtype=torch.int64),
    )


@torch.library.custom_op("dmm_deploy::dmm_match_bwd", mutates_args=())
def dmm_match_bwd(
    grad_out: torch.Tensor,
    r_bits: torch.Tensor,
    a_bits: torch.Tensor,
    sizes: torch.Tensor | None,
    n_grad: int,
    n_proj: int,
    lr: float,
    variant: str = "listing1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused backward: ``(grad_cost, grad_x_init)`` from the forward's bit planes."""
    return _kernels.matcher_backward(
        grad_out, r_bits, a_bits, n_grad, n_proj, lr, sizes, variant=variant
    )


@dmm_match_bwd.register_fake
def _(grad_out, r_bits, a_bits, sizes, n_grad, n_proj, lr, variant="listing1"):
    return grad_out.new_empty(grad_out.shape), grad_out.new_empty(grad_out.shape)


def _setup_context(ctx, inputs, output) -> None:
    _, _, sizes, n_grad, n_proj, lr, save_bits, variant = inputs
    _, r_bits, a_bits = output
    ctx.save_for_backward(r_bits, a_bits, sizes)
    ctx.n_grad, ctx.n_proj, ctx.lr, ctx.save_bits = n_grad, n_proj, lr, save_bits
    ctx.variant = variant


def _backward(ctx, grad_out, _grad_r_bits, _grad_a_bits):
    if not ctx.save_bits:
        raise RuntimeError(
            "dmm_deploy::dmm_match_fwd was called with save_bits=False, so it kept nothing to "
            "differentiate; call it with save_bits=True (triton_match does when grad is needed)"
        )
    r_bits, a_bits, sizes = ctx.saved_tensors
    grad_cost, grad_x = dmm_match_bwd(
        grad_out, r_bits, a_bits, sizes, ctx.n_grad, ctx.n_proj, ctx.lr, ctx.variant
    )
    return grad_cost, grad_x, None, None, None, None, None, None


torch.library.register_autograd(
    "dmm_deploy::dmm_match_fwd", _backward, setup_context=_setup_context
)


def triton_supported(n: int, m: int, dtype: torch.dtype) -> bool:
    """True when an ``n x m`` problem of ``dtype`` runs on the fused kernels (else: reference)."""
    return 1 <= n <= _kernels.MAX_N and 1 <= m <= _kernels.MAX_M and dtype in _KERNEL_DTYPES


def triton_match(
    cost: torch.Tensor,
    x_init: torch.Tensor,
    n_grad: int,
    n_proj: int,
    lr: float,
    sizes: torch.Tensor | None = None,
    variant: str = "listing1",
) -> torch.Tensor:
    """The matcher on the fused kernels; arguments as :func:`match_reference`, validated.

    cost, x_init: ``(B, n, m)`` of one dtype, on CUDA (or on the CPU under
    ``TRITON_INTERPRET=1``); sizes: ``None`` or int64 ``(B, 2)`` on the same device;
    variant: ``"listing1"`` or ``"original"``.
    Differentiable in ``cost`` and ``x_init``: the bit planes for the backward are only
    written when grad mode is on and one of them requires grad. Shapes or dtypes the
    kernels do not cover (see :func:`triton_supported`) run the reference instead.
    """
    if variant not in _kernels.VARIANTS:
        raise ValueError(f"variant must be one of {_kernels.VARIANTS}, got {variant!r}")
    _, n, m = cost.shape
    if not triton_supported(n, m, cost.dtype):
        return match_reference(cost, x_init, n_grad, n_proj, lr, sizes, variant=variant)
    save_bits = torch.is_grad_enabled() and (cost.requires_grad or x_init.requires_grad)
    if sizes is not None:
        sizes = sizes.contiguous()
    out, _, _ = dmm_match_fwd(cost, x_init, sizes, n_grad, n_proj, float(lr), save_bits, variant)
    return out


def _reference_fwd(cost, x_init, sizes, n_grad, n_proj, lr, save_bits, variant="listing1"):
    out = match_reference(cost, x_init, n_grad, n_proj, lr, sizes, variant=variant)
    empty = cost.new_empty((0,), dtype=torch.int64)
    return out, empty, empty


def decompositions() -> dict:
    """``{dmm_match_fwd: reference}`` for ``ExportedProgram.run_decompositions``.

    Replaces the fused forward by the batched reference's aten ops (the bit planes become
    empty tensors), e.g. before an ONNX export of a program traced with the Triton backend.
    """
    return {torch.ops.dmm_deploy.dmm_match_fwd.default: _reference_fwd}


class CudaGraphMatcher:
    """The fused forward replayed from a captured CUDA graph, for small batches at inference.

    One graph per ``(shape, dtype, device, padded or not)``, captured at the first call with
    that key (after one warm-up launch, which also compiles/autotunes the kernel): the graph
    reads static input buffers, so a call is two copies into them, one graph replay and a copy
    out (``copy_out=False`` returns the static output itself, which the next call of the same
    key overwrites). No autograd: the result never requires grad (use :func:`triton_match`
    for training). Arguments as :func:`triton_match`; ``sizes`` (int64 ``(B, 2)``) is copied
    like the other inputs, so a graph serves every padding of its shape.

    Typical use: ``matcher = CudaGraphMatcher(40, 5, 0.1); out = matcher(cost, x_init)``.
    """

    def __init__(
        self,
        n_grad: int,
        n_proj: int,
        lr: float,
        variant: str = "listing1",
        *,
        copy_out: bool = True,
        max_graphs: int = 16,
    ) -> None:
        if variant not in _kernels.VARIANTS:
            raise ValueError(f"variant must be one of {_kernels.VARIANTS}, got {variant!r}")
        if n_grad < 1 or n_proj < 1 or not lr > 0:
            raise ValueError(
                f"n_grad, n_proj must be >= 1 and lr > 0, got {n_grad}, {n_proj}, {lr}"
            )
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.n_grad, self.n_proj, self.lr, self.variant = n_grad, n_proj, float(lr), variant
        self.copy_out = copy_out
        self.max_graphs = max_graphs
        self._graphs: dict[tuple, tuple] = {}

    def __call__(
        self, cost: torch.Tensor, x_init: torch.Tensor, sizes: torch.Tensor | None = None
    ) -> torch.Tensor:
        if not cost.is_cuda:
            raise ValueError(f"CudaGraphMatcher needs CUDA tensors, cost is on {cost.device}")
        if x_init.shape != cost.shape or x_init.dtype != cost.dtype:
            raise ValueError(
                f"x_init must match cost: {tuple(cost.shape)} {cost.dtype}, "
                f"got {tuple(x_init.shape)} {x_init.dtype}"
            )
        _, n, m = cost.shape
        if not triton_supported(n, m, cost.dtype):
            raise ValueError(f"the fused kernels do not cover {n} x {m} {cost.dtype}")
        key = (tuple(cost.shape), cost.dtype, cost.device, sizes is not None)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.max_graphs:
                self._graphs.pop(next(iter(self._graphs)))
            entry = self._graphs[key] = self._capture(cost, x_init, sizes)
        graph, static_cost, static_x, static_sizes, static_out = entry
        with torch.no_grad():
            static_cost.copy_(cost)
            static_x.copy_(x_init)
            if sizes is not None:
                static_sizes.copy_(sizes)
            graph.replay()
            return static_out.clone() if self.copy_out else static_out

    def _capture(self, cost, x_init, sizes):
        static_cost = torch.empty_like(cost, memory_format=torch.contiguous_format)
        static_x = torch.empty_like(static_cost)
        static_cost.copy_(cost)
        static_x.copy_(x_init)
        static_sizes = None if sizes is None else sizes.to(torch.int64).contiguous().clone()
        static_out = torch.empty_like(static_cost)

        def launch():
            _kernels.matcher_forward(
                static_cost, static_x, self.n_grad, self.n_proj, self.lr, static_sizes,
                out=static_out, variant=self.variant,
            )  # fmt: skip

        stream = torch.cuda.Stream(cost.device)
        stream.wait_stream(torch.cuda.current_stream(cost.device))
        with torch.cuda.stream(stream):
            launch()  # compiles and autotunes outside the capture
        torch.cuda.current_stream(cost.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            launch()
        return graph, static_cost, static_x, static_sizes, static_out
