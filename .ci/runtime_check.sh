#!/usr/bin/env bash
# Torch-free deployment check: a fresh virtual environment with only the `runtime` extra
# segments the bike sample from an exported bundle through the CLI.
#
#   .ci/runtime_check.sh BUNDLE_DIR
#
# BUNDLE_DIR: a bundle written by `dmm-deploy export-model` in the main environment. The
# bike sample is read from ../shared/data/vos_samples (beside the checkout). Detections are
# random boxes with blob masks in the precomputed .npz format (the check is about the
# deployment path, not about mask quality). Exit 0 when every frame got a mask and torch is
# not importable in the runtime environment.
set -euo pipefail

BUNDLE=${1:?usage: .ci/runtime_check.sh BUNDLE_DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SAMPLES=${SAMPLES:-$ROOT/../shared/data/vos_samples}
BUNDLE=$(cd "$BUNDLE" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

PY=python3
[ -x /usr/bin/python3.11 ] && PY=/usr/bin/python3.11
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
cd "$ROOT"
# `.[runtime]` must not bring torch. While the core dependency list still names torch, the
# package is installed without its dependencies and the runtime extra's list is installed.
if "$VPY" - <<'PY'
import sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
sys.exit(0 if any(d.split(">")[0].split("=")[0].strip() in ("torch", "torchvision") for d in deps) else 1)
PY
then
  echo "runtime_check: core dependencies still list torch; installing --no-deps + the runtime extra"
  "$VPY" -m pip install -q --no-deps -e . >"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log"; exit 1; }
  REQS=$("$VPY" -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml","rb"))["project"]["optional-dependencies"]["runtime"]))')
  # shellcheck disable=SC2086
  "$VPY" -m pip install -q $REQS >>"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log"; exit 1; }
else
  "$VPY" -m pip install -q -e ".[runtime]" >"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log"; exit 1; }
fi

if "$VPY" -c "import torch" 2>/dev/null; then
  echo "runtime_check: FAIL: torch is importable in the runtime environment" >&2
  exit 1
fi
echo "runtime_check: torch is not installed (ok)"

FRAMES="$SAMPLES/images/bike"
"$VPY" - "$FRAMES" "$WORK/bike.npz" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

frames = sorted(Path(sys.argv[1]).glob("*.jpg"))
w, h = Image.open(frames[0]).size
rows = {k: [] for k in ("frame", "boxes", "scores", "masks")}
yy, xx = np.mgrid[0:28, 0:28] / 27.0
for i in range(len(frames)):
    g = np.random.default_rng((0, i))
    for _ in range(12):
        x, y = g.uniform(0, 0.8) * w, g.uniform(0, 0.8) * h
        bw, bh = g.uniform(0.05, 0.4) * w, g.uniform(0.05, 0.4) * h
        c, r = g.uniform(0.3, 0.7, 2), g.uniform(0.2, 0.5, 2)
        rows["frame"].append(i)
        rows["boxes"].append([x, y, x + bw, y + bh])
        rows["scores"].append(g.uniform())
        blob = np.clip(1.2 - ((xx - c[0]) / r[0]) ** 2 - ((yy - c[1]) / r[1]) ** 2, 0, 1)
        rows["masks"].append(np.round(blob * 255).astype(np.uint8))
np.savez_compressed(
    sys.argv[2],
    frame=np.array(rows["frame"], np.int64),
    boxes=np.array(rows["boxes"], np.float32),
    scores=np.array(rows["scores"], np.float32),
    masks=np.stack(rows["masks"]),
    mask_kind=np.array("box"),
    image_size=np.array([h, w], np.int64),
    num_frames=np.array(len(frames), np.int64),
)
PY

"$VPY" -m dmm_deploy segment --bundle "$BUNDLE" --frames "$FRAMES" \
  --mask "$SAMPLES/masks/bike/00000.png" --proposals "precomputed:$WORK/bike.npz" \
  --out "$WORK/out" --no-progress
"$VPY" -c "import sys; import dmm_deploy.runtime; assert 'torch' not in sys.modules"

N_FRAMES=$(find "$FRAMES" -maxdepth 1 -name '*.jpg' | wc -l)
N_OUT=$(find "$WORK/out" -name '*.png' | wc -l)
if [ "$N_OUT" -lt "$N_FRAMES" ]; then
  echo "runtime_check: FAIL: $N_OUT masks written for $N_FRAMES frames" >&2
  exit 1
fi
echo "runtime_check: ok ($N_OUT masks for $N_FRAMES frames, no torch)"
