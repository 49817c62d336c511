#!/usr/bin/env bash
# Torch-free deployment check: a fresh virtual environment with only the `runtime` extra
# segments the bike sample from an exported bundle through the CLI.
#
#   .ci/runtime_check.sh BUNDLE_DIR [BUNDLE_DIR ...]
#
# BUNDLE_DIR: a bundle written by `dmm-deploy export-model` in the main environment. The
# bike sample is read from ../shared/data/vos_samples (beside the checkout). Detections are
# random boxes with blob masks in the precomputed .npz format (tests/synthetic.py; the check
# is about the deployment path, not about mask quality). Exit 0 when every bundle gave a mask
# for every frame and torch is not importable in the runtime environment.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: .ci/runtime_check.sh BUNDLE_DIR [BUNDLE_DIR ...]" >&2; exit 2; }
BUNDLES=()
for B in "$@"; do BUNDLES+=("$(cd "$B" && pwd)"); done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SAMPLES=${SAMPLES:-$ROOT/../shared/data/vos_samples}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

PY=python3
[ -x /usr/bin/python3.11 ] && PY=/usr/bin/python3.11
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
cd "$ROOT"
"$VPY" -m pip install -q -e ".[runtime]" >"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log"; exit 1; }

if "$VPY" -c "import torch" 2>/dev/null; then
  echo "runtime_check: FAIL: torch is importable in the runtime environment" >&2
  exit 1
fi
echo "runtime_check: torch is not installed (ok)"

FRAMES="$SAMPLES/images/bike"
SIZE=$("$VPY" -c 'import sys; from PIL import Image; w, h = Image.open(sys.argv[1]).size; print(h, w)' "$(find "$FRAMES" -maxdepth 1 -name '*.jpg' | sort | head -1)")
N_FRAMES=$(find "$FRAMES" -maxdepth 1 -name '*.jpg' | wc -l)
# shellcheck disable=SC2086
"$VPY" tests/synthetic.py "$WORK/bike.npz" --frames "$N_FRAMES" --size $SIZE

for B in "${BUNDLES[@]}"; do
  OUT="$WORK/out-$(basename "$B")"
  "$VPY" -m dmm_deploy segment --bundle "$B" --frames "$FRAMES" \
    --mask "$SAMPLES/masks/bike/00000.png" --proposals "precomputed:$WORK/bike.npz" \
    --out "$OUT" --no-progress
  N_OUT=$(find "$OUT" -name '*.png' | wc -l)
  if [ "$N_OUT" -lt "$N_FRAMES" ]; then
    echo "runtime_check: FAIL: $N_OUT masks written for $N_FRAMES frames ($B)" >&2
    exit 1
  fi
  echo "runtime_check: ok ($(basename "$B"): $N_OUT masks for $N_FRAMES frames)"
done
"$VPY" -c "import sys; import dmm_deploy.runtime; assert 'torch' not in sys.modules"
echo "runtime_check: ok (no torch)"
