"""The project's TensorRT engine builder core: ONNX file -> serialized plan (torch-free).

One builder serves both the matcher's engines (:func:`dmm_deploy.export.tensorrt.build_engine`,
``dmm-deploy trt-build``) and the runtime's stage engines
(:class:`dmm_deploy.runtime.backends.TrtStage`). It lives here, not in ``export/``, because the
runtime imports neither torch nor ``export/`` (which depends on the runtime's bundle format).

Written against TensorRT's documented Python API (``Builder``, ``OnnxParser``,
``IBuilderConfig``, optimization profiles, timing caches) for TensorRT 10.x and 11.x; the
caller imports TensorRT and passes the module in. The differences between 10 and 11 are in one
place, :func:`network_flags`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

__all__ = [
    "TensorRTBuildError",
    "build_plan",
    "format_parser_errors",
    "load_plugins",
    "network_flags",
    "trt_version_tuple",
]

Shapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
"""(min, opt, max) shapes of one network input."""


class TensorRTBuildError(RuntimeError):
    """The ONNX parser or the builder refused the graph; the message holds all its errors."""


def trt_version_tuple(version: str) -> tuple[int, int]:
    """``"10.3.0.26"`` -> ``(10, 3)``."""
    parts = str(version).split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise ValueError(f"cannot read a TensorRT version from {version!r}") from None


def network_flags(trt, weak_fp16: bool = False) -> tuple[int, list]:
    """Network creation flags and builder flags for this TensorRT.

    TensorRT 10.x: a strongly typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``:
    TensorRT computes in the graph's own types), or with ``weak_fp16`` a weakly typed one with
    ``BuilderFlag.FP16``. Explicit batch is implied in 10.x (its flag is deprecated, not used).
    TensorRT 11.x: every network is strongly typed and the precision flags are gone: flags 0.
    Returns ``(network_flags, builder_flags)``; raises ``ValueError`` for what the version lacks.
    """
    major, _ = trt_version_tuple(trt.__version__)
    if major < 10:
        raise ValueError(f"TensorRT >= 10 is needed, found {trt.__version__}")
    if major >= 11:
        if weak_fp16:
            raise ValueError(
                f"TensorRT {trt.__version__} builds strongly typed networks only (BuilderFlag.FP16 "
                "was removed): export with --precision fp16 or mixed instead of --weak-fp16"
            )
        return 0, []
    if weak_fp16:
        return 0, [trt.BuilderFlag.FP16]
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED), []


def _call(obj, name: str, default=None):
    fn = getattr(obj, name, None)
    if fn is None:
        return default
    try:
        return fn() if callable(fn) else fn
    except Exception:  # an accessor missing in this TensorRT build: leave the field out
        return default


def format_parser_errors(parser, onnx_path: str | Path = "") -> str:
    """Every error of an ``OnnxParser``, whole: description, node, operator, code, location.

    ``parser`` needs ``num_errors`` and ``get_error(i)``; each error's ``desc()``, ``code()``,
    ``node()``, ``node_name()``, ``node_operator()``, ``file()``, ``line()`` and ``func()`` are
    shown when present.
    """
    count = int(parser.num_errors)
    head = f"TensorRT's ONNX parser rejected {onnx_path or 'the graph'} ({count} error(s)):"
    lines = [head]
    for i in range(count):
        err = parser.get_error(i)
        desc = _call(err, "desc", "")
        where = []
        node = _call(err, "node")
        if node is not None and node != -1:
            where.append(f"node #{node}")
        name = _call(err, "node_name")
        if name:
            where.append(f"name {name!r}")
        op = _call(err, "node_operator")
        if op:
            where.append(f"op {op}")
        code = _call(err, "code")
        if code is not None:
            where.append(f"code {getattr(code, 'name', code)}")
        src = _call(err, "file")
        if src:
            where.append(f"at {src}:{_call(err, 'line', '?')} {_call(err, 'func', '')}".rstrip())
        lines.append(f"  [{i}] {desc}" + (f"  ({', '.join(where)})" if where else ""))
    if count == 0:
        lines.append("  (the parser reported failure without errors; see the TensorRT log above)")
    return "\n".join(lines)


def load_plugins(trt, logger=None) -> None:
    """Register TensorRT's standard plugins (``libnvinfer_plugin``: e.g. ``ROIAlign_TRT``, which
    the ONNX parser uses for ``RoiAlign``) in the plugin registry, before parsing a graph or
    deserializing an engine that needs them. Idempotent."""
    trt.init_libnvinfer_plugins(logger or trt.Logger(trt.Logger.WARNING), "")


def build_plan(
    trt,
    onnx_path: str | Path,
    profile: Callable[[str, tuple[int, ...]], Shapes],
    *,
    flags: tuple[int, list] | None = None,
    workspace_mib: int = 1024,
    optimization_level: int = 3,
    timing_cache: str | Path | None = None,
    tf32: bool | None = None,
) -> bytes:
    """Parse ``onnx_path`` with TensorRT's ONNX parser and build a serialized engine.

    profile: ``(input name, parsed shape with -1 for dynamic dims) -> (min, opt, max)`` for
        every input with a dynamic dimension (one optimization profile); static inputs get
        their one shape. It may raise :class:`TensorRTBuildError` for an input it cannot serve.
    flags: ``(network_flags, builder_flags)``; default :func:`network_flags` (strongly typed).
    timing_cache: a timing-cache file, read when present and written back after the build.
    tf32: ``False`` clears ``BuilderFlag.TF32`` (float32 convolutions and matrix products in
        full float32, as onnxruntime's CPU provider computes them; TensorRT's default lets
        Ampere and later GPUs, Orin included, use TF32 for them); ``None`` keeps the default.
    TensorRT's standard plugins are registered first (:func:`load_plugins`).
    Raises :class:`TensorRTBuildError` with every parser error when the graph is refused, or
    when the builder returns no engine.
    """
    onnx_path = Path(onnx_path)
    net_flags, builder_flags = flags if flags is not None else network_flags(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    load_plugins(trt, logger)
    builder = trt.Builder(logger)
    network = builder.create_network(net_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise TensorRTBuildError(format_parser_errors(parser, onnx_path))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    config.builder_optimization_level = optimization_level
    for flag in builder_flags:
        config.set_flag(flag)
    if tf32 is False:
        config.clear_flag(trt.BuilderFlag.TF32)
    opt_profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(int(d) for d in tensor.shape)
        if all(d > 0 for d in shape):  # a static input: its one shape
            opt_profile.set_shape(tensor.name, shape, shape, shape)
        else:
            lo, opt, hi = profile(tensor.name, shape)
            opt_profile.set_shape(tensor.name, tuple(lo), tuple(opt), tuple(hi))
    config.add_optimization_profile(opt_profile)
    tc_path = Path(timing_cache) if timing_cache else None
    tc_bytes = tc_path.read_bytes() if tc_path is not None and tc_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(tc_bytes), False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TensorRTBuildError(
            f"TensorRT could not build an engine from {onnx_path} (see its log)"
        )
    if tc_path is not None:  # atomically: builds sharing the cache never read half of one
        from dmm_deploy.data.davis import atomic_output

        with atomic_output(tc_path) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(plan)
