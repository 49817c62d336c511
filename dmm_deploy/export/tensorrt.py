"""TensorRT engines for the exported matcher: build (ONNX -> plan) and run.

Written against TensorRT's documented Python API (``tensorrt.Builder``, ``OnnxParser``,
``IBuilderConfig``, ``Runtime``, ``IExecutionContext.execute_async_v3``) for TensorRT 10.x and
11.x. TensorRT is imported inside the functions that need it; without it they raise an
``ImportError`` that says how to install it (``INSTALL_HINT``). Importing this module imports
neither TensorRT nor torch: the builder reads the GPU's name through torch when it is there and
through ``nvidia-smi`` otherwise; only :class:`EngineRunner` needs torch. The pure-Python parts (options, cache keys,
profile parsing, error formatting, the 10.x/11.x flag choice) work and are tested without it.

The differences between TensorRT 10 and 11 are handled in one place, :func:`network_setup`:
TensorRT 11 removed the weak-typing precision flags (``BuilderFlag.FP16`` ...) and builds
every network strongly typed, so precision is chosen at export time (``--precision``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from dmm_deploy.export.tensorrt_compat import INSTALL_HINT, import_tensorrt, trt_version_tuple
from dmm_deploy.runtime.trt_build import (
    TensorRTBuildError,
    build_plan,
    format_parser_errors,
    network_flags,
)

__all__ = [
    "INSTALL_HINT",
    "BuilderOptions",
    "EngineRunner",
    "ShapeProfile",
    "TensorRTBuildError",
    "build_engine",
    "engine_cache_path",
    "format_parser_errors",
    "import_tensorrt",
    "network_setup",
    "parse_shape",
    "static_profile",
    "trt_version_tuple",
]

# -- shapes and options ---------------------------------------------------------------------


def parse_shape(text: str, name: str = "shape") -> tuple[int, int, int]:
    """``"8x16x128"`` -> ``(8, 16, 128)``: batch, n, m, all positive."""
    try:
        dims = tuple(int(v) for v in str(text).lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"{name} must be BxNxM with three positive integers, got {text!r}")
    return dims  # type: ignore[return-value]


@dataclass(frozen=True)
class ShapeProfile:
    """Minimum, optimum and maximum ``(B, n, m)`` of one TensorRT optimization profile."""

    min: tuple[int, int, int] = (1, 1, 1)
    opt: tuple[int, int, int] = (8, 8, 128)
    max: tuple[int, int, int] = (64, 16, 512)

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            value = getattr(self, name)
            if (
                not isinstance(value, tuple)
                or len(value) != 3
                or not all(isinstance(v, int) and v >= 1 for v in value)
            ):
                raise ValueError(
                    f"profile {name} must be a (B, n, m) tuple of positive ints, got {value!r}"
                )
        for i, dim in enumerate("Bnm"):
            if not self.min[i] <= self.opt[i] <= self.max[i]:
                raise ValueError(
                    f"profile needs min <= opt <= max for {dim}, got "
                    f"{self.min[i]}, {self.opt[i]}, {self.max[i]}"
                )

    @classmethod
    def parse(cls, min_text: str, opt_text: str, max_text: str) -> ShapeProfile:
        """From three ``BxNxM`` strings (the command line's ``--min/--opt/--max``)."""
        return cls(
            parse_shape(min_text, "--min"),
            parse_shape(opt_text, "--opt"),
            parse_shape(max_text, "--max"),
        )


@dataclass(frozen=True)
class BuilderOptions:
    """Everything that decides what engine a build produces (and so keys the engine cache).

    profile: the optimization profile applied to every ``(B, n, m)`` input.
    workspace_mib: the builder's workspace memory pool limit.
    optimization_level: ``IBuilderConfig.builder_optimization_level`` (0..5, TensorRT's default 3).
    weak_fp16: TensorRT 10.x only: a weakly typed network with ``BuilderFlag.FP16``, which lets
        TensorRT choose fp16 kernels for an fp32 graph. Off by default: the network is strongly
        typed and computes in the types of the exported graph (``--precision`` at export).
        TensorRT 11 removed this flag; asking for it there is an error.
    plugin: register the ``dmm_deploy::dmm_match`` plugin before parsing (graphs exported with
        ``--plugin``).
    """

    profile: ShapeProfile = field(default_factory=ShapeProfile)
    workspace_mib: int = 1024
    optimization_level: int = 3
    weak_fp16: bool = False
    plugin: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.profile, ShapeProfile):
            raise TypeError(f"profile must be a ShapeProfile, got {type(self.profile).__name__}")
        if not isinstance(self.workspace_mib, int) or self.workspace_mib < 1:
            raise ValueError(f"workspace_mib must be a positive int, got {self.workspace_mib!r}")
        if not isinstance(self.optimization_level, int) or not 0 <= self.optimization_level <= 5:
            raise ValueError(
                f"optimization_level must be an int in 0..5, got {self.optimization_level!r}"
            )

    def cache_tag(
        self, onnx_digest: str, trt_version: str, gpu_name: str, extra: dict | None = None
    ) -> str:
        """A short stable key of these options, the ONNX file, the TensorRT version, the GPU
        and ``extra`` (for plugin builds: the kernel source digest, the Triton version and the
        PTX digest, :func:`~dmm_deploy.export.trt_plugin.plugin_cache_fields`)."""
        payload = json.dumps(
            {
                "options": asdict(self),
                "onnx": onnx_digest,
                "tensorrt": str(trt_version),
                "gpu": str(gpu_name),
                "extra": extra or {},
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def engine_cache_path(cache_dir: str | Path, onnx_path: str | Path, tag: str) -> Path:
    """Where the engine for ``onnx_path`` with cache ``tag`` lives in ``cache_dir``."""
    return Path(cache_dir) / f"{Path(onnx_path).stem}-{tag}.engine"


# -- the TensorRT 10 / 11 differences, in one place ------------------------------------------


def network_setup(trt, options: BuilderOptions) -> tuple[int, list]:
    """Network creation flags and builder flags for this TensorRT and these options
    (:func:`dmm_deploy.runtime.trt_build.network_flags` with ``options.weak_fp16``).

    TensorRT 10.x: strongly typed networks (the default here), or weakly typed with
    ``BuilderFlag.FP16`` (``weak_fp16``). TensorRT 11.x: every network is strongly typed and the
    precision flags are gone: flags 0. Returns ``(network_flags, builder_flags)``; raises
    ``ValueError`` for what the version lacks.
    """
    return network_flags(trt, options.weak_fp16)


# -- the GPU ---------------------------------------------------------------------------------


def _nvidia_smi(field: str, device: int) -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader", "-i", str(device)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        out = None
    if out is None or out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError("TensorRT engines need a CUDA GPU, and none is visible")
    return out.stdout.strip().splitlines()[0].strip()


def gpu_name(device: int = 0) -> str:
    """The CUDA device's name (through torch, else ``nvidia-smi``); ``RuntimeError`` without
    a GPU."""
    try:
        import torch
    except ImportError:
        return _nvidia_smi("name", device)
    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT engines need a CUDA GPU, and none is visible")
    return torch.cuda.get_device_name(device)


def gpu_arch(device: int = 0) -> int:
    """The CUDA device's ``10 * major + minor`` (through torch, else ``nvidia-smi``)."""
    try:
        import torch
    except ImportError:
        major, minor = _nvidia_smi("compute_cap", device).split(".")
        return 10 * int(major) + int(minor)
    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT engines need a CUDA GPU, and none is visible")
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def static_profile(onnx_path: str | Path) -> ShapeProfile | None:
    """The one-shape profile of a graph exported with ``--static BxNxM`` (every input of rank 3
    with the same fixed dims), or ``None`` when a dimension is dynamic or onnx is not installed
    (then the build gives each static input of the parsed network its one shape)."""
    try:
        import onnx
    except ImportError:
        return None

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # not readable as ONNX here: TensorRT's parser will say what is wrong
        return None
    inits = {t.name for t in model.graph.initializer}
    shapes = set()
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != 3 or not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            return None
        shapes.add(tuple(int(d.dim_value) for d in dims))
    if len(shapes) != 1:
        return None
    (shape,) = shapes
    return ShapeProfile(shape, shape, shape)


def _profile_for(onnx_path: Path, profile: ShapeProfile) -> ShapeProfile:
    """``profile`` for a dynamic graph; for a static one its exact shape (a profile given
    other than the default and that shape is an error)."""
    exact = static_profile(onnx_path)
    if exact is None or profile == exact:
        return profile
    if profile != ShapeProfile():
        raise ValueError(
            f"{onnx_path} was exported with the static shape {'x'.join(map(str, exact.min))}; "
            f"the profile min/opt/max {profile.min}/{profile.opt}/{profile.max} cannot apply "
            "(leave --min/--opt/--max at their defaults)"
        )
    return exact


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path | None = None,
    options: BuilderOptions | None = None,
    *,
    cache_dir: str | Path | None = None,
    timing_cache: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Build a serialized TensorRT engine from ``onnx_path``; return the engine's path.

    engine_path: where to write the plan (default: the ONNX path with ``.engine``).
    options: :class:`BuilderOptions` (default profile 1x1x1 / 8x8x128 / 64x16x512).
    cache_dir: an engine cache: a build whose key (options, ONNX bytes, TensorRT version, GPU
        name and, for plugin builds, kernel sources, Triton version and PTX:
        :meth:`BuilderOptions.cache_tag`) is there is copied instead of rebuilt.
    A graph exported with ``--static BxNxM`` gets a profile of exactly that shape.
    timing_cache: a timing-cache file, read when present and written back after the build.
    The engine (and the cache's copy) is written atomically: to a temporary file beside it,
    then renamed; an existing ``engine_path`` is replaced (``dmm-deploy trt-build`` refuses one
    without ``--overwrite``). ``engine_path`` or ``timing_cache`` being the ONNX file is a
    ``ValueError``.
    Raises :class:`TensorRTBuildError` with every parser error when the graph is refused,
    ``ImportError`` without TensorRT, ``RuntimeError`` without a GPU.
    """
    from dmm_deploy.data.davis import atomic_output

    options = options or BuilderOptions()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no ONNX file at {onnx_path}")
    engine_path = Path(engine_path) if engine_path else onnx_path.with_suffix(".engine")
    for name, path in (("engine path", engine_path), ("timing cache", timing_cache)):
        if path is not None and Path(path).resolve() == onnx_path.resolve():
            raise ValueError(f"the {name} {path} is the ONNX file; choose another file")
    profile = _profile_for(onnx_path, options.profile)
    if profile != options.profile:
        options = replace(options, profile=profile)
        log(f"profile   static graph: min = opt = max = {'x'.join(map(str, profile.min))}")
    if options.plugin:
        from dmm_deploy.export.trt_plugin import check_plugin_profile

        check_plugin_profile(onnx_path, options.profile)
    trt = import_tensorrt()
    net_flags, builder_flags = network_setup(trt, options)
    gpu = gpu_name()
    extra = None
    if options.plugin:
        from dmm_deploy.export.trt_plugin import plugin_cache_fields

        extra = plugin_cache_fields(onnx_path, gpu_arch())
    tag = options.cache_tag(file_digest(onnx_path), trt.__version__, gpu, extra)
    cached = engine_cache_path(cache_dir, onnx_path, tag) if cache_dir else None
    if cached is not None and cached.is_file():
        if cached.resolve() != engine_path.resolve():
            with atomic_output(engine_path) as tmp:
                shutil.copyfile(cached, tmp)
        log(f"engine    cache hit {cached} -> {engine_path}")
        return engine_path

    if options.plugin:
        from dmm_deploy.export.trt_plugin import register_plugin

        register_plugin(arch_fn=gpu_arch)

    def shapes(name: str, shape: tuple[int, ...]):
        if len(shape) != 3:
            raise TensorRTBuildError(
                f"input {name!r} has shape {shape}; the profile is for (B, n, m)"
            )
        p = options.profile
        return p.min, p.opt, p.max

    t0 = time.perf_counter()
    plan = build_plan(
        trt,
        onnx_path,
        shapes,
        flags=(net_flags, builder_flags),
        workspace_mib=options.workspace_mib,
        optimization_level=options.optimization_level,
        timing_cache=timing_cache,
    )
    log(
        f"engine    built in {time.perf_counter() - t0:.1f} s with TensorRT {trt.__version__} on {gpu}"
    )
    with atomic_output(engine_path) as tmp:
        tmp.write_bytes(plan)
    if cached is not None:
        with atomic_output(cached) as tmp:
            tmp.write_bytes(plan)
    return engine_path


# -- run -----------------------------------------------------------------------------------


class EngineRunner:
    """Run a serialized TensorRT engine on torch CUDA tensors or numpy arrays.

    engine: the path of a plan file, or its bytes.
    device: CUDA device index (default: the current device).
    plugin: register the ``dmm_deploy::dmm_match`` plugin first (engines of ``--plugin``
        exports built with a Python-only plugin implementation).

    ``runner(cost=..., x_init=...)`` (or ``runner.run({...})``) sets the input shapes and runs
    on the runner's own non-default CUDA stream (``runner.stream``, on ``runner.device``; the
    legacy default stream would make TensorRT warn and synchronize). The stream waits for the
    caller's current stream first (so inputs made there are ready) and the caller's current
    stream waits for it after (so outputs are safe to use there without a synchronization).
    Returns ``{output name: value}``: torch CUDA tensors on ``runner.device`` when the inputs
    were torch tensors, numpy arrays after a synchronization when they were numpy. Inputs are
    cast to the engine's input types (float16 engines take float32 arrays too).
    """

    def __init__(self, engine: str | Path | bytes, device: int | None = None, plugin: bool = False):
        import torch

        if isinstance(engine, (str, Path)):
            path = Path(engine)
            if not path.is_file():
                raise FileNotFoundError(f"no engine file at {path}")
            engine = path.read_bytes()
        if not isinstance(engine, (bytes, bytearray)):
            raise TypeError(f"engine must be a path or bytes, got {type(engine).__name__}")
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise RuntimeError("EngineRunner needs a CUDA GPU, and none is visible")
        if plugin:
            from dmm_deploy.export.trt_plugin import register_plugin

            register_plugin()
        self._torch = torch
        self.device = torch.device(
            "cuda", torch.cuda.current_device() if device is None else device
        )
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(bytes(engine))
            if self.engine is None:
                raise RuntimeError("TensorRT could not deserialize the engine (see its log)")
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(device=self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes = {
            n: torch.from_numpy(
                np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(n)))
            ).dtype
            for n in names
        }

    def _to_device(self, value, name: str):
        """``value`` as a contiguous tensor of the engine's type for ``name`` on the device."""
        return value.to(device=self.device, dtype=self.dtypes[name]).contiguous()

    def _empty(self, shape: tuple, name: str):
        """An uninitialized output tensor for ``name`` on the device."""
        return self._torch.empty(shape, dtype=self.dtypes[name], device=self.device)

    def run(self, feeds: dict | None = None, **inputs) -> dict:
        """Run once; ``feeds`` and keyword inputs name every engine input (see the class)."""
        torch = self._torch
        feeds = {**(feeds or {}), **inputs}
        missing = set(self.input_names) - set(feeds)
        extra = set(feeds) - set(self.input_names)
        if missing or extra:
            raise ValueError(
                f"inputs must be exactly {self.input_names}; missing {sorted(missing)}, "
                f"unexpected {sorted(extra)}"
            )
        as_numpy = not all(isinstance(v, torch.Tensor) for v in feeds.values())
        with torch.cuda.device(self.device):
            caller = torch.cuda.current_stream(self.device)
            keep = []
            for name in self.input_names:
                value = feeds[name]
                if isinstance(value, np.ndarray):
                    value = torch.from_numpy(np.ascontiguousarray(value))
                elif not isinstance(value, torch.Tensor):
                    raise TypeError(f"input {name!r} must be a numpy array or torch tensor")
                value = self._to_device(value, name)
                keep.append(value)
                if not self.context.set_input_shape(name, tuple(value.shape)):
                    raise ValueError(
                        f"input {name!r} shape {tuple(value.shape)} is outside the engine's profile"
                    )
                self.context.set_tensor_address(name, value.data_ptr())
            outputs = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise RuntimeError(
                        f"output {name!r} shape {shape} is not determined by the inputs"
                    )
                out = self._empty(shape, name)
                self.context.set_tensor_address(name, out.data_ptr())
                outputs[name] = out
            self.stream.wait_stream(caller)  # inputs and outputs were made on the caller's
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed (see its log)")
            for v in (*keep, *outputs.values()):  # used on our stream: keep until it is done
                v.record_stream(self.stream)
            caller.wait_stream(self.stream)
            if as_numpy:
                self.stream.synchronize()
                return {k: v.cpu().numpy() for k, v in outputs.items()}
        return outputs

    __call__ = run
