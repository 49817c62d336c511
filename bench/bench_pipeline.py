"""Per-stage latency of the DMM-Net pipeline on one video, and its frames per second.

The pipeline is the package's own :class:`dmm_deploy.model.VideoSegmenter`, run with a
``timer`` that times each of its stages (:data:`dmm_deploy.model.segmenter.STAGES`):

* ``encoder``: resizing the frame to the input size and the ResNet encoder with its heads;
* ``proposals``: the proposal source's detections for the frame (here read from a
  precomputed file) and their post-processing (mask pasting, tight boxes, NMS, top-k);
* ``features_cost``: RoIAlign box embeddings of the proposals and the matching cost;
* ``matching``: the DMM layer (:func:`dmm_deploy.matching.dmm_match`, 40 x 5 steps) and
  the read-out of the matched masks;
* ``refinement``: the ConvLSTM refinement decoder, once per object;
* ``merge``: probabilities resized to the frame and merged into a label map.

Mask R-CNN (torchvision ``maskrcnn_resnet50_fpn``, random weights: the same network and
work as with COCO weights, no score threshold, 100 detections per frame) is timed apart,
frame by frame, at the detector's own input size (``--detector-size``, torchvision's 800 by
default); its detections of that run are saved with ``save_precomputed`` and are the
proposals of the pipeline runs. Two frame rates are reported: with precomputed proposals,
and with Mask R-CNN run on every frame (each frame's pipeline time plus that frame's
detection time).

Frames are decoded beforehand (decoding and writing PNGs are not timed). The first frame
(the annotated one) is not scored; one pass over the video is a warm-up; then ``--passes``
timed passes. Per stage: median and 20th/80th percentiles over frames x passes. On CUDA the
device is synchronised around every timed stage.

Outputs (``--out``, default ``bench/results/cpu``, or ``bench/results/<gpu name>`` with
``--device cuda``): ``pipeline.csv``, ``pipeline.md`` (machine, command, tables, ratios) and
``pipeline.png``. ``--quick`` runs a tiny configuration (the smoke test).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_OUT,
    REPO_ROOT,
    check_model_options,
    machine_info,
    machine_markdown,
    markdown_table,
    pingpong,
    pyplot,
    summarize,
    write_csv,
)

from dmm_deploy.data import open_frames, read_mask
from dmm_deploy.model import (
    DMMConfig,
    DMMNet,
    MaskRCNNProposals,
    PrecomputedProposals,
    VideoSegmenter,
    save_precomputed,
)
from dmm_deploy.model.segmenter import STAGES

SAMPLES = REPO_ROOT.parent / "shared" / "data" / "vos_samples"
DETECT = "maskrcnn_detect"
TOTAL = "total_precomputed"
TOTAL_MRCNN = "total_with_maskrcnn"
COLUMNS = [
    "device", "backbone", "threads", "input_size", "stage",
    "median_ms", "p20_ms", "p80_ms", "samples", "share_pct", "fps",
]  # fmt: skip


class StageTimer:
    """``timer(stage)`` for :class:`VideoSegmenter`: wall time of each stage of the current
    frame (synchronising CUDA around it when ``device`` is a CUDA device)."""

    def __init__(self, device: torch.device) -> None:
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.frame: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        self.sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.frame[stage] = self.frame.get(stage, 0.0) + time.perf_counter() - t0


def time_detector(frames: list[np.ndarray], detector_size: int, device: torch.device):
    """Run Mask R-CNN (random weights) on every frame: per-frame seconds (after one warm-up
    call) and the detections."""
    torch.manual_seed(0)
    mrcnn = MaskRCNNProposals(
        None, device=device, min_size=detector_size, max_size=round(detector_size * 1333 / 800)
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    mrcnn.detect(0, frames[0])  # warm-up
    seconds, dets = [], []
    for i, frame in enumerate(frames):
        sync()
        t0 = time.perf_counter()
        dets.append(mrcnn.detect(i, frame))
        sync()
        seconds.append(time.perf_counter() - t0)
    return seconds, dets


def time_pipeline(
    cfg: DMMConfig,
    frames: list[np.ndarray],
    mask: np.ndarray,
    proposals_file: Path,
    device: torch.device,
    passes: int,
) -> tuple[dict[str, list[float]], list[tuple[int, float]], list[int]]:
    """Time the segmenter's stages over ``passes`` passes of the video (one warm-up pass).

    Returns ``{stage: seconds}`` and ``[(frame index, total seconds)]`` over the scored
    frames (index >= 1) of the timed passes, and the number of proposals per frame.
    """
    torch.manual_seed(0)
    timer = StageTimer(device)
    seg = VideoSegmenter(
        DMMNet(cfg), PrecomputedProposals(proposals_file), device=device, timer=timer
    )
    list(seg.segment(frames, mask))  # warm-up
    stages: dict[str, list[float]] = defaultdict(list)
    totals: list[tuple[int, float]] = []
    n_props: list[int] = []
    sync = timer.sync
    for _ in range(passes):
        for i, frame in enumerate(frames):
            timer.frame = {}
            sync()
            t0 = time.perf_counter()
            if i == 0:
                seg.start(frame, mask)
            else:
                seg.step(frame)
            sync()
            total = time.perf_counter() - t0
            if i == 0:
                continue
            for stage, s in timer.frame.items():
                stages[stage].append(s)
            totals.append((i, total))
            n_props.append(len(seg.last_proposals.boxes))
    return stages, totals, n_props


def _row(device, backbone, threads, size, stage, seconds, total_ms=None) -> dict:
    stats = summarize(seconds)
    row = {
        "device": device,
        "backbone": backbone,
        "threads": threads,
        "input_size": f"{size[0]}x{size[1]}",
        "stage": stage,
        "median_ms": stats["median_ms"],
        "p20_ms": stats["p20_ms"],
        "p80_ms": stats["p80_ms"],
        "samples": stats["repeats"],
        "share_pct": "",
        "fps": "",
    }
    if total_ms:
        row["share_pct"] = 100.0 * stats["median_ms"] / total_ms
    if stage in (TOTAL, TOTAL_MRCNN):
        row["fps"] = 1000.0 / stats["median_ms"]
    return row


def _device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _plot(path: Path, rows: list[dict], device_name: str) -> None:
    """Left: the stages of a frame, stacked (precomputed proposals). Right: frames per second
    with precomputed proposals and with Mask R-CNN on every frame."""
    plt = pyplot()
    cases = sorted({(r["backbone"], r["threads"]) for r in rows if r["stage"] == TOTAL})
    labels = [f"{b}, {t} thr" for b, t in cases]

    def get(backbone, threads, stage):
        hit = [
            r
            for r in rows
            if r["stage"] == stage and r["threads"] == threads and r["backbone"] == backbone
        ]
        return hit[0] if hit else None

    fig, (ax, ax2) = plt.subplots(
        1, 2, figsize=(13, 2.4 + 0.6 * len(cases)), gridspec_kw={"width_ratios": [3, 1]}
    )
    colors = plt.get_cmap("tab10")
    for y, (backbone, threads) in enumerate(cases):
        left = 0.0
        for k, stage in enumerate(STAGES):
            r = get(backbone, threads, stage)
            if r is None or stage == "templates":
                continue
            ax.barh(y, r["median_ms"], left=left, color=colors(k), label=stage if y == 0 else None)
            left += r["median_ms"]
        for k, stage in enumerate((TOTAL, TOTAL_MRCNN)):
            r = get(backbone, threads, stage)
            if r is not None:
                label = ("precomputed proposals", "Mask R-CNN per frame")[k] if y == 0 else None
                ax2.barh(
                    y + 0.2 * (2 * k - 1), r["fps"], height=0.4, color=colors(7 + k), label=label
                )
    ax.set_yticks(range(len(cases)), labels)
    ax.set_xlabel("median ms per frame, stages stacked (proposals precomputed)")
    ax2.set_yticks(range(len(cases)), [""] * len(cases))
    ax2.set_xlabel("frames per second")
    handles, names = [], []
    for a in (ax, ax2):
        h, n = a.get_legend_handles_labels()
        handles += h
        names += n
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8)
    fig.suptitle(f"DMM-Net pipeline per frame, {device_name}")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(rows, info, args, device_name, n_frames, n_props, command) -> str:
    lines = [
        "# DMM-Net pipeline: per-stage latency and frames per second",
        "",
        f"Device: {device_name}. Video: `{_shown(args.frames)}` ({n_frames} frames played "
        "forth and "
        f"back from the clip, first frame annotated and not scored), input "
        f"{args.input_size[0]}x{args.input_size[1]}, Mask R-CNN at shorter side "
        f"{args.detector_size}. Random weights (timing only). Proposals per frame after "
        f"NMS/top-k: median {int(np.median(n_props))}. {args.passes} timed pass(es) after "
        "one warm-up pass; median and 20th/80th percentiles over frames x passes. "
        "Mask R-CNN keeps every detection (no score threshold: 100 per frame, trained or "
        "not), so its time does not depend on the weights; nor does the rest of the "
        "pipeline, beyond the number of proposals. A shared machine: other jobs may run "
        "(load average in the machine list).",
        "",
        f"Command: `{command}`",
        "",
        "## Machine",
        "",
        machine_markdown(info),
        "",
    ]
    cols = ["stage", "median_ms", "p20_ms", "p80_ms", "samples", "share_pct", "fps"]
    heads = ["stage", "median ms", "p20 ms", "p80 ms", "samples", "% of total", "frames/s"]
    for (backbone, threads), group in _groups(rows).items():
        lines += [f"## {backbone}, {threads} thread(s)", "", markdown_table(group, cols, heads), ""]
    lines += ["## Same-run ratios", ""]
    totals = {(r["backbone"], r["threads"]): r for r in rows if r["stage"] == TOTAL}
    detect = {r["threads"]: r for r in rows if r["stage"] == DETECT}
    for (backbone, threads), r in totals.items():
        enc = next(
            x
            for x in rows
            if x["backbone"] == backbone and x["threads"] == threads and x["stage"] == "encoder"
        )
        line = (
            f"- {backbone}, {threads} thread(s): encoder {enc['median_ms'] / r['median_ms']:.0%} "
            "of the frame with precomputed proposals"
        )
        if threads in detect:
            d = detect[threads]["median_ms"]
            line += f"; Mask R-CNN takes {d / r['median_ms']:.1f}x the rest of the pipeline"
        lines.append(line)
    backbones = sorted({b for b, _ in totals})
    if "resnet50" in backbones and "resnet101" in backbones:
        for threads in sorted({t for _, t in totals}):
            a, b = totals.get(("resnet101", threads)), totals.get(("resnet50", threads))
            if a and b:
                lines.append(
                    f"- {threads} thread(s): ResNet-50 frame time / ResNet-101 frame time = "
                    f"{b['median_ms'] / a['median_ms']:.2f}"
                )
    lines.append("")
    return "\n".join(lines)


def _shown(path: Path) -> str:
    """A path relative to the repository root when it is near it (for the report)."""
    rel = os.path.relpath(Path(path).resolve(), REPO_ROOT)
    return rel if not rel.startswith("../..") else str(path)


def _groups(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    out: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        if r["backbone"] != "-":
            out.setdefault((r["backbone"], r["threads"]), []).append(r)
    for r in rows:
        if r["backbone"] == "-":
            for (_, threads), group in out.items():
                if threads == r["threads"]:  # before the totals
                    at = next(i for i, g in enumerate(group) if g["stage"] == TOTAL)
                    group.insert(at, r)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=Path, default=SAMPLES / "images" / "bike")
    p.add_argument("--mask", type=Path, default=SAMPLES / "masks" / "bike" / "00000.png")
    p.add_argument("--num-frames", type=int, default=10, help="frames of the video (10)")
    p.add_argument("--backbones", default="resnet101,resnet50")
    p.add_argument("--input-size", default="255x448", help="HxW (255x448)")
    p.add_argument("--detector-size", type=int, default=800, help="Mask R-CNN shorter side")
    p.add_argument("--no-maskrcnn", action="store_true", help="skip Mask R-CNN (random boxes)")
    p.add_argument("--passes", type=int, default=3, help="timed passes over the video (3)")
    p.add_argument("--threads", default="1", help="comma list of CPU thread counts (1)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", type=Path, default=None, help="output folder")
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.backbones, args.input_size, args.num_frames = "resnet18", "64x112", 2
        args.detector_size, args.passes = 64, 1
    try:
        check_args(args)
    except ValueError as e:
        p.error(str(e))
    return args


def check_args(args: argparse.Namespace) -> None:
    """Parse and check the options in place (``ValueError`` naming one), before any work."""
    from dmm_deploy.data.output import check_output_path

    args.backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    try:
        args.threads = [int(t) for t in str(args.threads).split(",")]
    except ValueError:
        raise ValueError(
            f"--threads must be a comma list of integers, got {args.threads!r}"
        ) from None
    args.input_size = check_model_options(args.input_size, args.backbones, args.threads)
    if args.num_frames < 2:
        raise ValueError(f"--num-frames must be >= 2 (frame 0 is not timed), got {args.num_frames}")
    if args.passes < 1:
        raise ValueError(f"--passes must be >= 1, got {args.passes}")
    if not 32 <= args.detector_size <= 2048:
        raise ValueError(f"--detector-size must be in 32..2048, got {args.detector_size}")
    if not args.frames.is_dir():
        raise ValueError(f"--frames {args.frames} is not a folder of frames")
    if not args.mask.is_file():
        raise ValueError(f"--mask {args.mask} is not a file")
    if args.out is not None:
        check_output_path(args.out, "--out", "folder")


def random_detections(frames: list[np.ndarray], seed: int = 0):
    """100 random box detections per frame (when Mask R-CNN is skipped)."""
    from dmm_deploy.model import Detections

    rng = np.random.default_rng(seed)
    out = []
    for f in frames:
        h, w = f.shape[:2]
        xy = rng.uniform(0, 0.7, (100, 2)) * (w, h)
        boxes = np.concatenate([xy, xy + rng.uniform(0.05, 0.3, (100, 2)) * (w, h)], 1)
        masks = rng.uniform(0, 1, (100, 28, 28))
        out.append(Detections(boxes.astype(np.float32), rng.uniform(0, 1, 100), masks, "box"))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join(
        ["python bench/bench_pipeline.py"]
        + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)]
    )
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "bench_pipeline.py: error: --device cuda: no CUDA device is available", file=sys.stderr
        )
        return 2
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = args.out or (
        DEFAULT_OUT if device.type == "cpu" else DEFAULT_OUT.parent / _device_slug(device_name)
    )
    clip = [f.image for f in open_frames(args.frames)]
    frames = [clip[i] for i in pingpong(len(clip), args.num_frames)]
    mask = read_mask(args.mask, expected_size=frames[0].shape[:2])
    info = machine_info()
    info["device"] = device_name
    info["load_average_1min_at_start"] = f"{os.getloadavg()[0]:.2f}"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "proposals.npz"
        for threads in args.threads:
            torch.set_num_threads(threads)
            if args.no_maskrcnn:
                dets = random_detections(frames)
                detect_times = None
            else:
                print(f"Mask R-CNN, {threads} thread(s) ...", flush=True)
                detect_times, dets = time_detector(frames, args.detector_size, device)
                rows.append(
                    _row(device_name, "-", threads, args.input_size, DETECT, detect_times[1:])
                )
            save_precomputed(npz, dets, frames[0].shape[:2])
            for backbone in args.backbones:
                print(f"{backbone}, {threads} thread(s) ...", flush=True)
                cfg = DMMConfig(backbone=backbone, input_size=args.input_size)
                stages, totals, n_props = time_pipeline(cfg, frames, mask, npz, device, args.passes)
                total_s = [t for _, t in totals]
                total_ms = summarize(total_s)["median_ms"]
                for stage in STAGES:
                    if stage in stages:
                        rows.append(
                            _row(
                                device_name, backbone, threads, args.input_size, stage,
                                stages[stage], total_ms,
                            )
                        )  # fmt: skip
                rows.append(_row(device_name, backbone, threads, args.input_size, TOTAL, total_s))
                if detect_times is not None:
                    with_det = [t + detect_times[i] for i, t in totals]
                    rows.append(
                        _row(device_name, backbone, threads, args.input_size, TOTAL_MRCNN, with_det)
                    )
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "pipeline.csv", rows, COLUMNS)
    md = _markdown(rows, info, args, device_name, len(frames), n_props, command)
    (out / "pipeline.md").write_text(md)
    _plot(out / "pipeline.png", rows, device_name)
    print(md)
    print(f"wrote {out / 'pipeline.csv'}, {out / 'pipeline.md'}, {out / 'pipeline.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
