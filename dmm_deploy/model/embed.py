"""Box embeddings: RoIAlign on the four matching-feature levels, averaged over space."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align

from dmm_deploy.model.config import DMMConfig

__all__ = ["STRIDES", "RoIEmbedder", "tight_boxes"]

STRIDES = (4, 8, 16, 32)


class RoIEmbedder(nn.Module):
    """Features + boxes -> one embedding per box.

    forward(match, boxes, batch_index=None):
        match: the encoder's 4 matching-feature tensors ``(B, C, H/s, W/s)`` for s = 4..32.
        boxes: ``(N, 4)`` float ``x1, y1, x2, y2`` in input-image pixels (N may be 0).
        batch_index: optional ``(N,)`` index of each box's image in ``match`` (default: all
            boxes belong to image 0), so one call can embed the boxes of several frames.
    Returns ``(N, 4 C)``: for each level (stride 4 first) RoIAlign ``roi_size`` x ``roi_size``
    with ``sampling_ratio`` points (``aligned=False``, as the original), averaged over the
    grid; the four ``C``-vectors concatenated. No parameters.
    """

    def __init__(self, cfg: DMMConfig) -> None:
        super().__init__()
        self.output_size = (cfg.roi_size, cfg.roi_size)
        self.sampling_ratio = cfg.roi_sampling_ratio

    def forward(
        self,
        match: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
        boxes: torch.Tensor,
        batch_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if batch_index is None:
            first = boxes.new_zeros(boxes.shape[0], 1)
        else:
            first = batch_index.to(boxes.dtype)[:, None]
        rois = torch.cat([first, boxes], dim=1)  # (N, 5)
        out = []
        for feat, stride in zip(match, STRIDES, strict=True):
            pooled = roi_align(
                feat,
                rois.to(feat.dtype),
                self.output_size,
                spatial_scale=1.0 / stride,
                sampling_ratio=self.sampling_ratio,
                aligned=False,
            )  # (N, C, r, r)
            out.append(pooled.mean(dim=(2, 3)))
        return torch.cat(out, dim=1)


def tight_boxes(masks: torch.Tensor, threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight boxes of ``masks > threshold``.

    masks: ``(N, H, W)``. Returns ``boxes (N, 4)`` float ``x_min, y_min, x_max, y_max``
    (inclusive pixel indices, the original's convention) and ``nonempty (N,)`` bool; the box
    of an empty mask is ``0, 0, W - 1, H - 1`` (the whole image).
    """
    h, w = masks.shape[-2:]
    on = masks > threshold
    rows = on.any(dim=2)  # (N, H)
    cols = on.any(dim=1)  # (N, W)
    nonempty = rows.any(dim=1)
    iy = torch.arange(h, device=masks.device)
    ix = torch.arange(w, device=masks.device)
    y_min = torch.where(rows, iy, h).amin(dim=1)
    y_max = torch.where(rows, iy, -1).amax(dim=1)
    x_min = torch.where(cols, ix, w).amin(dim=1)
    x_max = torch.where(cols, ix, -1).amax(dim=1)
    boxes = torch.stack([x_min, y_min, x_max, y_max], dim=1).to(torch.float32)
    whole = torch.tensor([0.0, 0.0, w - 1.0, h - 1.0], device=masks.device)
    boxes = torch.where(nonempty[:, None], boxes, whole)
    return boxes, nonempty
