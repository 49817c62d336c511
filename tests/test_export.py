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
