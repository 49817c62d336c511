"""ONNX export of the matcher (and, with the ``trt`` extra, TensorRT engines)."""

from dmm_deploy.export.onnx_export import (
    ExportOptions,
    MatcherGraph,
    check_graph,
    export_matcher,
    fold_constant_nodes,
    graph_stats,
    verify_onnxruntime,
)
from dmm_deploy.export.precision import PRECISIONS, apply_precision
from dmm_deploy.export.tensorrt_compat import check_tensorrt

__all__ = [
    "PRECISIONS",
    "ExportOptions",
    "MatcherGraph",
    "apply_precision",
    "check_graph",
    "check_tensorrt",
    "export_matcher",
    "fold_constant_nodes",
    "graph_stats",
    "verify_onnxruntime",
]
