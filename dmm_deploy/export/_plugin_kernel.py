"""The forward Triton kernel behind TensorRT's calling convention, for ahead-of-time PTX.

TensorRT launches an ahead-of-time plugin kernel with the input pointers first, then the
extra integer arguments the plugin declares, then the output pointers. The project's forward
kernel (``kernels.matcher._dmm_fwd_kernel``) takes its pointers, sizes and strides in another
order, so :func:`_dmm_match_trt_kernel` is a thin adapter: it calls the same kernel body
(inlined by Triton) for contiguous ``(B, n, m)`` tensors, without padding sizes or saved bits,
with ``lr`` fixed at compile time (plugin attributes are build-time constants; TensorRT's
extra kernel arguments are integers only).
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.matcher import _dmm_fwd_kernel, _python_fn

__all__ = ["compile_plugin_ptx"]

_dmm_fwd_body = triton.jit(_python_fn(_dmm_fwd_kernel))


@triton.jit
def _dmm_match_trt_kernel(
    cost_ptr,  # (B, n, m) fp32 / fp16, contiguous (input 0)
    x_init_ptr,  # (B, n, m) cost's dtype, contiguous (input 1)
    B,  # extra arguments, in the order the plugin declares them
    n,
    m,
    n_grad,
    n_proj,
    out_ptr,  # (B, n, m) cost's dtype (output 0)
    LR: tl.constexpr,
    PROBLEMS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    _dmm_fwd_body(
        cost_ptr,
        x_init_ptr,
        out_ptr,  # sizes: never read (HAS_SIZES=False)
        out_ptr,
        out_ptr,  # r_bits, a_bits: never written (SAVE_BITS=False)
        out_ptr,
        B,
        n,
        m,
        n_grad,
        n_proj,
        LR,
        n * m,
        m,
        1,
        n * m,
        m,
        1,
        HAS_SIZES=False,
        SAVE_BITS=False,
        PROBLEMS=PROBLEMS,
        BLOCK_N=BLOCK_N,
        BLOCK_M=BLOCK_M,
    )


def compile_plugin_ptx(
    arch: int,
    block_n: int,
    block_m: int,
    lr: float,
    *,
    dtype: str = "fp32",
    problems: int = 1,
    num_warps: int = 4,
):
    """Compile the adapter for ``sm_<arch>`` without a GPU; returns triton's compiled kernel.

    ``.asm["ptx"]`` is the PTX, ``.metadata.name`` the entry name, ``.metadata.shared`` the
    shared memory in bytes, ``.metadata.num_warps`` the warps per program.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    ptr = {"fp32": "*fp32", "fp16": "*fp16"}[dtype]
    signature = {
        "cost_ptr": ptr,
        "x_init_ptr": ptr,
        "B": "i32",
        "n": "i32",
        "m": "i32",
        "n_grad": "i32",
        "n_proj": "i32",
        "out_ptr": ptr,
        "LR": "constexpr",
        "PROBLEMS": "constexpr",
        "BLOCK_N": "constexpr",
        "BLOCK_M": "constexpr",
    }
    constexprs = {"LR": float(lr), "PROBLEMS": problems, "BLOCK_N": block_n, "BLOCK_M": block_m}
    # fresh JIT functions for the adapter and the body it calls, even where this module was
    # imported under TRITON_INTERPRET=1 (then the module-level ones are interpreted functions)
    global _dmm_fwd_body
    interpreted_body = _dmm_fwd_body
    _dmm_fwd_body = JITFunction(_python_fn(_dmm_fwd_kernel))
    try:
        adapter = JITFunction(_python_fn(_dmm_match_trt_kernel))
        src = ASTSource(fn=adapter, signature=signature, constexprs=constexprs)
        with triton.knobs.runtime.scope():  # code generation must not see TRITON_INTERPRET=1
            triton.knobs.runtime.interpret = False
            return triton.compile(
                src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps}
            )
    finally:
        _dmm_fwd_body = interpreted_body
