"""Backends that run one stage graph: numpy arrays in, numpy arrays out.

* :class:`OrtStage`: an onnxruntime session. ``device="cpu"``: the CPU provider.
  ``device="cuda"``: the CUDA provider, or with ``trt_ep=True`` the TensorRT provider
  (engine and timing caches beside the bundle, shape profiles from :data:`AXIS_RANGES`)
  before CUDA. A requested GPU provider that onnxruntime does not have (or that did not load)
  is an error, never a silent fall back to the CPU.
* :class:`TrtStage` (``backend="tensorrt"``): a TensorRT engine built from the stage graph with
  the project's builder (:mod:`dmm_deploy.runtime.trt_build`, also behind ``trt-build``) and
  run by polygraphy's runner (device memory handled by polygraphy's CUDA wrapper; no torch),
  cached in ``<bundle>/engines/`` keyed on the graph's SHA-256, the TensorRT version, the GPU
  and the profile ranges. TensorRT and polygraphy are imported only here.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import platform
import threading
import uuid
from pathlib import Path

import numpy as np

from dmm_deploy.runtime.bundle import Bundle, BundleError, StageSpec, sha256_file
from dmm_deploy.runtime.proposals import MASKRCNN_SPLIT_IO

__all__ = [
    "AXIS_RANGES",
    "BACKENDS",
    "DEVICES",
    "OrtStage",
    "TrtStage",
    "axis_ranges",
    "open_stage",
    "optimized_graph_path",
    "ort_providers",
    "register_shared_cpu_arena",
    "set_lean_heap",
]

BACKENDS = ("onnxruntime", "tensorrt")
DEVICES = ("cpu", "cuda")

AXIS_RANGES: dict[str, tuple[int, int, int]] = {
    "B": (1, 1, 8),  # frames (streams) per call
    "N": (1, 64, 512),  # boxes per embed call
    "O": (1, 4, 32),  # objects per stream
    "M": (1, 51, 160),  # proposal columns after padding
    "D": (1, 100, 100),  # Mask R-CNN detections
}
"""(min, opt, max) of each named dynamic axis, for TensorRT optimization profiles."""

FPN_STRIDES = (4, 8, 16, 32)  # the split Mask R-CNN's feature0..3


def axis_ranges(proposals: dict | None = None) -> dict[str, tuple[int, int, int]]:
    """:data:`AXIS_RANGES` plus, for a split Mask R-CNN bundle (manifest ``proposals``), the
    detector's image axes ``Hp``/``Wp`` (multiples of ``size_divisible`` up to the padded
    ``max_size``; opt: a 16:9 frame resized to ``min_size``) and its feature axes
    ``h0..h3``/``w0..w3`` (``Hp``/``Wp`` over the FPN strides 4..32)."""
    ranges = dict(AXIS_RANGES)
    if not proposals or proposals.get("layout") != "split":
        return ranges
    d = int(proposals["size_divisible"])
    lo, hi = int(proposals["min_size"]), int(proposals["max_size"])

    def up(v: float) -> int:
        return -(-int(v) // d) * d

    top = up(hi)
    for axis, opt in (("Hp", up(lo)), ("Wp", up(min(hi, lo * 16 / 9)))):
        ranges[axis] = (d, opt, top)
        for i, stride in enumerate(FPN_STRIDES):
            name = f"{axis[0].lower()}{i}"
            ranges[name] = tuple(v // stride for v in ranges[axis])
    return ranges


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError(
            "onnxruntime is needed to run a bundle: pip install 'dmm-deploy[runtime]' "
            "(onnxruntime-gpu for CUDA; on a Jetson the wheel for your JetPack)"
        ) from e
    return ort


def _profile_shapes(
    spec: StageSpec,
    which: int,
    fixed: dict[str, int] | None = None,
    ranges: dict[str, tuple[int, int, int]] | None = None,
) -> dict:
    """Concrete shapes of a stage's inputs at profile point ``which`` (0 min, 1 opt, 2 max),
    from ``ranges`` (default :data:`AXIS_RANGES`)."""
    ranges = AXIS_RANGES if ranges is None else ranges
    out = {}
    for t in spec.inputs:
        dims = []
        for d in t.shape:
            if isinstance(d, int):
                dims.append(d)
            else:
                dims.append((fixed or {}).get(d, ranges.get(d, (1, 1, 64))[which]))
        out[t.name] = tuple(dims)
    return out


def ort_providers(
    device: str,
    trt_ep: bool = False,
    spec: StageSpec | None = None,
    cache_dir: Path | None = None,
    ranges: dict[str, tuple[int, int, int]] | None = None,
) -> list:
    """The ordered onnxruntime provider list (with options) for ``device``; raises
    ``RuntimeError`` in one line when onnxruntime lacks a requested GPU provider. ``ranges``:
    the dynamic axes' profile ranges for the TensorRT provider (:func:`axis_ranges`)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        if trt_ep:
            raise ValueError("the TensorRT execution provider needs device='cuda'")
        return ["CPUExecutionProvider"]
    ort = _import_ort()
    available = ort.get_available_providers()
    wanted = "TensorrtExecutionProvider" if trt_ep else "CUDAExecutionProvider"
    if wanted not in available:
        raise RuntimeError(
            f"device='cuda' needs onnxruntime's {wanted}, but this onnxruntime has only "
            f"{', '.join(available)} (install onnxruntime-gpu, or the Jetson wheel of your JetPack)"
        )
    providers: list = []
    if trt_ep:
        opts = {"trt_engine_cache_enable": True, "trt_timing_cache_enable": True}
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            opts["trt_engine_cache_path"] = str(cache_dir)
            opts["trt_timing_cache_path"] = str(cache_dir)
        if spec is not None:
            dynamic = [t for t in spec.inputs if any(isinstance(d, str) for d in t.shape)]
            if dynamic:
                for key, which in (("min", 0), ("opt", 1), ("max", 2)):
                    shapes = _profile_shapes(spec, which, ranges=ranges)
                    opts[f"trt_profile_{key}_shapes"] = ",".join(
                        f"{t.name}:{'x'.join(str(d) for d in shapes[t.name])}" for t in dynamic
                    )
        providers.append(("TensorrtExecutionProvider", opts))
    providers.append(("CUDAExecutionProvider", {"device_id": 0}))
    providers.append("CPUExecutionProvider")  # only for nodes the GPU providers do not take
    return providers


class OrtStage:
    """One stage graph in an onnxruntime session (see the module docstring).

    ``run(feeds)`` casts each input to the graph's dtype and returns ``{output name: array}``.

    On the CPU provider with ``optimized_cache=True`` (and a ``cache_dir``) the session loads
    the graph as onnxruntime optimized it on an earlier open (:func:`optimized_graph_path`),
    saving it there on the first open: optimizing the graph (the NCHWc layout transform
    reorders every convolution weight) holds several copies of the weights at once, and the
    heap they leave behind is not given back to the system, so an open without the cache
    peaks at about 2.5x the graph's weights and keeps about 2x resident; from the cache it
    holds them once (measured with the ResNet-50 encoder: 366 -> 185 MiB peak, see
    ``bench/results/cpu/runtime.md``). Same graph, same kernels: outputs are bit-identical.
    A cache folder that cannot be written is skipped (the session is then built as without it).

    ``lean_heap=True`` calls :func:`set_lean_heap` (process-wide, glibc only) before the
    session is built. ``shared_arena=True`` (CPU provider) takes the activations from the one
    process-wide onnxruntime arena of :func:`register_shared_cpu_arena` instead of fresh
    memory on every call; ``release_arena=True`` gives that arena's free memory back to the
    system at the end of each call of this stage.
    """

    def __init__(
        self,
        path: Path,
        spec: StageSpec,
        device: str = "cpu",
        *,
        threads: int | None = None,
        trt_ep: bool = False,
        cache_dir: Path | None = None,
        optimized_cache: bool = True,
        lean_heap: bool = True,
        shared_arena: bool = True,
        release_arena: bool = False,
        ranges: dict[str, tuple[int, int, int]] | None = None,
    ) -> None:
        for name, value in (
            ("optimized_cache", optimized_cache),
            ("lean_heap", lean_heap),
            ("shared_arena", shared_arena),
            ("release_arena", release_arena),
        ):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        if lean_heap:
            set_lean_heap()
        ort = _import_ort()
        providers = ort_providers(device, trt_ep, spec, cache_dir, ranges)
        so = ort.SessionOptions()
        if threads is not None:
            so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        # no spin-waiting between calls: the runtime alternates between numpy and the graphs,
        # and spinning threads take the cores from the numpy work (and from other processes)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # One CPU arena for every stage session of the process (shared_arena), or none. A
        # session's own arena keeps its peak for good (the stages' peaks add up); without an
        # arena every activation is fresh memory from the system, and its page faults cost
        # more than the kernels on the large tensors (the match graph's 23 MB mask planes).
        so.enable_cpu_mem_arena = False
        self.run_options = None
        if shared_arena and device == "cpu":
            register_shared_cpu_arena()
            so.enable_cpu_mem_arena = True
            so.add_session_config_entry("session.use_env_allocators", "1")
            if release_arena:
                self.run_options = ort.RunOptions()
                self.run_options.add_run_config_entry(
                    "memory.enable_memory_arena_shrinkage", "cpu:0"
                )
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.optimized_path: Path | None = None
        session = None
        if device == "cpu" and optimized_cache and cache_dir is not None:
            self.optimized_path = optimized_graph_path(path, spec, cache_dir)
            if _sealed(self.optimized_path):
                session = _try_session(ort, self.optimized_path, so, providers)
            if session is None:
                session = _optimize_into(ort, path, so, providers, self.optimized_path)
        if session is None:
            session = ort.InferenceSession(str(path), so, providers=providers)
        self.session = session
        if device == "cuda":
            got = self.session.get_providers()
            wanted = providers[0][0]
            if wanted not in got:
                raise RuntimeError(
                    f"onnxruntime did not enable {wanted} for stage {spec.name!r} (it has "
                    f"{', '.join(got)}); check the CUDA/cuDNN/TensorRT libraries"
                )
        _check_graph_inputs(self.session, spec, path)
        self.spec = spec
        self.dtypes = {t.name: np.dtype(t.dtype) for t in spec.inputs}
        self.output_names = [t.name for t in spec.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cast = {k: np.ascontiguousarray(v, dtype=self.dtypes[k]) for k, v in feeds.items()}
        outs = self.session.run(self.output_names, cast, self.run_options)
        return dict(zip(self.output_names, outs, strict=True))


_SHARED_ARENA: list[bool] = []
_SHARED_ARENA_LOCK = threading.Lock()


def _check_graph_inputs(session, spec: StageSpec, path: Path) -> None:
    """The graph's inputs against the manifest's entry for it: the same names, and every axis
    the manifest fixes equal to the graph's where the graph fixes it too (a manifest edited to
    describe another graph fails here in one line instead of at the first frame)."""
    graph = {i.name: i.shape for i in session.get_inputs()}
    names = [t.name for t in spec.inputs]
    if sorted(graph) != sorted(names):
        raise BundleError(
            f"bundle: stage {spec.name!r} graph {path.name} has inputs {sorted(graph)}, "
            f"the manifest lists {sorted(names)}"
        )
    for t in spec.inputs:
        shape = graph[t.name]
        fixed = [
            (a, b)
            for a, b in zip(t.shape, shape, strict=False)
            if isinstance(a, int) and isinstance(b, int)
        ]
        if len(shape) != len(t.shape) or any(a != b for a, b in fixed):
            raise BundleError(
                f"bundle: stage {spec.name!r} input {t.name!r} has shape {list(shape)} in "
                f"{path.name}, the manifest says {list(t.shape)}"
            )


def register_shared_cpu_arena() -> None:
    """Register one onnxruntime CPU arena for the whole process (once; later calls do nothing);
    sessions built with ``session.use_env_allocators=1`` take their memory from it.

    The stages run one after another, so one arena sized to the largest stage's working set
    serves them all; a session's own arena would keep each stage's peak, and no arena makes
    every activation fresh memory whose first touch page-faults. Measured on the bike sample
    (ResNet-50 at 255x448, 1 thread, 2-core AMD EPYC): no arena 336 ms a frame and 384 MiB
    peak RSS, an arena per session 315 ms and 485 MiB, the shared arena 293 ms and 412 MiB (the
    match stage alone 23 -> 10 ms). Growth in powers of two (onnxruntime's default).
    """
    ort = _import_ort()
    with _SHARED_ARENA_LOCK:
        if _SHARED_ARENA:
            return
        info = ort.OrtMemoryInfo(
            "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        )
        ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 0}))
        _SHARED_ARENA.append(True)


LEAN_HEAP_THRESHOLD = 1 << 20
"""Allocations of this many bytes or more get their own memory mapping under :func:`set_lean_heap`."""

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def set_lean_heap(threshold: int = LEAN_HEAP_THRESHOLD) -> bool:
    """Serve every heap allocation of ``threshold`` bytes or more from its own memory mapping,
    given back to the system when it is freed (glibc's ``M_MMAP_THRESHOLD``, fixed); process-wide.

    By default glibc raises that threshold to the size of each large block freed (up to 32 MiB),
    so the runtime's per-frame arrays and onnxruntime's activations (1-30 MB each, arena off)
    come from the heap, where freed blocks stay resident and fragment: measured on the bike
    sample with ResNet-50 at 255x448, the process's resident set crept from 307 to 455 MiB over
    5 frames and peaked at 553 MiB over 10; with the fixed 1 MiB threshold it stays at ~280 MiB
    and peaks at 375 MiB. Returns False (and changes nothing) where the C library is not glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, int(threshold)))


@functools.lru_cache(maxsize=1)
def _cpu_tag() -> str:
    """The CPU as onnxruntime's layout transforms see it: architecture, model and ISA flags."""
    lines = [platform.machine(), platform.processor()]
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "\n".join(lines)
    seen: set[str] = set()
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip()
        if key in ("model name", "flags", "Features", "CPU part") and key not in seen:
            seen.add(key)
            lines.append(line)
    return "\n".join(lines)


def optimized_graph_path(path: Path, spec: StageSpec, cache_dir: Path) -> Path:
    """Where the CPU-optimized form of stage graph ``path`` is cached: keyed on the graph (its
    manifest SHA-256, size and modification time), the onnxruntime version and the CPU (the
    optimized graph holds weights laid out for this CPU's vector width, so it is not portable)."""
    ort = _import_ort()
    st = path.stat()
    key = json.dumps(
        [spec.sha256, st.st_size, st.st_mtime_ns, ort.__version__, _cpu_tag(), "ORT_ENABLE_ALL"]
    )
    tag = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"{spec.name}-ort-cpu-{tag}.onnx"


DIGEST_SUFFIX = ".sha256"
"""A cached graph or engine ``X`` in ``<bundle>/engines/`` is used only beside ``X.sha256``
holding its SHA-256 (written with it): the stage files are checked against the manifest on
every open, and the caches built from them are checked against their own digests."""


def _seal(path: Path, target: Path) -> None:
    """Write ``target``'s digest file for the content of ``path`` (the file about to become
    ``target``), atomically."""
    digest = target.with_name(target.name + DIGEST_SUFFIX)
    tmp = digest.with_name(f"{digest.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(sha256_file(path) + "\n")
        os.replace(tmp, digest)
    finally:
        tmp.unlink(missing_ok=True)


def _sealed(path: Path) -> bool:
    """Whether ``path`` exists with a digest file that matches its content (a cache file that
    was damaged or edited since it was written is not used, but rebuilt)."""
    digest = path.with_name(path.name + DIGEST_SUFFIX)
    try:
        return path.is_file() and digest.read_text().strip() == sha256_file(path)
    except (OSError, UnicodeDecodeError):
        return False


def _try_session(ort, path: Path, so, providers):
    """A session over the cached optimized graph, or None when it cannot be loaded."""
    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception:  # a damaged cache file: rebuilt by the caller
        return None


def _optimize_into(ort, path: Path, so, providers, target: Path):
    """A session over ``path`` that also writes its optimized graph to ``target`` (atomically);
    None when the cache folder cannot be written."""
    tmp = target.with_name(f"{target.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp.onnx")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.touch()
    except OSError:
        return None
    so.optimized_model_filepath = str(tmp)
    try:
        session = ort.InferenceSession(str(path), so, providers=providers)
        try:
            _seal(tmp, target)
            os.replace(tmp, target)
        except OSError:  # a folder that took the file but not its digest: no cache
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return session


def _gpu_name() -> str:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return "gpu"
    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        raise RuntimeError("backend='tensorrt' needs a CUDA GPU, and none is visible")
    return props.name.decode(errors="replace").strip("\x00")


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ImportError(
            "backend='tensorrt' needs TensorRT and polygraphy: pip install 'dmm-deploy[trt]' "
            "(on a Jetson: JetPack's python3-libnvinfer and pip install polygraphy)"
        ) from e
    return trt


def build_stage_engine(
    trt,
    path: Path,
    spec: StageSpec,
    cache_dir: Path,
    ranges: dict[str, tuple[int, int, int]] | None,
    gpu: str,
) -> Path:
    """The engine of stage graph ``path`` in ``cache_dir``, built with the project's builder
    (:func:`dmm_deploy.runtime.trt_build.build_plan`) when it is not there yet. Keyed on the
    graph's SHA-256, the TensorRT version, the GPU and the profile ``ranges``
    (:func:`axis_ranges`); the timing cache ``cache_dir/timing.cache`` is shared by the stages.
    float32 stages are built without TF32."""
    from dmm_deploy.runtime.trt_build import build_plan

    ranges = AXIS_RANGES if ranges is None else ranges
    key = json.dumps([spec.sha256, trt.__version__, gpu, ranges], sort_keys=True)
    tag = hashlib.sha256(key.encode()).hexdigest()[:16]
    engine_path = cache_dir / f"{spec.name}-{tag}.engine"
    if _sealed(engine_path):
        return engine_path
    points = [_profile_shapes(spec, i, ranges=ranges) for i in range(3)]

    def profile(name: str, shape: tuple[int, ...]):
        return tuple(p[name] for p in points)

    # float32 stages stay float32 on the GPU too (no TF32): the precision the bundle was
    # exported and parity-checked at; mixed / fp16 bundles are the fast choice
    tf32 = None if spec.precision != "fp32" else False
    plan = build_plan(trt, path, profile, timing_cache=cache_dir / "timing.cache", tf32=tf32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(f"{engine_path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(plan)
        _seal(tmp, engine_path)
        os.replace(tmp, engine_path)
    finally:
        tmp.unlink(missing_ok=True)
    return engine_path


class TrtStage:
    """One stage as a TensorRT engine run by polygraphy's ``TrtRunner`` (see module docstring).

    The engine is built on first use by :func:`build_stage_engine` (the project's builder:
    strongly typed, so the graph's own precision; one optimization profile over the dynamic
    axes) and cached as ``<bundle>/engines/<stage>-<key>.engine``; engines are specific to the
    GPU and the TensorRT version, so build them on the device that runs them.
    """

    def __init__(
        self,
        path: Path,
        spec: StageSpec,
        cache_dir: Path,
        ranges: dict[str, tuple[int, int, int]] | None = None,
    ) -> None:
        trt = _import_trt()
        try:
            from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        except ImportError as e:
            raise ImportError(
                "backend='tensorrt' runs engines with polygraphy: pip install polygraphy"
            ) from e
        from dmm_deploy.runtime.trt_build import load_plugins

        self.engine_path = build_stage_engine(trt, path, spec, cache_dir, ranges, _gpu_name())
        load_plugins(trt)  # engines that hold standard plugins (ROIAlign_TRT) deserialize
        self.runner = TrtRunner(EngineFromBytes(self.engine_path.read_bytes()))
        self.runner.activate()
        self.spec = spec
        self.dtypes = {t.name: np.dtype(t.dtype) for t in spec.inputs}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cast = {k: np.ascontiguousarray(v, dtype=self.dtypes[k]) for k, v in feeds.items()}
        out = self.runner.infer(cast)
        return {t.name: np.asarray(out[t.name]) for t in self.spec.outputs}

    def close(self) -> None:
        self.runner.deactivate()


def open_stage(
    bundle: Bundle,
    name: str,
    backend: str = "onnxruntime",
    device: str = "cpu",
    *,
    threads: int | None = None,
    trt_ep: bool = False,
    optimized_cache: bool = True,
    lean_heap: bool = True,
):
    """A runner for stage ``name`` of ``bundle`` on ``backend``/``device``.

    Caches (TensorRT engines, the onnxruntime TensorRT provider's caches, the CPU-optimized
    graphs of ``optimized_cache``, see :class:`OrtStage`) go to ``<bundle>/engines/``.
    ``lean_heap``: see :func:`set_lean_heap` (onnxruntime backend). The per-frame DMM stages
    share one CPU arena (:func:`register_shared_cpu_arena`); the Mask R-CNN graphs do not: their
    activations at the detector's resolution would grow that arena to several times the DMM
    stages' working set (measured: peak RSS 733 -> 943 MiB with ResNet-50 at 480; shared and
    released after the heads graph: 658 -> 772 MiB, and no faster), and page faults are a
    small part of their seconds-long calls (an arena of their own: ~55 ms of ~0.7-0.9 s). In a bundle with them the encoder,
    which runs just before the detector, releases the arena's free memory after each call, so
    the detector's peak does not come on top of it (ResNet-50 at 255x448, detector at 480:
    peak RSS 785 -> 731 MiB; the DMM stages then take fresh memory again, about 11 ms a frame).
    """
    spec = bundle.stages[name]
    path = bundle.stage_path(name)
    cache = bundle.path / "engines"
    ranges = axis_ranges(bundle.proposals)
    if backend == "onnxruntime":
        return OrtStage(
            path,
            spec,
            device,
            threads=threads,
            trt_ep=trt_ep,
            cache_dir=cache,
            optimized_cache=optimized_cache,
            lean_heap=lean_heap,
            shared_arena=name not in MASKRCNN_SPLIT_IO,
            release_arena=name == "encoder" and any(s in bundle.stages for s in MASKRCNN_SPLIT_IO),
            ranges=ranges,
        )
    if backend == "tensorrt":
        if device != "cuda":
            raise ValueError("backend='tensorrt' runs on device='cuda' only")
        if any(spec.extra.get("tensorrt_problems", {}).values()):
            # a stage TensorRT's parser does not take (the exported Mask R-CNN): onnxruntime's
            # CUDA provider runs it
            return OrtStage(path, spec, "cuda", threads=threads, ranges=ranges)
        return TrtStage(path, spec, cache, ranges)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
