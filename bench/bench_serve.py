"""Serving benchmark: throughput of ``dmm-deploy serve`` with 1, 2, 4, 8 concurrent streams.

    python bench/bench_serve.py --bundle DIR [--streams 1,2,4,8] [--frames 10] [--scale 2]
        [--batch-delay-ms 5] [--threads 1] [--out bench/results/cpu]

Runs in an environment with the ``serve`` extra made from the system Python (see
``dmm_deploy.serve.tritonserver.server_problem``). Every stream is a sample video (judo and
bike frames, played back and forth, shrunk by ``--scale``) with random box detections sent
with each frame; each stream is one client thread that sends its next frame when the
previous answer arrives (gRPC, loopback). In one run, three configurations:

* ``batched``: the server as ``dmm-deploy serve`` runs it (``--max-batch 8``): frames of
  different streams that arrive within the batching delay run as one step;
* ``unbatched``: the same server with ``--max-batch 1`` (one frame per step): the baseline
  that shows what batching across streams buys on this machine;
* ``offline``: the runtime in this process, one stream, no server (``StreamingSegmenter``).

Per configuration and stream count: wall time of all streams, frames/s, the client-side
latency per frame (median, p20, p80; annotated first frames excluded), and, from the
server's metrics, the number of batched steps, the mean frames per step and the fraction of
frames that ran in a step with another stream. Results: ``serve.csv`` and ``serve.md``.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    DEFAULT_OUT,
    REPO_ROOT,
    machine_info,
    machine_markdown,
    markdown_table,
    summarize,
    write_csv,
)

from dmm_deploy.data import read_frame, read_mask
from dmm_deploy.runtime import Detections, Runtime, StreamingSegmenter

SAMPLES = REPO_ROOT.parent / "shared" / "data" / "vos_samples"


def shrink(a: np.ndarray, scale: int, nearest: bool = False) -> np.ndarray:
    from PIL import Image

    if scale == 1:
        return a
    h, w = a.shape[:2]
    mode = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(a).resize((w // scale, h // scale), mode))


class RandomDetections:
    """20 random box detections per frame (uniform 28x28 masks), seeded by stream and frame."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def detect(self, index: int, frame: np.ndarray) -> Detections:
        g = np.random.default_rng((self.seed, index))
        h, w = frame.shape[:2]
        xy = g.uniform(0, 0.7, (20, 2)) * (w, h)
        boxes = np.concatenate([xy, xy + g.uniform(0.05, 0.3, (20, 2)) * (w, h)], 1)
        masks = g.uniform(0, 1, (20, 28, 28))
        return Detections(
            boxes.astype(np.float32),
            g.uniform(0, 1, 20).astype(np.float32),
            masks.astype(np.float32),
            "box",
        )


def video(k: int, n: int, scale: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Stream ``k``: ``n`` frames of judo (even k) or bike (odd k) from frame ``k`` on."""
    name = "bike" if k % 2 else "judo"
    every = sorted((SAMPLES / "images" / name).glob("*.jpg"))
    period = max(1, 2 * (len(every) - 1))
    idx = [(k + j) % period for j in range(n)]
    frames = [shrink(read_frame(every[i if i < len(every) else period - i]), scale) for i in idx]
    mask = shrink(read_mask(SAMPLES / "masks" / name / "00000.png"), scale, nearest=True)
    return frames, mask


def server_metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(dmm_serve_\w+)(?:\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def run_streams(srv, n: int, videos, tag: str) -> dict:
    from dmm_deploy.serve.client import SegmentationClient

    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(k: int) -> None:
        frames, mask = videos[k]
        src = RandomDetections(k)
        try:
            with SegmentationClient(srv.grpc_url) as c:
                for i, f in enumerate(frames):
                    det = src.detect(i, f)
                    t0 = time.perf_counter()
                    c.infer(
                        f"{tag}-{k}",
                        f,
                        mask if i == 0 else None,
                        start=i == 0,
                        end=i == len(frames) - 1,
                        detections=det,
                    )
                    if i > 0:
                        with lock:
                            lat.append(time.perf_counter() - t0)
        except Exception as e:
            errors.append(f"stream {k}: {e}")

    before = server_metrics(srv.metrics_url)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - t0
    if errors or any(t.is_alive() for t in threads):
        raise SystemExit(f"{tag}: streams failed: {errors}")
    after = server_metrics(srv.metrics_url)
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    frames = d["dmm_serve_frames"]
    return {
        "frames": int(frames),
        "wall_s": wall,
        "frames_per_s": frames / wall,
        **summarize(lat),
        "steps": int(d["dmm_serve_calls"]),
        "frames_per_step": frames / max(d["dmm_serve_calls"], 1),
        "batched_fraction": d["dmm_serve_batched_frames"] / max(frames, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", required=True, help="bundle folder (dmm-deploy export-model)")
    p.add_argument("--streams", default="1,2,4,8")
    p.add_argument("--frames", type=int, default=10, help="frames per stream (default 10)")
    p.add_argument("--scale", type=int, default=2, help="shrink the 854x480 frames by this")
    p.add_argument("--batch-delay-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    from _common import check_out_arg

    check_out_arg(p, args.out)
    try:
        counts = [int(s) for s in args.streams.split(",")]
    except ValueError:
        p.error(f"--streams must be a comma list of stream counts, got {args.streams!r}")
    if min(counts) < 1:
        p.error(f"--streams must be positive, got {args.streams!r}")
    for name, value in (("--frames", args.frames), ("--scale", args.scale)):
        if value < 1:
            p.error(f"{name} must be >= 1, got {value}")
    if not args.batch_delay_ms >= 0:
        p.error(f"--batch-delay-ms must be >= 0, got {args.batch_delay_ms}")
    if not Path(args.bundle).is_dir():
        p.error(f"--bundle {args.bundle} is not a folder")
    command = "python bench/bench_serve.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    from dmm_deploy.serve.repository import write_serve_repository
    from dmm_deploy.serve.tritonserver import TritonServer, server_problem

    why = server_problem()
    if why:
        raise SystemExit(f"the server cannot run here: {why}")
    videos = [video(k, args.frames, args.scale) for k in range(max(counts))]
    rows = []
    # offline: one stream in this process (first frame annotated, excluded from timing)
    rt = Runtime.open(args.bundle, threads=args.threads)
    frames, mask = videos[0]
    seg = StreamingSegmenter(rt, RandomDetections(0))
    list(seg.segment(frames[:2], mask))  # warm-up
    seg.start(frames[0], mask)
    lat = []
    for f in frames[1:]:
        t0 = time.perf_counter()
        seg.step(f)
        lat.append(time.perf_counter() - t0)
    rows.append(
        {
            "config": "offline",
            "streams": 1,
            "frames": len(lat),
            "wall_s": sum(lat),
            "frames_per_s": len(lat) / sum(lat),
            **summarize(lat),
        }
    )
    print(rows[-1], flush=True)
    for config, max_batch in (("batched", 8), ("unbatched", 1)):
        with tempfile.TemporaryDirectory() as tmp:
            repo = write_serve_repository(
                args.bundle,
                Path(tmp) / "repo",
                max_streams=16,
                idle_timeout=300,
                max_batch=max_batch,
                queue_delay_ms=args.batch_delay_ms,
                threads=args.threads,
            )
            with TritonServer(repo, startup_timeout=180) as srv:
                run_streams(srv, 1, [(videos[0][0][:3], videos[0][1])], f"warm-{config}")
                for n in counts:
                    r = run_streams(srv, n, videos, f"{config}-{n}")
                    rows.append({"config": config, "streams": n, **r})
                    print(rows[-1], flush=True)
    base = {r["streams"]: r["frames_per_s"] for r in rows if r["config"] == "unbatched"}
    for r in rows:
        if r["config"] == "batched" and r["streams"] in base:
            r["speedup_vs_unbatched"] = r["frames_per_s"] / base[r["streams"]]
    cols = [
        "config",
        "streams",
        "frames",
        "wall_s",
        "frames_per_s",
        "median_ms",
        "p20_ms",
        "p80_ms",
        "steps",
        "frames_per_step",
        "batched_fraction",
        "speedup_vs_unbatched",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "serve.csv", rows, cols, digits=4)
    info = machine_info()
    h, w = read_frame(sorted((SAMPLES / "images" / "judo").glob("*.jpg"))[0]).shape[:2]
    md = [
        "# Serving: throughput with concurrent streams (Triton Inference Server, CPU)",
        "",
        f"Command: `{command}`",
        "",
        f"Bundle: `{args.bundle}` (backbone {rt.cfg.get('backbone')}, input "
        f"{rt.input_size[0]}x{rt.input_size[1]}, {rt.bundle.precision}); frames "
        f"{h // args.scale}x{w // args.scale}, 20 random detections per frame, "
        f"{args.frames} frames per stream, batching delay {args.batch_delay_ms:g} ms, "
        f"onnxruntime CPU with {args.threads} thread(s), gRPC on loopback.",
        "",
        "The machine was shared with other jobs while this ran: compare the rows of this run "
        "with each other (batched against unbatched at the same stream count), not with "
        "other runs. Latency: client-side, per frame, annotated first frames excluded.",
        "",
        markdown_table(rows, cols),
        "",
        machine_markdown(info),
        "",
    ]
    (args.out / "serve.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
