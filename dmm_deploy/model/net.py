"""The DMM-Net container and the tensor helpers around it (input resizing, label maps)."""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dmm_deploy.data.frames import pil_nearest_index
from dmm_deploy.model.config import DMMConfig
from dmm_deploy.model.decoder import RefineDecoder
from dmm_deploy.model.embed import RoIEmbedder
from dmm_deploy.model.encoder import Encoder
from dmm_deploy.model.matching import MatchingCost

__all__ = [
    "DMMNet",
    "frame_to_input",
    "merge_probabilities",
    "pil_nearest_index",
    "resize_labels",
    "resize_masks",
]


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
        if cfg.matching == "exact" and importlib.util.find_spec("scipy") is None:
            raise ImportError(
                "DMMConfig(matching='exact') needs scipy for the exact assignment "
                "(pip install scipy)"
            )
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


def _pil_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize the last two dimensions of ``x`` as PIL's ``Image.NEAREST`` does."""
    iy = torch.from_numpy(pil_nearest_index(x.shape[-2], size[0])).to(x.device)
    ix = torch.from_numpy(pil_nearest_index(x.shape[-1], size[1])).to(x.device)
    return x.index_select(-2, iy).index_select(-1, ix)


def frame_to_input(
    frame: np.ndarray, size: tuple[int, int], mode: str = "bilinear"
) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(1, 3, h, w)`` float32 in [0, 1] at ``size = (h, w)``.

    mode: ``"bilinear"`` (antialiased, ``align_corners=False``) or ``"nearest"`` (PIL's
    ``Image.NEAREST``, the original's input resize, see :func:`pil_nearest_index`); the
    config's ``input_resize``. No normalisation (the encoder normalises).
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if not frame.flags.writeable:
        frame = frame.copy()
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None]
    if tuple(x.shape[-2:]) != tuple(size):
        if mode == "nearest":
            x = _pil_nearest(x, size)
        else:
            x = F.interpolate(
                x.to(torch.float32),
                size=tuple(size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
    return (x.to(torch.float32) / 255.0).clamp_(0.0, 1.0)


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a ``(h, w)`` label map to ``size = (H, W)`` with PIL's ``Image.NEAREST`` (how the
    original's 255 x 448 label maps reach the annotations' resolution in its evaluation)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return _pil_nearest(labels, size)


def resize_masks(masks: torch.Tensor, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """Resize ``(K, H, W)`` masks to ``size``: ``"nearest"`` (``nearest-exact``: pixel centres)
    or ``"pil-nearest"`` (PIL's ``Image.NEAREST``, :func:`pil_nearest_index`; the original's
    annotation resize) for binary annotations, ``"bilinear"`` for probabilities. Returns
    float32 ``(K, h, w)``."""
    if mode not in ("nearest", "pil-nearest", "bilinear"):
        raise ValueError(f"mode must be 'nearest', 'pil-nearest' or 'bilinear', got {mode!r}")
    x = masks.to(torch.float32)
    if x.shape[0] == 0:
        return x.new_zeros(0, *size)
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "pil-nearest":
        return _pil_nearest(x, size)
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
