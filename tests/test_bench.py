"""Smoke tests of the CPU benchmark and the convergence study (tiny sizes, temp output dirs)."""

import csv
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import bench_matcher  # noqa: E402
import convergence  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_summarize_percentiles():
    stats = _common.summarize([0.001 * k for k in range(1, 11)])
    assert stats["repeats"] == 10
    assert stats["median_ms"] == pytest.approx(5.5)
    assert stats["p20_ms"] == pytest.approx(np.percentile(np.arange(1, 11), 20))
    assert stats["p20_ms"] <= stats["median_ms"] <= stats["p80_ms"]


def test_time_calls_respects_repeat_bounds():
    calls = []
    times = _common.time_calls(
        lambda: calls.append(1), warmup=2, min_repeats=4, max_repeats=6, budget_s=0.0
    )
    assert len(times) == 4  # budget spent at once: stops at min_repeats
    assert len(calls) == 6  # 2 warm-up calls, not timed
    times = _common.time_calls(lambda: None, warmup=0, min_repeats=3, max_repeats=5, budget_s=60)
    assert len(times) == 5


def test_machine_info_names_cpu_and_versions():
    info = _common.machine_info()
    assert info["torch"] == torch.__version__
    assert int(info["cores"]) >= 1
    assert info["cpu"]
    assert "UTC" in info["date_utc"]


def test_spec_loaded_from_tests_is_the_listing():
    spec = _common.load_spec()
    assert Path(spec.__file__).resolve() == (ROOT / "tests" / "spec_listing1.py").resolve()
    c = torch.rand(3, 5, dtype=torch.float64)
    x = torch.zeros_like(c)
    from dmm_deploy.matching import match_reference

    got = spec.relax_matching(c, x, 4, 3, 0.1)
    want = match_reference(c[None], x[None], 4, 3, 0.1)[0]
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", ["onehot", "dense"])
def test_random_inits_are_feasible(kind):
    g = torch.Generator().manual_seed(0)
    x = convergence.random_inits(g, 7, 5, 9, kind, torch.float64)
    assert x.shape == (7, 5, 9)
    torch.testing.assert_close(x.sum(-1), torch.ones(7, 5, dtype=torch.float64))
    assert bool((x.sum(-2) <= 1 + 1e-12).all())
    assert bool((x >= 0).all())
    if kind == "onehot":
        assert set(x.unique().tolist()) == {0.0, 1.0}


def test_optimum_matches_brute_force():
    cost, sizes = convergence.random_table_problems(12, 3, 5, seed=3)
    assert bool((sizes[:, 0] <= sizes[:, 1]).all())
    assert bool((sizes[:, 1] <= 5).all())
    opt = convergence.optimum(cost, sizes)
    for b in range(cost.shape[0]):
        nb, mb = sizes[b].tolist()
        c = cost[b, :nb, :mb].double()
        best = min(
            sum(float(c[i, cols[i]]) for i in range(nb))
            for cols in itertools.permutations(range(mb), nb)
        )
        assert float(opt[b]) == pytest.approx(best, abs=1e-12)


def test_ratio_rows_are_median_ratios():
    rows = [
        {"impl": "spec", "threads": 1, "B": 4, "n": 2, "m": 3, "median_ms": 30.0},
        {"impl": "eager", "threads": 1, "B": 4, "n": 2, "m": 3, "median_ms": 2.0},
        {"impl": "ort", "threads": 1, "B": 4, "n": 2, "m": 3, "median_ms": 4.0},
    ]
    (r,) = bench_matcher.ratio_rows(rows)
    assert r["eager over spec"] == pytest.approx(15.0)
    assert r["ort over eager"] == pytest.approx(0.5)
    assert r["compile over eager"] == ""


def test_bad_shape_is_rejected(capsys):
    with pytest.raises(SystemExit):
        bench_matcher.parse_args(["--shapes", "8by128"])
    assert "NxM" in capsys.readouterr().err


def test_bench_matcher_quick_end_to_end(tmp_path):
    _run("bench_matcher.py", "--quick", "--threads", "1", "--out", str(tmp_path))
    rows = _read_csv(tmp_path / "matcher.csv")
    assert {(r["impl"], r["B"]) for r in rows} == {
        (i, b) for i in ("spec", "eager", "ort") for b in ("1", "3")
    }
    for r in rows:
        p20, med, p80 = float(r["p20_ms"]), float(r["median_ms"]), float(r["p80_ms"])
        assert 0 < p20 <= med <= p80
        assert int(r["repeats"]) >= 3
        assert float(r["max_abs_diff_vs_eager"]) < 1e-5
    md = (tmp_path / "matcher.md").read_text()
    assert "eager over spec" in md and "ort over eager" in md
    assert _common.cpu_model() in md
    assert (tmp_path / "matcher.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_bench_matcher_compile_path(tmp_path):
    """The torch.compile case runs through the same code (dynamo only: no C++ build here)."""
    _run(
        "bench_matcher.py",
        "--quick",
        "--impls",
        "eager",
        "compile",
        "--compile-backend",
        "eager",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
    )
    rows = _read_csv(tmp_path / "matcher.csv")
    comp = [r for r in rows if r["impl"] == "compile"]
    assert len(comp) == 2
    assert all(float(r["max_abs_diff_vs_eager"]) < 1e-6 for r in comp)
    assert (
        "torch.compile (eager, dynamic shapes), 1 thread(s)"
        in (tmp_path / "matcher.md").read_text()
    )


def test_convergence_quick_end_to_end(tmp_path):
    _run("convergence.py", "--quick", "--out", str(tmp_path))
    curves = _read_csv(tmp_path / "convergence_curves.csv")
    # 3 matrices x 2 lrs x (n_grad + 1) outer steps (start included)
    assert len(curves) == 3 * 2 * 13
    for r in curves:
        if r["outer_step"] == "0":  # the running mean starts at the start's objective
            assert float(r["mean_objective_mean"]) == pytest.approx(float(r["objective_mean"]))
    inner = _read_csv(tmp_path / "convergence_inner.csv")
    assert {r["inner_step"] for r in inner} == {"1", "2", "3", "4"}
    assert all(float(r["projection_error_mean"]) >= 0 for r in inner)
    table = _read_csv(tmp_path / "convergence_table.csv")
    settings = convergence.QUICK_TABLE_SETTINGS
    assert len(table) == 1 + 2 * 2 * len(settings)  # start row; settings x starts x variants
    assert table[0]["init"] == "greedy (start only)" and table[0]["variant"] == ""
    solved = table[1:]
    # every (setting, start) cell has both variants, side by side, listing1 first
    cells = [(r["n_grad"], r["n_proj"], r["lr"], r["init"]) for r in solved]
    want = [
        (str(g), str(p), str(lr), init)
        for g, p, lr in settings
        for init in ("zeros", "greedy")
        for _ in ("listing1", "original")
    ]
    assert cells == want
    assert [r["variant"] for r in solved] == ["listing1", "original"] * (2 * len(settings))
    for r in table:
        assert 0 <= float(r["row_agreement"]) <= 1
        assert 0 <= float(r["problem_agreement"]) <= float(r["row_agreement"])
        assert 0 <= float(r["argmax_is_matching"]) <= 1
        assert int(r["problems"]) == 16
    for r in solved:
        for key in ("gap_median", "gap_mean", "gap_p90", "row_gap_median", "violation_median"):
            assert np.isfinite(float(r[key])), (r["variant"], key)
        assert float(r["violation_median"]) >= 0
        n_grad = int(r["n_grad"])
        assert 1 <= float(r["steps_mean"]) <= n_grad
        assert 0 <= float(r["early_exit"]) <= 1
        assert 0 <= float(r["same_as_listing1"]) <= 1
        if r["variant"] == "listing1":  # fixed counts: never stops early
            assert float(r["steps_mean"]) == n_grad and float(r["early_exit"]) == 0
            assert float(r["same_as_listing1"]) == 1
    # the variants differ: the original's mean averages pre-projection iterates
    for lis, ori in zip(solved[::2], solved[1::2], strict=True):
        assert float(lis["gap_mean"]) != float(ori["gap_mean"])
    assert (tmp_path / "convergence.png").read_bytes()[:8] == PNG_MAGIC
    md = (tmp_path / "convergence.md").read_text()
    assert "exact" in md and "| variant |" in md
    assert "| listing1 |" in md and "| original |" in md


def test_convergence_table_only_one_variant_same_rows(tmp_path, capsys):
    """--table-only writes the table alone; a variant's rows do not depend on the others."""
    assert convergence.main(["--quick", "--table-only", "--out", str(tmp_path)]) == 0
    both = _read_csv(tmp_path / "convergence_table.csv")
    md = (tmp_path / "convergence_table.md").read_text()
    assert "| original |" in md and "Command: `python bench/convergence.py --quick" in md
    assert not (tmp_path / "convergence.md").exists()
    assert not (tmp_path / "convergence_curves.csv").exists()
    out = tmp_path / "original"
    argv = ["--quick", "--table-only", "--variants", "original", "--out", str(out)]
    assert convergence.main(argv) == 0
    alone = _read_csv(out / "convergence_table.csv")
    assert {r["variant"] for r in alone[1:]} == {"original"}
    assert all(r["same_as_listing1"] == "" for r in alone)  # nothing to compare with
    skip = {"seconds", "same_as_listing1"}
    strip = [
        {k: v for k, v in r.items() if k not in skip} for r in both if r["variant"] != "listing1"
    ]
    assert [{k: v for k, v in r.items() if k not in skip} for r in alone] == strip


def test_convergence_rejects_unknown_variant(capsys):
    with pytest.raises(SystemExit):
        convergence.parse_args(["--variants", "listing2"])
    assert "listing2" in capsys.readouterr().err
    args = convergence.parse_args(["--variants", "original", "listing1", "original"])
    assert args.variants == ["original", "listing1"]
    assert convergence.parse_args([]).variants == ["listing1", "original"]
    with pytest.raises(SystemExit):
        convergence.parse_args(["--threads", "0"])
    assert "--threads" in capsys.readouterr().err


def test_write_csv_rounds_floats_on_request(tmp_path):
    rows = [{"a": 1 / 3, "b": 2, "c": np.float64(2 / 3)}]
    _common.write_csv(tmp_path / "x.csv", rows, digits=3)
    assert (tmp_path / "x.csv").read_text().splitlines() == ["a,b,c", "0.333,2,0.667"]
    _common.write_csv(tmp_path / "y.csv", rows)
    assert float(_read_csv(tmp_path / "y.csv")[0]["a"]) == 1 / 3
