"""--precision fp32|fp16|mixed: graph rewriting, float16 execution, parity, the benchmark."""

import argparse
import csv
import importlib.util

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from dmm_deploy.export import ExportOptions, export_matcher
from dmm_deploy.export.matcher_job import add_export_args, options_from_args, run_export
from dmm_deploy.export.onnx_export import ort_session, random_problems, verify_onnxruntime
from dmm_deploy.export.precision import apply_precision, run_graph_torch, to_fp16, with_fp16_io
from dmm_deploy.matching import match_reference

pytest.importorskip("onnxruntime")

N_GRAD, N_PROJ, LR = 6, 3, 0.05


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("prec") / "m32.onnx"
    return path, export_matcher(path, ExportOptions(n_grad=N_GRAD, n_proj=N_PROJ, lr=LR))


def _reference(cost, x_init):
    return match_reference(
        torch.from_numpy(cost).double(), torch.from_numpy(x_init).double(), N_GRAD, N_PROJ, LR
    ).numpy()


def _float_types(model):
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, check_type=True)
    g = inferred.graph
    io = {vi.name for vi in (*g.input, *g.output)}
    inner = {vi.name: vi.type.tensor_type.elem_type for vi in g.value_info if vi.name not in io}
    return g, inner


def test_fp16_graph_is_float16_throughout(fp32_model):
    _, model = fp32_model
    half = to_fp16(model)
    onnx.checker.check_model(half, full_check=True)
    g, inner = _float_types(half)
    for vi in (*g.input, *g.output):
        assert vi.type.tensor_type.elem_type == TensorProto.FLOAT16
    assert TensorProto.FLOAT not in inner.values()
    assert TensorProto.FLOAT16 in inner.values()
    assert all(t.data_type != TensorProto.FLOAT for t in half.graph.initializer)
    casts = [n for n in half.graph.node if n.op_type == "Cast"]
    assert casts and all(
        helper.get_attribute_value(n.attribute[0]) != TensorProto.FLOAT for n in casts
    )
    # the original is untouched
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_mixed_graph_casts_at_the_boundary_and_computes_in_fp32(fp32_model):
    _, model = fp32_model
    mixed = with_fp16_io(model)
    onnx.checker.check_model(mixed, full_check=True)
    g, inner = _float_types(mixed)
    for vi in (*g.input, *g.output):
        assert vi.type.tensor_type.elem_type == TensorProto.FLOAT16
    nodes = list(mixed.graph.node)
    assert [n.op_type for n in nodes[:2]] == ["Cast", "Cast"]
    assert nodes[-1].op_type == "Cast" and nodes[-1].output[0] == "assignment"
    # between the casts, every float tensor is float32
    assert set(inner.values()) - {TensorProto.INT64} == {TensorProto.FLOAT}
    readers = [n for n in nodes[2:] if {"cost", "x_init"} & set(n.input)]
    assert readers == []
    assert len(nodes) == len(model.graph.node) + 3


def test_apply_precision_rejects_unknown():
    with pytest.raises(ValueError, match="precision"):
        apply_precision(onnx.ModelProto(), "bf16")
    with pytest.raises(ValueError, match="precision"):
        ExportOptions(precision="int8")


def test_torch_executor_matches_onnxruntime_in_fp32(fp32_model):
    path, model = fp32_model
    cost, x_init = random_problems((3, 4, 9), seed=1)
    got = run_graph_torch(model, {"cost": cost, "x_init": x_init})["assignment"]
    (want,) = ort_session(path).run(None, {"cost": cost, "x_init": x_init})
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_torch_executor_really_rounds_to_fp16():
    # (a + b) - a with b below half an ulp of a: 0 in float16 arithmetic, b in float32
    nodes = [helper.make_node("Add", ["a", "b"], ["t"]), helper.make_node("Sub", ["t", "a"], ["y"])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT16, [1]) for n in "aby"]
    model = helper.make_model(
        helper.make_graph(nodes, "g", io[:2], io[2:]), opset_imports=[helper.make_opsetid("", 17)]
    )
    feeds = {"a": np.array([1.0], np.float16), "b": np.array([2.0**-12], np.float16)}
    assert run_graph_torch(model, feeds)["y"][0] == 0.0
    # onnxruntime's CPU provider computes it in float32: the reason for the torch executor
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert s.run(None, feeds)[0][0] == np.float16(2.0**-12)


def test_torch_executor_rejects_unknown_ops():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Sin", ["x"], ["y"])], "g", [x], [x]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    with pytest.raises(NotImplementedError, match="Sin"):
        run_graph_torch(model, {"x": np.zeros(2, np.float32)})


@pytest.mark.parametrize(("precision", "atol"), [("mixed", 1e-3), ("fp16", 2e-2)])
def test_export_precision_parity(tmp_path, precision, atol):
    opts = ExportOptions(n_grad=N_GRAD, n_proj=N_PROJ, lr=LR, precision=precision)
    path = tmp_path / f"m_{precision}.onnx"
    model = export_matcher(path, opts)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    results = verify_onnxruntime(path, opts)
    assert len(results) == 5
    assert max(err for _, err in results) <= atol
    # end to end on float32 problems: within atol plus the input rounding
    cost, x_init = random_problems((2, 5, 30), seed=7)
    feeds = {"cost": cost.astype(np.float16), "x_init": x_init.astype(np.float16)}
    if precision == "fp16":
        got = run_graph_torch(model, feeds)["assignment"]
    else:
        (got,) = ort_session(path).run(None, feeds)
    assert got.dtype == np.float16
    assert np.abs(got.astype(np.float64) - _reference(cost, x_init)).max() <= 2 * atol


def test_fp16_is_less_accurate_than_mixed(tmp_path):
    cost, x_init = random_problems((4, 6, 40), seed=3)
    feeds = {"cost": cost.astype(np.float16), "x_init": x_init.astype(np.float16)}
    want = match_reference(
        torch.from_numpy(feeds["cost"]).double(),
        torch.from_numpy(feeds["x_init"]).double(),
        N_GRAD,
        N_PROJ,
        LR,
    ).numpy()
    errs = {}
    for precision in ("fp16", "mixed"):
        opts = ExportOptions(n_grad=N_GRAD, n_proj=N_PROJ, lr=LR, precision=precision)
        model = export_matcher(tmp_path / f"{precision}.onnx", opts)
        got = run_graph_torch(model, feeds)["assignment"].astype(np.float64)
        errs[precision] = np.abs(got - want).max()
    assert errs["mixed"] <= 2.0**-11  # only the output rounding
    assert errs["fp16"] > errs["mixed"]


@pytest.mark.parametrize(
    ("precision", "variant"),
    [("fp32", "listing1"), ("mixed", "listing1"), ("fp16", "listing1"), ("fp16", "original")],
)
def test_export_job_with_precision(tmp_path, precision, variant):
    """Every precision exports and verifies; the fp16 check runs the graph node by node in
    torch, so it must know the original variant's operators too (norms, comparisons)."""
    parser = add_export_args(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--n-grad", "3", "--n-proj", "2", "--precision", precision, "--variant", variant,
         "--out", str(tmp_path / "m.onnx")]
    )  # fmt: skip
    opts = options_from_args(args)
    assert opts.precision == precision
    lines = []
    assert run_export(opts, args.out, log=lines.append) == 0, "\n".join(lines)
    report = "\n".join(lines)
    assert f"precision {precision}" in report
    assert "tensorrt  10.3: OK" in report and "tensorrt  11.0: OK" in report
    assert "result    OK" in report


def test_precision_benchmark_smoke(repo_root, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "bench_precision", repo_root / "bench/precision.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = [
        "--problems",
        "6",
        "--shapes",
        "3",
        "--n-grad",
        "3",
        "--n-proj",
        "2",
        "--out",
        str(tmp_path),
    ]
    assert bench.main(argv) == 0
    with open(tmp_path / "precision.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["precision"] for r in rows] == ["fp32", "fp16", "mixed"]
    fp32 = rows[0]
    assert float(fp32["argmax_rows_eq_fp32"]) == 1.0
    assert float(fp32["max_abs_err"]) < 1e-5
    for r in rows:
        assert int(r["problems"]) == 6
        assert 0.0 <= float(r["argmax_rows_eq_f64"]) <= 1.0
    assert "emulated" in (tmp_path / "precision.md").read_text()
