"""The matcher as one TensorRT plugin node, its kernel the Triton forward kernel compiled to PTX.

TensorRT 10.9+ "quickly deployable plugins" (the ``tensorrt.plugin`` module) let a Python
package describe a plugin and give it an ahead-of-time (AOT) implementation: a compiled
kernel (PTX), its launch parameters and its integer arguments as symbolic shape expressions.
TensorRT embeds that kernel in the engine, so the engine then runs in any TensorRT runtime,
``trtexec --loadEngine`` included, with no Python. Only the build needs this module.

* :func:`make_plugin_model`: the ONNX graph ``(cost, x_init) -> assignment`` with one node
  ``dmm_match`` of domain ``dmm_deploy``, attributes ``n_grad``, ``n_proj``, ``lr``,
  ``block_n``, ``block_m`` and, for TensorRT's ONNX parser, ``plugin_namespace="dmm_deploy"``,
  ``plugin_version="1"`` and ``aot=1`` (use the AOT implementation).
* :func:`register_plugin`: registers ``dmm_deploy::dmm_match`` with TensorRT (descriptor,
  type combinations, AOT implementation: :mod:`dmm_deploy.export._plugin_kernel` compiled for
  the build GPU's architecture) after :func:`~dmm_deploy.export._plugin_kernel.
  check_supported_pair` accepted the installed TensorRT and Triton.
* :func:`plugin_cache_fields`: what of the plugin keys the engine cache (kernel sources,
  Triton version, PTX digest).

The kernel tile is fixed at build time by ``block_n``/``block_m`` (powers of two): an engine
is correct for ``n <= block_n`` and ``m <= block_m``, which :func:`check_plugin_profile`
checks against the optimization profile before a build. The kernel computes in float32 and
stores in the I/O type, so float16 I/O gives the ``mixed`` precision of the unrolled export.

The registration functions carry real (not string) annotations: NVIDIA's ``tensorrt.plugin``
validates them with ``issubclass``, so this module must not use postponed annotations.

Status: registration, type combinations and the AOT implementation run through NVIDIA's own
``tensorrt.plugin`` package (from the ``tensorrt-cu12-bindings`` wheel) over a stand-in
TensorRT core in the tests; no TensorRT build or run has executed.
"""

import functools
from collections.abc import Callable
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from dmm_deploy.export.tensorrt_compat import import_tensorrt

__all__ = [
    "DEFAULT_MAX_M",
    "DEFAULT_MAX_N",
    "PLUGIN_DOMAIN",
    "PLUGIN_ID",
    "PLUGIN_OP",
    "check_plugin_profile",
    "launch_config",
    "make_plugin_model",
    "plugin_cache_fields",
    "plugin_kernel",
    "register_plugin",
    "tensorrt_cuda_major",
]

PLUGIN_DOMAIN = "dmm_deploy"
PLUGIN_OP = "dmm_match"
PLUGIN_ID = f"{PLUGIN_DOMAIN}::{PLUGIN_OP}"
DEFAULT_MAX_N, DEFAULT_MAX_M = 16, 512
_ELEMENTS_PER_PROGRAM = 4096
_registered = False


def _next_pow2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def launch_config(block_n: int, block_m: int) -> tuple[int, int]:
    """``(problems per program, warps)`` for a ``block_n x block_m`` tile.

    Small problems are packed (up to 4096 elements per program, at most 16 problems); warps
    give each thread about 16 elements, between 1 and 16 warps.
    """
    tile = block_n * block_m
    problems = 1
    while problems < 16 and 2 * problems * tile <= _ELEMENTS_PER_PROGRAM:
        problems *= 2
    warps = 1
    while warps < 16 and problems * tile // (32 * warps) > 16:
        warps *= 2
    return problems, warps


def make_plugin_model(
    n_grad: int = 40,
    n_proj: int = 5,
    lr: float = 0.01,
    *,
    max_n: int = DEFAULT_MAX_N,
    max_m: int = DEFAULT_MAX_M,
    half: bool = False,
    static_shape: tuple[int, int, int] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    """The one-node plugin graph ``(cost, x_init) -> assignment``.

    max_n, max_m: the largest ``n`` and ``m`` the engine must serve (1..64, 1..1024); the
        kernel tile is their next power of two. With ``static_shape`` they are its n and m.
    half: float16 inputs and output (the kernel still computes in float32).
    static_shape: fix ``(B, n, m)``; ``None`` keeps them dynamic.
    """
    if static_shape is not None:
        max_n, max_m = static_shape[1], static_shape[2]
    if not 1 <= max_n <= 64 or not 1 <= max_m <= 1024:
        raise ValueError(f"max_n must be in 1..64 and max_m in 1..1024, got {max_n}, {max_m}")
    if n_grad < 1 or n_proj < 1 or not lr > 0:
        raise ValueError(f"n_grad, n_proj must be >= 1 and lr > 0, got {n_grad}, {n_proj}, {lr}")
    elem = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    dims = list(static_shape) if static_shape is not None else ["B", "n", "m"]
    io = [helper.make_tensor_value_info(name, elem, dims) for name in ("cost", "x_init")]
    out = helper.make_tensor_value_info("assignment", elem, dims)
    node = helper.make_node(
        PLUGIN_OP,
        ["cost", "x_init"],
        ["assignment"],
        name="dmm_match",
        domain=PLUGIN_DOMAIN,
        n_grad=int(n_grad),
        n_proj=int(n_proj),
        lr=float(lr),
        block_n=_next_pow2(max_n),
        block_m=_next_pow2(max_m),
        plugin_namespace=PLUGIN_DOMAIN,
        plugin_version="1",
        aot=1,
    )
    graph = helper.make_graph([node], "dmm_matcher_plugin", io, [out])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(PLUGIN_DOMAIN, 1)],
        producer_name="dmm_deploy",
    )
    model.doc_string = (
        f"DMM matcher as the TensorRT plugin {PLUGIN_ID} (AOT Triton kernel): n_grad={n_grad} "
        f"n_proj={n_proj} lr={lr}; serves n <= {_next_pow2(max_n)}, m <= {_next_pow2(max_m)}"
    )
    onnx.checker.check_model(model)
    return model


def _plugin_attrs(model: onnx.ModelProto) -> dict:
    for node in model.graph.node:
        if node.op_type == PLUGIN_OP and node.domain == PLUGIN_DOMAIN:
            return {a.name: helper.get_attribute_value(a) for a in node.attribute}
    raise ValueError(f"the graph has no {PLUGIN_ID} node")


def check_plugin_profile(onnx_path: str | Path, profile) -> None:
    """``ValueError`` if ``profile.max`` has an n or m beyond the plugin node's tile."""
    attrs = _plugin_attrs(onnx.load(str(onnx_path)))
    _, n, m = profile.max
    if n > attrs["block_n"] or m > attrs["block_m"]:
        raise ValueError(
            f"the profile allows n={n}, m={m} but the plugin kernel was exported for n <= "
            f"{attrs['block_n']}, m <= {attrs['block_m']}: export with a larger --static or "
            "lower --max"
        )


def plugin_io_dtype(model: onnx.ModelProto) -> str:
    """``"fp16"`` or ``"fp32"``: the plugin graph's I/O element type."""
    elem = model.graph.input[0].type.tensor_type.elem_type
    return "fp16" if elem == TensorProto.FLOAT16 else "fp32"


# -- the kernel, compiled once per configuration --------------------------------------------


@functools.lru_cache(maxsize=16)
def plugin_kernel(arch: int, block_n: int, block_m: int, lr: float, dtype: str):
    """The AOT kernel (:class:`~dmm_deploy.export._plugin_kernel.PluginKernel`) for one tile,
    ``lr``, I/O dtype and ``sm_<arch>``, with :func:`launch_config`'s packing and warps."""
    from dmm_deploy.export._plugin_kernel import compile_plugin_ptx

    problems, warps = launch_config(block_n, block_m)
    return compile_plugin_ptx(
        arch, block_n, block_m, lr, dtype=dtype, problems=problems, num_warps=warps
    )


def plugin_cache_fields(onnx_path: str | Path, arch: int) -> dict:
    """What of the plugin keys an engine cache entry: the kernel sources' digest, the Triton
    version and the digest of the PTX compiled for ``sm_<arch>`` from this graph's node."""
    import triton

    from dmm_deploy.export._plugin_kernel import kernel_source_digest

    model = onnx.load(str(onnx_path))
    attrs = _plugin_attrs(model)
    kernel = plugin_kernel(
        arch, attrs["block_n"], attrs["block_m"], float(attrs["lr"]), plugin_io_dtype(model)
    )
    return {
        "kernel_source": kernel_source_digest(),
        "triton": triton.__version__,
        "ptx": kernel.digest,
    }


def tensorrt_cuda_major(default: int = 12) -> int:
    """The CUDA major version of the installed TensorRT wheel (``tensorrt-cu11/12/13``), or
    ``default`` where the package metadata does not say (JetPack, containers: CUDA 12)."""
    from importlib import metadata

    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower().replace("_", "-")
        for major in (11, 12, 13):
            if name.startswith(f"tensorrt-cu{major}"):
                return major
    return default


def _cuda_arch() -> int:
    """The current CUDA device's ``10 * major + minor`` (through torch)."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


# -- registration with TensorRT (needs TensorRT >= 10.9 and, for the build, a GPU) ----------


def register_plugin(arch: int | None = None, arch_fn: Callable[[], int] | None = None) -> None:
    """Register ``dmm_deploy::dmm_match`` (descriptor, type combinations, AOT kernel).

    arch: the ``sm_XY`` the kernel is compiled for; default: the build GPU's, read when
        TensorRT asks for the kernel (``arch_fn``, default through torch).
    Idempotent. Raises ``ImportError`` without TensorRT and ``ValueError`` (one line naming
    both versions) for a TensorRT/Triton pair the AOT plugin does not support.
    """
    global _registered
    if _registered:
        return
    import triton

    from dmm_deploy.export._plugin_kernel import check_supported_pair

    trt = import_tensorrt()
    check_supported_pair(trt.__version__, triton.__version__, tensorrt_cuda_major())
    import tensorrt.plugin as trtp

    get_arch = (lambda: arch) if arch is not None else (arch_fn or _cuda_arch)

    @trtp.register(PLUGIN_ID)
    def _desc(
        cost: trtp.TensorDesc,
        x_init: trtp.TensorDesc,
        n_grad: int,
        n_proj: int,
        lr: float,
        block_n: int,
        block_m: int,
    ) -> trtp.TensorDesc:
        return cost.like()

    @trtp.autotune(PLUGIN_ID)
    def _autotune(
        cost: trtp.TensorDesc, x_init: trtp.TensorDesc, outputs: tuple[trtp.TensorDesc]
    ) -> list[trtp.AutoTuneCombination]:
        # cost, x_init and the output share one type, float32 or float16; linear layout
        return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, FP32|FP16", "LINEAR")]

    @trtp.aot_impl(PLUGIN_ID)
    def _aot(
        cost: trtp.TensorDesc,
        x_init: trtp.TensorDesc,
        n_grad: int,
        n_proj: int,
        lr: float,
        block_n: int,
        block_m: int,
        outputs: tuple[trtp.TensorDesc],
        tactic: int,
    ) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymExprs]:
        dtype = "fp32" if cost.dtype == trt.float32 else "fp16"
        kernel = plugin_kernel(get_arch(), block_n, block_m, float(lr), dtype)
        dims = cost.shape_expr  # (B, n, m), symbolic
        launch = trtp.KernelLaunchParams()
        launch.grid_x = trtp.cdiv(dims[0], kernel.problems)
        launch.block_x = 32 * kernel.num_warps
        launch.shared_mem = kernel.shared
        # TensorRT passes these between the input and the output pointers (the kernel's order)
        extra = trtp.SymIntExprs.from_tuple(
            [trtp.SymInt32(e) for e in (dims[0], dims[1], dims[2], n_grad, n_proj)]
        )
        return kernel.name, kernel.ptx, launch, extra

    _registered = True
