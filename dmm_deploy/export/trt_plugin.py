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
* :func:`register_plugin`: registers ``dmm_deploy::dmm_match`` with TensorRT (descriptor:
  the output is like ``cost``; AOT implementation: :mod:`dmm_deploy.export._plugin_kernel`
  compiled for the build GPU's architecture).

The kernel tile is fixed at build time by ``block_n``/``block_m`` (powers of two): an engine
is correct for ``n <= block_n`` and ``m <= block_m``, which :func:`check_plugin_profile`
checks against the optimization profile before a build. The kernel computes in float32 and
stores in the I/O type, so float16 I/O gives the ``mixed`` precision of the unrolled export.

Status: written against the documented ``tensorrt.plugin`` API; the PTX compilation and the
ONNX node are tested without a GPU, the TensorRT build and run are not executed here.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import TensorProto, helper

__all__ = [
    "MIN_TENSORRT",
    "PLUGIN_DOMAIN",
    "PLUGIN_ID",
    "PLUGIN_OP",
    "check_plugin_profile",
    "launch_config",
    "make_plugin_model",
    "register_plugin",
    "run_plugin_export",
]

PLUGIN_DOMAIN = "dmm_deploy"
PLUGIN_OP = "dmm_match"
PLUGIN_ID = f"{PLUGIN_DOMAIN}::{PLUGIN_OP}"
MIN_TENSORRT = (10, 9)
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


# -- registration with TensorRT (needs TensorRT >= 10.9 and, for the build, a GPU) ----------


def register_plugin() -> None:
    """Register ``dmm_deploy::dmm_match`` (descriptor, tactics, AOT kernel) with TensorRT.

    Idempotent. Raises ``ImportError`` without TensorRT (or one older than 10.9, which has no
    ``tensorrt.plugin`` AOT support).
    """
    global _registered
    if _registered:
        return
    from dmm_deploy.export.tensorrt import import_tensorrt, trt_version_tuple

    trt = import_tensorrt()
    if trt_version_tuple(trt.__version__) < MIN_TENSORRT:
        raise ImportError(
            f"the {PLUGIN_ID} plugin needs TensorRT >= {MIN_TENSORRT[0]}.{MIN_TENSORRT[1]} "
            f"(ahead-of-time quickly deployable plugins), found {trt.__version__}"
        )
    import tensorrt.plugin as trtp

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
    def _autotune(cost: trtp.TensorDesc, x_init: trtp.TensorDesc, outputs) -> list:
        # cost, x_init and the output share one type: float32 or float16
        return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, FP32|FP16")]

    @trtp.aot_impl(PLUGIN_ID)
    def _aot(
        cost: trtp.TensorDesc,
        x_init: trtp.TensorDesc,
        n_grad: int,
        n_proj: int,
        lr: float,
        block_n: int,
        block_m: int,
        outputs,
        tactic: int,
    ):
        import torch

        from dmm_deploy.export._plugin_kernel import compile_plugin_ptx

        major, minor = torch.cuda.get_device_capability()
        problems, warps = launch_config(block_n, block_m)
        dtype = "fp32" if cost.dtype == trt.float32 else "fp16"
        compiled = compile_plugin_ptx(
            10 * major + minor,
            block_n,
            block_m,
            lr,
            dtype=dtype,
            problems=problems,
            num_warps=warps,
        )
        dims = cost.shape_expr  # (B, n, m), symbolic
        launch = trtp.KernelLaunchParams()
        launch.grid_x = trtp.cdiv(dims[0], problems)
        launch.block_x = 32 * compiled.metadata.num_warps
        launch.shared_mem = compiled.metadata.shared
        extra = trtp.SymIntExprs.from_tuple(
            [trtp.SymInt32(e) for e in (dims[0], dims[1], dims[2], n_grad, n_proj)]
        )
        return (
            compiled.metadata.name.encode(),
            compiled.asm["ptx"].encode(),
            launch,
            extra,
        )

    _registered = True


# -- the export job's plugin path -----------------------------------------------------------


def run_plugin_export(options, out: str | Path, log=print, archs: tuple[int, ...] = (80, 87, 90)):
    """Export the plugin graph, check it, compile its kernel for ``archs``; return the exit code.

    ``options`` is the export's :class:`~dmm_deploy.export.onnx_export.ExportOptions`
    (``precision`` fp16 or mixed give float16 I/O). Compilation needs Triton, not a GPU.
    """
    from dmm_deploy.export.matcher_job import tensorrt_verdicts
    from dmm_deploy.export.onnx_export import export_matcher

    if not options.plugin:
        raise ValueError("run_plugin_export needs ExportOptions(plugin=True)")
    out = Path(out)
    model = export_matcher(out, options)
    attrs = _plugin_attrs(model)
    log(
        f"exported  {out}  ({os.path.getsize(out)} bytes, one {PLUGIN_ID} node, "
        f"{'float16' if options.precision != 'fp32' else 'float32'} I/O)"
    )
    log(
        f"plugin    n_grad={attrs['n_grad']} n_proj={attrs['n_proj']} lr={attrs['lr']:.6g}, "
        f"tile {attrs['block_n']}x{attrs['block_m']} (serves n <= {attrs['block_n']}, "
        f"m <= {attrs['block_m']}), aot={attrs['aot']}"
    )
    code = tensorrt_verdicts(model, log, tolerated=("10.3",))  # 10.3 has no AOT plugins
    from dmm_deploy.export._plugin_kernel import compile_plugin_ptx

    problems_pp, warps = launch_config(attrs["block_n"], attrs["block_m"])
    dtype = "fp16" if options.precision != "fp32" else "fp32"
    for arch in archs:
        compiled = compile_plugin_ptx(
            arch,
            attrs["block_n"],
            attrs["block_m"],
            attrs["lr"],
            dtype=dtype,
            problems=problems_pp,
            num_warps=warps,
        )
        ptx = compiled.asm["ptx"]
        log(
            f"ptx       sm_{arch}: {compiled.metadata.name}, {len(ptx) // 1024} KiB, "
            f"{problems_pp} problem(s) x {warps} warp(s) per program"
        )
    log("note      build with: dmm-deploy trt-build --plugin (TensorRT >= 10.9, GPU); not run here")
    log("result    OK" if code == 0 else "result    FAILED")
    return code
