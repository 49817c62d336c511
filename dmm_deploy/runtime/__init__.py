"""Torch-free streaming video segmentation over an exported DMM-Net bundle.

Design (for readers building on it, e.g. a multi-stream server):

* A **bundle** (:class:`Bundle`) is a folder of stage graphs and ``manifest.json``
  (:mod:`dmm_deploy.runtime.bundle`); :meth:`Runtime.open` verifies it (format, version,
  SHA-256 of every file) and opens one runner per stage on a backend
  (:mod:`dmm_deploy.runtime.backends`: onnxruntime CPU / CUDA / TensorRT providers, or
  TensorRT engines through polygraphy). Runners take and return numpy arrays.
* Every stage graph has a **dynamic batch axis** ``B`` (encoder, decoder), a box axis ``N``
  with a ``batch_index`` input (embed), or a padded problem batch ``(B, O, M)`` with a
  ``sizes`` input (match: cost, greedy start, unrolled matcher, read-out).
* All per-video state is one :class:`StreamState` (the proposal source, the objects with
  their templates, first/previous masks and decoder hidden states, the frame index); a
  :class:`Runtime` holds no per-video state and can serve any number of streams.
* :func:`step_streams` processes one frame of several streams at once: one encoder call
  over all frames, one embed call over all boxes (templates and proposals), one match call
  over all streams' problems padded to one batch, and one decoder call per object slot over
  the streams that have that slot (the decoder's spatial recurrence runs over a stream's
  objects in slot order, so slots stay sequential). Pre- and post-processing (resizing,
  proposal pasting, NMS, label merge) is numpy (:mod:`dmm_deploy.runtime.imaging`).
* :class:`StreamingSegmenter` is the one-stream wrapper with ``VideoSegmenter``'s API.
* The bundle's model settings are followed as the torch model follows them: the matcher
  variant is inside the match graph; ``input_resize="nearest"`` (PIL's NEAREST for frames and
  annotations), ``merge_at="input"``, ``proposal_order="index"``, ``empty_proposals="keep"``
  and ``no_detections="last"`` (per stream, :attr:`StreamState.last_detected`) are numpy
  here; ``matching="exact"`` bundles' match graph returns the cost and the exact assignment
  is solved on the host (:mod:`dmm_deploy.runtime.assignment`, numpy, no scipy).

Nothing here imports torch, ``dmm_deploy.model``, ``dmm_deploy.matching`` or ``kernels``.
"""

from dmm_deploy.runtime.bundle import (
    MANIFEST_VERSION,
    Bundle,
    BundleError,
    StageSpec,
    TensorSpec,
)
from dmm_deploy.runtime.pipeline import (
    STAGES,
    ObjectState,
    Runtime,
    StreamingSegmenter,
    StreamState,
    step_streams,
)
from dmm_deploy.runtime.proposals import (
    Detections,
    PrecomputedDetections,
    Proposals,
    prepare_proposals,
)

__all__ = [
    "MANIFEST_VERSION",
    "STAGES",
    "Bundle",
    "BundleError",
    "Detections",
    "ObjectState",
    "PrecomputedDetections",
    "Proposals",
    "Runtime",
    "StageSpec",
    "StreamState",
    "StreamingSegmenter",
    "TensorSpec",
    "prepare_proposals",
    "step_streams",
]
