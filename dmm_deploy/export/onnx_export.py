"""ONNX export of the matcher: graph building, clean-up for TensorRT, checks and parity.

The exported graph is the batched reference (:func:`dmm_deploy.matching.match_reference`)
traced with PyTorch's TorchScript-based ("legacy") exporter and unrolled at a fixed
``n_grad x n_proj``: no Loop/Scan/If, batch, n and m dynamic (or fixed on request).
The legacy exporter is used because it traces this 200-cycle loop in about 2 s on a 2-core
CPU, where the torch.export-based exporter takes about 45 s and raises the opset to 18 for
the same graph; both produce the same unrolled operators.
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from dmm_deploy.export.precision import PRECISIONS, apply_precision, run_graph_torch
from dmm_deploy.matching.reference import check_variant, match_reference

__all__ = [
    "ELEMENTWISE_OPS",
    "ExportOptions",
    "GraphStats",
    "MatcherGraph",
    "check_graph",
    "export_matcher",
    "fold_constant_nodes",
    "graph_stats",
    "is_exported_matcher",
    "parity_shapes",
    "verify_onnxruntime",
]

INPUT_NAMES = ("cost", "x_init")
OUTPUT_NAME = "assignment"
# metadata_props entry of every model export_matcher writes: how a later export knows that an
# existing --out is its own (replaced) and not a user's file (kept unless --overwrite)
MODEL_MARKER = ("dmm_deploy.model", "matcher")
# the largest model is_exported_matcher reads (an unrolled export of 10000 cycles is ~40 MB)
_MAX_MARKED_BYTES = 256 * 1024 * 1024
REDUCE_OPS = frozenset(
    {
        "ReduceSum",
        "ReduceMean",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceSumSquare",
    }
)
ELEMENTWISE_OPS = frozenset(
    {"Add", "Sub", "Mul", "Div", "Relu", "Neg", "Max", "Min", "Where", "Cast", "Clip", "Abs"}
)


@dataclass(frozen=True)
class ExportOptions:
    """What one export of the matcher is: iterations, opset and which dims stay dynamic.

    ``static_shape`` fixes ``(B, n, m)``; ``None`` keeps all three dynamic.
    ``precision``: ``"fp32"``, ``"fp16"`` (the whole graph in float16) or ``"mixed"`` (float16
    inputs and output, float32 arithmetic); see :mod:`dmm_deploy.export.precision`.
    ``plugin``: export the matcher as one TensorRT plugin node instead of the unrolled graph
    (see :mod:`dmm_deploy.export.trt_plugin`).
    ``variant``: ``"listing1"`` (the specification) or ``"original"`` (the original code's
    solver, its early exits as per-problem masks; see :func:`dmm_deploy.matching.dmm_match`).
    """

    n_grad: int = 40
    n_proj: int = 5
    lr: float = 0.01
    opset: int = 17
    static_shape: tuple[int, int, int] | None = None
    precision: str = "fp32"
    plugin: bool = False
    variant: str = "listing1"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        check_variant(self.variant)
        if self.plugin and self.variant != "listing1":
            raise ValueError(
                f"variant {self.variant!r} is not available as a TensorRT plugin node; "
                "export the unrolled graph (without plugin) for it"
            )


class MatcherGraph(torch.nn.Module):
    """``(cost, x_init) -> assignment``: the reference at fixed iteration counts, for export."""

    def __init__(self, n_grad: int, n_proj: int, lr: float, variant: str = "listing1") -> None:
        super().__init__()
        self.n_grad, self.n_proj, self.lr = n_grad, n_proj, lr
        self.variant = check_variant(variant)

    def forward(self, cost: torch.Tensor, x_init: torch.Tensor) -> torch.Tensor:
        return match_reference(
            cost, x_init, self.n_grad, self.n_proj, self.lr, variant=self.variant
        )


def fold_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move every ``Constant`` node of the main graph into an initializer (in place).

    The legacy exporter feeds Reduce axes (and scalars) through ``Constant`` nodes;
    TensorRT's ONNX parser wants Reduce axes as initializers.
    """
    graph = model.graph
    keep = []
    for node in graph.node:
        if node.op_type != "Constant":
            keep.append(node)
            continue
        attr = {a.name: a for a in node.attribute}
        if "value" not in attr:  # value_float(s)/value_int(s) forms: rare, keep as nodes
            keep.append(node)
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr["value"].t)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
    del graph.node[:]
    graph.node.extend(keep)
    return model


def check_graph(model: onnx.ModelProto) -> list[str]:
    """Structural problems that keep the graph from TensorRT: control flow, non-constant axes.

    The same check as :func:`dmm_deploy.export.tensorrt_compat.structural_problems` (which
    :func:`~dmm_deploy.export.tensorrt_compat.check_tensorrt` also runs).
    """
    from dmm_deploy.export.tensorrt_compat import structural_problems

    return structural_problems(model)


@dataclass
class GraphStats:
    """Size of an exported matcher graph."""

    nodes: int
    ops: dict[str, int]
    full_size_ops: int
    full_size_ops_per_inner_step: float
    reduce_ops_per_inner_step: float
    file_bytes: int = 0
    notes: list[str] = field(default_factory=list)


def _dims(vi) -> tuple:
    return tuple(d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim)


def graph_stats(model: onnx.ModelProto, n_grad: int, n_proj: int) -> GraphStats:
    """Node counts; element-wise ops whose output has the full ``(B, n, m)`` shape of ``cost``.

    Shapes come from ONNX shape inference with data propagation; an element-wise node is
    full-size when its inferred output shape equals the ``cost`` input's shape. The input
    dims are set to distinct sizes (2, 3, 5) first, static ones included, and the shapes
    the model records are dropped: symbolic dims do not survive broadcasting against
    ``(B, 1, 1)`` tensors in ONNX shape inference, which would hide full-size ops, and with
    a static ``n = 1`` (or ``m = 1``) a column sum ``(B, 1, m)`` (a row sum ``(B, n, 1)``)
    and the broadcasts of it would have the full shape. The matcher graph has no shape
    operators, so its node shapes follow from its input shapes alone; a graph whose
    inference fails with the new sizes is measured at its own.
    """
    inferred = None
    if any(len(vi.type.tensor_type.shape.dim) == 3 for vi in model.graph.input):
        relabeled = onnx.ModelProto()
        relabeled.CopyFrom(model)
        del relabeled.graph.value_info[:]
        for vi in relabeled.graph.output:
            for dim in vi.type.tensor_type.shape.dim:
                dim.Clear()
        for vi in relabeled.graph.input:
            for dim, size in zip(vi.type.tensor_type.shape.dim, (2, 3, 5), strict=False):
                dim.Clear()
                dim.dim_value = size
        try:
            inferred = onnx.shape_inference.infer_shapes(
                relabeled, strict_mode=True, data_prop=True
            )
        except Exception:  # shape inference raises several types (InferenceError, ...)
            inferred = None
    if inferred is None:
        concrete = onnx.ModelProto()
        concrete.CopyFrom(model)
        for vi in concrete.graph.input:
            for dim, size in zip(vi.type.tensor_type.shape.dim, (2, 3, 5), strict=False):
                if not dim.dim_value:
                    dim.dim_value = size
        inferred = onnx.shape_inference.infer_shapes(concrete, data_prop=True)
    shapes = {vi.name: _dims(vi) for vi in inferred.graph.value_info}
    shapes.update({vi.name: _dims(vi) for vi in inferred.graph.output})
    full = _dims(next(i for i in inferred.graph.input if i.name == INPUT_NAMES[0]))
    ops = Counter(n.op_type for n in model.graph.node)
    n_full = sum(
        1
        for node in inferred.graph.node
        if node.op_type in ELEMENTWISE_OPS and shapes.get(node.output[0]) == full
    )
    n_reduce = sum(ops[o] for o in REDUCE_OPS)
    steps = n_grad * n_proj
    return GraphStats(
        nodes=len(model.graph.node),
        ops=dict(ops.most_common()),
        full_size_ops=n_full,
        full_size_ops_per_inner_step=n_full / steps,
        reduce_ops_per_inner_step=n_reduce / steps,
    )


def export_matcher(path: str | Path, options: ExportOptions = ExportOptions()) -> onnx.ModelProto:
    """Export the matcher to ``path``, fold constants, check, infer shapes; return the model.

    With ``options.plugin`` the graph is one TensorRT plugin node instead
    (:func:`dmm_deploy.export.trt_plugin.make_plugin_model`).

    Raises ``RuntimeError`` listing the problems if the graph fails :func:`check_graph`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if options.plugin:
        from dmm_deploy.export.trt_plugin import make_plugin_model

        model = make_plugin_model(
            options.n_grad,
            options.n_proj,
            options.lr,
            half=options.precision != "fp32",
            static_shape=options.static_shape,
            opset=options.opset,
        )
        _mark(model)
        onnx.save(model, str(path))
        return model
    shape = options.static_shape or (2, 3, 5)
    cost = torch.rand(shape)
    x_init = torch.zeros(shape)
    module = MatcherGraph(options.n_grad, options.n_proj, options.lr, options.variant).eval()
    dynamic_axes = None
    if options.static_shape is None:
        axes = {0: "B", 1: "n", 2: "m"}
        dynamic_axes = {name: axes for name in (*INPUT_NAMES, OUTPUT_NAME)}
    with warnings.catch_warnings():
        # the legacy exporter announces its deprecation and warns that n, m become floats
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (cost, x_init),
            str(path),
            dynamo=False,
            opset_version=options.opset,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    model = onnx.load(str(path))
    fold_constant_nodes(model)
    model = apply_precision(model, options.precision)
    model.doc_string = (
        f"DMM matcher: n_grad={options.n_grad} n_proj={options.n_proj} lr={options.lr}; "
        + (
            "output is the mean of the projected-gradient iterates (x_init included)"
            if options.variant == "listing1"
            else "variant original: output is the mean of x_init and the iterates before "
            "each step's projections, up to the per-problem early exits"
        )
        + ("" if options.precision == "fp32" else f"; precision {options.precision}")
    )
    _mark(model)
    onnx.checker.check_model(model, full_check=True)
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    problems = check_graph(model)
    if problems:
        raise RuntimeError("exported graph is not deployable:\n  " + "\n  ".join(problems))
    onnx.save(model, str(path))
    return model


def _mark(model: onnx.ModelProto) -> None:
    key, value = MODEL_MARKER
    onnx.helper.set_model_props(
        model, {**{p.key: p.value for p in model.metadata_props}, key: value}
    )


def is_exported_matcher(path: str | Path) -> bool:
    """Whether ``path`` is a regular file holding an ONNX model :func:`export_matcher` wrote:
    one with the :data:`MODEL_MARKER` metadata entry, or, from versions before the marker,
    the ``cost, x_init -> assignment`` graph with its ``DMM matcher`` doc string.
    Anything else (another model, another file, a file over 256 MiB) is not."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > _MAX_MARKED_BYTES:
            return False
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not protobuf, or not readable: not ours
        return False
    key, value = MODEL_MARKER
    if any(p.key == key and p.value == value for p in model.metadata_props):
        return True
    graph = model.graph
    return (
        model.doc_string.startswith("DMM matcher")
        and tuple(i.name for i in graph.input) == INPUT_NAMES
        and [o.name for o in graph.output] == [OUTPUT_NAME]
    )


def parity_shapes(options: ExportOptions) -> list[tuple[int, int, int]]:
    """Shapes to check the export on: several (n > m and n = 1 included) when dynamic."""
    if options.static_shape is not None:
        return [options.static_shape] * 3
    return [(1, 1, 7), (3, 9, 4), (4, 5, 50), (2, 8, 128), (2, 1, 1)]


def ort_session(path: str | Path, threads: int = 1, providers: list[str] | None = None):
    """An onnxruntime session (imported lazily), ``threads`` intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError(
            "onnxruntime is needed to run the exported graph: pip install 'dmm-deploy[cpu]'"
        ) from e
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])


def random_problems(shape, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Costs uniform in [-1, 1) and a random non-negative start, float32."""
    g = np.random.default_rng(seed)
    cost = g.uniform(-1.0, 1.0, size=shape).astype(np.float32)
    x_init = (g.uniform(0.0, 1.0, size=shape) / shape[-1]).astype(np.float32)
    return cost, x_init


def verify_onnxruntime(
    path: str | Path, options: ExportOptions, seed: int = 0
) -> list[tuple[tuple[int, int, int], float]]:
    """Max abs error of the exported graph against the float64 torch reference, per shape.

    The graph runs in onnxruntime (CPU), except for ``precision="fp16"``: onnxruntime's CPU
    provider computes float16 graphs in float32, so that graph runs node by node in torch
    float16 (:func:`dmm_deploy.export.precision.run_graph_torch`). For ``fp16`` and ``mixed``
    the inputs are rounded to float16 and the reference is computed from the rounded inputs.
    """
    half = options.precision != "fp32"
    if options.precision == "fp16":
        model = onnx.load(str(path))

        def run(feeds):
            return run_graph_torch(model, feeds)[OUTPUT_NAME]
    else:
        sess = ort_session(path)

        def run(feeds):
            return sess.run([OUTPUT_NAME], feeds)[0]

    results = []
    for i, shape in enumerate(parity_shapes(options)):
        cost, x_init = random_problems(shape, seed + i)
        if half:
            cost, x_init = cost.astype(np.float16), x_init.astype(np.float16)
        got = run({"cost": cost, "x_init": x_init}).astype(np.float64)
        want = match_reference(
            torch.from_numpy(cost).double(),
            torch.from_numpy(x_init).double(),
            options.n_grad,
            options.n_proj,
            options.lr,
            variant=options.variant,
        ).numpy()
        results.append((shape, float(np.abs(got - want).max())))
    return results


def median_time(fn, repeat: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in seconds, warm-up excluded."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def initializer_array(model: onnx.ModelProto, name: str) -> np.ndarray:
    """The value of one initializer (for checks and tests)."""
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)
