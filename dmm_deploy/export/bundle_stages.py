"""The per-frame stages of DMM-Net as export-ready modules (tensors in, tensors out).

Each wrapper calls the model's own modules (:class:`~dmm_deploy.model.Encoder`,
:class:`~dmm_deploy.model.RoIEmbedder`, :class:`~dmm_deploy.model.MatchingCost`,
:class:`~dmm_deploy.model.RefineDecoder`) and the one matcher reference
(:func:`dmm_deploy.matching.match_reference`, :func:`~dmm_deploy.matching.greedy_init`), so the
exported graphs compute what :class:`~dmm_deploy.model.VideoSegmenter` computes. Every stage
has a leading batch axis so that a server can run several streams' frames in one call:

============ ============================================== =====================================
stage        inputs                                         outputs
============ ============================================== =====================================
encoder      image (B, 3, h, w) RGB in [0, 1]               match4..match32, skip4..skip32
embed        match4..match32, boxes (N, 4),                 embeddings (N, D)
             batch_index (N,) int64
match        templates (B, O, D), embeddings (B, M, D),     assignment (B, O, M),
             prev_masks (B, O, h, w),                       matched (B, O, h, w)
             proposal_masks (B, M, h, w), sizes (B, 2)      (``matching="exact"``: cost (B, O, M))
decoder      skip4..skip32 (B, ...), masks (B, 3, h, w),    probabilities (B, h, w),
             h32..h4, c32..c4, t32..t4 (B, ...)             h32_out..h4_out, c32_out..c4_out
proposals    image (3, H, W) RGB in [0, 1], any H, W        boxes (D, 4), scores (D,),
                                                            masks (D, 28, 28)
============ ============================================== =====================================

``match`` solves a padded batch of problems: problem ``b`` is ``sizes[b] = (O_b, M_b)`` objects
by proposals; padding rows/columns are ignored and come out zero. A problem's own padding of
the original (``P <= O`` proposals: ``O + 1 - P`` zero-cost empty columns, see
:func:`~dmm_deploy.model.pad_proposals`) is done by the caller with zero embeddings and empty
masks, which give exactly the zero cost the original pads with. The matcher runs in the
config's ``matcher_variant`` (``"original"``: the original code's solver with its early exits
as per-problem frozen masks, still no Loop/If). A ``matching="exact"`` model's match graph
stops at the cost: the runtime solves the exact assignment on the host (an LP of a few dozen
entries has no use for a graph) and picks the matched masks itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dmm_deploy.matching.reference import greedy_init, match_reference, valid_mask
from dmm_deploy.model.decoder import to_probabilities
from dmm_deploy.model.net import DMMNet

__all__ = [
    "MATCH_EXACT_OUTPUTS",
    "STAGE_IO",
    "DecoderStage",
    "EmbedStage",
    "EncoderStage",
    "MatchStage",
    "batched_cost",
    "stage_io",
]

LEVELS = ("4", "8", "16", "32")
COARSE = ("32", "16", "8", "4")

_MATCH = tuple(f"match{s}" for s in LEVELS)
_SKIP = tuple(f"skip{s}" for s in LEVELS)
STAGE_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "encoder": (("image",), (*_MATCH, *_SKIP)),
    "embed": ((*_MATCH, "boxes", "batch_index"), ("embeddings",)),
    "match": (
        ("templates", "embeddings", "prev_masks", "proposal_masks", "sizes"),
        ("assignment", "matched"),
    ),
    "decoder": (
        (
            *_SKIP,
            "masks",
            *(f"h{s}" for s in COARSE),
            *(f"c{s}" for s in COARSE),
            *(f"t{s}" for s in COARSE),
        ),
        ("probabilities", *(f"h{s}_out" for s in COARSE), *(f"c{s}_out" for s in COARSE)),
    ),
    "proposals": (("image",), ("boxes", "scores", "masks")),
}
"""Input and output names of every stage graph, in call order (default matching)."""

MATCH_EXACT_OUTPUTS = ("cost",)
"""The match graph's outputs for a ``matching="exact"`` model."""


def stage_io(stage: str, cfg) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Input and output names of ``stage`` for a model of config ``cfg`` (a DMMConfig)."""
    ins, outs = STAGE_IO[stage]
    if stage == "match" and cfg.matching == "exact":
        outs = MATCH_EXACT_OUTPUTS
    return ins, outs


class EncoderStage(nn.Module):
    """``image -> (match4, ..., match32, skip4, ..., skip32)``: the model's encoder, flattened."""

    def __init__(self, net: DMMNet) -> None:
        super().__init__()
        self.encoder = net.encoder

    def forward(self, image: torch.Tensor):
        match, skip = self.encoder(image)
        return (*match, *skip)


class EmbedStage(nn.Module):
    """``(match4..match32, boxes, batch_index) -> embeddings``: RoIAlign box embeddings."""

    def __init__(self, net: DMMNet) -> None:
        super().__init__()
        self.embedder = net.embedder

    def forward(self, m4, m8, m16, m32, boxes, batch_index):
        return self.embedder((m4, m8, m16, m32), boxes, batch_index)


class MatchStage(nn.Module):
    """Cost, greedy start, the unrolled DMM layer and the test-time read-out, batched.

    The cost is :class:`~dmm_deploy.model.MatchingCost`'s formula over a batch (that module
    takes one problem; tracing it under ``torch.func.vmap`` hits an operator the exporter
    lacks; the tests hold the two equal problem by problem); the layer is
    :func:`~dmm_deploy.matching.match_reference` at ``cfg.n_grad x cfg.n_proj`` in
    ``cfg.matcher_variant``, started from :func:`~dmm_deploy.matching.greedy_init`, with
    ``sizes`` masking the padding. Read-out as :func:`~dmm_deploy.model.match_proposals`: each
    row keeps its maximum entries (with their values) and ``matched = hard @ proposal_masks``.
    With ``cfg.matching="exact"`` the stage returns the cost alone, zero outside each
    problem's ``sizes[b]`` block.
    """

    def __init__(self, net: DMMNet) -> None:
        super().__init__()
        cfg = net.cfg
        self.score_weight, self.threshold = cfg.score_weight, cfg.mask_threshold
        self.n_grad, self.n_proj, self.lr = cfg.n_grad, cfg.n_proj, cfg.lr
        self.variant, self.exact = cfg.matcher_variant, cfg.matching == "exact"

    def forward(self, templates, embeddings, prev_masks, proposal_masks, sizes):
        cost = batched_cost(
            templates, embeddings, prev_masks, proposal_masks, self.score_weight, self.threshold
        )
        if self.exact:
            rows, cols = valid_mask(sizes, cost.shape[1], cost.shape[2])
            return torch.where(rows & cols, cost, 0.0)
        x_init = greedy_init(cost, sizes)
        x = match_reference(
            cost, x_init, self.n_grad, self.n_proj, self.lr, sizes, variant=self.variant
        )
        row_max = x.amax(dim=2, keepdim=True)
        hard = x * (x == row_max).to(x.dtype)
        b, o, _ = hard.shape
        flat = proposal_masks.reshape(b, proposal_masks.shape[1], -1)
        matched = torch.bmm(hard, flat).reshape(b, o, *proposal_masks.shape[2:])
        return x, matched


def batched_cost(templates, embeddings, prev_masks, proposal_masks, score_weight, threshold):
    """:class:`~dmm_deploy.model.MatchingCost` for ``(B, O, ...)`` / ``(B, M, ...)`` inputs:
    ``-((1 - w) cosine + w IoU(prev > t, proposal > t))``, IoU epsilon 1e-6 as the original."""
    cos = torch.bmm(
        F.normalize(templates, dim=2, eps=1e-8),
        F.normalize(embeddings, dim=2, eps=1e-8).transpose(1, 2),
    )
    fa = (prev_masks > threshold).flatten(2).to(cos.dtype)
    fb = (proposal_masks > threshold).flatten(2).to(cos.dtype)
    inter = torch.bmm(fa, fb.transpose(1, 2))
    union = fa.sum(2, keepdim=True) + fb.sum(2)[:, None, :] - inter
    iou = inter / (union + 1e-6)
    return -((1.0 - score_weight) * cos + score_weight * iou)


class DecoderStage(nn.Module):
    """One refinement step for a batch of objects: the decoder, then sigmoid at input size."""

    def __init__(self, net: DMMNet) -> None:
        super().__init__()
        self.decoder = net.decoder
        self.size = tuple(net.cfg.input_size)

    def forward(self, s4, s8, s16, s32, masks, *state):
        h, c, t = state[0:4], state[4:8], state[8:12]
        logits, h_new, c_new = self.decoder((s4, s8, s16, s32), masks, h, c, t)
        return (to_probabilities(logits, self.size), *h_new, *c_new)


class MaskRCNNStage(nn.Module):
    """torchvision Mask R-CNN as :class:`~dmm_deploy.model.MaskRCNNProposals` runs it:
    the detector's own resize and normalisation, backbone, RPN and RoI heads, boxes mapped
    back to the frame's pixels, box-relative 28 x 28 mask probabilities (no pasting: the
    runtime pastes at the model's input size, as the model does).

    ``detector``: the ``torchvision.models.detection.MaskRCNN`` (e.g.
    ``MaskRCNNProposals(...).model``), in eval mode.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector.eval()

    def forward(self, image: torch.Tensor):
        from torchvision.models.detection.transform import resize_boxes

        m = self.detector
        images, _ = m.transform([image])
        features = m.backbone(images.tensors)
        boxes, _ = m.rpn(images, features)
        det, _ = m.roi_heads(features, boxes, images.image_sizes)
        det = det[0]
        out_boxes = resize_boxes(det["boxes"], images.image_sizes[0], image.shape[-2:])
        return out_boxes, det["scores"], det["masks"][:, 0]
