"""Encoder: ResNet trunk and the two 3x3 heads per level (skip heads, matching heads)."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from dmm_deploy.model.config import DMMConfig

__all__ = ["Backbone", "ConvBN", "Encoder", "MatchHead"]

Features = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class Backbone(nn.Module):
    """A torchvision ResNet without its classifier, returning layer1..layer4.

    forward(x ``(B, 3, H, W)``) -> four tensors at strides 4, 8, 16, 32 with
    ``DMMConfig.backbone_channels`` channels; sizes ``ceil(H / s) x ceil(W / s)``.
    Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4``).
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        net = getattr(torchvision.models, name)(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )

    def forward(self, x: torch.Tensor) -> Features:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c4 = self.layer1(x)
        c8 = self.layer2(c4)
        c16 = self.layer3(c8)
        c32 = self.layer4(c16)
        return c4, c8, c16, c32


class ConvBN(nn.Module):
    """Skip head: 3x3 convolution (with bias) then batch norm, no activation."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class MatchHead(nn.Module):
    """Matching head: conv-BN-ReLU-conv-BN (3x3 convolutions with bias), no final ReLU."""

    def __init__(self, c_in: int, c_mid: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_mid, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c_mid)
        self.conv2 = nn.Conv2d(c_mid, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class Encoder(nn.Module):
    """Frame -> matching features and skip features (one tensor per stride 4, 8, 16, 32).

    forward(image ``(B, 3, H, W)`` float RGB in [0, 1], usually ``H, W = cfg.input_size``)
    normalises with ``cfg.mean``/``cfg.std`` and returns ``(match, skip)``:

    * ``match``: 4 tensors ``(B, hidden, ceil(H/s), ceil(W/s))`` for s = 4, 8, 16, 32 (the
      matching heads, pooled into box embeddings by :class:`~dmm_deploy.model.RoIEmbedder`);
    * ``skip``: 4 tensors ``(B, cfg.skip_channels[i], ceil(H/s), ceil(W/s))`` (the skip heads,
      the refinement decoder's inputs).

    Submodules: ``backbone`` (:class:`Backbone`), ``skip_heads`` and ``match_heads``
    (``ModuleList`` of 4, index 0 = stride 4). In the original these are ``base``,
    ``sk2..sk5``/``bn2..bn5`` and ``prop2..prop5``.
    """

    def __init__(self, cfg: DMMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c_in = cfg.backbone_channels
        h = cfg.hidden_size
        self.backbone = Backbone(cfg.backbone)
        self.skip_heads = nn.ModuleList(
            ConvBN(c, s) for c, s in zip(c_in, cfg.skip_channels, strict=True)
        )
        self.match_heads = nn.ModuleList(
            MatchHead(c, mid, h) for c, mid in zip(c_in, cfg.skip_channels, strict=True)
        )
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> tuple[Features, Features]:
        x = (image - self.mean) / self.std
        levels = self.backbone(x)
        match = tuple(head(f) for head, f in zip(self.match_heads, levels, strict=True))
        skip = tuple(head(f) for head, f in zip(self.skip_heads, levels, strict=True))
        return match, skip
