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
