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
    DecoderStage,
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
    if stage == "proposals":  # a smooth synthetic frame (blobs), not the model's input size
        yy, xx = torch.meshgrid(torch.linspace(0, 1, 240), torch.linspace(0, 1, 320), indexing="ij")
        c = torch.rand(3, 3, generator=g)
        img = torch.stack(
            [(torch.sin(6 * xx * c[i, 0] + 4 * yy * c[i, 1]) + 1) / 2 for i in range(3)]
        )
        return (img,)
    if stage == "decoder":
        zeros = net.decoder.zero_state(skip)
        states = [torch.randn(z.shape, generator=g) * 0.5 for z in zeros for _ in range(3)]
        hs, cs, ts = states[0::3], states[1::3], states[2::3]
        masks = torch.rand(batch, 3, h, w, generator=g)
        return (*skip, masks, *hs, *cs, *ts)
    raise KeyError(stage)


def _dynamic_axes(stage: str, cfg) -> dict[str, dict[int, str]]:
    ins, outs = stage_io(stage, cfg)
    if stage == "proposals":
        return {"image": {1: "H", 2: "W"}, **{n: {0: "D"} for n in outs}}
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


def _module(net: DMMNet, stage: str, detector: torch.nn.Module | None = None) -> torch.nn.Module:
    if stage == "proposals":
        return MaskRCNNStage(detector).eval()
    cls = {
        "encoder": EncoderStage,
        "embed": EmbedStage,
        "match": MatchStage,
        "decoder": DecoderStage,
    }
    return cls[stage](net).eval()


def _export_stage(
    net: DMMNet, stage: str, path: Path, precision: str, detector=None
) -> onnx.ModelProto:
    module = _module(net, stage, detector)
    args = _example_inputs(net, stage, batch=2, seed=0)
    ins, outs = stage_io(stage, net.cfg)
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
            dynamic_axes=_dynamic_axes(stage, net.cfg),
            do_constant_folding=True,
        )
    model = onnx.load(str(path))
    fold_constant_nodes(model)
    # fp16 matcher: the cost's normalisation epsilon (1e-8) and the 200-cycle accumulation
    # need float32; that graph keeps float32 arithmetic behind float16 inputs and outputs.
    # The detector stays float32 (its NMS and box decoding are not float16-safe).
    graph_precision = "mixed" if (precision == "fp16" and stage == "match") else precision
    if stage == "proposals":
        graph_precision = "fp32"
    model = apply_precision(model, graph_precision)
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


def _parity(net: DMMNet, stage: str, path: Path, threads: int, detector=None) -> Parity:
    """onnxruntime (CPU) against torch over two batch sizes (two frames for the detector)."""
    import copy

    sess = ort_session(path, threads=threads)
    dtypes = {i.name: i.type for i in sess.get_inputs()}
    module = _module(net, stage, detector)
    ref64 = None if stage == "proposals" else copy.deepcopy(module).double()
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
        if stage == "proposals":
            e, sc = _detection_parity(got, [w.numpy() for w in want])
            err, scale = max(err, e), max(scale, sc)
            continue
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
    if ref64 is None:
        return Parity(err, None, None, scale)
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


def _stage_precision(stage: str, precision: str) -> str:
    if stage == "proposals":
        return "fp32"
    if stage == "match" and precision == "fp16":
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
        (``detector`` is exported as the ``proposals`` stage, float32 at every precision).
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
    if proposals == "maskrcnn":
        stages.append("proposals")
    reports, specs, problems = [], {}, []
    tol = TOLERANCE[precision]
    for name in stages:
        t0 = time.perf_counter()
        path = out / f"{name}.onnx"
        model = _export_stage(net, name, path, precision, detector)
        trt = {v: check_tensorrt(model, v) for v in TRT_VERSIONS}
        par = _parity(net, name, path, threads, detector)
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
        if name == "proposals":  # onnxruntime-only stage: its TensorRT problems are recorded
            if any(trt.values()):
                log(
                    f"proposals: not TensorRT-clean ({len(trt['10.3'])} problems for 10.3); "
                    "onnxruntime only (the manifest lists them)"
                )
        else:
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
        "proposals": {"kind": proposals}
        if proposals == "precomputed"
        else {
            "kind": "maskrcnn",
            "stage": "proposals",
            "min_size": int(detector.transform.min_size[-1]),
            "max_size": int(detector.transform.max_size),
            "detections_per_img": int(detector.roi_heads.detections_per_img),
            "score_thresh": float(detector.roi_heads.score_thresh),
        },
        "stages": {n: s.to_json() for n, s in specs.items()},
        "versions": _versions(),
        "tensorrt_check": {
            v: "ok" if not any(r.tensorrt[v] for r in reports) else "proposals stage fails"
            for v in TRT_VERSIONS
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    import json

    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=list) + "\n")
    return reports
