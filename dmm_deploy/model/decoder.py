"""Refinement decoder: four ConvLSTM cells (RVOS-style) with skip connections and masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dmm_deploy.model.config import DMMConfig

__all__ = ["ConvLSTMCell", "RefineDecoder", "mask_pyramid", "to_probabilities"]

Four = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class ConvLSTMCell(nn.Module):
    """ConvLSTM cell with a mask input, a spatial state and a temporal hidden state.

    One 3x3 convolution ``gates`` maps ``cat(x, mask, h_spatial, h_temporal)`` (in that
    channel order) to the input, forget, output and cell gates (in that order)::

        c' = sigmoid(f) * c_spatial + sigmoid(i) * tanh(g);   h' = sigmoid(o) * tanh(c')

    forward(x ``(B, c_in, H, W)``, mask ``(B, 1, H, W)``, h, c, h_temporal ``(B, hidden, H, W)``)
    -> ``(h', c')``.

    ``repeats=r`` runs the cell for ``r`` masks per problem: ``mask`` has ``r * B`` rows (each
    problem's ``r`` masks together), ``x, h, c, h_temporal`` have ``B``, and the result has
    ``r * B`` rows, as for the inputs repeated ``r`` times each (``repeat_interleave``). The
    convolution is linear, so its part over ``x, h, h_temporal`` runs once per problem and only
    the mask's channel once per mask: the same gates up to float summation order, for ``1 / r``
    of the work.
    """

    def __init__(self, c_in: int, hidden: int, mask_channels: int = 1) -> None:
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(c_in + mask_channels + 2 * hidden, 4 * hidden, 3, padding=1)

    def forward(
        self, x, mask, h, c, h_temporal, repeats: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if repeats == 1:
            gates = self.gates(torch.cat([x, mask, h, h_temporal], dim=1))
        else:
            w, cx, cm = self.gates.weight, x.shape[1], mask.shape[1]
            shared = F.conv2d(
                torch.cat([x, h, h_temporal], dim=1),
                torch.cat([w[:, :cx], w[:, cx + cm :]], dim=1),
                self.gates.bias,
                padding=1,
            )
            own = F.conv2d(mask, w[:, cx : cx + cm], None, padding=1)
            gates = shared.repeat_interleave(repeats, dim=0) + own
            c = c.repeat_interleave(repeats, dim=0)
        i, f, o, g = gates.chunk(4, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        return h_new, c_new


def mask_pyramid(masks: torch.Tensor) -> Four:
    """Max-pool masks to the four decoder scales, coarse to fine.

    masks ``(B, K, H, W)`` -> 4 tensors ``(B, K, ceil(H/s), ceil(W/s))`` for s = 32, 16, 8, 4
    (2x2 max pooling with ``ceil_mode``, five times, as the original).
    """
    x = F.max_pool2d(masks, 2, ceil_mode=True)
    levels = []
    for _ in range(4):
        x = F.max_pool2d(x, 2, ceil_mode=True)
        levels.append(x)
    return tuple(reversed(levels))


class RefineDecoder(nn.Module):
    """One decoder step for one object (or a batch of objects with independent states).

    forward(skip, masks, h, c, h_temporal):
        skip: the encoder's 4 skip features, stride 4 first (``Encoder`` order).
        masks: ``(B, 3, H, W)`` at the input resolution: the object's previous prediction,
            its first (annotated) mask and its matched mask.
        h, c: spatial state, 4 tensors each, coarse to fine: ``(B, lstm_channels[i], H/s, W/s)``
            for s = 32, 16, 8, 4 (the previous object's state in this frame; zeros for the
            first object, see :meth:`zero_state`).
        h_temporal: 4 tensors like ``h``: this object's hidden state from the previous frame.
    Returns ``(logits, h', c')``: logits ``(B, 1, 2 ceil(H/4), 2 ceil(W/4))`` (half the input
    resolution) and the new state. Each cell runs three times, once per mask channel, and
    the three states are averaged (batched here as 3B problems). ``shared_gates=True`` computes
    the gates' convolution over the inputs the three runs share once (``ConvLSTMCell``'s
    ``repeats``; the exported decoder's form, a third of the work, equal up to float rounding).
    Submodules: ``cells`` (4 :class:`ConvLSTMCell`, coarse to fine) and ``conv_out`` (3x3).
    """

    def __init__(self, cfg: DMMConfig) -> None:
        super().__init__()
        hid = cfg.lstm_channels
        skip = cfg.skip_channels[::-1]  # coarse to fine: h, h, h/2, h/4
        c_in = [skip[0]] + [hid[i - 1] + skip[i] for i in range(1, 4)]
        self.cells = nn.ModuleList(ConvLSTMCell(c_in[i], hid[i]) for i in range(4))
        self.conv_out = nn.Conv2d(hid[3], 1, 3, padding=1)

    def zero_state(self, skip: Four) -> Four:
        """Zero tensors shaped like a state (``h``, ``c`` or ``h_temporal``) for ``skip``."""
        return tuple(
            f.new_zeros(f.shape[0], cell.hidden, f.shape[2], f.shape[3])
            for f, cell in zip(skip[::-1], self.cells, strict=True)
        )

    def forward(
        self,
        skip: Four,
        masks: torch.Tensor,
        h: Four,
        c: Four,
        h_temporal: Four,
        shared_gates: bool = False,
    ) -> tuple[torch.Tensor, Four, Four]:
        b = masks.shape[0]
        feats = skip[::-1]  # coarse to fine
        pyramid = mask_pyramid(masks)
        x = feats[0]
        h_out, c_out = [], []
        for i, cell in enumerate(self.cells):
            m = pyramid[i].reshape(3 * b, 1, *pyramid[i].shape[2:])
            if shared_gates:
                hn, cn = cell(x, m, h[i], c[i], h_temporal[i], repeats=3)
            else:
                hn, cn = cell(
                    x.repeat_interleave(3, dim=0),
                    m,
                    h[i].repeat_interleave(3, dim=0),
                    c[i].repeat_interleave(3, dim=0),
                    h_temporal[i].repeat_interleave(3, dim=0),
                )
            hn = hn.view(b, 3, *hn.shape[1:]).mean(dim=1)
            cn = cn.view(b, 3, *cn.shape[1:]).mean(dim=1)
            h_out.append(hn)
            c_out.append(cn)
            if i < 3:
                nxt = feats[i + 1]
                up = F.interpolate(hn, size=nxt.shape[-2:], mode="bilinear", align_corners=True)
                x = torch.cat([up, nxt], dim=1)
            else:
                size = (2 * hn.shape[2], 2 * hn.shape[3])
                x = F.interpolate(hn, size=size, mode="bilinear", align_corners=True)
        return self.conv_out(x), tuple(h_out), tuple(c_out)


def to_probabilities(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Decoder logits ``(B, 1, h, w)`` -> probabilities ``(B, H, W)`` at ``size = (H, W)``.

    Bilinear upsampling with ``align_corners=True`` (the original's), then a sigmoid.
    """
    up = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)
    return torch.sigmoid(up[:, 0])
