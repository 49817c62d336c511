"""ONNX export of the matcher (and, with the ``trt`` extra, TensorRT engines).

The names below are loaded on first use (module ``__getattr__``), so that importing one
submodule, e.g. the torch-free :mod:`dmm_deploy.export.tensorrt`, does not import torch
through :mod:`dmm_deploy.export.onnx_export`.
"""

from importlib import import_module

_LAZY = {
    "ExportOptions": "onnx_export",
    "MatcherGraph": "onnx_export",
    "check_graph": "onnx_export",
    "export_matcher": "onnx_export",
    "fold_constant_nodes": "onnx_export",
    "graph_stats": "onnx_export",
    "verify_onnxruntime": "onnx_export",
    "PRECISIONS": "precision",
    "apply_precision": "precision",
    "check_tensorrt": "tensorrt_compat",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
