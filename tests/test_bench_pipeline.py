"""Smoke test of the pipeline benchmark (tiny configuration, generated video, temp output)."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dmm_deploy.data import make_synthetic_video

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import bench_pipeline  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAGES = ["encoder", "proposals", "features_cost", "matching", "refinement", "merge"]


def test_pingpong_plays_a_short_clip_forth_and_back():
    assert bench_pipeline.pingpong(4, 10) == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert bench_pipeline.pingpong(1, 3) == [0, 0, 0]
    assert bench_pipeline.pingpong(5, 2) == [0, 1]
    with pytest.raises(ValueError):
        bench_pipeline.pingpong(0, 3)


def test_stage_timer_sums_repeated_stages():
    timer = bench_pipeline.StageTimer(torch.device("cpu"))
    for _ in range(2):
        with timer("encoder"):
            time.sleep(0.01)
    with timer("merge"):
        pass
    assert set(timer.frame) == {"encoder", "merge"}
    assert timer.frame["encoder"] >= 0.02 > timer.frame["merge"]


def test_quick_run_writes_csv_markdown_and_plot(tmp_path):
    video = make_synthetic_video(3, 96, 128, seed=0).write(tmp_path / "video")
    out = tmp_path / "out"
    cmd = [
        sys.executable, str(BENCH / "bench_pipeline.py"), "--quick",
        "--frames", str(video / "frames"), "--mask", str(video / "annotations" / "00000.png"),
        "--out", str(out),
    ]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with (out / "pipeline.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == bench_pipeline.COLUMNS
    by_stage = {r["stage"]: r for r in rows}
    expected = [*STAGES, "maskrcnn_detect", "total_precomputed", "total_with_maskrcnn"]
    assert sorted(by_stage) == sorted(expected)  # no "templates": frame 0 is not scored
    for r in rows:
        assert r["device"] == "cpu" and r["threads"] == "1" and r["input_size"] == "64x112"
        assert 0 < float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"])
        assert int(r["samples"]) == 1  # 2 frames, the first not scored, one timed pass
    for stage in STAGES:
        assert by_stage[stage]["backbone"] == "resnet18"
    total = float(by_stage["total_precomputed"]["median_ms"])
    assert sum(float(by_stage[s]["median_ms"]) for s in STAGES) <= total
    with_det = float(by_stage["total_with_maskrcnn"]["median_ms"])
    assert with_det == pytest.approx(total + float(by_stage["maskrcnn_detect"]["median_ms"]))
    for stage, ms in (("total_precomputed", total), ("total_with_maskrcnn", with_det)):
        assert float(by_stage[stage]["fps"]) == pytest.approx(1000.0 / ms)
    md = (out / "pipeline.md").read_text()
    assert "## Machine" in md and "cores:" in md and "## resnet18, 1 thread(s)" in md
    assert "--quick" in md  # the command is recorded
    assert (out / "pipeline.png").read_bytes()[:8] == PNG_MAGIC
