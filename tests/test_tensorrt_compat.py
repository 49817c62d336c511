"""check_tensorrt: the real export passes, and each planted problem is reported."""

import json
from importlib import resources

import onnx
import pytest
from onnx import TensorProto, helper

from dmm_deploy.export import ExportOptions, check_tensorrt, export_matcher
from dmm_deploy.export.tensorrt_compat import operator_table

VERSIONS = ("10.3", "11.0")
# operators the matcher and the full segmentation model export to (the brief's list)
MODEL_OPS = [
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "Cast",
    "Neg",
    "Max",
    "Min",
    "Where",
    "Shape",
    "Gather",
    "Slice",
    "Concat",
    "Reshape",
    "Unsqueeze",
    "Squeeze",
    "Conv",
    "BatchNormalization",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Resize",
    "Sigmoid",
    "Tanh",
    "MatMul",
    "Gemm",
    "Transpose",
    "Expand",
    "ConstantOfShape",
    "Constant",
    "Reciprocal",
    "Sqrt",
    "Pow",
    "Clip",
    "Softmax",
    "TopK",
    "NonMaxSuppression",
    "RoiAlign",
    "Equal",
    "Less",
    "Greater",
    "And",
    "Or",
    "Not",
    "ArgMax",
]


def _model(nodes, inputs, outputs, inits=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", opset), *extra_opsets]
    return helper.make_model(graph, opset_imports=opsets)


def _f32(name, shape=("B", "n", "m")):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _axes(name="axes"):
    return helper.make_tensor(name, TensorProto.INT64, [1], [-1])


def _clean_reduce():
    """A small graph that passes: ReduceSum over an initializer axis, then Relu."""
    nodes = [
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], name="sum", keepdims=1),
        helper.make_node("Relu", ["s"], ["y"], name="relu"),
    ]
    return _model(nodes, [_f32("x")], [_f32("y", ("B", "n", 1))], [_axes()])


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
    path = tmp_path_factory.mktemp("compat") / "matcher.onnx"
    return path, export_matcher(path, ExportOptions())


@pytest.mark.parametrize("version", VERSIONS)
def test_default_export_passes(default_export, version):
    path, model = default_export
    assert check_tensorrt(model, trt_version=version) == []
    assert check_tensorrt(path, trt_version=version) == []  # from the file too
    assert check_tensorrt(str(path), trt_version=version) == []


@pytest.mark.parametrize("precision", ["fp16", "mixed"])
def test_precision_exports_pass(tmp_path, precision):
    opts = ExportOptions(n_grad=2, n_proj=2, precision=precision)
    model = export_matcher(tmp_path / "m.onnx", opts)
    for version in VERSIONS:
        assert check_tensorrt(model, version) == []


def test_clean_small_graph_passes():
    for version in ("10.0", "10.3", "10.x", "10.14", "10.15", "11.0", "11.4"):
        assert check_tensorrt(_clean_reduce(), version) == []


def test_data_file_names_its_source_and_covers_the_model_ops():
    data = json.loads(
        resources.files("dmm_deploy.export").joinpath("data/tensorrt_onnx_ops.json").read_text()
    )
    assert "onnx-tensorrt" in data["source"] and "operators.md" in data["source"]
    assert data["limits"]
    for version in VERSIONS:
        table = operator_table(version)
        assert not table.supported & table.unsupported
        missing = [op for op in MODEL_OPS if op not in table.supported]
        assert missing == [], (version, missing)
        for op in ("Unique", "StringNormalizer", "SequenceAt", "SplitToSequence"):
            assert op in table.unsupported


def test_table_selection():
    assert operator_table("10.3").name == "10"
    assert operator_table("10.14.1").name == "10"
    assert operator_table("10.15").name == "11"
    assert operator_table("11.0").name == "11"
    assert operator_table("10.3").opset_max == 20
    with pytest.raises(ValueError, match="no ONNX operator table"):
        operator_table("8.6")
    with pytest.raises(ValueError, match="no ONNX operator table"):
        operator_table("12.0")
    with pytest.raises(ValueError, match="trt_version"):
        check_tensorrt(_clean_reduce(), "ten")
    with pytest.raises(TypeError, match="trt_version"):
        check_tensorrt(_clean_reduce(), 10.3)


def test_bad_model_argument(tmp_path):
    with pytest.raises(TypeError, match="model_or_path"):
        check_tensorrt(42)
    with pytest.raises(FileNotFoundError):
        check_tensorrt(tmp_path / "missing.onnx")


def test_unsupported_and_unknown_operators():
    nodes = [
        helper.make_node("Unique", ["x"], ["u"], name="uniq"),
        helper.make_node("FancyOp", ["x"], ["y"], name="fancy"),
    ]
    model = _model(nodes, [_f32("x")], [_f32("u"), _f32("y")])
    for version in VERSIONS:
        problems = check_tensorrt(model, version)
        assert any("Unique" in p and "not supported" in p for p in problems), problems
        assert any("FancyOp" in p and "not in the TensorRT" in p for p in problems), problems
        assert len(problems) == 2


def test_operator_added_after_10_1_is_a_problem_for_10_3_only():
    size = helper.make_tensor("size", TensorProto.INT64, [], [16])
    node = helper.make_node("HannWindow", ["size"], ["w"], name="hann")
    model = _model(
        [node], [], [helper.make_tensor_value_info("w", TensorProto.FLOAT, [16])], [size]
    )
    assert any("HannWindow" in p for p in check_tensorrt(model, "10.3"))
    assert check_tensorrt(model, "11.0") == []


def test_reduce_axes_not_an_initializer():
    # axes from a Constant node (what the legacy exporter leaves) and from a graph input
    nodes = [
        helper.make_node("Constant", [], ["k"], name="const_axes", value=_axes("k_value")),
        helper.make_node("ReduceSum", ["x", "k"], ["s"], name="sum_const", keepdims=1),
        helper.make_node("ReduceMax", ["x", "ax_in"], ["t"], name="max_input", keepdims=1),
    ]
    ax_in = helper.make_tensor_value_info("ax_in", TensorProto.INT64, [1])
    model = _model(nodes, [_f32("x"), ax_in], [_f32("s"), _f32("t")])
    problems = check_tensorrt(model, "10.3")
    assert any("sum_const" in p and "axes" in p and "initializer" in p for p in problems), problems
    assert any("max_input" in p and "axes" in p for p in problems), problems
    assert len(problems) == 2


def test_unsqueeze_axes_from_constant_node_are_fine():
    nodes = [
        helper.make_node("Constant", [], ["k"], value=_axes("k_value")),
        helper.make_node("Unsqueeze", ["x", "k"], ["y"], name="unsq"),
    ]
    model = _model(nodes, [_f32("x")], [_f32("y", ("B", "n", "m", 1))])
    assert check_tensorrt(model, "10.3") == []


def test_control_flow_nodes():
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Relu", ["v_in"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["B", "n", "m"]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["B", "n", "m"]),
        ],
    )
    trip = helper.make_tensor("trip", TensorProto.INT64, [], [3])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    loop = helper.make_node("Loop", ["trip", "cond", "x"], ["y"], name="loop", body=body)
    model = _model([loop], [_f32("x")], [_f32("y")], [trip, cond])
    problems = check_tensorrt(model, "11.0")
    assert len(problems) == 1 and "loop" in problems[0] and "control flow" in problems[0]


def test_float64_anywhere():
    nodes = [
        helper.make_node("Cast", ["x"], ["xd"], name="to_double", to=TensorProto.DOUBLE),
        helper.make_node("Add", ["xd", "bias"], ["y"], name="add"),
    ]
    bias = helper.make_tensor("bias", TensorProto.DOUBLE, [1], [0.5])
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["B", "n", "m"])
    model = _model(nodes, [_f32("x")], [y], [bias])
    problems = check_tensorrt(model, "10.3")
    assert len(problems) == 1
    assert "DOUBLE" in problems[0]
    for name in ("'y'", "'bias'", "to_double"):
        assert name in problems[0]


def test_float64_and_int16_inputs():
    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 3])
    k = helper.make_tensor_value_info("k", TensorProto.INT16, [2, 3])
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["k"], ["z"])]
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2, 3])
    z = helper.make_tensor_value_info("z", TensorProto.INT16, [2, 3])
    problems = check_tensorrt(_model(nodes, [x, k], [y, z]), "11.0")
    assert any("DOUBLE" in p and "'x'" in p for p in problems), problems
    assert any("INT16" in p and "'k'" in p for p in problems), problems


def test_input_without_fixed_rank():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)  # no shape at all
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [x], [_f32("y")])
    problems = check_tensorrt(model, "10.3")
    assert problems == ["input 'x' has no fixed rank (no shape in the graph)"]


def test_non_tensor_input():
    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)
    node = helper.make_node("SequenceAt", ["s", "pos"], ["y"], name="at")
    pos = helper.make_tensor("pos", TensorProto.INT64, [], [0])
    model = _model([node], [seq], [_f32("y")], [pos])
    problems = check_tensorrt(model, "10.3")
    assert any("'s' is a sequence_type, not a tensor" in p for p in problems), problems
    assert any("SequenceAt" in p for p in problems), problems


def test_opset_range():
    model = _clean_reduce()
    model.opset_import[0].version = 21
    assert any("opset 21" in p for p in check_tensorrt(model, "10.3"))
    assert check_tensorrt(model, "11.0") == []


def test_domains_and_plugins():
    nodes = [
        helper.make_node("Adam", ["x"], ["a"], name="adam", domain="ai.onnx.preview.training"),
        helper.make_node("Mystery", ["x"], ["b"], name="myst", domain="com.example"),
    ]
    extra = [
        helper.make_opsetid("ai.onnx.preview.training", 1),
        helper.make_opsetid("com.example", 1),
    ]
    model = _model(nodes, [_f32("x")], [_f32("a"), _f32("b")], extra_opsets=extra)
    problems = check_tensorrt(model, "11.0")
    assert any("training" in p for p in problems), problems
    assert any("com.example" in p and "plugin" in p for p in problems), problems

    plug = helper.make_node("dmm_match", ["c", "x"], ["y"], name="dmm", domain="dmm_deploy")
    model = _model(
        [plug],
        [_f32("c"), _f32("x")],
        [_f32("y")],
        extra_opsets=[helper.make_opsetid("dmm_deploy", 1)],
    )
    assert any(">= 10.9" in p for p in check_tensorrt(model, "10.3"))
    assert check_tensorrt(model, "10.9") == []
    assert check_tensorrt(model, "11.0") == []


def test_problems_are_readable_lines(default_export):
    _, model = default_export
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    problems = check_tensorrt(broken, "10.3")
    assert problems and all(isinstance(p, str) and "\n" not in p for p in problems)


# -- per-version rules (TopK K, Clip min/max, Swish) ------------------------------------------


def _one_node_model(node, inputs, opset, initializers=()):
    from onnx import helper

    graph = helper.make_graph(
        [*node] if isinstance(node, list) else [node],
        "g",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])],
        initializer=list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _x():
    from onnx import helper

    return helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b"])


def test_topk_with_a_computed_k_passes_every_version():
    """onnx-tensorrt 10.1 GA's TopK importer hands a tensor K to ITopKLayer::setInput(1) and
    both operator tables only limit K below 3840: a computed K is no parser problem."""
    from onnx import helper

    nodes = [
        helper.make_node("Shape", ["x"], ["s"], start=1, end=2),
        helper.make_node("TopK", ["x", "s"], ["y", "i"], axis=1),
    ]
    model = _one_node_model(nodes, [_x()], 17)
    for version in ("10.3", "10.15", "11.0"):
        assert check_tensorrt(model, version) == []


def test_clip_with_tensor_bounds_passes_every_version():
    """onnx-tensorrt 10.0-10.1 GA's Clip importer takes tensor min/max through its elementwise
    path (its 'must be an initializer' asserts are on the path for weights only), so a
    non-initializer bound is not a parser problem in any version."""
    from onnx import helper

    lo = helper.make_tensor_value_info("lo", TensorProto.FLOAT, [])
    model = _one_node_model(helper.make_node("Clip", ["x", "lo"], ["y"]), [_x(), lo], 17)
    for version in ("10.3", "10.15", "11.0"):
        assert check_tensorrt(model, version) == []


def test_swish_needs_tensorrt_11():
    from onnx import helper

    model = _one_node_model(helper.make_node("Swish", ["x"], ["y"]), [_x()], 24)
    assert check_tensorrt(model, "11.0") == []
    (problem,) = check_tensorrt(model, "10.15")
    assert "Swish" in problem and "from 11.0 on" in problem
    assert any("Swish" in p for p in check_tensorrt(model, "10.3"))
