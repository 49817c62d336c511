#!/usr/bin/env bash
# Serving check: Triton Inference Server (from nvidia-pytriton's wheel) with the per-stream
# model over an exported bundle, in a torch-free environment; runs tests/test_serve.py there.
#
#   .ci/serve_check.sh VENV BUNDLE_DIR
#
# VENV: the torch-free virtual environment of the runtime check (made from the system
# Python the server's Python-backend stub links, /usr/bin/python3.11 on Debian); created
# here the same way when it does not exist. The serve extra and pytest are installed into
# it. BUNDLE_DIR: a bundle written by `dmm-deploy export-model` (e.g. random resnet18
# weights at 96x160). Loopback only; every server is started and stopped by the tests.
set -euo pipefail

VENV=${1:?usage: .ci/serve_check.sh VENV BUNDLE_DIR}
BUNDLE=${2:?usage: .ci/serve_check.sh VENV BUNDLE_DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUNDLE=$(cd "$BUNDLE" && pwd)
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

if [ ! -x "$VENV/bin/python" ]; then
  PY=python3
  [ -x /usr/bin/python3.11 ] && PY=/usr/bin/python3.11
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
cd "$ROOT"
# `.[serve]` without torch: while the core dependency list still names torch, the package
# goes in without its dependencies and the serve extra's list is installed.
"$VPY" -m pip install -q --no-deps -e . >"$LOG" 2>&1 || { cat "$LOG"; exit 1; }
REQS=$("$VPY" -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml","rb"))["project"]["optional-dependencies"]["serve"]))')
# shellcheck disable=SC2086
"$VPY" -m pip install -q $REQS "pytest>=8" >>"$LOG" 2>&1 || { cat "$LOG"; exit 1; }

if "$VPY" -c "import torch" 2>/dev/null; then
  echo "serve_check: FAIL: torch is importable in the serving environment" >&2
  exit 1
fi
REASON=$("$VPY" -c 'from dmm_deploy.serve.tritonserver import server_problem; print(server_problem() or "")')
if [ -n "$REASON" ]; then
  echo "serve_check: FAIL: the server cannot run in $VENV: $REASON" >&2
  exit 1
fi
echo "serve_check: torch not installed, tritonserver usable; running tests/test_serve.py"
DMM_SERVE_BUNDLE="$BUNDLE" timeout 900 "$VPY" -m pytest tests/test_serve.py -q -rs -s \
  -p no:cacheprovider --durations=5
