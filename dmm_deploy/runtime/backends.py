"""Backends that run one stage graph: numpy arrays in, numpy arrays out.

* :class:`OrtStage`: an onnxruntime session. ``device="cpu"``: the CPU provider.
  ``device="cuda"``: the CUDA provider, or with ``trt_ep=True`` the TensorRT provider
  (engine and timing caches beside the bundle, shape profiles from :data:`AXIS_RANGES`)
  before CUDA. A requested GPU provider that onnxruntime does not have (or that did not load)
  is an error, never a silent fall back to the CPU.
* :class:`TrtStage` (``backend="tensorrt"``): a TensorRT engine built from the stage graph with
  polygraphy's builder and runner (device memory handled by polygraphy's CUDA wrapper; no
  torch), cached in ``<bundle>/engines/`` keyed on the graph's SHA-256, the TensorRT version
  and the GPU. TensorRT and polygraphy are imported only here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dmm_deploy.runtime.bundle import Bundle, StageSpec

__all__ = [
    "AXIS_RANGES",
    "BACKENDS",
    "DEVICES",
    "OrtStage",
    "TrtStage",
    "open_stage",
    "ort_providers",
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


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError(
            "onnxruntime is needed to run a bundle: pip install 'dmm-deploy[runtime]' "
            "(onnxruntime-gpu for CUDA; on a Jetson the wheel for your JetPack)"
        ) from e
    return ort


def _profile_shapes(spec: StageSpec, which: int, fixed: dict[str, int] | None = None) -> dict:
    """Concrete shapes of a stage's inputs at profile point ``which`` (0 min, 1 opt, 2 max)."""
    out = {}
    for t in spec.inputs:
        dims = []
        for d in t.shape:
            if isinstance(d, int):
                dims.append(d)
            else:
                dims.append((fixed or {}).get(d, AXIS_RANGES.get(d, (1, 1, 64))[which]))
        out[t.name] = tuple(dims)
    return out


def ort_providers(
    device: str, trt_ep: bool = False, spec: StageSpec | None = None, cache_dir: Path | None = None
) -> list:
    """The ordered onnxruntime provider list (with options) for ``device``; raises
    ``RuntimeError`` in one line when onnxruntime lacks a requested GPU provider."""
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
                    shapes = _profile_shapes(spec, which)
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
    ) -> None:
        ort = _import_ort()
        providers = ort_providers(device, trt_ep, spec, cache_dir)
        so = ort.SessionOptions()
        if threads is not None:
            so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        # no spin-waiting between calls: the runtime alternates between numpy and the graphs,
        # and spinning threads take the cores from the numpy work (and from other processes)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # no growing arena: measured 10 % lower peak RSS and no slower on this runtime's calls
        so.enable_cpu_mem_arena = False
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), so, providers=providers)
        if device == "cuda":
            got = self.session.get_providers()
            wanted = providers[0][0]
            if wanted not in got:
                raise RuntimeError(
                    f"onnxruntime did not enable {wanted} for stage {spec.name!r} (it has "
                    f"{', '.join(got)}); check the CUDA/cuDNN/TensorRT libraries"
                )
        self.spec = spec
        self.dtypes = {t.name: np.dtype(t.dtype) for t in spec.inputs}
        self.output_names = [t.name for t in spec.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cast = {k: np.ascontiguousarray(v, dtype=self.dtypes[k]) for k, v in feeds.items()}
        outs = self.session.run(self.output_names, cast)
        return dict(zip(self.output_names, outs, strict=True))


def _gpu_name() -> str:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return "gpu"
    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        raise RuntimeError("backend='tensorrt' needs a CUDA GPU, and none is visible")
    return props.name.decode(errors="replace").strip("\x00")


class TrtStage:
    """One stage as a TensorRT engine run by polygraphy's ``TrtRunner`` (see module docstring).

    The engine is built on first use (strongly typed: the graph's own precision) and cached
    as ``<bundle>/engines/<stage>-<key>.engine``; engines are specific to the GPU and the
    TensorRT version, so build them on the device that runs them.
    """

    def __init__(self, path: Path, spec: StageSpec, cache_dir: Path) -> None:
        try:
            import tensorrt as trt
            from polygraphy.backend.trt import (
                CreateConfig,
                EngineFromBytes,
                NetworkFromOnnxPath,
                Profile,
                TrtRunner,
                engine_bytes_from_network,
            )
        except ImportError as e:
            raise ImportError(
                "backend='tensorrt' needs TensorRT and polygraphy: pip install 'dmm-deploy[trt]' "
                "(on a Jetson: JetPack's python3-libnvinfer and pip install polygraphy)"
            ) from e
        key = json.dumps([spec.sha256, trt.__version__, _gpu_name(), AXIS_RANGES], sort_keys=True)
        import hashlib

        tag = hashlib.sha256(key.encode()).hexdigest()[:16]
        engine_path = cache_dir / f"{spec.name}-{tag}.engine"
        if not engine_path.is_file():
            profile = Profile()
            shapes = [_profile_shapes(spec, i) for i in range(3)]
            for t in spec.inputs:
                if any(isinstance(d, str) for d in t.shape):
                    profile.add(
                        t.name, min=shapes[0][t.name], opt=shapes[1][t.name], max=shapes[2][t.name]
                    )
            network = NetworkFromOnnxPath(str(path), strongly_typed=True)
            config = CreateConfig(profiles=[profile])
            plan = engine_bytes_from_network(network, config=config)
            cache_dir.mkdir(parents=True, exist_ok=True)
            engine_path.write_bytes(bytes(plan))
        self.engine_path = engine_path
        self.runner = TrtRunner(EngineFromBytes(engine_path.read_bytes()))
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
):
    """A runner for stage ``name`` of ``bundle`` on ``backend``/``device``."""
    spec = bundle.stages[name]
    path = bundle.stage_path(name)
    cache = bundle.path / "engines"
    if backend == "onnxruntime":
        return OrtStage(path, spec, device, threads=threads, trt_ep=trt_ep, cache_dir=cache)
    if backend == "tensorrt":
        if device != "cuda":
            raise ValueError("backend='tensorrt' runs on device='cuda' only")
        if any(spec.extra.get("tensorrt_problems", {}).values()):
            # a stage TensorRT's parser does not take (the exported Mask R-CNN): onnxruntime's
            # CUDA provider runs it
            return OrtStage(path, spec, "cuda", threads=threads)
        return TrtStage(path, spec, cache)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
