"""The main job (`python export/to_onnx.py`) and the ONNX export of the matcher."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from dmm_deploy.export import ExportOptions, check_graph, export_matcher, graph_stats
from dmm_deploy.export.onnx_export import REDUCE_OPS, ort_session, random_problems
from dmm_deploy.matching import match_reference

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "matcher.onnx"
    model = export_matcher(path, ExportOptions())
    return path, model


def test_main_job_runs_as_a_script(repo_root, tmp_path):
    out = tmp_path / "m.onnx"
    proc = subprocess.run(
        [sys.executable, "export/to_onnx.py", "--out", str(out)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.is_file()
    report = proc.stdout
    for key in ("exported", "graph", "per step", "parity", "time", "result    OK"):
        assert key in report, report
    assert report.count("parity") >= 3


def test_graph_is_unrolled_and_tensorrt_friendly(exported):
    _, model = exported
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Loop", "Scan", "If", "Constant"}
    inits = {t.name for t in model.graph.initializer}
    reduces = [n for n in model.graph.node if n.op_type in REDUCE_OPS]
    assert len(reduces) >= 2 * 40 * 5
    assert all(n.input[1] in inits for n in reduces)
    assert check_graph(model) == []
    assert [i.name for i in model.graph.input] == ["cost", "x_init"]
    assert [o.name for o in model.graph.output] == ["assignment"]
    for vi in (*model.graph.input, *model.graph.output):
        assert vi.type.tensor_type.elem_type == TensorProto.FLOAT
        assert [d.dim_param for d in vi.type.tensor_type.shape.dim] == ["B", "n", "m"]


def test_at_most_seven_full_size_ops_per_inner_step(exported):
    _, model = exported
    stats = graph_stats(model, 40, 5)
    assert 0 < stats.full_size_ops_per_inner_step <= 7
    # 5 per inner step plus the gradient step and the running sum per outer step
    assert stats.full_size_ops >= 5 * 200


@pytest.mark.parametrize("shape", [(1, 1, 6), (2, 9, 4), (3, 1, 1), (4, 5, 50)])
def test_onnxruntime_matches_reference(exported, shape):
    path, _ = exported
    cost, x_init = random_problems(shape, seed=sum(shape))
    (got,) = ort_session(path).run(None, {"cost": cost, "x_init": x_init})
    want = match_reference(
        torch.from_numpy(cost).double(), torch.from_numpy(x_init).double(), 40, 5, 0.01
    ).numpy()
    assert got.shape == shape
    assert np.abs(got - want).max() <= 1e-5


def test_static_export(tmp_path):
    opts = ExportOptions(n_grad=3, n_proj=2, lr=0.1, static_shape=(2, 3, 4))
    model = export_matcher(tmp_path / "s.onnx", opts)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 4]
    cost, x_init = random_problems((2, 3, 4), seed=0)
    (got,) = ort_session(tmp_path / "s.onnx").run(None, {"cost": cost, "x_init": x_init})
    want = match_reference(torch.from_numpy(cost), torch.from_numpy(x_init), 3, 2, 0.1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_check_graph_reports_control_flow_and_constant_axes():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1])
    axes = helper.make_node(
        "Constant", [], ["axes"], value=helper.make_tensor("a", TensorProto.INT64, [1], [1])
    )
    red = helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="red", keepdims=1)
    model = helper.make_model(helper.make_graph([axes, red], "g", [x], [y]))
    assert any("input 'axes'" in p and "must be an initializer" in p for p in check_graph(model))
    body = helper.make_graph([], "body", [], [])
    loop = helper.make_node("If", ["c"], ["z"], name="branch", then_branch=body, else_branch=body)
    model2 = helper.make_model(helper.make_graph([loop], "g2", [], []))
    assert any("control flow" in p for p in check_graph(model2))
    onnx.checker.check_model(model)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-grad", "0"], "--n-grad: expected a positive integer"),
        (["--lr", "-1"], "--lr: expected a positive finite number"),
        (["--static", "2x3"], "--static: expected BxNxM"),
    ],
)
def test_bad_arguments_one_line(repo_root, args, message):
    proc = subprocess.run(
        [sys.executable, "export/to_onnx.py", *args],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def exported_original(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "matcher_original.onnx"
    options = ExportOptions(lr=0.1, variant="original")
    return path, export_matcher(path, options), options


def test_original_variant_graph_is_unrolled_and_small(exported_original):
    from dmm_deploy.export.tensorrt_compat import check_tensorrt

    _, model, _ = exported_original
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Loop", "Scan", "If", "Constant"}
    assert check_graph(model) == []
    assert check_tensorrt(model, "10.3") == [] and check_tensorrt(model, "11.0") == []
    stats = graph_stats(model, 40, 5)
    # relu, the shift, X', Z', the exit test X' - X and one Where per inner step, plus the
    # outer-step work; the last step's cycles feed nothing and are dropped by the exporter
    assert 6 <= stats.full_size_ops_per_inner_step <= 8
    assert "variant original" in model.doc_string


def _exit_batch():
    """Zero cost with a feasible one-hot start (both exits fire at step 0), and a constant
    cost with every row on one column (the outer exit fires after a few steps)."""
    cost = np.zeros((2, 3, 4), np.float32)
    x_init = np.zeros((2, 3, 4), np.float32)
    x_init[0, 0, 1] = x_init[0, 1, 3] = x_init[0, 2, 0] = 1.0
    cost[1] = 0.5
    x_init[1, :, 0] = 1.0
    return cost, x_init


@pytest.mark.parametrize("case", ["exits", (1, 1, 1), (1, 1, 6), (3, 9, 4), (2, 6, 30)])
def test_original_variant_onnxruntime_matches_reference(exported_original, case):
    path, _, opts = exported_original
    if case == "exits":
        cost, x_init = _exit_batch()
    else:
        cost, x_init = random_problems(case, seed=sum(case))
    (got,) = ort_session(path).run(None, {"cost": cost, "x_init": x_init})
    c64, x64 = torch.from_numpy(cost).double(), torch.from_numpy(x_init).double()
    want, info = match_reference(
        c64, x64, opts.n_grad, opts.n_proj, opts.lr, return_info=True, variant="original"
    )
    assert np.abs(got - want.numpy()).max() <= 1e-5
    if case == "exits":
        # a graph that stopped at another step would be off by far more than 1e-5
        assert info.steps[0] == 1 and 1 < info.steps[1] < opts.n_grad
        np.testing.assert_array_equal(got[0], x_init[0])


def test_original_variant_from_the_script(repo_root, tmp_path):
    out = tmp_path / "o.onnx"
    proc = subprocess.run(
        [
            *(sys.executable, "export/to_onnx.py", "--variant", "original"),
            *("--n-grad", "6", "--n-proj", "3", "--lr", "0.1", "--out", str(out)),
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "variant=original" in proc.stdout and "result    OK" in proc.stdout
    assert "tensorrt  10.3: OK" in proc.stdout


def test_variant_option_errors():
    with pytest.raises(ValueError, match="variant"):
        ExportOptions(variant="orig")
    with pytest.raises(ValueError, match="variant"):
        ExportOptions(variant="original", plugin=True)


def _cli(*args):
    """``dmm-deploy export ARGS``: the exit code (usage errors end in SystemExit)."""
    from dmm_deploy.cli import main

    try:
        return main(["export", *map(str, args)])
    except SystemExit as e:
        return e.code


def test_nan_parity_error_fails(tmp_path, monkeypatch, capsys):
    from dmm_deploy.export import matcher_job, onnx_export

    def nan_parity(path, options):
        return [((1, 2, 3), 1e-7), ((1, 2, 3), float("nan")), ((1, 2, 3), 1e-7)]

    # the export job imports the exporter's functions where it runs them
    monkeypatch.setattr(onnx_export, "verify_onnxruntime", nan_parity)
    lines = []
    out = tmp_path / "n.onnx"
    options = ExportOptions(n_grad=1, n_proj=2, static_shape=(1, 2, 3))
    assert matcher_job.run_export(options, out, log=lines.append) == 1
    assert "FAIL      max abs error nan (the graph's output is not finite)" in lines
    assert "result    FAILED" in lines and not out.exists()


@pytest.mark.parametrize("lr", ["1e39", "1e-300", "inf", "nan"])
def test_lr_outside_float32_is_refused(tmp_path, capsys, lr):
    assert _cli("--lr", lr, "--out", tmp_path / "m.onnx") == 2
    err = capsys.readouterr().err.strip()
    assert "argument --lr: expected a positive finite number" in err and "\n" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_existing_out_is_kept_unless_written_by_export(tmp_path, capsys):
    out = tmp_path / "keep.onnx"
    out.write_text("precious\n")
    assert _cli("--n-grad", 1, "--n-proj", 2, "--no-verify", "--out", out) == 2
    err = capsys.readouterr().err
    assert f"--out {out} exists and is not a matcher model written by this command: pass " in err
    assert out.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.onnx"]  # no temporary file
    assert _cli("--n-grad", 1, "--n-proj", 2, "--no-verify", "--out", out, "--overwrite") == 0
    model = onnx.load(str(out))
    assert ("dmm_deploy.model", "matcher") in {(p.key, p.value) for p in model.metadata_props}
    # an earlier export is replaced without --overwrite (running the quickstart twice)
    assert _cli("--n-grad", 2, "--n-proj", 1, "--no-verify", "--out", out) == 0
    assert "n_grad=2 " in onnx.load(str(out)).doc_string
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.onnx"]


def test_failing_export_leaves_out_as_it_was(tmp_path, monkeypatch):
    from dmm_deploy.export import matcher_job, onnx_export

    out = tmp_path / "m.onnx"
    assert _cli("--n-grad", 1, "--n-proj", 1, "--no-verify", "--out", out) == 0
    before = out.read_bytes()
    monkeypatch.setattr(onnx_export, "verify_onnxruntime", lambda p, o: [((1, 2, 3), 1.0)])
    monkeypatch.setattr(matcher_job, "_timing", lambda p, o: ((1, 2, 3), 1.0, 1.0))
    assert _cli("--n-grad", 2, "--n-proj", 1, "--static", "1x2x3", "--out", out) == 1
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("{tmp}", "argument --out: expected a file name, got the folder "),
        ("", "argument --out: expected a file name, got ''"),
        ("{tmp}/afile/x.onnx", "--out {tmp}/afile/x.onnx lies below the file {tmp}/afile"),
        ("{tmp}/newdir2/", "argument --out: expected a file name, got the folder "),
        ("/dev/null", "--out /dev/null is not a regular file; expected a file name"),
    ],
)
def test_script_checks_out_like_the_cli(repo_root, tmp_path, out, message):
    (tmp_path / "afile").write_text("x")
    out, message = out.format(tmp=tmp_path), message.format(tmp=tmp_path)
    proc = subprocess.run(
        [sys.executable, "export/to_onnx.py", "--n-grad", "1", "--n-proj", "1", "--out", out],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize(
    ("args", "variant"),
    [
        (["--n-grad", "10", "--n-proj", "1"], "listing1"),
        (["--n-grad", "1", "--n-proj", "5", "--static", "4x1x8"], "listing1"),
        (["--n-grad", "2", "--n-proj", "3", "--static", "2x3x1"], "listing1"),
        (["--n-grad", "3", "--n-proj", "1", "--static", "1x1x1"], "original"),
    ],
)
def test_full_size_check_holds_for_n_or_m_one_and_one_cycle(tmp_path, capsys, args, variant):
    out = tmp_path / "m.onnx"
    assert _cli(*args, "--variant", variant, "--no-verify", "--out", out) == 0
    assert "FAIL" not in capsys.readouterr().out


def test_full_size_statistic_ignores_static_ones(tmp_path):
    for shape in [(4, 1, 8), (4, 3, 1), (2, 3, 5)]:
        opts = ExportOptions(n_grad=1, n_proj=5, static_shape=shape)
        stats = graph_stats(export_matcher(tmp_path / "s.onnx", opts), 1, 5)
        assert stats.full_size_ops == 5 * 5 + 2 + 1  # 5 per cycle, step, running sum, mean


def test_full_size_check_still_catches_a_bloated_graph(tmp_path, monkeypatch):
    from dmm_deploy.export import matcher_job

    # one cycle fewer allowed per inner step than the graph has: the check must fail
    monkeypatch.setitem(matcher_job.INNER_FULL_SIZE_OPS_BY_VARIANT, "listing1", 4)
    monkeypatch.setattr(matcher_job, "OUTER_FULL_SIZE_OPS_ALLOWED", 2)
    lines = []
    options = ExportOptions(n_grad=2, n_proj=5)
    assert matcher_job.run_export(options, tmp_path / "m.onnx", verify=False, log=lines.append)
    assert any(line.startswith("FAIL      ") and "full-size ops" in line for line in lines)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--static", "100000x100000x100000"], "argument --static: expected BxNxM with B*N*M"),
        (["--static", "99999999999999999999x1x1"], "argument --static: expected BxNxM with"),
        (["--n-grad", "1000000000"], "argument --n-grad: expected an integer in 1..1000"),
        (["--n-proj", "101"], "argument --n-proj: expected an integer in 1..100"),
        (["--n-grad", "1000", "--n-proj", "100"], "--n-grad x --n-proj must be at most 10000"),
        (["--plugin", "--static", "1x65x10"], "--static with --plugin: N must be in 1..64"),
    ],
)
def test_sizes_out_of_range_one_line(tmp_path, capsys, args, message):
    assert _cli(*args, "--no-verify", "--out", tmp_path / "m.onnx") == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())
