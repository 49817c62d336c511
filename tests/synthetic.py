"""Synthetic detections for deployment checks (numpy only: runs where torch is absent).

``blob_detections`` writes Mask R-CNN-like detections (elliptic blobs in random boxes) in the
precomputed ``.npz`` format, seeded per frame. The checks that use it are about the deployment
path (CI's torch-free runtime check, the serving tests), not about mask quality. Also a script:

    python tests/synthetic.py OUT.npz --frames N --size H W [--seed S] [--per-frame K]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from dmm_deploy.data.detections import write_precomputed


def blob_detections(
    path: str | os.PathLike, n_frames: int, size: tuple[int, int], seed: int, per_frame: int = 12
) -> Path:
    """Write ``per_frame`` random box detections with 28 x 28 blob masks for each frame."""
    h, w = size
    boxes, scores, masks = [], [], []
    yy, xx = np.mgrid[0:28, 0:28] / 27.0
    for i in range(n_frames):
        g = np.random.default_rng((seed, i))
        for _ in range(per_frame):
            x, y = g.uniform(0, 0.8) * w, g.uniform(0, 0.8) * h
            bw, bh = g.uniform(0.05, 0.4) * w, g.uniform(0.05, 0.4) * h
            c, r = g.uniform(0.3, 0.7, 2), g.uniform(0.2, 0.5, 2)
            boxes.append([x, y, x + bw, y + bh])
            scores.append(g.uniform())
            masks.append(np.clip(1.2 - ((xx - c[0]) / r[0]) ** 2 - ((yy - c[1]) / r[1]) ** 2, 0, 1))
    frame = np.repeat(np.arange(n_frames), per_frame)
    masks_a = np.stack(masks) if masks else np.zeros((0, 28, 28))
    write_precomputed(path, frame, boxes, scores, masks_a, "box", (h, w), n_frames)
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--frames", type=int, required=True)
    p.add_argument("--size", type=int, nargs=2, required=True, metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-frame", type=int, default=12)
    a = p.parse_args(argv)
    blob_detections(a.out, a.frames, tuple(a.size), a.seed, a.per_frame)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
