"""Matching stage: the cost matrix, its padding, the DMM layer and the matched masks."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dmm_deploy.matching import dmm_match, exact_assign
from dmm_deploy.model.config import DMMConfig

__all__ = [
    "MatchResult",
    "MatchingCost",
    "exact_assignment",
    "mask_iou",
    "match_proposals",
    "pad_proposals",
]


def mask_iou(a: torch.Tensor, b: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """IoU of every pair of binarised masks, without gradient.

    a: ``(O, H, W)``, b: ``(P, H, W)``; both are binarised with ``> threshold``.
    Returns ``(O, P)``: ``|A & B| / (|A | B| + 1e-6)`` (the original's epsilon).
    """
    with torch.no_grad():
        fa = (a > threshold).flatten(1).to(torch.float32)
        fb = (b > threshold).flatten(1).to(torch.float32)
        inter = fa @ fb.t()
        union = fa.sum(1, keepdim=True) + fb.sum(1)[None, :] - inter
        return (inter / (union + 1e-6)).to(a.dtype)


class MatchingCost(nn.Module):
    """Templates, proposals and masks -> the matching cost.

    forward(templates ``(O, D)``, embeddings ``(P, D)``, prev_masks ``(O, H, W)`` soft masks
    of the objects in the previous frame, proposal_masks ``(P, H, W)``) -> cost ``(O, P)``::

        cost = -((1 - w) * cosine(template, embedding) + w * IoU(prev > t, proposal > t))

    with ``w = cfg.score_weight`` and ``t = cfg.mask_threshold``; the IoU term carries no
    gradient. No parameters.
    """

    def __init__(self, cfg: DMMConfig) -> None:
        super().__init__()
        self.score_weight = cfg.score_weight
        self.threshold = cfg.mask_threshold

    def forward(
        self,
        templates: torch.Tensor,
        embeddings: torch.Tensor,
        prev_masks: torch.Tensor,
        proposal_masks: torch.Tensor,
    ) -> torch.Tensor:
        cos = F.normalize(templates, dim=1, eps=1e-8) @ F.normalize(embeddings, dim=1, eps=1e-8).t()
        iou = mask_iou(prev_masks, proposal_masks, self.threshold)
        return -((1.0 - self.score_weight) * cos + self.score_weight * iou)


def pad_proposals(
    cost: torch.Tensor, proposal_masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's padding: with ``P <= O`` proposals, add zero-cost empty proposals.

    cost ``(O, P)``, proposal_masks ``(P, H, W)`` -> cost ``(O, M)``, masks ``(M, H, W)`` with
    ``M = O + 1`` when ``P <= O`` (columns ``P..O`` cost 0, their masks are empty), else the
    inputs unchanged.
    """
    o, p = cost.shape
    if p > o:
        return cost, proposal_masks
    extra = o + 1 - p
    cost = torch.cat([cost, cost.new_zeros(o, extra)], dim=1)
    masks = torch.cat(
        [proposal_masks, proposal_masks.new_zeros(extra, *proposal_masks.shape[1:])], dim=0
    )
    return cost, masks


class MatchResult(NamedTuple):
    """What :func:`match_proposals` returns (tensors, one row per object).

    Attributes:
        assignment: ``(O, M)`` the DMM layer's relaxed assignment (M padded proposals; one-hot
            with ``cfg.matching="exact"``).
        hard: ``(O, M)`` the test-time read-out: each row keeps its maximum entries.
        index: ``(O,)`` int64 each row's argmax column; ``-1`` where it is a padding column.
        matched: ``(O, H, W)`` ``hard @ masks``: the mask the refinement decoder sees.
        selected: ``(O, H, W)`` the matched proposal's own mask (zeros for a padding column):
            the output of the matching-only mode.
    """

    assignment: torch.Tensor
    hard: torch.Tensor
    index: torch.Tensor
    matched: torch.Tensor
    selected: torch.Tensor


def exact_assignment(cost: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """The exact optimum of the matching LP as a one-hot assignment, batched over problems.

    cost: ``(n, m)`` or ``(B, n, m)`` with ``n_b <= m_b`` for every problem (``sizes``: the
    per-problem ``(n_b, m_b)`` of a padded batch, as in :func:`~dmm_deploy.matching.dmm_match`).
    Each row gets a 1 in the column :func:`~dmm_deploy.matching.exact_assign` (scipy's
    ``linear_sum_assignment``) gives it, every other entry 0 (padding included); same shape,
    dtype and device as ``cost``, no gradient. ``n > m`` has no feasible assignment (each row
    needs a column of its own) and raises ``ValueError``; :func:`match_proposals` never
    reaches it, because :func:`pad_proposals` leaves at least ``O + 1`` columns.
    """
    with torch.no_grad():
        index = exact_assign(cost, sizes)
        hot = torch.zeros_like(cost)
        valid = index >= 0
        safe = torch.where(valid, index, 0)
        hot.scatter_(-1, safe.unsqueeze(-1), valid.unsqueeze(-1).to(cost.dtype))
    return hot


def match_proposals(
    cost: torch.Tensor, proposal_masks: torch.Tensor, cfg: DMMConfig
) -> MatchResult:
    """Pad, match, read out, build the matched masks.

    cost: ``(O, P)`` from :class:`MatchingCost`, ``O >= 1``, ``P >= 0``.
    proposal_masks: ``(P, H, W)`` soft proposal masks.
    With ``cfg.matching == "dmm"`` the DMM layer runs ``cfg.n_grad`` x ``cfg.n_proj`` steps at
    ``cfg.lr`` from the greedy one-hot start, in ``cfg.matcher_variant``, through
    :func:`dmm_deploy.matching.dmm_match`; with ``"exact"`` the padded cost's exact
    assignment replaces it (:func:`exact_assignment`, the original's ``hun`` option). At test
    time each row keeps only its maximum entry, with its value (ties keep all), as the
    original does.
    """
    n_prop = proposal_masks.shape[0]
    cost_p, masks_p = pad_proposals(cost, proposal_masks)
    if cfg.matching == "exact":
        x = exact_assignment(cost_p)
    else:
        x = dmm_match(
            cost_p,
            "greedy",
            n_grad=cfg.n_grad,
            n_proj=cfg.n_proj,
            lr=cfg.lr,
            backend=cfg.matcher_backend,
            variant=cfg.matcher_variant,
        )
    row_max, index = x.max(dim=1, keepdim=True)
    hard = x * (x == row_max).to(x.dtype)
    flat = masks_p.flatten(1)
    matched = (hard @ flat).view(-1, *masks_p.shape[1:])
    selected = masks_p[index[:, 0]]
    index = torch.where(index[:, 0] < n_prop, index[:, 0], -1)
    return MatchResult(x, hard, index, matched, selected)
