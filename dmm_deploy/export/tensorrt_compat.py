"""Will TensorRT's ONNX parser take this graph? A check that needs no TensorRT.

The operator tables live in ``dmm_deploy/export/data/tensorrt_onnx_ops.json`` (their source
and limits are written in that file): one table for TensorRT 10.0-10.14 (10.3 is the version
of JetPack 6) and one for 10.15 and 11.x. :func:`check_tensorrt` reports, as readable lines:

* operators outside the table of that version (or known unsupported, or newer than that
  version: Swish needs 11.0), operators of domains TensorRT has no importer for,
  custom-domain nodes that no known plugin provides;
* an opset outside the parser's range;
* Reduce axes (and the other inputs the parser needs as build-time constants) that are not
  initializers;
* ``Loop``/``Scan``/``If`` nodes (the matcher is exported unrolled; their presence means the
  export went wrong);
* float64 and other tensor types TensorRT does not compute in (inputs, outputs, initializers,
  annotated intermediates, ``Cast`` targets, constants);
* graph inputs that are not tensors or have no fixed rank.

It also holds the two TensorRT helpers every other export module uses without importing
TensorRT at module level: :func:`import_tensorrt` and :func:`trt_version_tuple`, and
:func:`tensorrt_verdicts`, the exports' printed verdict. This module imports no other module of
``dmm_deploy.export`` (it is the bottom of that package's one-way import order).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from dmm_deploy.runtime.trt_build import trt_version_tuple

if TYPE_CHECKING:  # onnx is imported where it is used: the TensorRT builder imports this module
    import onnx

__all__ = [
    "INSTALL_HINT",
    "KNOWN_PLUGINS",
    "VERDICT_VERSIONS",
    "OperatorTable",
    "check_tensorrt",
    "import_tensorrt",
    "operator_table",
    "structural_problems",
    "tensorrt_verdicts",
    "trt_version_tuple",
]

DEFAULT_DOMAINS = ("", "ai.onnx")
CONTROL_FLOW_OPS = ("Loop", "Scan", "If")
# Custom-domain nodes the project exports: (domain, op_type) -> minimum TensorRT (major, minor).
# The matcher plugin is a "quickly deployable" Python plugin with an ahead-of-time kernel.
KNOWN_PLUGINS = {("dmm_deploy", "dmm_match"): (10, 9)}
MAX_LISTED = 8
VERDICT_VERSIONS = ("10.3", "11.0")  # JetPack 6's TensorRT and the current major
INSTALL_HINT = (
    "TensorRT's Python package is needed for this: pip install 'dmm-deploy[trt]' "
    "(or use the tensorrt package of your JetPack / NGC container)"
)


def import_tensorrt():
    """``import tensorrt``, or an ``ImportError`` that says how to install it."""
    try:
        import tensorrt
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return tensorrt


@dataclass(frozen=True)
class OperatorTable:
    """One TensorRT release range's ONNX operator support, from the package's data file."""

    name: str
    applies_to: str
    based_on: str
    opset_min: int
    opset_max: int
    supported: frozenset[str]
    unsupported: frozenset[str]
    since: dict[str, tuple[int, int]]  # operators this table lists from a later release on


@lru_cache(maxsize=1)
def _data() -> dict:
    text = resources.files("dmm_deploy.export").joinpath("data/tensorrt_onnx_ops.json").read_text()
    return json.loads(text)


def _parse_version(trt_version: str) -> tuple[int, int]:
    if not isinstance(trt_version, str):
        raise TypeError(
            f"trt_version must be a string such as '10.3', got {type(trt_version).__name__}"
        )
    parts = trt_version.strip().split(".")
    try:
        major = int(parts[0])
        minor = int(parts[1]) if len(parts) > 1 and parts[1] not in ("", "x") else 0
    except ValueError:
        raise ValueError(
            f"trt_version must look like '10.3' or '11.0', got {trt_version!r}"
        ) from None
    return major, minor


def operator_table(trt_version: str = "10.3") -> OperatorTable:
    """The operator table that applies to TensorRT ``trt_version`` (``"10.3"``, ``"11.0"``, ...).

    Raises ``ValueError`` for versions the data file has no table for (before 10.0, after 11.x).
    """
    major, minor = _parse_version(trt_version)
    if major == 10 and minor < 15:
        key = "10"
    elif (major == 10 and minor >= 15) or major == 11:
        key = "11"
    else:
        raise ValueError(
            f"no ONNX operator table for TensorRT {trt_version!r}: known are 10.0-10.14 and 10.15-11.x"
        )
    t = _data()["tables"][key]
    return OperatorTable(
        name=key,
        applies_to=t["applies_to"],
        based_on=t["based_on"],
        opset_min=t["opset_min"],
        opset_max=t["opset_max"],
        supported=frozenset(t["supported"]),
        unsupported=frozenset(t["unsupported"]),
        since={op: _parse_version(v) for op, v in t.get("since", {}).items()},
    )


def _load(model_or_path) -> onnx.ModelProto:
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX file at {path}")
        return onnx.load(str(path), load_external_data=False)
    raise TypeError(
        f"model_or_path must be an onnx.ModelProto or a path, got {type(model_or_path).__name__}"
    )


def _type_name(elem_type: int) -> str:
    from onnx import TensorProto

    return TensorProto.DataType.Name(elem_type)


def _listing(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def _graphs(graph: onnx.GraphProto):
    """The graph and every subgraph (Loop/Scan/If bodies), depth first."""
    from onnx import AttributeProto

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _node_label(node: onnx.NodeProto) -> str:
    return f"node {node.name!r} ({node.op_type})" if node.name else f"a {node.op_type} node"


def _check_operators(model, table: OperatorTable, version: tuple[int, int], trt_version: str):
    data = _data()
    problems: list[str] = []
    unsupported: dict[str, list[str]] = {}
    unknown: dict[str, list[str]] = {}
    newer: dict[str, list[str]] = {}
    for graph in _graphs(model.graph):
        for node in graph.node:
            domain, op = node.domain, node.op_type
            if domain in DEFAULT_DOMAINS:
                if op in table.unsupported:
                    unsupported.setdefault(op, []).append(node.name)
                elif op not in table.supported:
                    unknown.setdefault(op, []).append(node.name)
                elif op in table.since and version < table.since[op]:
                    newer.setdefault(op, []).append(node.name)
            elif domain in data["unsupported_domains"]:
                problems.append(
                    f"{_node_label(node)} of domain {domain!r}: {data['unsupported_domains'][domain]}"
                )
            elif (domain, op) in KNOWN_PLUGINS:
                need = KNOWN_PLUGINS[(domain, op)]
                if version < need:
                    problems.append(
                        f"{_node_label(node)} is the plugin {domain}::{op}, which needs TensorRT >= "
                        f"{need[0]}.{need[1]} (quickly deployable plugins with an ahead-of-time "
                        f"kernel), not {trt_version}"
                    )
            else:
                problems.append(
                    f"{_node_label(node)} of custom domain {domain!r}: the parser imports it only "
                    "if a plugin of that name is registered (no such plugin is known here)"
                )
    for op, names in sorted(unsupported.items()):
        problems.append(
            f"operator {op} is not supported by the TensorRT {trt_version} ONNX parser "
            f"({len(names)} node(s))"
        )
    for op, names in sorted(newer.items()):
        since = ".".join(map(str, table.since[op]))
        problems.append(
            f"operator {op} is supported by TensorRT's ONNX parser from {since} on, not by "
            f"{trt_version} ({len(names)} node(s))"
        )
    for op, names in sorted(unknown.items()):
        problems.append(
            f"operator {op} is not in the TensorRT {trt_version} ONNX operator table "
            f"({len(names)} node(s))"
        )
    return problems


def structural_problems(model: onnx.ModelProto) -> list[str]:
    """Problems of structure, whatever the TensorRT version: control flow (``Loop``/``Scan``/
    ``If``, also in subgraphs) and inputs the parser needs as build-time constants (Reduce axes
    as initializers, ...) that are not. Every export runs this check.
    """
    problems = [
        f"{_node_label(node)}: control flow; TensorRT takes it only with restrictions and "
        "the matcher must be exported unrolled"
        for graph in _graphs(model.graph)
        for node in graph.node
        if node.domain in DEFAULT_DOMAINS and node.op_type in CONTROL_FLOW_OPS
    ]
    return problems + _check_constant_inputs(model)


def _check_constant_inputs(model) -> list[str]:
    rules = _data()["constant_inputs"]
    problems = []
    for graph in _graphs(model.graph):
        inits = {t.name for t in graph.initializer}
        constants = inits | {n.output[0] for n in graph.node if n.op_type == "Constant"}
        for node in graph.node:
            rule = rules.get(node.op_type)
            if rule is None or node.domain not in DEFAULT_DOMAINS:
                continue
            i = rule["index"]
            if len(node.input) <= i or not node.input[i]:
                continue  # attribute form (older opsets) or input omitted
            allowed = inits if rule["requires"] == "initializer" else constants
            if node.input[i] not in allowed:
                what = "an initializer" if rule["requires"] == "initializer" else "a constant"
                problems.append(
                    f"{_node_label(node)}: input {rule['name']!r} ({node.input[i]!r}) must be {what} "
                    "for TensorRT's ONNX parser"
                )
    return problems


def _check_types(model) -> list[str]:
    from onnx import AttributeProto, TensorProto

    bad = {getattr(TensorProto, name) for name in _data()["tensor_types"]["unsupported"]}
    found: dict[int, list[str]] = {}

    def note(elem_type: int, what: str) -> None:
        if elem_type in bad:
            found.setdefault(elem_type, []).append(what)

    for graph in _graphs(model.graph):
        for vi in (*graph.input, *graph.output, *graph.value_info):
            if vi.type.HasField("tensor_type"):
                note(vi.type.tensor_type.elem_type, vi.name)
        for t in graph.initializer:
            note(t.data_type, t.name)
        for node in graph.node:
            for attr in node.attribute:
                if node.op_type == "Cast" and attr.name == "to":
                    note(attr.i, f"Cast {node.name or node.output[0]!r} target")
                elif attr.type == AttributeProto.TENSOR:
                    note(attr.t.data_type, f"{node.op_type} {node.name or node.output[0]!r} value")
    problems = []
    for elem_type, names in sorted(found.items()):
        extra = (
            " (the parser would cast it down to float32)" if elem_type == TensorProto.DOUBLE else ""
        )
        problems.append(
            f"tensor type {_type_name(elem_type)} is not computed by TensorRT{extra}: "
            f"{_listing(names)}"
        )
    return problems


def _check_inputs(model) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    problems = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue  # an initializer listed as an input (IR < 4 style)
        if not vi.type.HasField("tensor_type"):
            kind = vi.type.WhichOneof("value") or "untyped"
            problems.append(f"input {vi.name!r} is a {kind}, not a tensor")
        elif not vi.type.tensor_type.HasField("shape"):
            problems.append(f"input {vi.name!r} has no fixed rank (no shape in the graph)")
    return problems


def check_tensorrt(model_or_path, trt_version: str = "10.3") -> list[str]:
    """Problems that would keep TensorRT ``trt_version``'s ONNX parser from this graph.

    model_or_path: an ``onnx.ModelProto`` or the path of an ``.onnx`` file.
    trt_version: ``"10.3"`` (JetPack 6), ``"10.x"``, ``"11.0"``, ...; the table used is
        :func:`operator_table` of that version.
    Returns readable one-line problems; an empty list means none was found. The check is
    static (see the data file's ``limits``): only a TensorRT build proves a graph builds.
    """
    model = _load(model_or_path)
    version = _parse_version(trt_version)
    table = operator_table(trt_version)
    problems: list[str] = []
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS and not table.opset_min <= imp.version <= table.opset_max:
            problems.append(
                f"opset {imp.version} is outside the TensorRT {trt_version} parser's range "
                f"{table.opset_min}..{table.opset_max}"
            )
    problems += _check_operators(model, table, version, trt_version)
    problems += structural_problems(model)
    problems += _check_types(model)
    problems += _check_inputs(model)
    return problems


def tensorrt_verdicts(
    model, log: Callable[[str], None] = print, versions: tuple[str, ...] = VERDICT_VERSIONS
) -> int:
    """Print one verdict line per TensorRT version in ``versions`` (default 10.3, JetPack 6's,
    and 11.0); return 1 if any version reports a problem, else 0 (every check counts)."""
    code = 0
    for version in versions:
        problems = check_tensorrt(model, trt_version=version)
        verdict = (
            "OK" if not problems else f"{len(problems)} problem(s): " + "; ".join(problems[:3])
        )
        log(f"tensorrt  {version}: {verdict}")
        if problems:
            code = 1
    return code
