"""Runtime benchmark: torch ``VideoSegmenter`` against the bundle runtime (onnxruntime CPU).

    python bench/bench_runtime.py [--backbones resnet50 resnet101] [--threads 1 2]
        [--frames 8] [--input-size 255x448] [--out bench/results/cpu]

For each backbone (random weights, seeded; the same weights in both) a bundle is exported
(fp32) and the bike sample is segmented with precomputed detections (100 random box
detections per frame, the same file for both) by each pipeline in its own process, at each
thread count: one untimed pass (warm-up), then a timed pass. Per frame (annotated frame 0
excluded) the wall time and each stage's time are recorded (the stage names of
``dmm_deploy.model.STAGES``, timed by the same ``timer`` hook in both pipelines), and the
process's peak RSS. The label maps of the two pipelines are compared pixel by pixel.

With ``--maskrcnn-size`` one more configuration compares torchvision Mask R-CNN in torch
with the bundle's exported detector (random weights, drawn after the model's, as the export
job draws them).

The runtime's onnxruntime sessions load the graphs as onnxruntime optimized them on the first
open of the bundle on this machine (``<bundle>/engines/*-ort-cpu-*.onnx``, see
:class:`dmm_deploy.runtime.backends.OrtStage`). Before each timed runtime process, the cache is
deleted and the runtime opened once in a process of its own: its peak RSS is reported as the
cold-open peak ("first open"), and the timed process then opens with the cache in place, as
every later run on that machine does. ``--work DIR`` keeps the exported bundles in ``DIR`` and
reuses them on the next run (same seed, same weights).
Results: ``runtime.csv`` and ``runtime.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    DEFAULT_OUT,
    REPO_ROOT,
    check_model_options,
    machine_info,
    machine_markdown,
    pingpong,
)

SAMPLES = REPO_ROOT.parent / "shared" / "data" / "vos_samples"
STAGE_NAMES = ("encoder", "proposals", "features_cost", "matching", "refinement", "merge")


class Timer:
    """``timer(stage)``: accumulates each stage's wall time for the current frame."""

    def __init__(self) -> None:
        self.frame: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.frame[stage] = self.frame.get(stage, 0.0) + time.perf_counter() - t0


def peak_rss_mib() -> float:
    """This process's peak resident set (``VmHWM``; unlike ``ru_maxrss`` it does not carry
    the parent's peak across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def detector(size: int):
    """Mask R-CNN (random weights) at shorter side ``size``, as the segment job builds it."""
    from dmm_deploy.model import MaskRCNNProposals

    return MaskRCNNProposals(None, min_size=size, max_size=round(size * 1333 / 800))


def clear_optimized_cache(bundle: Path) -> None:
    """Delete the runtime's cached CPU-optimized graphs of ``bundle`` (a cold first open)."""
    for f in (bundle / "engines").glob("*-ort-cpu-*.onnx*"):  # graphs and their digests
        f.unlink()


def worker(args: argparse.Namespace) -> int:
    """One pipeline in this process; prints one JSON line."""
    from dmm_deploy.data import read_frame, read_mask

    if args.worker == "open":  # only open the runtime (fills the optimized-graph cache)
        from dmm_deploy.runtime import Runtime

        t0 = time.perf_counter()
        Runtime.open(args.bundle, threads=args.threads[0])
        result = {"open_s": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib()}
        print(json.dumps(result))
        return 0

    frames_all = sorted((SAMPLES / "images" / "bike").glob("*.jpg"))
    frames = [read_frame(frames_all[i]) for i in pingpong(len(frames_all), args.frames)]
    mask = read_mask(SAMPLES / "masks" / "bike" / "00000.png")
    timer = Timer()
    if args.worker == "torch":
        import torch

        from dmm_deploy.model import DMMConfig, DMMNet, PrecomputedProposals, VideoSegmenter

        torch.set_num_threads(args.threads[0])
        torch.manual_seed(args.seed)
        size = tuple(int(v) for v in args.input_size.split("x"))
        net = DMMNet(DMMConfig(backbone=args.backbone, input_size=size))
        if args.proposals == "maskrcnn":
            source = detector(args.maskrcnn_size)  # drawn after the net, as at export
        else:
            source = PrecomputedProposals(args.npz)
        seg = VideoSegmenter(net, source, timer=timer)
    else:
        from dmm_deploy.runtime import Runtime, StreamingSegmenter
        from dmm_deploy.runtime.proposals import PrecomputedDetections

        rt = Runtime.open(args.bundle, threads=args.threads[0])
        source = None if args.proposals == "maskrcnn" else PrecomputedDetections(args.npz)
        seg = StreamingSegmenter(rt, source, timer=timer)
    for _ in seg.segment(frames, mask):  # warm-up pass
        pass
    per_frame, stages, labels = [], {s: [] for s in STAGE_NAMES}, []
    for i, frame in enumerate(frames):
        timer.frame = {}
        t0 = time.perf_counter()
        out = seg.start(frame, mask) if i == 0 else seg.step(frame)
        dt = time.perf_counter() - t0
        labels.append(out)
        if i == 0:
            continue
        per_frame.append(dt)
        for s in STAGE_NAMES:
            stages[s].append(timer.frame.get(s, 0.0))
    np.savez_compressed(args.labels, labels=np.stack(labels))
    rss = peak_rss_mib()
    result = {
        "frame_ms": [1e3 * t for t in per_frame],
        "stages_ms": {s: [1e3 * t for t in v] for s, v in stages.items()},
        "peak_rss_mib": rss,
    }
    print(json.dumps(result))
    return 0


def _stats(ms: list[float]) -> tuple[float, float, float]:
    a = np.asarray(ms)
    return float(np.median(a)), float(np.percentile(a, 20)), float(np.percentile(a, 80))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=["resnet50", "resnet101"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--input-size", default="255x448")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run each pipeline's process this many times, alternating torch and runtime, and "
        "pool their frames (evens out a machine whose load changes; peak RSS: the highest)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--maskrcnn-size",
        type=int,
        default=480,
        help="also compare with Mask R-CNN proposals (first backbone, 1 thread, 4 frames) at "
        "this detector size; 0: skip",
    )
    p.add_argument("--proposals", default="precomputed", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="keep the exported bundles here and reuse them on later runs (default: a fresh "
        "temporary folder)",
    )
    p.add_argument("--worker", choices=("torch", "runtime", "open"), help=argparse.SUPPRESS)
    p.add_argument("--backbone", help=argparse.SUPPRESS)
    p.add_argument("--bundle", help=argparse.SUPPRESS)
    p.add_argument("--npz", help=argparse.SUPPRESS)
    p.add_argument("--labels", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    try:
        check_args(args)
    except ValueError as e:
        p.error(str(e))
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    tmp = args.work or Path(tempfile.mkdtemp(prefix="bench_runtime_"))
    try:
        return compare(args, tmp)
    finally:
        if args.work is None:  # the bundles and label files: ~1.3 GB
            shutil.rmtree(tmp, ignore_errors=True)


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad options before anything is exported or run (``ValueError`` naming one)."""
    from dmm_deploy.data.output import check_output_path

    check_model_options(args.input_size, args.backbones, args.threads)
    if args.frames < 2:
        raise ValueError(f"--frames must be >= 2 (frame 0 is not timed), got {args.frames}")
    if args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    if not 0 <= args.seed < 2**32:
        raise ValueError(f"--seed must be in 0..2**32-1, got {args.seed}")
    if args.maskrcnn_size and not 64 <= args.maskrcnn_size <= 2048:
        raise ValueError(f"--maskrcnn-size must be 0 or in 64..2048, got {args.maskrcnn_size}")
    check_output_path(args.out, "--out", "folder")
    if args.work is not None:
        check_output_path(args.work, "--work", "folder")


def compare(args: argparse.Namespace, tmp: Path) -> int:
    """Export the bundles into ``tmp`` (or reuse them there), run every configuration's
    workers, write the results."""
    import torch

    from dmm_deploy.data import read_frame
    from dmm_deploy.export.bundle import export_bundle
    from dmm_deploy.model import Detections, DMMConfig, DMMNet
    from dmm_deploy.model.sources import save_precomputed

    size = tuple(int(v) for v in args.input_size.split("x"))
    frames = sorted((SAMPLES / "images" / "bike").glob("*.jpg"))
    first = read_frame(frames[0])
    h, w = first.shape[:2]
    rng = np.random.default_rng(args.seed)
    dets = []
    for _ in frames:
        xy = rng.uniform(0, 0.7, (100, 2)) * (w, h)
        boxes = np.concatenate([xy, xy + rng.uniform(0.05, 0.3, (100, 2)) * (w, h)], 1)
        masks = rng.uniform(0, 1, (100, 28, 28)).astype(np.float32)
        dets.append(Detections(boxes.astype(np.float32), rng.uniform(0, 1, 100), masks, "box"))
    npz = tmp / "bike.npz"
    # one entry per frame of the ping-pong video the workers play (frame k shows clip frame
    # pingpong[k]): every timed frame has its 100 detections
    save_precomputed(npz, [dets[i] for i in pingpong(len(frames), args.frames)], (h, w))

    configs = [(b, t, "precomputed") for b in args.backbones for t in args.threads]
    if args.maskrcnn_size:
        configs.append((args.backbones[0], 1, "maskrcnn"))
    rows, bundles = [], {}
    for backbone, threads, proposals in configs:
        key = (backbone, proposals)
        # --work: a bundle exported by an earlier run with the same model settings
        name = f"{backbone}-{proposals}-{args.input_size}-seed{args.seed}"
        if proposals == "maskrcnn":
            name += f"-detector{args.maskrcnn_size}"
        if key not in bundles and (tmp / name / "manifest.json").is_file():
            bundles[key] = tmp / name
            print(f"{backbone} {proposals}: reusing {bundles[key]}", flush=True)
        if key not in bundles:
            torch.manual_seed(args.seed)
            net = DMMNet(DMMConfig(backbone=backbone, input_size=size)).eval()
            det = detector(args.maskrcnn_size).model if proposals == "maskrcnn" else None
            bundles[key] = tmp / name
            t0 = time.perf_counter()
            export_bundle(net, bundles[key], proposals=proposals, detector=det, log=lambda s: None)
            print(
                f"{backbone} {proposals}: exported in {time.perf_counter() - t0:.0f} s", flush=True
            )
            del net, det
        n_frames = args.frames if proposals == "precomputed" else min(args.frames, 4)
        res: dict[str, dict] = {}
        clear_optimized_cache(bundles[key])
        order = ["torch", "open", "runtime"] + ["torch", "runtime"] * (args.rounds - 1)
        for kind in order:
            labels = tmp / f"{backbone}-{threads}-{proposals}-{kind}.npz"
            cmd = [sys.executable, __file__, "--worker", kind, "--backbone", backbone]
            cmd += ["--bundle", str(bundles[key]), "--npz", str(npz), "--labels", str(labels)]
            cmd += ["--threads", str(threads), "--frames", str(n_frames)]
            cmd += ["--input-size", args.input_size, "--seed", str(args.seed)]
            cmd += ["--proposals", proposals, "--maskrcnn-size", str(args.maskrcnn_size)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(f"worker {kind} failed:\n{out.stderr[-3000:]}")
            got = json.loads(out.stdout.strip().splitlines()[-1])
            if kind == "open":
                res[kind] = got
            elif kind not in res:
                res[kind] = dict(got, labels=np.load(labels)["labels"])
            else:  # a later round: pool the frames, keep the highest peak
                res[kind]["frame_ms"] += got["frame_ms"]
                for st in STAGE_NAMES:
                    res[kind]["stages_ms"][st] += got["stages_ms"][st]
                res[kind]["peak_rss_mib"] = max(res[kind]["peak_rss_mib"], got["peak_rss_mib"])
        agree = float((res["torch"]["labels"] == res["runtime"]["labels"]).mean())
        for kind in ("torch", "runtime"):
            med, p20, p80 = _stats(res[kind]["frame_ms"])
            row = {
                "backbone": backbone,
                "threads": threads,
                "proposals": proposals
                if proposals == "precomputed"
                else f"maskrcnn@{args.maskrcnn_size}",
                "pipeline": "torch eager" if kind == "torch" else "runtime (onnxruntime CPU)",
                "frames": n_frames,
                "frame_ms": med,
                "frame_p20_ms": p20,
                "frame_p80_ms": p80,
                **{f"{s}_ms": float(np.median(res[kind]["stages_ms"][s])) for s in STAGE_NAMES},
                "peak_rss_mib": res[kind]["peak_rss_mib"],
                "first_open_peak_rss_mib": res["open"]["peak_rss_mib"] if kind == "runtime" else "",
                "first_open_s": res["open"]["open_s"] if kind == "runtime" else "",
                "label_agreement": agree,
            }
            rows.append(row)
            print(
                f"{backbone} t={threads} {proposals} {kind:8s} frame {med:7.1f} ms  "
                f"RSS {row['peak_rss_mib']:7.0f} MiB  agreement {agree:.5f}"
                + (
                    f"  first open {row['first_open_s']:.1f} s, peak RSS "
                    f"{row['first_open_peak_rss_mib']:.0f} MiB"
                    if kind == "runtime"
                    else ""
                ),
                flush=True,
            )

    args.out.mkdir(parents=True, exist_ok=True)
    keys = list(rows[0])
    with open(args.out / "runtime.csv", "w") as f:
        f.write(",".join(keys) + "\n")
        for r in rows:
            f.write(
                ",".join(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys)
                + "\n"
            )
    lines = [
        "# Runtime benchmark: torch VideoSegmenter vs the bundle runtime (onnxruntime CPU)",
        "",
        machine_markdown(machine_info()),
        "",
        f"Command: `python bench/bench_runtime.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"bike sample (854x480), input {args.input_size}, {args.frames} frames (ping-pong over the "
        "4 frames), frame 0 (annotated) excluded; one warm-up pass first; "
        f"{args.rounds} process(es) per pipeline and row, alternating torch and runtime, frames "
        "pooled. 100 random box "
        "detections per frame from one precomputed .npz, read by both. Random weights (seeded, "
        "identical in both). Each pipeline in its own process (peak RSS = VmHWM of that process). "
        "The runtime process opens the bundle with its optimized-graph cache in place (filled by "
        "a first open in a process of its own just before, after deleting it: 'first open' "
        "columns, the peak RSS a process has when it opens the bundle on a machine for the first "
        "time). The machine (2 cores) was shared with other jobs running at the same time: "
        "absolute times are inflated and noisy; compare ratios within a row pair only.",
        "",
        "| backbone | threads | proposals | pipeline | frame ms (p20-p80) | encoder | "
        "proposals | features+cost | matching | refinement | merge | peak RSS MiB | "
        "runtime/torch time | runtime/torch RSS | first open: s, peak RSS MiB (ratio) | "
        "label agreement |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i in range(0, len(rows), 2):
        t, r = rows[i], rows[i + 1]
        for row in (t, r):
            ratio_t = r["frame_ms"] / t["frame_ms"]
            ratio_m = r["peak_rss_mib"] / t["peak_rss_mib"]
            lines.append(
                f"| {row['backbone']} | {row['threads']} | {row['proposals']} | "
                f"{row['pipeline']} | "
                f"{row['frame_ms']:.0f} ({row['frame_p20_ms']:.0f}-{row['frame_p80_ms']:.0f}) | "
                f"{row['encoder_ms']:.0f} | {row['proposals_ms']:.1f} | "
                f"{row['features_cost_ms']:.1f} | {row['matching_ms']:.1f} | "
                f"{row['refinement_ms']:.0f} | {row['merge_ms']:.1f} | {row['peak_rss_mib']:.0f} | "
                + (
                    f"{ratio_t:.2f}x | {ratio_m:.2f}x | {row['first_open_s']:.1f}, "
                    f"{row['first_open_peak_rss_mib']:.0f} "
                    f"({row['first_open_peak_rss_mib'] / t['peak_rss_mib']:.2f}x) | "
                    f"{row['label_agreement']:.5f} |"
                    if row is r
                    else "| | | |"
                )
            )
    lines += [
        "",
        "Stage columns: median ms per frame of each stage (timer hooks of both pipelines; "
        "'proposals' = detection + post-processing, 'features+cost' = box embeddings (+ the "
        "cost in torch; the runtime computes the cost inside the matching graph)). Mask R-CNN "
        "rows: random detector weights, fewer frames; label agreement there also reflects "
        "near-tied detection scores of a random detector.",
        "",
    ]
    (args.out / "runtime.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'runtime.csv'} and {args.out / 'runtime.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
