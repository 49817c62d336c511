"""Proposals for the runtime, in numpy: detections, the precomputed ``.npz`` reader, Mask R-CNN
as a bundle stage, and the original's post-processing (:func:`prepare_proposals`).

The ``.npz`` format is the model's (:mod:`dmm_deploy.model.sources`); this reader needs no
torch (it is :class:`dmm_deploy.data.detections.PrecomputedFile`).
:func:`prepare_proposals` is the numpy form of :func:`dmm_deploy.model.prepare_proposals`:
masks pasted (box-relative) or resized (full-frame) to the input size, tight boxes of
``mask > box_threshold``, empty masks dropped or kept with the original's box
(``empty_proposals``), NMS at ``nms_iou`` over the ``+1``-area boxes, then ``top_k``
survivors: the best scores or the first in detection order (``proposal_order``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dmm_deploy.data.detections import PrecomputedFile
from dmm_deploy.runtime.imaging import nms, paste_box_masks, resize, tight_boxes

__all__ = [
    "Detections",
    "MaskRCNNStage",
    "PrecomputedDetections",
    "Proposals",
    "prepare_proposals",
]


class Detections(NamedTuple):
    """One frame's detections in its own pixels: boxes ``(N, 4)``, scores ``(N,)``, masks
    ``(N, M, M)`` box-relative (``kind="box"``) or ``(N, H, W)`` full-frame, float32."""

    boxes: np.ndarray
    scores: np.ndarray
    masks: np.ndarray
    kind: str = "box"


class Proposals(NamedTuple):
    """Proposals at the input resolution: boxes ``(P, 4)``, masks ``(P, h, w)``, scores."""

    boxes: np.ndarray
    masks: np.ndarray
    scores: np.ndarray


class PrecomputedDetections(PrecomputedFile):
    """Detections of one video read from a ``.npz`` file (the model's precomputed format).

    ``detect(index, frame)`` returns frame ``index``'s :class:`Detections`; errors name the file.
    The file is parsed by :class:`dmm_deploy.data.detections.PrecomputedFile`.
    """

    def detect(self, index: int, frame: np.ndarray) -> Detections:
        return Detections(*self.frame_arrays(index, frame), self.kind)


class MaskRCNNStage:
    """The bundle's ``proposals`` stage (torchvision Mask R-CNN exported to ONNX) as a source.

    The graph takes ``image (3, H, W)`` float RGB in [0, 1] at the frame's resolution and returns
    ``boxes (D, 4)`` in frame pixels, ``scores (D,)`` and box-relative ``masks (D, 28, 28)``.
    """

    def __init__(self, runner) -> None:
        self.runner = runner

    def detect(self, index: int, frame: np.ndarray) -> Detections:
        image = np.ascontiguousarray(frame.transpose(2, 0, 1), dtype=np.float32) / 255.0
        out = self.runner.run({"image": image})
        return Detections(
            out["boxes"].astype(np.float32),
            out["scores"].astype(np.float32),
            out["masks"].astype(np.float32),
            "box",
        )


def prepare_proposals(det: Detections, frame_size: tuple[int, int], cfg: dict) -> Proposals:
    """Detections of a ``frame_size`` frame -> :class:`Proposals` at ``cfg["input_size"]``.

    ``cfg`` is the bundle's config (a dict; absent switches take the default pipeline's
    values): ``empty_proposals="keep"`` keeps a mask with no pixel above ``box_threshold``
    with the box ``[0, 0, h, w]`` (the original's, height in the x2 slot), ``"drop"`` drops
    it; ``proposal_order="index"`` keeps the first ``top_k`` NMS survivors in ascending
    detection index, ``"score"`` the ``top_k`` best."""
    h, w = (int(v) for v in cfg["input_size"])
    h0, w0 = frame_size
    if det.kind == "box":
        ratio = np.array([w / w0, h / h0, w / w0, h / h0], np.float32)
        masks = paste_box_masks(det.masks, det.boxes.astype(np.float32) * ratio, (h, w))
    else:
        if tuple(det.masks.shape[1:]) != (h0, w0):
            raise ValueError(
                f"full-frame detection masks must match the frame size {(h0, w0)}, "
                f"got {tuple(det.masks.shape[1:])}"
            )
        if len(det.boxes):
            masks = resize(det.masks.astype(np.float32), (h, w), "bilinear", antialias=True)
        else:
            masks = np.zeros((0, h, w), np.float32)
    boxes, nonempty = tight_boxes(masks, cfg["box_threshold"])
    scores = np.asarray(det.scores, np.float32)
    if cfg.get("empty_proposals", "drop") == "keep":
        empty_box = np.array([0.0, 0.0, float(h), float(w)], np.float32)
        boxes = np.where(nonempty[:, None], boxes, empty_box).astype(np.float32)
    else:
        boxes, masks, scores = boxes[nonempty], masks[nonempty], scores[nonempty]
    legacy = boxes + np.array([0.0, 0.0, 1.0, 1.0], np.float32)
    keep = nms(legacy, scores, cfg["nms_iou"])
    if cfg.get("proposal_order", "score") == "index":
        keep = np.sort(keep)
    keep = keep[: int(cfg["top_k"])]
    return Proposals(boxes[keep], np.ascontiguousarray(masks[keep]), scores[keep])
