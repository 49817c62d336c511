"""The forward Triton kernel behind TensorRT's calling convention, compiled to PTX ahead of time.

TensorRT launches an ahead-of-time (AOT) plugin kernel with the input pointers first, then the
extra integer arguments the plugin declares (``SymInt32`` expressions), then the output
pointers: for ``dmm_deploy::dmm_match`` that is ``(cost, x_init, B, n, m, n_grad, n_proj,
out)``, eight arguments. The project's forward kernel (``kernels.matcher._dmm_fwd_kernel``)
takes its pointers, sizes and strides in another order, so :func:`_dmm_match_trt_kernel` is a
thin adapter: it calls the same kernel body (inlined by Triton) for contiguous ``(B, n, m)``
tensors, without padding sizes or saved bits, with ``lr`` fixed at compile time (plugin
attributes are build-time constants; TensorRT's extra kernel arguments are integers only).

What Triton emits is made to fit TensorRT, and checked, by :func:`compile_plugin_ptx`:

* **Entry parameters.** Triton >= 3.3 appends a global-scratch pointer to every kernel's PTX
  entry, and Triton >= 3.5 a profile-scratch pointer after it, which TensorRT does not pass.
  When the kernel needs no scratch memory (Triton's ``global_scratch_size`` and
  ``profile_scratch_size`` are 0) and the PTX never reads those parameters, their declarations
  are removed from the entry; the result is assembled again with the ``ptxas`` that ships with
  Triton to prove it is valid PTX. The entry then has exactly the eight parameters above, in
  TensorRT's order and types. (Had TensorRT passed more arguments than declared, the driver
  reads only the declared ones.) A kernel that needs scratch memory is refused.
* **PTX ISA version.** Triton writes ``.version`` for the CUDA of its own ``ptxas`` (8.8 for
  Triton 3.8, CUDA 12.9); the driver that JIT-compiles the PTX in TensorRT must know that ISA.
  The kernel is compiled with Triton's ``ptx_version`` option set to the ISA of
  :data:`PTX_ISA` (8.0, CUDA 12.0: the oldest CUDA 12 driver, and the first ISA with
  ``sm_90a``): LLVM then emits only instructions of that ISA, and Triton's ``ptxas`` accepts
  the result, so the ``.version`` line is true, not rewritten.
* **Supported pairs** (:func:`check_supported_pair`): TensorRT >= 10.9 (AOT quickly deployable
  plugins) built for CUDA 12 or 13, with Triton 3.2 to 3.8 (the ASTSource ``constexprs`` API
  and the scratch parameters above as handled here). Anything else is refused in one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton
import triton.language as tl

from kernels.matcher import _dmm_fwd_kernel, _python_fn, jit_helpers

__all__ = [
    "MIN_TENSORRT",
    "PTX_ISA",
    "TRITON_RANGE",
    "PluginKernel",
    "check_supported_pair",
    "compile_plugin_ptx",
    "entry_params",
    "kernel_source_digest",
]

MIN_TENSORRT = (10, 9)
TRITON_RANGE = ((3, 2), (3, 8))  # inclusive; 3.8 is the one the tests here run
PTX_ISA = {80: 80, 86: 80, 87: 80, 89: 80, 90: 80}  # arch -> PTX ISA x10 (CUDA 12.0)
# the entry TensorRT calls: 2 input pointers, 5 int32 extra arguments, 1 output pointer
TENSORRT_PARAM_TYPES = ("u64", "u64", "u32", "u32", "u32", "u32", "u32", "u64")

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


def _version_tuple(version: str) -> tuple[int, int]:
    parts = re.findall(r"\d+", str(version))
    if not parts:
        raise ValueError(f"cannot read a version from {version!r}")
    return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0


def check_supported_pair(trt_version: str, triton_version: str, cuda_major: int = 12) -> None:
    """``ValueError`` (one line naming both versions) unless the AOT plugin supports the pair.

    Supported: TensorRT >= 10.9 built for CUDA 12 or 13 with Triton 3.2 to 3.8 (see the module
    docstring for why). ``cuda_major`` is the CUDA major version TensorRT was built for.
    """
    trt_v, tri_v = _version_tuple(trt_version), _version_tuple(triton_version)
    lo, hi = TRITON_RANGE
    why = ""
    if trt_v < MIN_TENSORRT:
        why = "TensorRT has no ahead-of-time quickly deployable plugins before 10.9"
    elif not lo <= tri_v <= hi:
        why = f"Triton {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]} is supported"
    elif cuda_major < 12:
        why = "the kernel is PTX ISA 8.0, which needs CUDA >= 12.0 (a CUDA 12 or 13 TensorRT)"
    if why:
        raise ValueError(
            f"the dmm_deploy::dmm_match AOT plugin does not support TensorRT {trt_version} with "
            f"Triton {triton_version}: {why}"
        )


@dataclass(frozen=True)
class PluginKernel:
    """The plugin's kernel for one arch and dtype, as TensorRT receives it."""

    name: str  # PTX entry name
    ptx: str
    arch: int
    ptx_version: int  # PTX ISA x10, as in the .version line
    num_warps: int
    problems: int
    shared: int  # dynamic shared memory per program, bytes
    params: tuple[str, ...]  # the entry's parameter types, in order
    stripped: int  # trailing Triton scratch parameters removed

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.ptx.encode()).hexdigest()


_ENTRY = re.compile(r"\.visible\s+\.entry\s+(\w+)\s*\((.*?)\)", re.S)
_PARAM = re.compile(r"\.param\s+\.(\w+)(?:\s+\.ptr)?(?:\s+\.global)?(?:\s+\.align\s+\d+)?\s+(\w+)")


def entry_params(ptx: str) -> list[tuple[str, str]]:
    """``[(type, name), ...]`` of the PTX's one ``.entry``, in order (``u64`` for pointers)."""
    m = _ENTRY.search(ptx)
    if m is None:
        raise ValueError("the PTX has no .visible .entry")
    return _PARAM.findall(m.group(2))


def _expected_scratch_params(triton_version: str) -> int:
    v = _version_tuple(triton_version)
    return 0 if v < (3, 3) else 1 if v < (3, 5) else 2


def _strip_scratch_params(ptx: str, declared: int, triton_version: str) -> tuple[str, int]:
    """Remove the trailing Triton scratch parameters TensorRT does not pass; checks that the
    count is what this Triton appends and that the PTX body never reads them."""
    params = entry_params(ptx)
    extra = params[declared:]
    want = _expected_scratch_params(triton_version)
    if len(extra) != want or any(t != "u64" for t, _ in extra):
        raise RuntimeError(
            f"Triton {triton_version}'s PTX entry has {len(params)} parameters; expected "
            f"{declared} kernel arguments and {want} scratch pointer(s)"
        )
    if not extra:
        return ptx, 0
    m = _ENTRY.search(ptx)
    body = ptx[m.end() :]
    for _, name in extra:
        if re.search(rf"\b{name}\b", body):
            raise RuntimeError(f"the kernel reads Triton's scratch parameter {name}: not stripped")
    kept = ",".join(m.group(2).split(",")[:declared])
    return ptx[: m.start(2)] + kept + "\n" + ptx[m.end(2) :], len(extra)


def _ptxas(arch: int) -> str | None:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    return path if os.path.isfile(path) else None


def _assemble(ptx: str, arch: int) -> None:
    """Assemble ``ptx`` for ``sm_<arch>`` with Triton's ptxas; ``RuntimeError`` if refused."""
    ptxas = _ptxas(arch)
    if ptxas is None:
        raise RuntimeError("Triton's ptxas is missing: cannot prove the stripped PTX is valid")
    target = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        run = subprocess.run(
            [ptxas, f"-arch={target}", src, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True,
            text=True,
        )
    if run.returncode != 0:
        raise RuntimeError(f"ptxas refused the plugin PTX for {target}: {run.stderr.strip()}")


def _no_interpreter():
    """Code generation must not see ``TRITON_INTERPRET=1`` (``triton.knobs`` from 3.4 on;
    older Triton reads the variable only when ``triton.jit`` decorates, not when compiling)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is None or not hasattr(knobs, "runtime"):
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def scope():
        with knobs.runtime.scope():
            knobs.runtime.interpret = False
            yield

    return scope()


def kernel_source_digest() -> str:
    """SHA-256 of the kernel sources the plugin compiles (the body and this adapter)."""
    import kernels.matcher

    h = hashlib.sha256()
    for module in (kernels.matcher, inspect.getmodule(_dmm_match_trt_kernel)):
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()


def compile_plugin_ptx(
    arch: int,
    block_n: int,
    block_m: int,
    lr: float,
    *,
    dtype: str = "fp32",
    problems: int = 1,
    num_warps: int = 4,
) -> PluginKernel:
    """Compile the adapter for ``sm_<arch>`` without a GPU (see the module docstring).

    Raises ``ValueError`` for an arch or dtype outside the supported ones, ``RuntimeError``
    for a Triton outside :data:`TRITON_RANGE` or when the PTX cannot be brought to TensorRT's
    calling convention.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    lo, hi = TRITON_RANGE
    if not lo <= _version_tuple(triton.__version__) <= hi:
        raise RuntimeError(
            f"the plugin kernel is compiled with Triton {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]}, "
            f"not {triton.__version__} (its PTX entry layout is not known here)"
        )
    if arch not in PTX_ISA:
        raise ValueError(f"arch must be one of {sorted(PTX_ISA)} (sm_XY), got {arch}")
    ptrs = {"fp32": "*fp32", "fp16": "*fp16"}
    if dtype not in ptrs:
        raise ValueError(f"dtype must be 'fp32' or 'fp16', got {dtype!r}")
    ptr = ptrs[dtype]
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
        with _no_interpreter(), jit_helpers():
            compiled = triton.compile(
                src,
                target=GPUTarget("cuda", arch, 32),
                options={"num_warps": num_warps, "ptx_version": PTX_ISA[arch]},
            )
    finally:
        _dmm_fwd_body = interpreted_body
    meta = compiled.metadata
    if getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0):
        raise RuntimeError(
            f"{meta.name} needs Triton scratch memory, which a TensorRT AOT plugin cannot pass"
        )
    ptx, stripped = _strip_scratch_params(
        compiled.asm["ptx"], len(TENSORRT_PARAM_TYPES), triton.__version__
    )
    if stripped:
        _assemble(ptx, arch)
    params = tuple(t for t, _ in entry_params(ptx))
    if params != TENSORRT_PARAM_TYPES:
        raise RuntimeError(f"the plugin PTX entry has parameters {params}, not TensorRT's")
    version = re.search(r"^\.version\s+(\d+)\.(\d+)", ptx, re.M)
    return PluginKernel(
        name=meta.name,
        ptx=ptx,
        arch=arch,
        ptx_version=10 * int(version.group(1)) + int(version.group(2)),
        num_warps=meta.num_warps,
        problems=problems,
        shared=meta.shared,
        params=params,
        stripped=stripped,
    )
