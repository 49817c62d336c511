"""The DMM-Net container and the tensor helpers around it (input resizing, label maps)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dmm_deploy.model.config import DMMConfig
from dmm_deploy.model.decoder import RefineDecoder
from dmm_deploy.model.embed import RoIEmbedder
from dmm_deploy.model.encoder import Encoder
from dmm_deploy.model.matching import MatchingCost

__all__ = ["DMMNet", "frame_to_input", "merge_probabilities", "resize_masks"]


class DMMNet(nn.Module):
    """All per-frame stages of DMM-Net, as separate modules with tensors in and tensors out.

    * ``encoder`` (:class:`Encoder`): image ``(1, 3, h, w)`` -> ``(match, skip)`` features;
    * ``embedder`` (:class:`RoIEmbedder`): ``(match, boxes (N, 4))`` -> ``(N, 4 hidden)``;
    * ``cost`` (:class:`MatchingCost`): templates, embeddings, masks -> ``(O, P)`` cost;
    * the DMM layer: :func:`dmm_deploy.model.match_proposals` (no parameters);
    * ``decoder`` (:class:`RefineDecoder`): one refinement step per object.

    The model holds no per-video state: :class:`~dmm_deploy.model.VideoSegmenter` keeps the
    objects, templates and recurrent states. Built with random weights (torchvision's
    initialisation, ``weights=None``); load trained weights with
    :func:`~dmm_deploy.model.load_original_checkpoint` or ``load_state_dict``. Put it in
    ``eval()`` mode for inference (the segmenter does).
    """

    def __init__(self, cfg: DMMConfig | None = None) -> None:
        super().__init__()
        cfg = DMMConfig() if cfg is None else cfg
        if not isinstance(cfg, DMMConfig):
            raise TypeError(f"cfg must be a DMMConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.embedder = RoIEmbedder(cfg)
        self.cost = MatchingCost(cfg)
        self.decoder = RefineDecoder(cfg)

    def forward(self, *args, **kwargs):
        raise RuntimeError(
            "DMMNet is a container: call its stages (encoder, embedder, cost, decoder) or use "
            "dmm_deploy.model.VideoSegmenter"
        )


def frame_to_input(frame: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(1, 3, h, w)`` float32 in [0, 1] at ``size = (h, w)``.

    Bilinear resizing with antialiasing (``align_corners=False``); no normalisation (the
    encoder normalises).
    """
    if not frame.flags.writeable:
        frame = frame.copy()
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].to(torch.float32)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return (x / 255.0).clamp_(0.0, 1.0)


def resize_masks(masks: torch.Tensor, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """Resize ``(K, H, W)`` masks to ``size``: ``"nearest"`` for binary annotations (the
    original's choice), ``"bilinear"`` for probabilities. Returns float32 ``(K, h, w)``."""
    x = masks.to(torch.float32)
    if x.shape[0] == 0:
        return x.new_zeros(0, *size)
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x[:, None], size=tuple(size), mode="nearest-exact")[:, 0]
    return F.interpolate(x[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def merge_probabilities(probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-object probabilities -> a label map.

    probs ``(K, H, W)``, ids ``(K,)`` the objects' label values. Background gets
    ``1 - max_k p_k``; each pixel takes the label of the argmax over
    ``[background, p_1, ..., p_K]`` (the first on ties). Returns ``(H, W)`` with ids' dtype.
    """
    if probs.shape[0] == 0:
        return ids.new_zeros(probs.shape[1:])
    background = 1.0 - probs.amax(dim=0, keepdim=True)
    winner = torch.cat([background, probs], dim=0).argmax(dim=0)
    table = torch.cat([ids.new_zeros(1), ids])
    return table[winner]
