"""The GPU benchmark runs end to end: on CPU tensors with the kernels in Triton's interpreter.

``bench/bench_matcher.py --device interpret --quick`` is the same code path as
``--device cuda`` (timing falls back to wall-clock repeats, peak memory is CUDA-only), so a
single call on a GPU machine later produces the full results.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
pytest.importorskip("matplotlib")


def test_gpu_benchmark_tiny_in_interpreter(repo_root, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    impls = ["triton", "eager", "ort"] if _has_onnxruntime() else ["triton", "eager"]
    cmd = [sys.executable, str(repo_root / "bench" / "bench_matcher.py"), "--device", "interpret"]
    cmd += ["--quick", "--out", str(tmp_path), "--gpu-impls", *impls]
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    for name in ("matcher_gpu.csv", "matcher_gpu.md", "matcher_gpu.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    with (tmp_path / "matcher_gpu.csv").open() as f:
        rows = list(csv.DictReader(f))
    # 2 modes x 2 shapes x 2 batches, one row per implementation
    assert len(rows) == 8 * len(impls)
    for row in rows:
        timed = row["impl"] != "ort" or row["mode"] == "forward"
        assert bool(row["median_ms"]) == timed, row
        if timed:
            assert float(row["p20_ms"]) <= float(row["median_ms"]) <= float(row["p80_ms"])
            assert float(row["achieved"]) > 0
            assert float(row["max_abs_diff_vs_eager"]) < 1e-5, row
    text = (tmp_path / "matcher_gpu.md").read_text()
    assert "Triton interpreter" in text and "## forward+backward" in text


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
