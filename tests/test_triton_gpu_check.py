"""The prepared GPU check (``bench/gpu_check.py``) runs end to end in its dry-run mode
(CPU tensors, kernels in Triton's interpreter, tiny sizes), and refuses in one line without a
GPU when not asked for a dry run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
torch = pytest.importorskip("torch")


def _run(repo_root, *args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, str(repo_root / "bench" / "gpu_check.py"), *args]
    return subprocess.run(
        cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.slow
def test_dry_run_writes_verdicts(repo_root, tmp_path):
    proc = _run(repo_root, "--dry-run", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = report["correctness"]
    # both variants x (2 random cases, padded, 4 packed layouts) + the NaN check
    assert len(checks) == 2 * 7 + 1
    for row in checks:
        assert row["ok"] is True, row
        if row["check"] != "nan":
            assert row["fwd_err"] <= 1e-5 and row["bwd_err"] <= 1e-4, row
    verdicts = {r["check"]: r["verdict"] for r in report["verdicts"]}
    assert verdicts["kernels vs float64 reference"] == "PASS"
    assert verdicts["torch.compile (aot_eager) smoke"] == "PASS"
    # timing targets are GPU targets: not judged on a dry run
    assert verdicts["B=4096 8x128 forward / arithmetic floor"] == "n/a"
    bench = report["benchmarks"]
    assert bench["fwd_ms"] > 0 and bench["fwdbwd_ms"] > 0 and bench["fwd_floor_ms"] > 0
    text = (tmp_path / "gpu_check.md").read_text()
    assert "## Verdicts" in text and "dry run" in text


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="the no-GPU refusal needs a machine without one"
)
def test_without_gpu_it_refuses_in_one_line(repo_root, tmp_path):
    proc = _run(repo_root, "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: error: no CUDA device"), lines
    assert not any(tmp_path.iterdir())
