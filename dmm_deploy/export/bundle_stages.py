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
detector     image (1, 3, Hp, Wp) Mask R-CNN input            feature0..3, rpn_logits (L, K),
             (normalised, resized, padded on the host)      rpn_index (L, K), rpn_deltas (L, K, 4)
proposals    feature0..3, rpn_boxes (L, K, 4),              boxes (D, 4), scores (D,),
             rpn_scores (L, K), image_size (2,)             masks (D, 28, 28), valid (D,)
============ ============================================== =====================================

``detector`` and ``proposals`` are torchvision's Mask R-CNN split into two TensorRT-clean graphs
(:class:`DetectorStage`, :class:`DetectorHeadsStage`; why and how: the comment above them);
:class:`MaskRCNNStage` is the detector as the torch model runs it, the parity reference.

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
from dmm_deploy.runtime.bundle import MATCH_EXACT_OUTPUTS, RUNTIME_IO
from dmm_deploy.runtime.proposals import MASKRCNN_SPLIT_IO

__all__ = [
    "DETECTOR_IO",
    "MATCH_EXACT_OUTPUTS",
    "STAGE_IO",
    "DecoderStage",
    "DetectorHeadsStage",
    "DetectorStage",
    "EmbedStage",
    "EncoderStage",
    "MaskRCNNStage",
    "MatchStage",
    "batched_cost",
    "stage_io",
]

STAGE_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = dict(RUNTIME_IO)
"""Input and output names of every stage graph, in call order (default matching): what the
runtime feeds and reads (:data:`dmm_deploy.runtime.bundle.RUNTIME_IO`), plus the split
detector's graphs (:data:`DETECTOR_IO`). ``matching="exact"``: the match graph outputs
:data:`MATCH_EXACT_OUTPUTS`."""


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
    """``(match4..match32, boxes, batch_index) -> embeddings``: the model's RoIAlign box
    embeddings in their matrix-product form (``RoIEmbedder(..., separable=True)``, equal to
    RoIAlign + mean: MatMul nodes instead of RoiAlign, about 10x faster on onnxruntime's CPU
    provider and native to TensorRT)."""

    def __init__(self, net: DMMNet) -> None:
        super().__init__()
        self.embedder = net.embedder

    def forward(self, m4, m8, m16, m32, boxes, batch_index):
        return self.embedder((m4, m8, m16, m32), boxes, batch_index, separable=True)


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
    """One refinement step for a batch of objects: the decoder, then sigmoid at input size.
    The gates' convolution over the inputs the three mask runs share runs once
    (``RefineDecoder(..., shared_gates=True)``; a third of the decoder's convolution work)."""

    def __init__(self, net: DMMNet) -> None:
        super().__init__()
        self.decoder = net.decoder
        self.size = tuple(net.cfg.input_size)

    def forward(self, s4, s8, s16, s32, masks, *state):
        h, c, t = state[0:4], state[4:8], state[8:12]
        skip = (s4, s8, s16, s32)
        logits, h_new, c_new = self.decoder(skip, masks, h, c, t, shared_gates=True)
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


# --------------------------------------------------------------------------- Mask R-CNN, split
#
# TensorRT-clean form of the detector, as NVIDIA's own Mask R-CNN deployments split it (the
# TensorRT sample sampleUffMaskRCNN and the EfficientNMS / pyramidROIAlign plugins of
# NVIDIA/TensorRT: dense network in the engine, proposal decoding, NMS and per-level RoIAlign
# over a fixed number of boxes with padding). Here the data-dependent steps use only ONNX
# operators that onnx-tensorrt's operators.md lists as supported for TensorRT 10.x
# (NonMaxSuppression, RoiAlign, TopK; TopK "K below 3840", which is why K is an initializer
# here) and TensorRT's NMS layer limit (INMSLayer::setTopKBoxLimit: at most 5000 boxes per
# batch item, 2000 on SM 5.3/6.2): every NonMaxSuppression here gets one pyramid level (RPN,
# pre_nms_top_n boxes) or one class (RoI heads, post_nms_top_n boxes) per batch item.
# Anchor decoding (a gather of a few thousand boxes) runs in numpy between the two graphs.

MASKRCNN_LEVELS = 4  # RoI feature levels (FPN "0".."3"); the RPN also sees the "pool" level
DETECTOR_IO = MASKRCNN_SPLIT_IO
"""Input and output names of the split detector's two graphs (``layout="split"``)."""
STAGE_IO.update(DETECTOR_IO)


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (one class per batch item, corner boxes), run in torch by
    :func:`torchvision.ops.nms` per batch item. ``boxes (B, N, 4)``, ``scores (B, 1, N)`` ->
    ``selected (S, 3)`` int64 rows ``(batch, 0, box)``, each batch's boxes in decreasing score
    order, as onnxruntime returns them; at most ``max_out`` per batch item."""

    @staticmethod
    def forward(ctx, boxes, scores, max_out: int, iou: float):
        from torchvision.ops import nms

        rows = []
        for b in range(boxes.shape[0]):
            keep = nms(boxes[b], scores[b, 0], iou)[:max_out]
            rows.append(torch.stack([torch.full_like(keep, b), torch.zeros_like(keep), keep], 1))
        return torch.cat(rows)

    @staticmethod
    def symbolic(g, boxes, scores, max_out: int, iou: float):
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_out], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
            center_point_box_i=0,
        )


TOPK_MAX = 3840  # TensorRT's TopK: K below 3840 (onnx-tensorrt operators.md)


def check_tensorrt_limits(pre_nms_top_n: int, post_nms_top_n: int = 1, detections: int = 1):
    """Refuse detector settings whose graphs TensorRT would refuse: every TopK K
    (``pre_nms_top_n``, ``post_nms_top_n``, ``detections_per_img``) must be below
    :data:`TOPK_MAX`. That also keeps every NMS (``pre_nms_top_n`` boxes per level,
    ``post_nms_top_n`` per class) within the NMS layer's 5000 boxes per batch item (2000 on
    SM 5.3/6.2, GPUs that JetPack 6 does not support)."""
    for name, k in (
        ("rpn pre_nms_top_n", pre_nms_top_n),
        ("rpn post_nms_top_n", post_nms_top_n),
        ("detections_per_img", detections),
    ):
        if not 1 <= int(k) < TOPK_MAX:
            raise ValueError(
                f"Mask R-CNN {name} = {k}: the exported graphs need 1 <= it < {TOPK_MAX} "
                "(TensorRT's TopK limit)"
            )


def _top_k_padded(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``topk(values, k)`` over ``values`` followed by ``k`` distinct, decreasing sentinel
    values far below any real one: K is a constant whatever the length of ``values`` (a pyramid
    level may have fewer anchors than K; NMS keeps a data-dependent count), positions
    ``>= len(values)`` mark padding, and ties among the sentinels cannot reorder."""
    pad = -1.0e6 - torch.arange(k, dtype=values.dtype)
    return torch.topk(torch.cat([values, pad]), k)


def _pooling_order(boxes: torch.Tensor, mapper, count: int) -> torch.Tensor:
    """The order in which to pool ``boxes (count, 4)``: by RoI level, then top edge (``count``,
    their number, is a constant: TensorRT's TopK needs one). RoIAlign pools each box on its own,
    so the order changes no number, but boxes that share feature rows then find them in the
    cache: onnxruntime pools the box head's 1000 proposals ~1.8x faster than in score order."""
    key = mapper([boxes]).to(boxes.dtype) * 4096.0 + boxes[:, 1]  # y1 < 4096 (image pixels)
    return torch.topk(key, count, largest=False).indices


def _pool_all_levels(features, boxes, output_size: tuple[int, int], sampling_ratio: int, mapper):
    """torchvision's ``MultiScaleRoIAlign`` for a fixed number of boxes of one image: every box
    pooled on every level (ONNX RoiAlign, ``aligned=False``), then each box's level (the
    pooler's own :class:`~torchvision.ops.poolers.LevelMapper`) picked with ``Where``: no
    NonZero/Scatter, static shapes, exact for any box, but four times torchvision's pooling.
    :func:`_pool_own_level` pools once where its condition holds (detectors up to ~1568 px)."""
    from torchvision.ops import roi_align

    rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], 1)
    levels = mapper([boxes])
    out = None
    for level, feature in enumerate(features):
        pooled = roi_align(feature, rois, tuple(output_size), 2.0 ** -(level + 2), sampling_ratio)
        out = (
            pooled
            if out is None
            else torch.where((levels == level)[:, None, None, None], pooled, out)
        )
    return out


def _with_edge(f: torch.Tensor) -> torch.Tensor:
    """``f (C, h, w)`` followed by a copy of its last column and then of its last row."""
    f = torch.cat([f, f[..., -1:]], -1)
    return torch.cat([f, f[..., -1:, :]], -2)


def _level_canvas(features) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four FPN levels ``(1, C, H / 2^l, W / 2^l)`` as one RoiAlign input ``(2, C, H, W)``:
    item 0 is level 0; item 1 packs levels 1..3 (level 1 at the origin, level 2 to its right,
    level 3 below level 2), each followed by a copy of its last column and row, zeros elsewhere.
    Returns the canvas and the ``(x, y)`` offsets of levels 0..3 in their item, ``(4,)`` each.

    The copied edge is what makes a level's samples in ``(size - 1, size]`` read its last pixel
    (torchvision clamps them to it) instead of the next level's first.
    """
    f0, f1, f2, f3 = (f[0] for f in features)
    e1, e2, e3 = _with_edge(f1), _with_edge(f2), _with_edge(f3)
    height, width = f0.shape[-2], f0.shape[-1]
    right = torch.cat([e2, F.pad(e3, (0, e2.shape[-1] - e3.shape[-1]))], -2)
    right = F.pad(right, (0, width - e1.shape[-1] - right.shape[-1], 0, height - right.shape[-2]))
    left = F.pad(e1, (0, 0, 0, height - e1.shape[-2]))
    canvas = torch.stack([f0, torch.cat([left, right], -1)])
    zero = torch.zeros((), dtype=f0.dtype)
    ox = (e1.shape[-1] * torch.ones((), dtype=f0.dtype)).reshape(1)
    oy = (e2.shape[-2] * torch.ones((), dtype=f0.dtype)).reshape(1)
    x = torch.cat([zero.reshape(1), zero.reshape(1), ox, ox])
    y = torch.cat([zero.reshape(1), zero.reshape(1), zero.reshape(1), oy])
    return canvas, x, y


def packed_pooling_is_exact(mapper, max_side: float, levels: int = 4) -> bool:
    """Whether :func:`_pool_own_level` equals torchvision's ``MultiScaleRoIAlign`` (up to float
    rounding) for boxes clipped to an image whose sides are at most ``max_side`` pixels.

    RoiAlign widens a box narrower than one feature pixel to one pixel; a level-``l`` box's
    samples can then pass the level's last pixel, where torchvision reads zeros and the packed
    canvas reads the copied edge or the next level. The level mapper only sends boxes of area
    ``>= s_l^2`` to level ``l >= 1`` (``s_l`` its smallest ``sqrt(area)``), and a side is at most
    ``max_side``, so every such box is at least ``s_l^2 / max_side`` image pixels wide and high:
    at least one feature pixel when that is ``>= 2^(l + k_min)``. Level 0 is pooled on its own
    and is exact for any box. (Canonical mapping 224 / 4: ``max_side <= 1567``.)
    """
    for level in range(1, levels):
        k = level + mapper.k_min
        smallest = mapper.s0 * 2.0 ** (k - mapper.lvl0 - mapper.eps)
        if smallest * smallest / float(max_side) < 2.0**k:
            return False
    return True


def _pool_own_level(
    canvas, offsets, boxes, output_size: tuple[int, int], sampling_ratio: int, mapper
):
    """torchvision's ``MultiScaleRoIAlign`` for a fixed number of boxes of one image, each box
    pooled once, on its own level, with one RoiAlign over :func:`_level_canvas`: static shapes,
    no NonZero/Scatter. The box is scaled to its level (``2^-(l+2)``, exact in float) and moved
    to its place in the canvas; ``spatial_scale`` is 1. Level-0 boxes get torchvision's numbers to
    the bit, level 1 to float rounding (the copied edge), levels 2 and 3 carry the offset's
    rounding as well (``~1e-5`` px in the sample positions). Equal to torchvision's pooling in
    this sense when :func:`packed_pooling_is_exact` holds."""
    from torchvision.ops import roi_align

    ox, oy = offsets
    levels = mapper([boxes])
    scale = torch.tensor([2.0 ** -(k + 2) for k in range(4)], dtype=boxes.dtype)[levels, None]
    shift = torch.stack([ox[levels], oy[levels]], 1).repeat(1, 2)
    item = (levels > 0).to(boxes.dtype)[:, None]
    rois = torch.cat([item, boxes * scale + shift], 1)
    return roi_align(canvas, rois, tuple(output_size), 1.0, sampling_ratio)


class DetectorStage(nn.Module):
    """The detector's dense first half: ``image (1, 3, Hp, Wp)`` (normalised, resized and
    padded to a multiple of 32 on the host, exactly as torchvision's transform does) -> FPN
    features ``feature0..3`` and, per pyramid level, the RPN's ``pre_nms_top_n`` best anchors:
    ``rpn_logits (L, K)``, ``rpn_index (L, K)`` (anchor index in the level; ``>=`` the level's
    anchor count marks padding) and their box deltas ``rpn_deltas (L, K, 4)``.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        m = detector.eval()
        self.backbone, self.head = m.backbone, m.rpn.head
        self.anchors = m.rpn.anchor_generator.num_anchors_per_location()[0]
        self.k = int(m.rpn._pre_nms_top_n["testing"])
        check_tensorrt_limits(self.k)

    def forward(self, image: torch.Tensor):
        features = list(self.backbone(image).values())
        objectness, deltas = self.head(features)
        logits, index, picked = [], [], []
        for obj, dlt in zip(objectness, deltas, strict=True):
            # torchvision's permute_and_flatten order: (y, x, anchor)
            obj = obj.reshape(self.anchors, -1).transpose(0, 1).reshape(-1)
            dlt = dlt.reshape(self.anchors, 4, -1).permute(2, 0, 1).reshape(-1, 4)
            top, idx = _top_k_padded(obj, self.k)
            dlt = torch.cat([dlt, dlt.new_zeros(self.k, 4)])
            logits.append(top)
            index.append(idx)
            picked.append(dlt[idx])
        return (
            *features[:MASKRCNN_LEVELS],
            torch.stack(logits),
            torch.stack(index),
            torch.stack(picked),
        )


class DetectorHeadsStage(nn.Module):
    """The detector's second half over fixed-size tensors: RPN NMS (one level per batch item)
    and the ``post_nms_top_n`` best proposals, the box head over them (padding proposals are
    pooled but never kept), class-wise box decoding, clipping to ``image_size (2,) = (h, w)``,
    softmax, score and small-box filters, NMS (one class per batch item), the
    ``detections_per_img`` best detections, then the mask head on those boxes. Both heads pool
    each box once on its own level (:func:`_pool_own_level`) where that is torchvision's
    pooling (:func:`packed_pooling_is_exact` for the transform's ``max_size``), else every box
    on every level (:func:`_pool_all_levels`). The proposals are taken in pooling order
    (:func:`_pooling_order`; torchvision's keep score order, which only orders exact score ties
    differently); the detections are pooled in that order and their masks put back in score
    order.

    Inputs: ``feature0..3``, ``rpn_boxes (L, K, 4)`` decoded and clipped, ``rpn_scores (L, K)``
    objectness probabilities with ``-1`` for boxes the RPN's filters drop. Outputs (``D`` =
    ``detections_per_img``): ``boxes (D, 4)`` in the resized image's pixels, ``scores (D,)``,
    ``masks (D, 28, 28)`` box-relative probabilities of the detected class, ``valid (D,)``
    (detections first, in decreasing score).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        m = detector.eval()
        from torchvision.ops.poolers import initLevelMapper

        self.roi_heads = m.roi_heads
        self.rpn_nms = float(m.rpn.nms_thresh)
        self.k = int(m.rpn._pre_nms_top_n["testing"])
        self.p = int(m.rpn._post_nms_top_n["testing"])
        rh = m.roi_heads
        self.d = int(rh.detections_per_img)
        self.nms, self.score_thresh = float(rh.nms_thresh), float(rh.score_thresh)
        self.box_pool = rh.box_roi_pool
        self.mask_pool = rh.mask_roi_pool
        for pool in (self.box_pool, self.mask_pool):
            if list(pool.featmap_names) != [str(i) for i in range(MASKRCNN_LEVELS)]:
                raise ValueError(f"unsupported RoI pooler levels {pool.featmap_names}")
        # one mapper for both poolers (torchvision builds them alike; checked here)
        canon = {(p.canonical_scale, p.canonical_level) for p in (self.box_pool, self.mask_pool)}
        if len(canon) != 1:
            raise ValueError(f"the box and mask RoI poolers map levels differently: {canon}")
        scale, level = canon.pop()
        self.mapper = initLevelMapper(2, 5, canonical_scale=scale, canonical_level=level)
        # one RoiAlign per head over the packed levels where that is torchvision's pooling
        # (every image side <= max_size; levels of stride 4..32 need a padding to 32)
        t = m.transform
        self.packed = int(t.size_divisible) % 32 == 0 and packed_pooling_is_exact(
            self.mapper, float(t.max_size)
        )
        check_tensorrt_limits(self.k, self.p, self.d)

    def _pool(self, features, canvas, boxes, pool: nn.Module) -> torch.Tensor:
        size, ratio = pool.output_size, pool.sampling_ratio
        if canvas is None:
            return _pool_all_levels(features, boxes, size, ratio, self.mapper)
        return _pool_own_level(canvas[0], canvas[1:], boxes, size, ratio, self.mapper)

    def forward(self, f0, f1, f2, f3, rpn_boxes, rpn_scores, image_size):
        features = (f0, f1, f2, f3)
        canvas = _level_canvas(features) if self.packed else None
        k = self.k  # rpn_scores.shape[1]; a constant (a traced size cannot feed the NMS node)
        # RPN: NMS per level, then the post_nms_top_n best survivors over all levels
        sel = _NonMaxSuppression.apply(rpn_boxes, rpn_scores[:, None, :], k, self.rpn_nms)
        flat = sel[:, 0] * k + sel[:, 2]
        top, pos = _top_k_padded(rpn_scores.reshape(-1)[flat], self.p)
        flat = torch.cat([flat, flat.new_zeros(self.p)])[pos]
        keep = top >= 0
        proposals = torch.where(keep[:, None], rpn_boxes.reshape(-1, 4)[flat], 0.0)
        order = _pooling_order(proposals, self.mapper, self.p)
        proposals, keep = proposals[order], keep[order]
        # box head
        rh = self.roi_heads
        pooled = self._pool(features, canvas, proposals, self.box_pool)
        class_logits, box_regression = rh.box_predictor(rh.box_head(pooled))
        boxes = rh.box_coder.decode(box_regression, [proposals])  # (P, C, 4)
        h, w = image_size[0], image_size[1]
        x = torch.minimum(boxes[..., 0::2].clamp(min=0), w)
        y = torch.minimum(boxes[..., 1::2].clamp(min=0), h)
        boxes = torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)[:, 1:]
        scores = torch.softmax(class_logits, -1)[:, 1:]
        ok = (
            (scores > self.score_thresh)
            & (boxes[..., 2] - boxes[..., 0] >= 1e-2)
            & (boxes[..., 3] - boxes[..., 1] >= 1e-2)
            & keep[:, None]
        )
        scores = torch.where(ok, scores, -1.0).transpose(0, 1)  # (C - 1, P)
        boxes = boxes.transpose(0, 1)  # (C - 1, P, 4)
        # at most D survivors per class: the D best of all classes are among them (exact), and
        # NMS stops once a class has D (torchvision keeps them all, then takes the top D)
        sel = _NonMaxSuppression.apply(boxes, scores[:, None, :], self.d, self.nms)
        flat = sel[:, 0] * self.p + sel[:, 2]
        top, pos = _top_k_padded(scores.reshape(-1)[flat], self.d)
        flat = torch.cat([flat, flat.new_zeros(self.d)])[pos]
        valid = top >= 0
        det_boxes = torch.where(valid[:, None], boxes.reshape(-1, 4)[flat], 0.0)
        labels = flat // self.p + 1
        # mask head on the detections, pooled in pooling order, masks put back in score order
        order = _pooling_order(det_boxes, self.mapper, self.d)
        back = torch.topk(order.to(det_boxes.dtype), self.d, largest=False).indices
        pooled = self._pool(features, canvas, det_boxes[order], self.mask_pool)
        logits = rh.mask_predictor(rh.mask_head(pooled))  # (D, C, 28, 28)
        index = labels[order][:, None, None, None].expand(-1, 1, *logits.shape[-2:])
        masks = torch.gather(logits, 1, index)[back, 0].sigmoid()
        return det_boxes, torch.where(valid, top, 0.0), masks, valid
