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

__all__ = [
    "ExportOptions",
    "MatcherGraph",
    "check_graph",
    "export_matcher",
    "fold_constant_nodes",
    "graph_stats",
    "verify_onnxruntime",
]
