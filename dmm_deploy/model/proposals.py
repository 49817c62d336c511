"""Proposal data types and the original's proposal post-processing.

A proposal source returns :class:`Detections` for a frame, in the frame's own pixels;
:func:`prepare_proposals` turns them into the model's :class:`Proposals` at the input
resolution: masks pasted (or resized) into the input frame, each box replaced by the tight
box of ``mask > cfg.box_threshold`` (empty masks dropped, or kept with the original's box,
``cfg.empty_proposals``), NMS at ``cfg.nms_iou`` over those boxes, ``cfg.top_k`` survivors
kept (the best scores, or the first in detection order: ``cfg.proposal_order``). There is no
score threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from dmm_deploy.model.config import DMMConfig
from dmm_deploy.model.embed import tight_boxes

__all__ = ["MASK_KINDS", "Detections", "Proposals", "paste_box_masks", "prepare_proposals"]

MASK_KINDS = ("box", "frame")


@dataclass(frozen=True)
class Detections:
    """Raw detections of one frame, in the frame's pixel coordinates.

    Attributes:
        boxes: ``(N, 4)`` float32 ``x1, y1, x2, y2``.
        scores: ``(N,)`` float32 confidence (orders the NMS and the top-k).
        masks: mask probabilities in [0, 1], float32: ``(N, M, M)`` relative to each box
            (Mask R-CNN's 28 x 28 output) when ``kind == "box"``, or ``(N, H, W)`` full-frame
            maps when ``kind == "frame"``.
        kind: ``"box"`` or ``"frame"``.

    numpy arrays are accepted and converted to CPU tensors.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    masks: torch.Tensor
    kind: str = "box"

    def __post_init__(self) -> None:
        for name in ("boxes", "scores", "masks"):
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                value = torch.from_numpy(np.ascontiguousarray(value))
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"Detections.{name} must be a tensor or an array")
            object.__setattr__(self, name, value.to(torch.float32))
        if self.kind not in MASK_KINDS:
            raise ValueError(f"Detections.kind must be one of {MASK_KINDS}, got {self.kind!r}")
        n = self.boxes.shape[0] if self.boxes.ndim == 2 else -1
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"Detections.boxes must be (N, 4), got {tuple(self.boxes.shape)}")
        if tuple(self.scores.shape) != (n,):
            raise ValueError(f"Detections.scores must be ({n},), got {tuple(self.scores.shape)}")
        if self.masks.ndim != 3 or self.masks.shape[0] != n:
            raise ValueError(
                f"Detections.masks must be ({n}, M, M) or ({n}, H, W), "
                f"got {tuple(self.masks.shape)}"
            )
        if self.kind == "box" and self.masks.shape[1] != self.masks.shape[2]:
            raise ValueError(
                f"box-relative masks must be square (N, M, M), got {tuple(self.masks.shape)}"
            )

    def __len__(self) -> int:
        return self.boxes.shape[0]

    @staticmethod
    def empty(mask_side: int = 28) -> Detections:
        """No detections."""
        return Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, mask_side, mask_side))


class Proposals(NamedTuple):
    """The model's proposals for one frame, at the input resolution ``(h, w)``.

    boxes ``(P, 4)`` float32 tight boxes (inclusive pixel indices), masks ``(P, h, w)``
    float32 soft masks, scores ``(P,)``; ``P <= cfg.top_k``, in decreasing score order
    (``cfg.proposal_order="score"``) or ascending detection index (``"index"``).
    """

    boxes: torch.Tensor
    masks: torch.Tensor
    scores: torch.Tensor


def paste_box_masks(
    masks: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], padding: int = 1
) -> torch.Tensor:
    """Paste box-relative masks into an image, as Mask R-CNN's legacy masker does.

    masks ``(N, M, M)``, boxes ``(N, 4)`` in the target image's pixels, size ``(H, W)``.
    Each mask is padded by ``padding`` zero pixels, its box grown by ``(M + 2 pad) / M``
    about its centre and truncated to integers, the mask resized bilinearly
    (``align_corners=False``) to the box's ``x2 - x1 + 1`` by ``y2 - y1 + 1`` pixels and
    pasted, clipped to the image. Returns ``(N, H, W)`` float32.
    """
    n, m = masks.shape[0], masks.shape[-1]
    h_img, w_img = size
    out = masks.new_zeros(n, h_img, w_img, dtype=torch.float32)
    if n == 0:
        return out
    padded = F.pad(masks.to(torch.float32), (padding,) * 4)
    scale = (m + 2 * padding) / m
    centre = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    grown = torch.cat([centre - half, centre + half], dim=1).to(torch.int32).tolist()
    for k, (x1, y1, x2, y2) in enumerate(grown):
        w = max(x2 - x1 + 1, 1)
        h = max(y2 - y1 + 1, 1)
        resized = F.interpolate(
            padded[k][None, None], size=(h, w), mode="bilinear", align_corners=False
        )[0, 0]
        xa, xb = max(x1, 0), min(x2 + 1, w_img)
        ya, yb = max(y1, 0), min(y2 + 1, h_img)
        if xa >= xb or ya >= yb:
            continue
        out[k, ya:yb, xa:xb] = resized[ya - y1 : yb - y1, xa - x1 : xb - x1]
    return out


def prepare_proposals(
    detections: Detections, frame_size: tuple[int, int], cfg: DMMConfig
) -> Proposals:
    """Detections of a ``frame_size = (H, W)`` frame -> :class:`Proposals` at ``cfg.input_size``.

    Box-relative masks are pasted at the input resolution (boxes scaled by the resize
    ratios); full-frame masks are resized bilinearly (antialiased). Then: tight boxes of
    ``mask > cfg.box_threshold``; a mask with no such pixel is dropped
    (``cfg.empty_proposals="drop"``) or kept with the box ``[0, 0, h, w]`` (``"keep"``, the
    original's ``binmask_to_box``: height in the x2 slot, width in y2); NMS at ``cfg.nms_iou``
    with the original's ``+1`` box-area convention; then ``cfg.top_k`` survivors: the best
    scores, best first (``cfg.proposal_order="score"``), or the first survivors in ascending
    detection index (``"index"``: maskrcnn-benchmark's NMS returns its survivors sorted by
    index and the original keeps the first ``top_k`` of them).
    """
    h, w = cfg.input_size
    h0, w0 = frame_size
    if detections.kind == "box":
        ratio = detections.boxes.new_tensor([w / w0, h / h0, w / w0, h / h0])
        masks = paste_box_masks(detections.masks, detections.boxes * ratio, (h, w))
    else:
        if tuple(detections.masks.shape[1:]) != (h0, w0):
            raise ValueError(
                f"full-frame detection masks must match the frame size {(h0, w0)}, "
                f"got {tuple(detections.masks.shape[1:])}"
            )
        masks = detections.masks
        if len(detections) and (h0, w0) != (h, w):
            masks = F.interpolate(
                masks[:, None], size=(h, w), mode="bilinear", align_corners=False, antialias=True
            )[:, 0]
        elif not len(detections):
            masks = masks.new_zeros(0, h, w)
    boxes, nonempty = tight_boxes(masks, cfg.box_threshold)
    scores = detections.scores
    if cfg.empty_proposals == "keep":
        empty_box = boxes.new_tensor([0.0, 0.0, float(h), float(w)])
        boxes = torch.where(nonempty[:, None], boxes, empty_box)
    else:
        keep = torch.nonzero(nonempty)[:, 0]
        boxes, masks, scores = boxes[keep], masks[keep], scores[keep]
    legacy = boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])  # areas (x2 - x1 + 1)(y2 - y1 + 1)
    keep = nms(legacy, scores, cfg.nms_iou)
    if cfg.proposal_order == "index":
        keep = keep.sort().values
    keep = keep[: cfg.top_k]
    return Proposals(boxes[keep], masks[keep].contiguous(), scores[keep])
