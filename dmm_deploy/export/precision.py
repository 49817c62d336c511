"""Precision variants of an exported graph, and a float16 executor for checking them on a CPU.

Three precisions are offered for the matcher export:

* ``fp32``: the graph as traced, float32 everywhere.
* ``fp16``: every float32 tensor of the graph becomes float16 (inputs, outputs, initializers,
  ``Cast`` targets): a strongly typed TensorRT network then computes the whole matcher in fp16.
* ``mixed``: float16 inputs and output with a ``Cast`` at the boundary; the arithmetic between
  stays float32, so strongly typed builds (always the case in TensorRT 11) keep it in fp32.

The conversion rewrites tensor types directly: the matcher graph is small and made of
type-polymorphic element-wise operators and reductions.

onnxruntime's CPU provider does not compute float16 arithmetic: it wraps float16 nodes in casts
to float32 and removes the casts between neighbouring nodes, so a float16 graph runs in float32
there. :func:`run_graph_torch` executes a graph node by node with torch tensors instead, each
operator in the dtype the graph gives it: every float16 node rounds its result to float16.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

__all__ = ["PRECISIONS", "apply_precision", "run_graph_torch", "to_fp16", "with_fp16_io"]

PRECISIONS = ("fp32", "fp16", "mixed")
_FLOAT, _HALF = TensorProto.FLOAT, TensorProto.FLOAT16


def _retype_value_infos(values) -> None:
    for vi in values:
        tt = vi.type.tensor_type
        if tt.elem_type == _FLOAT:
            tt.elem_type = _HALF


def _half_tensor(t: onnx.TensorProto) -> onnx.TensorProto:
    out = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name)
    return out


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every float32 tensor of its main graph turned into float16.

    Graph inputs, outputs, initializers, ``Constant``/``ConstantOfShape`` values and ``Cast``
    targets are rewritten; intermediate type annotations are dropped (run shape inference again).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    _retype_value_infos(g.input)
    _retype_value_infos(g.output)
    del g.value_info[:]
    inits = [_half_tensor(t) if t.data_type == _FLOAT else t for t in g.initializer]
    del g.initializer[:]
    g.initializer.extend(inits)
    for node in g.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == _FLOAT:
                attr.i = _HALF
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == _FLOAT:
                attr.t.CopyFrom(_half_tensor(attr.t))
    return out


def with_fp16_io(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose float32 inputs and outputs are float16, cast at the boundary.

    Each float32 input ``x`` becomes float16 and feeds ``Cast(to=float)`` -> ``x__fp32``, which
    every former consumer of ``x`` reads; each float32 output ``y`` is produced under the name
    ``y__fp32`` and cast to float16 as ``y``. Everything in between is unchanged (float32).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    rename: dict[str, str] = {}
    head, tail = [], []
    for vi in g.input:
        if vi.type.tensor_type.elem_type != _FLOAT:
            continue
        vi.type.tensor_type.elem_type = _HALF
        inner = f"{vi.name}__fp32"
        rename[vi.name] = inner
        head.append(
            helper.make_node("Cast", [vi.name], [inner], name=f"{vi.name}_to_fp32", to=_FLOAT)
        )
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    for vi in g.output:
        if vi.type.tensor_type.elem_type != _FLOAT:
            continue
        vi.type.tensor_type.elem_type = _HALF
        inner = f"{vi.name}__fp32"
        for node in g.node:
            for i, name in enumerate(node.output):
                if name == vi.name:
                    node.output[i] = inner
            for i, name in enumerate(node.input):
                if name == vi.name:
                    node.input[i] = inner
        tail.append(
            helper.make_node("Cast", [inner], [vi.name], name=f"{vi.name}_to_fp16", to=_HALF)
        )
    nodes = [*head, *g.node, *tail]
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    return out


def apply_precision(model: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    """``model`` converted to ``precision`` (one of :data:`PRECISIONS`); fp32 returns it as is."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16":
        return to_fp16(model)
    if precision == "mixed":
        return with_fp16_io(model)
    return model


# -- float16 execution on the CPU -----------------------------------------------------------

_TORCH_DTYPES = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.INT64: torch.int64,
    TensorProto.INT32: torch.int32,
    TensorProto.BOOL: torch.bool,
}


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _reduce_sum(x, axes, keepdims: int, noop: int):
    if axes is None or axes.numel() == 0:
        if noop:
            return x
        return x.sum(dim=tuple(range(x.ndim)), keepdim=bool(keepdims))
    return x.sum(dim=tuple(int(a) for a in axes.tolist()), keepdim=bool(keepdims))


def _run_node(node, args: list, attrs: dict):
    op = node.op_type
    binary = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}
    if op in binary:
        return binary[op](args[0], args[1])
    if op == "Relu":
        return torch.relu(args[0])
    if op == "Neg":
        return torch.neg(args[0])
    if op == "Reciprocal":
        return torch.reciprocal(args[0])
    if op in ("Max", "Min"):
        fn = torch.maximum if op == "Max" else torch.minimum
        out = args[0]
        for a in args[1:]:
            out = fn(out, a)
        return out
    if op == "Where":
        return torch.where(args[0], args[1], args[2])
    if op == "ReduceSum":
        axes = args[1] if len(args) > 1 else None
        return _reduce_sum(
            args[0], axes, attrs.get("keepdims", 1), attrs.get("noop_with_empty_axes", 0)
        )
    if op == "ReduceL2":  # the original variant's step norms
        axes = args[1] if len(args) > 1 else None
        squares = _reduce_sum(
            args[0] * args[0], axes, attrs.get("keepdims", 1), attrs.get("noop_with_empty_axes", 0)
        )
        return torch.sqrt(squares)
    compare = {
        "Greater": torch.gt, "Less": torch.lt, "GreaterOrEqual": torch.ge,
        "LessOrEqual": torch.le, "Equal": torch.eq, "And": torch.logical_and,
        "Or": torch.logical_or, "Xor": torch.logical_xor,
    }  # fmt: skip
    if op in compare:
        return compare[op](args[0], args[1])
    if op == "Not":
        return torch.logical_not(args[0])
    if op in ("Abs", "Sqrt"):
        return (torch.abs if op == "Abs" else torch.sqrt)(args[0])
    if op == "Unsqueeze":
        out = args[0]
        for a in sorted(int(a) % (out.ndim + len(args[1])) for a in args[1].tolist()):
            out = out.unsqueeze(a)
        return out
    if op == "Concat":
        return torch.cat(args, dim=attrs["axis"])
    if op == "ConstantOfShape":
        value = attrs.get("value")
        fill = torch.from_numpy(numpy_helper.to_array(value).copy()) if value is not None else None
        dtype = fill.dtype if fill is not None else torch.float32
        return torch.full(
            tuple(args[0].tolist()), fill.item() if fill is not None else 0.0, dtype=dtype
        )
    if op == "Slice":
        data, starts, ends = args[0], args[1].tolist(), args[2].tolist()
        axes = args[3].tolist() if len(args) > 3 else list(range(len(starts)))
        steps = args[4].tolist() if len(args) > 4 else [1] * len(starts)
        index = [slice(None)] * data.ndim
        for a, b, e, st in zip(axes, starts, ends, steps, strict=True):
            if st != 1:
                raise NotImplementedError("run_graph_torch implements Slice with step 1 only")
            n = data.shape[a]
            index[a] = slice(max(-n, min(b, n)), max(-n, min(e, n)))
        return data[tuple(index)]
    if op == "Cast":
        return args[0].to(_TORCH_DTYPES[attrs["to"]])
    if op == "Shape":
        return torch.tensor(args[0].shape, dtype=torch.int64)
    if op == "Gather":
        data, idx, axis = args[0], args[1], attrs.get("axis", 0) % args[0].ndim
        idx = torch.where(idx < 0, idx + data.shape[axis], idx)
        out = data.index_select(axis, idx.reshape(-1))
        return out.reshape((*data.shape[:axis], *idx.shape, *data.shape[axis + 1 :]))
    if op == "Identity":
        return args[0]
    if op == "Constant":
        return torch.from_numpy(numpy_helper.to_array(attrs["value"]).copy())
    raise NotImplementedError(f"run_graph_torch does not implement {op!r}")


def run_graph_torch(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Execute ``model`` node by node with torch CPU tensors, each op in its graph dtype.

    For a float16 graph every operator computes in float16 (torch rounds each result to float16;
    its CPU reductions accumulate internally in float32, as GPU reductions usually do). Only the
    operators of the matcher graph are implemented (element-wise arithmetic, ``Relu``,
    ``ReduceSum``, ``Cast``, ``Shape``, ``Gather``, ...); others raise ``NotImplementedError``.
    Returns the graph outputs as numpy arrays.
    """
    values: dict[str, torch.Tensor] = {
        t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer
    }
    for name, arr in feeds.items():
        values[name] = torch.from_numpy(np.ascontiguousarray(arr))
    with torch.inference_mode():
        for node in model.graph.node:
            args = [values[i] if i else None for i in node.input]
            values[node.output[0]] = _run_node(node, args, _attrs(node))
    return {vi.name: values[vi.name].numpy() for vi in model.graph.output}
