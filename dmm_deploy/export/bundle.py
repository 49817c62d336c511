"""Export DMM-Net to a runtime bundle: stage graphs, checks, parity, ``manifest.json``.

:func:`export_bundle` traces each stage of :mod:`dmm_deploy.export.bundle_stages` with the
legacy (TorchScript) ONNX exporter at opset 17 (RoiAlign's ``output_half_pixel`` mode is
``aligned=False``, the model's convention), folds ``Constant`` nodes into initializers, applies
the precision, and for every graph runs ``onnx.checker`` (full check), shape inference, the
project's TensorRT parser check for 10.3 and 11.0, and a parity check of onnxruntime (CPU)
against the torch stage. Any failure raises :class:`BundleExportError`; nothing is left in a
half-written manifest (the manifest is written last).

Why these four graphs: the encoder and the decoder are the heavy stages and have different
inputs per call (the decoder runs once per object slot with the previous object's state);
the box embedding needs the proposals, which arrive after the encoder (from a detector or a
file), so it cannot join the encoder graph without making the detector part of it; the cost,
the greedy start, the 200-cycle matcher and the read-out are one graph since each consumes
only the previous one's output (one host round trip instead of three).

Every DMMConfig exports: the match graph unrolls the config's ``matcher_variant`` (the
original's early exits as frozen masks, no Loop/If); a ``matching="exact"`` model's match graph
ends at the cost (the runtime solves the assignment on the host); the other behaviour
switches are pre/post-processing, which the runtime reads from the manifest's config.
"""

from __future__ import annotations

import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from dmm_deploy.export.bundle_stages import (
    DETECTOR_IO,
    DecoderStage,
    DetectorHeadsStage,
    DetectorStage,
    EmbedStage,
    EncoderStage,
    MaskRCNNStage,
    MatchStage,
    stage_io,
)
from dmm_deploy.export.onnx_export import fold_constant_nodes, ort_session
from dmm_deploy.export.precision import apply_precision
from dmm_deploy.export.tensorrt_compat import check_tensorrt
from dmm_deploy.model.net import DMMNet
from dmm_deploy.runtime.bundle import (
    BUNDLE_FORMAT,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    PRECISIONS,
    StageSpec,
    TensorSpec,
    sha256_file,
    unsupported_behaviour,
)
from dmm_deploy.runtime.proposals import MaskRCNNDetector

__all__ = ["TRT_VERSIONS", "BundleExportError", "Parity", "StageReport", "export_bundle"]

OPSET = 17
TRT_VERSIONS = ("10.3", "11.0")
# Parity tolerance: max |onnxruntime - torch| <= tol * max(1, max |torch|), per output.
TOLERANCE = {"fp32": 1e-4, "mixed": 2e-2, "fp16": 5e-2}

_NP_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.BOOL: "bool",
}


class BundleExportError(RuntimeError):
    """An exported stage failed a check (the message lists the problems)."""


@dataclass
class StageReport:
    """What the export measured for one stage."""

    name: str
    precision: str
    nodes: int
    file_bytes: int
    seconds: float
    parity_max_abs: float
    parity_scale: float
    tensorrt: dict[str, list[str]] = field(default_factory=dict)


def _tensor_specs(values) -> tuple[TensorSpec, ...]:
    out = []
    for vi in values:
        tt = vi.type.tensor_type
        dims = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in tt.shape.dim)
        out.append(TensorSpec(vi.name, _NP_DTYPES[tt.elem_type], dims))
    return tuple(out)


def _example_inputs(net: DMMNet, stage: str, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Inputs for tracing and parity: real encoder features, random boxes, masks and states."""
    cfg = net.cfg
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.input_size
    image = torch.rand(batch, 3, h, w, generator=g)
    with torch.no_grad():
        match, skip = net.encoder(image)
    if stage == "encoder":
        return (image,)
    if stage == "embed":
        n = 3 * batch + 2
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 0.5
        boxes = torch.cat([xy, xy + wh], 1)
        bidx = torch.arange(n) % batch
        return (*match, boxes, bidx)
    if stage == "match":
        o, m, d = 3, 6, cfg.embedding_dim
        masks = (torch.rand(batch, o + m, h, w, generator=g) > 0.6).float()
        sizes = torch.tensor([[o, m]] + [[max(1, o - 1), m - 1]] * (batch - 1))
        return (
            torch.randn(batch, o, d, generator=g),
            torch.randn(batch, m, d, generator=g),
            masks[:, :o] * torch.rand(batch, o, h, w, generator=g),
            masks[:, o:] * torch.rand(batch, m, h, w, generator=g),
            sizes,
        )
    if stage == "decoder":
        zeros = net.decoder.zero_state(skip)
        states = [torch.randn(z.shape, generator=g) * 0.5 for z in zeros for _ in range(3)]
        hs, cs, ts = states[0::3], states[1::3], states[2::3]
        masks = torch.rand(batch, 3, h, w, generator=g)
        return (*skip, masks, *hs, *cs, *ts)
    raise KeyError(stage)


def _dynamic_axes(stage: str, cfg) -> dict[str, dict[int, str]]:
    ins, outs = stage_io(stage, cfg)
    if stage == "encoder":
        return {n: {0: "B"} for n in (*ins, *outs)}
    if stage == "embed":
        axes = {n: {0: "B"} for n in ins if n.startswith("match")}
        axes.update(boxes={0: "N"}, batch_index={0: "N"}, embeddings={0: "N"})
        return axes
    if stage == "match":
        return {
            "templates": {0: "B", 1: "O"},
            "embeddings": {0: "B", 1: "M"},
            "prev_masks": {0: "B", 1: "O"},
            "proposal_masks": {0: "B", 1: "M"},
            "sizes": {0: "B"},
            **{
                n: {0: "B", 1: "O", 2: "M"} if n in ("assignment", "cost") else {0: "B", 1: "O"}
                for n in outs
            },
        }
    return {n: {0: "B"} for n in (*ins, *outs)}


def _module(net: DMMNet, stage: str) -> torch.nn.Module:
    cls = {
        "encoder": EncoderStage,
        "embed": EmbedStage,
        "match": MatchStage,
        "decoder": DecoderStage,
    }
    return cls[stage](net).eval()


def _export_stage(net: DMMNet, stage: str, path: Path, precision: str) -> onnx.ModelProto:
    module = _module(net, stage)
    args = _example_inputs(net, stage, batch=2, seed=0)
    ins, outs = stage_io(stage, net.cfg)
    _trace(module, args, path, ins, outs, _dynamic_axes(stage, net.cfg))
    return _finish(path, _stage_precision(stage, precision))


def _trace(module, args, path: Path, ins, outs, axes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and trace warnings
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(ins),
            output_names=list(outs),
            dynamic_axes=axes,
            do_constant_folding=True,
        )


def _finish(path: Path, precision: str) -> onnx.ModelProto:
    """Constants into initializers, precision, full onnx.checker, shape inference; saved."""
    model = onnx.load(str(path))
    fold_constant_nodes(model)
    model = apply_precision(model, precision)
    onnx.checker.check_model(model, full_check=True)
    model = onnx.shape_inference.infer_shapes(model, check_type=True)
    onnx.save(model, str(path))
    return model


@dataclass
class Parity:
    """One stage's parity numbers (max abs differences over all outputs and test inputs).

    vs_torch: onnxruntime against the torch stage in float32 (the issue's criterion).
    vs_fp64 / torch_vs_fp64: onnxruntime and torch float32 each against the torch stage in
    float64 (``None`` for the detector). With random weights some stages see inputs of 1e4
    and more (deep random ResNets), where float32 itself is off by more than 1e-4: the check
    then asks onnxruntime to be no further from float64 than a few times torch's own error.
    scale: the largest output magnitude.
    """

    vs_torch: float
    vs_fp64: float | None
    torch_vs_fp64: float | None
    scale: float

    def ok(self, tol: float) -> bool:
        bound = tol * max(1.0, self.scale)
        if self.vs_torch <= bound:
            return True
        return self.vs_fp64 is not None and self.vs_fp64 <= max(bound, 4.0 * self.torch_vs_fp64)


def _parity(net: DMMNet, stage: str, path: Path, threads: int) -> Parity:
    """onnxruntime (CPU) against torch over two batch sizes."""
    import copy

    sess = ort_session(path, threads=threads)
    dtypes = {i.name: i.type for i in sess.get_inputs()}
    module = _module(net, stage)
    ref64 = copy.deepcopy(module).double()
    ins, outs = stage_io(stage, net.cfg)
    err = scale = 0.0
    err64 = torch64 = 0.0
    for batch, seed in ((1, 1), (3, 2)):
        args = _example_inputs(net, stage, batch, seed)
        with torch.no_grad():
            want = module(*args)
            want64 = None
            if ref64 is not None:
                want64 = ref64(*(a.double() if a.is_floating_point() else a for a in args))
        want = want if isinstance(want, tuple) else (want,)
        if want64 is not None and not isinstance(want64, tuple):
            want64 = (want64,)
        feeds = {}
        for name, a in zip(ins, args, strict=True):
            arr = a.numpy()
            feeds[name] = arr.astype(np.float16) if dtypes[name] == "tensor(float16)" else arr
        got = sess.run(list(outs), feeds)
        for k, (g, wt) in enumerate(zip(got, want, strict=True)):
            wt = wt.numpy().astype(np.float64)
            if g.shape != wt.shape:
                raise BundleExportError(
                    f"{stage}: onnxruntime output {outs[k]} has shape {g.shape}, torch {wt.shape}"
                )
            g = g.astype(np.float64)
            err = max(err, float(np.abs(g - wt).max(initial=0.0)))
            scale = max(scale, float(np.abs(wt).max(initial=0.0)))
            if want64 is not None:
                w64 = want64[k].numpy()
                err64 = max(err64, float(np.abs(g - w64).max(initial=0.0)))
                torch64 = max(torch64, float(np.abs(wt - w64).max(initial=0.0)))
    return Parity(err, err64, torch64, scale)


def _detection_parity(got: list, want: list) -> tuple[float, float]:
    """Detections compared as sets: the detector's top-k and NMS order near-equal scores
    (random weights give near-uniform class scores) differently under float32 rounding, so
    each onnxruntime detection is paired with the torch detection of the nearest box; the
    difference is the largest over paired boxes, scores and masks, and over the sorted scores.
    """
    (gb, gs, gm), (wb, ws, wm) = got, want
    if gb.shape != wb.shape:
        raise BundleExportError(
            f"proposals: onnxruntime found {len(gb)} detections, torch {len(wb)}"
        )
    if not len(gb):
        return 0.0, 0.0
    dist = np.abs(gb[:, None, :].astype(np.float64) - wb[None, :, :]).max(axis=2)
    pair = dist.argmin(axis=1)
    err = max(
        float(dist.min(axis=1).max()),
        float(np.abs(np.sort(gs) - np.sort(ws)).max()),
        float(np.abs(gs - ws[pair]).max()),
        float(np.abs(gm - wm[pair]).max()),
    )
    return err, float(np.abs(wb).max())


class _OrtRunner:
    """``run(feeds) -> dict`` over an onnxruntime session (the runtime's runner interface)."""

    def __init__(self, path: Path, threads: int) -> None:
        self.session = ort_session(path, threads=threads)
        self.names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict) -> dict:
        return dict(zip(self.names, self.session.run(self.names, feeds), strict=True))


class _TorchRunner:
    """``run(feeds) -> dict`` over a torch stage module (feeds in the graph's input order)."""

    def __init__(self, module: torch.nn.Module, outputs) -> None:
        self.module, self.outputs = module, outputs

    def run(self, feeds: dict) -> dict:
        with torch.no_grad():
            got = self.module(*(torch.from_numpy(np.asarray(v)) for v in feeds.values()))
        return {n: g.numpy() for n, g in zip(self.outputs, got, strict=True)}


def _test_frames() -> list[np.ndarray]:
    """Two smooth synthetic uint8 frames (blobs) of different sizes, landscape and portrait."""
    g = np.random.default_rng(0)
    frames = []
    for h, w in ((240, 320), (200, 150)):
        yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
        c = g.uniform(0, 1, (3, 2))
        rgb = [(np.sin(6 * xx * c[i, 0] + 4 * yy * c[i, 1]) + 1) / 2 for i in range(3)]
        frames.append((np.stack(rgb, -1) * 255).astype(np.uint8))
    return frames


class _DetectorExport:
    """torchvision Mask R-CNN exported as the ``detector`` and ``proposals`` graphs
    (:class:`~dmm_deploy.export.bundle_stages.DetectorStage`,
    :class:`~dmm_deploy.export.bundle_stages.DetectorHeadsStage`); the host steps between
    them are the runtime's own (:class:`dmm_deploy.runtime.proposals.MaskRCNNDetector`).

    Parity: ``detector`` graph against its torch module (features, top-k logits; deltas where
    both pick the same anchor); ``proposals`` end to end: the runtime's detector on the two
    graphs in onnxruntime against :class:`~dmm_deploy.export.bundle_stages.MaskRCNNStage` (the
    detector as :class:`~dmm_deploy.model.MaskRCNNProposals` runs it), detections as sets.
    """

    def __init__(self, detector: torch.nn.Module, out: Path, threads: int) -> None:
        m = detector.eval()
        self.detector, self.out, self.threads = m, out, threads
        rpn, t = m.rpn, m.transform
        self.spec = {
            "kind": "maskrcnn",
            "layout": "split",
            "stage": "proposals",
            "detector_stage": "detector",
            "min_size": int(t.min_size[-1]),
            "max_size": int(t.max_size),
            "image_mean": [float(v) for v in t.image_mean],
            "image_std": [float(v) for v in t.image_std],
            "size_divisible": int(t.size_divisible),
            "cell_anchors": [c.tolist() for c in rpn.anchor_generator.cell_anchors],
            "rpn_weights": [float(v) for v in rpn.box_coder.weights],
            "rpn_clip": float(rpn.box_coder.bbox_xform_clip),
            "rpn_min_size": float(rpn.min_size),
            "rpn_score_thresh": float(rpn.score_thresh),
            "pre_nms_top_n": int(rpn._pre_nms_top_n["testing"]),
            "post_nms_top_n": int(rpn._post_nms_top_n["testing"]),
            "detections_per_img": int(m.roi_heads.detections_per_img),
            "score_thresh": float(m.roi_heads.score_thresh),
            "why_split": (
                "TensorRT-clean graphs: dense network + per-level top-k with a constant K in "
                "'detector'; anchor decoding and the RPN filters in numpy; NMS (one level or "
                "class per batch item), fixed-size top-k and RoiAlign over padded boxes in "
                "'proposals'"
            ),
        }
        self.modules = {
            "detector": DetectorStage(m).eval(),
            "proposals": DetectorHeadsStage(m).eval(),
        }
        self.torch_host = MaskRCNNDetector(
            self.spec,
            _TorchRunner(self.modules["detector"], DETECTOR_IO["detector"][1]),
            _TorchRunner(self.modules["proposals"], DETECTOR_IO["proposals"][1]),
        )
        self.frames = _test_frames()

    def _inputs(self, name: str, frame: np.ndarray) -> dict:
        host = self.torch_host
        image, size = host.preprocess(frame)
        if name == "detector":
            return {"image": image}
        out = host.detector.run({"image": image})
        boxes, scores = host.rpn_boxes(out, image.shape[-2:], size)
        feeds = {f"feature{i}": out[f"feature{i}"] for i in range(4)}
        feeds.update(rpn_boxes=boxes, rpn_scores=scores, image_size=np.array(size, np.float32))
        return feeds

    def export(self, name: str, path: Path) -> onnx.ModelProto:
        ins, outs = DETECTOR_IO[name]
        feeds = self._inputs(name, self.frames[0])
        args = tuple(torch.from_numpy(feeds[n]) for n in ins)
        spatial = {f"feature{i}": {2: f"h{i}", 3: f"w{i}"} for i in range(4)}
        axes = {"image": {2: "Hp", 3: "Wp"}, **spatial} if name == "detector" else spatial
        _trace(self.modules[name], args, path, ins, outs, axes)
        with torch.no_grad():
            example = self.modules[name](*args)
        model = onnx.load(str(path))
        # the exporter names the sizes it cannot trace as dynamic; all but the spatial axes
        # are fixed (batch 1, K, post_nms_top_n, detections_per_img): write them, so that
        # TensorRT sees static shapes and needs profiles for the image size only
        for vi, value in zip(model.graph.output, example, strict=True):
            for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
                if axis not in axes.get(vi.name, {}):
                    dim.Clear()
                    dim.dim_value = int(value.shape[axis])
        onnx.save(model, str(path))
        return _finish(path, "fp32")

    def parity(self, name: str) -> Parity:
        if name == "detector":
            run = _OrtRunner(self.out / "detector.onnx", self.threads)
            err = scale = 0.0
            for frame in self.frames:
                feeds = self._inputs(name, frame)
                got, want = run.run(feeds), self.torch_host.detector.run(feeds)
                same = got["rpn_index"] == want["rpn_index"]
                for key in want:
                    g, w = got[key].astype(np.float64), want[key].astype(np.float64)
                    if key == "rpn_logits":  # sorted: ties may swap; padding left out
                        g, w = np.sort(g, axis=1), np.sort(w, axis=1)
                        g, w = g[w > -1e5], w[w > -1e5]
                    elif key == "rpn_deltas":
                        g, w = g[same], w[same]
                    elif key == "rpn_index":
                        continue
                    err = max(err, float(np.abs(g - w).max(initial=0.0)))
                    scale = max(scale, float(np.abs(w).max(initial=0.0)))
                if same.mean() < 0.99:
                    raise BundleExportError(
                        f"detector: onnxruntime and torch pick different RPN anchors "
                        f"({100 * (1 - same.mean()):.1f} % of the top-k)"
                    )
            return Parity(err, None, None, scale)
        host = MaskRCNNDetector(
            self.spec,
            _OrtRunner(self.out / "detector.onnx", self.threads),
            _OrtRunner(self.out / "proposals.onnx", self.threads),
        )
        reference = MaskRCNNStage(self.detector)
        err = scale = 0.0
        for frame in self.frames:
            got = host.detect(0, frame)
            image = torch.from_numpy(frame).permute(2, 0, 1).float() / 255.0
            with torch.no_grad():
                want = [w.numpy() for w in reference(image)]
            e, sc = _detection_parity(list(got[:3]), want)
            err, scale = max(err, e), max(scale, sc)
        return Parity(err, None, None, scale)


def _stage_precision(stage: str, precision: str) -> str:
    # The detector stays float32 (its NMS and box decoding are not float16-safe).
    if stage in DETECTOR_IO:
        return "fp32"
    # fp16 bundles keep float32 arithmetic behind float16 inputs and outputs in two graphs:
    # the match graph (the cost's normalisation epsilon 1e-8 and the 200-cycle accumulation)
    # and the embed graph (box coordinates in feature pixels, up to the feature map's size, set
    # the bilinear weights: float16's step there is up to 1/16 pixel).
    if stage in ("match", "embed") and precision == "fp16":
        return "mixed"
    return precision


def _versions() -> dict:
    import torchvision

    import dmm_deploy

    out = {
        "dmm_deploy": getattr(dmm_deploy, "__version__", "unknown"),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "python": platform.python_version(),
        "opset": OPSET,
    }
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out


def export_bundle(
    net: DMMNet,
    out: str | Path,
    *,
    precision: str = "fp32",
    proposals: str = "precomputed",
    detector: torch.nn.Module | None = None,
    threads: int = 1,
    log=print,
) -> list[StageReport]:
    """Export ``net``'s stages to the folder ``out`` and write ``manifest.json``.

    precision: ``fp32``, ``mixed`` (float16 inputs/outputs, float32 inside) or ``fp16``
        (float16 graphs; the match graph stays mixed, see :func:`_export_stage`).
    proposals: ``"precomputed"`` (the runtime reads ``.npz`` detections) or ``"maskrcnn"``
        (``detector`` is exported as the ``detector`` and ``proposals`` stages, float32 at
        every precision; see :class:`_DetectorExport`).
    detector: the torchvision Mask R-CNN for ``proposals="maskrcnn"`` (e.g.
        ``MaskRCNNProposals(weights).model``).
    Raises :class:`BundleExportError` when a graph fails onnx.checker, the TensorRT check or
    parity. Returns one :class:`StageReport` per stage.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if proposals not in ("precomputed", "maskrcnn"):
        raise ValueError(f"proposals must be 'precomputed' or 'maskrcnn', got {proposals!r}")
    if proposals == "maskrcnn" and detector is None:
        raise ValueError("proposals='maskrcnn' needs the detector (a torchvision MaskRCNN)")
    if not isinstance(net, DMMNet):
        raise TypeError(f"net must be a DMMNet, got {type(net).__name__}")
    unsupported = unsupported_behaviour(asdict(net.cfg))
    if unsupported:  # DMMConfig validates these; a guard for configs built around it
        raise NotImplementedError(
            f"the runtime does not implement {', '.join(unsupported)}; cannot export this model"
        )
    net = net.eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stale = out / MANIFEST_NAME
    if stale.exists():
        stale.unlink()
    stages = ["encoder", "embed", "match"] + (["decoder"] if net.cfg.refine else [])
    det = None
    if proposals == "maskrcnn":
        stages += list(DETECTOR_IO)
        det = _DetectorExport(detector, out, threads)
    reports, specs, problems = [], {}, []
    for name in stages:
        t0 = time.perf_counter()
        path = out / f"{name}.onnx"
        if name in DETECTOR_IO:
            model = det.export(name, path)
            par = det.parity(name)
        else:
            model = _export_stage(net, name, path, precision)
            par = _parity(net, name, path, threads)
        trt = {v: check_tensorrt(model, v) for v in TRT_VERSIONS}
        tol = TOLERANCE[_stage_precision(name, precision)]
        err, scale = par.vs_torch, par.scale
        rep = StageReport(
            name=name,
            precision=_stage_precision(name, precision),
            nodes=len(model.graph.node),
            file_bytes=path.stat().st_size,
            seconds=time.perf_counter() - t0,
            parity_max_abs=err,
            parity_scale=scale,
            tensorrt=trt,
        )
        reports.append(rep)
        for v, lines in trt.items():
            problems += [f"{name}: TensorRT {v}: {line}" for line in lines]
        if not par.ok(tol):
            problems.append(
                f"{name}: parity {err:.3g} exceeds {tol:g} x max(1, {scale:.3g}) ({precision}); "
                f"against float64: onnxruntime {par.vs_fp64}, torch float32 {par.torch_vs_fp64}"
            )
        specs[name] = StageSpec(
            name=name,
            file=path.name,
            sha256=sha256_file(path),
            precision=rep.precision,
            opset=OPSET,
            inputs=_tensor_specs(model.graph.input),
            outputs=_tensor_specs(model.graph.output),
            extra={
                "tensorrt_problems": trt,
                "parity_max_abs": err,
                "parity_scale": scale,
                "parity_vs_fp64": par.vs_fp64,
                "torch_fp32_vs_fp64": par.torch_vs_fp64,
                "nodes": rep.nodes,
            },
        )
        log(
            f"{name:8s} {rep.nodes:5d} nodes {rep.file_bytes / 2**20:8.1f} MiB "
            f"parity {err:.2e} (scale {scale:.3g}"
            + (
                f", fp64: ort {par.vs_fp64:.1e} torch {par.torch_vs_fp64:.1e}"
                if par.vs_fp64 is not None
                else ""
            )
            + ") TensorRT "
            + " ".join(f"{v}:{'ok' if not trt[v] else 'FAIL'}" for v in TRT_VERSIONS)
            + f"  {rep.seconds:.1f} s"
        )
    if problems:
        raise BundleExportError("bundle export failed:\n  " + "\n  ".join(problems))
    cfg = asdict(net.cfg)
    manifest = {
        "format": BUNDLE_FORMAT,
        "version": MANIFEST_VERSION,
        "config": cfg,
        "input_size": list(net.cfg.input_size),
        "precision": precision,
        "proposals": {"kind": proposals} if proposals == "precomputed" else det.spec,
        "stages": {n: s.to_json() for n, s in specs.items()},
        "versions": _versions(),
        "tensorrt_check": {v: "ok" for v in TRT_VERSIONS},  # a failing check raised above
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    import json

    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=list) + "\n")
    return reports
