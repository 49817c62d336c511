"""Many video streams behind NVIDIA Triton Inference Server; torch-free, on the runtime.

Design:

* **One stateful model per server.** ``dmm_segment`` is a Python-backend model
  (:mod:`dmm_deploy.serve.triton_model`) holding every stream's
  :class:`~dmm_deploy.runtime.StreamState` in a :class:`~dmm_deploy.serve.streams.StreamTable`
  keyed by stream id (idle expiry, a ``max_streams`` bound, one error per bad request).
* **Triton's sequence batcher** (``oldest`` strategy) gives stream affinity and ordering: the
  stream id is the request's sequence id, start/end are its flags; frames of different
  streams that arrive within the batching delay reach one ``execute`` call and run as one
  :func:`~dmm_deploy.runtime.step_streams` (one encoder batch, one padded matcher call with
  ``sizes``, one decoder call per object slot).
* **Stages in-process or as models.** ``dmm-deploy serve`` runs the bundle's graphs inside
  the stream model on onnxruntime/TensorRT (:func:`~dmm_deploy.serve.repository.
  write_serve_repository`); ``dmm-deploy triton-repo`` writes a repository for a GPU server
  where each stateless stage is an ``onnxruntime`` or ``tensorrt_plan`` model with dynamic
  batching, called from the stream model through BLS
  (:func:`~dmm_deploy.serve.repository.write_triton_repo`).
* The server binary is the one in ``nvidia-pytriton``'s wheel, started by
  :class:`~dmm_deploy.serve.tritonserver.TritonServer`; clients use ``tritonclient``
  (:class:`~dmm_deploy.serve.client.SegmentationClient`, HTTP or gRPC).
* Metrics (Prometheus, the server's metrics port): ``dmm_serve_frames``,
  ``dmm_serve_batched_frames``, ``dmm_serve_calls``, ``dmm_serve_errors``,
  ``dmm_serve_expired``, ``dmm_serve_streams`` beside Triton's own.

Nothing here imports torch, ``kernels``, ``dmm_deploy.model`` or ``dmm_deploy.matching``;
this package imports nothing until a name is used.
"""

from __future__ import annotations

import importlib

__all__ = [
    "FrameRequest",
    "SegmentationClient",
    "ServerError",
    "StreamError",
    "StreamTable",
    "TritonServer",
    "write_serve_repository",
    "write_triton_repo",
]

_WHERE = {
    "FrameRequest": "streams",
    "StreamError": "streams",
    "StreamTable": "streams",
    "SegmentationClient": "client",
    "ServerError": "client",
    "TritonServer": "tritonserver",
    "write_serve_repository": "repository",
    "write_triton_repo": "repository",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"dmm_deploy.serve.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'dmm_deploy.serve' has no attribute {name!r}")
