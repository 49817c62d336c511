"""Proposals for the runtime, in numpy: detections, the precomputed ``.npz`` reader, Mask R-CNN
as bundle stages, and the original's post-processing (:func:`prepare_proposals`).

Mask R-CNN (:class:`MaskRCNNDetector`, manifest ``proposals.layout == "split"``) runs as two
TensorRT-clean graphs with the data-dependent glue in numpy: torchvision's transform
(normalise, bilinear resize, zero padding to a multiple of 32), graph ``detector`` (backbone,
FPN, RPN head, per-level top-k), anchor decoding and the RPN's clip / small-box / score
filters, graph ``proposals`` (RPN NMS, box head, NMS, mask head over fixed-size padded
tensors), then boxes scaled back to the frame. Bundles of the earlier single-graph layout
(one ``proposals`` graph from the image) run through :class:`MaskRCNNStage`.

The ``.npz`` format is the model's (:mod:`dmm_deploy.model.sources`); this reader needs no
torch (it is :class:`dmm_deploy.data.detections.PrecomputedFile`).
:func:`prepare_proposals` is the numpy form of :func:`dmm_deploy.model.prepare_proposals`:
masks pasted (box-relative) or resized (full-frame) to the input size, tight boxes of
``mask > box_threshold``, empty masks dropped or kept with the original's box
(``empty_proposals``), NMS at ``nms_iou`` over the ``+1``-area boxes, then ``top_k``
survivors: the best scores or the first in detection order (``proposal_order``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from dmm_deploy.data.detections import PrecomputedFile
from dmm_deploy.runtime.imaging import nms, paste_box_masks, resize, tight_boxes

__all__ = [
    "MASKRCNN_SINGLE_IO",
    "MASKRCNN_SPLIT_IO",
    "Detections",
    "MaskRCNNDetector",
    "MaskRCNNStage",
    "PrecomputedDetections",
    "Proposals",
    "check_maskrcnn_spec",
    "maskrcnn_source",
    "prepare_proposals",
]


MASKRCNN_SPLIT_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "detector": (
        ("image",),
        (*(f"feature{i}" for i in range(4)), "rpn_logits", "rpn_index", "rpn_deltas"),
    ),
    "proposals": (
        (*(f"feature{i}" for i in range(4)), "rpn_boxes", "rpn_scores", "image_size"),
        ("boxes", "scores", "masks", "valid"),
    ),
}
"""What :class:`MaskRCNNDetector` feeds its two graphs (input names) and reads (outputs)."""

MASKRCNN_SINGLE_IO: tuple[tuple[str, ...], tuple[str, ...]] = (
    ("image",),
    ("boxes", "scores", "masks"),
)
"""What :class:`MaskRCNNStage` feeds the single ``proposals`` graph and reads from it."""


def _shown(value) -> str:
    """``repr(value)`` cut to a readable piece of a one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _reals(value, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(_is_real(v) for v in value)


def check_maskrcnn_spec(spec: dict) -> None:
    """Check a split Mask R-CNN ``proposals`` entry (the settings :class:`MaskRCNNDetector`
    reads); raises ``ValueError`` with one line ``proposals.<field> must be ..., got ...``.

    ``min_size``, ``max_size``, ``size_divisible``: positive integers; ``image_mean``: three
    numbers, ``image_std`` three positive ones; ``cell_anchors``: one list of ``[x1, y1, x2, y2]``
    anchors per RPN level, at least 4 levels (the FPN's ``feature0..3``); ``rpn_weights``: four
    positive numbers; ``rpn_clip``, ``rpn_score_thresh``: numbers; ``rpn_min_size``: a
    non-negative number; ``stage``/``detector_stage``, when given: ``"proposals"``/``"detector"``
    (the graphs the runtime runs)."""

    def bad(field: str, expected: str) -> ValueError:
        text = _shown(spec[field]) if field in spec else "nothing"
        return ValueError(f"proposals.{field} must be {expected}, got {text}")

    for field in ("min_size", "max_size", "size_divisible"):
        if not _is_int(spec.get(field)) or spec[field] < 1:
            raise bad(field, "a positive integer")
    if not _reals(spec.get("image_mean"), 3):
        raise bad("image_mean", "three numbers")
    if not _reals(spec.get("image_std"), 3) or min(spec["image_std"]) <= 0:
        raise bad("image_std", "three positive numbers")
    anchors = spec.get("cell_anchors")
    if not (
        isinstance(anchors, list)
        and len(anchors) >= 4
        and all(
            isinstance(level, list) and level and all(_reals(a, 4) for a in level)
            for level in anchors
        )
    ):
        raise bad("cell_anchors", "a list of [x1, y1, x2, y2] anchors per level, >= 4 levels")
    if not _reals(spec.get("rpn_weights"), 4) or min(spec["rpn_weights"]) <= 0:
        raise bad("rpn_weights", "four positive numbers")
    for field in ("rpn_clip", "rpn_score_thresh"):
        if not _is_real(spec.get(field)):
            raise bad(field, "a number")
    if not _is_real(spec.get("rpn_min_size")) or spec["rpn_min_size"] < 0:
        raise bad("rpn_min_size", "a non-negative number")
    for field, graph in (("stage", "proposals"), ("detector_stage", "detector")):
        if field in spec and spec[field] != graph:
            raise bad(field, f"{graph!r} (the graph the runtime runs)")


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
    """A single-graph ``proposals`` stage (bundles exported before the split layout: the whole
    torchvision Mask R-CNN in one graph, onnxruntime only) as a source.

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


class MaskRCNNDetector:
    """torchvision Mask R-CNN from the bundle's ``detector`` and ``proposals`` graphs, with
    the host steps in numpy (see the module docstring); computes what
    :class:`dmm_deploy.model.MaskRCNNProposals` computes, up to the order of near-tied scores.

    ``spec``: the manifest's ``proposals`` entry (transform sizes, mean/std, anchors, RPN
    settings; :meth:`dmm_deploy.runtime.Bundle.load` checks a bundle's with
    :func:`check_maskrcnn_spec`); ``detector``/``heads``: runners (``run(feeds) -> dict``) of
    the two graphs.
    """

    def __init__(self, spec: dict, detector, heads) -> None:
        self.spec, self.detector, self.heads = spec, detector, heads
        self.mean = np.asarray(spec["image_mean"], np.float32)[:, None, None]
        self.std = np.asarray(spec["image_std"], np.float32)[:, None, None]
        self.cell_anchors = [np.asarray(a, np.float32).reshape(-1, 4) for a in spec["cell_anchors"]]

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        """torchvision's ``GeneralizedRCNNTransform`` output size (Python floats, floor)."""
        scale = min(self.spec["min_size"] / min(h, w), self.spec["max_size"] / max(h, w))
        return math.floor(h * scale), math.floor(w * scale)

    def preprocess(self, frame: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """``(H, W, 3)`` uint8 -> ``(1, 3, Hp, Wp)`` normalised, resized, zero-padded float32
        and the resized ``(h, w)``: torchvision's transform, same order of operations."""
        # order "C": astype keeps the frame's HWC memory order otherwise, and every later
        # step would walk it with strides
        image = frame.transpose(2, 0, 1).astype(np.float32, order="C") / np.float32(255.0)
        image = (image - self.mean) / self.std
        h, w = self.resized_size(*frame.shape[:2])
        if min(h, w) < 1:
            raise ValueError(
                f"frame of {frame.shape[0]}x{frame.shape[1]} is too thin for the detector: "
                f"it resizes to {h}x{w} (min_size {self.spec['min_size']}, max_size "
                f"{self.spec['max_size']})"
            )
        if (h, w) != image.shape[1:]:  # at scale 1 torch's bilinear returns its input
            image = _bilinear(image, (h, w))
        d = int(self.spec["size_divisible"])
        hp, wp = -(-h // d) * d, -(-w // d) * d
        out = np.zeros((1, 3, hp, wp), np.float32)
        out[0, :, :h, :w] = image
        return out, (h, w)

    def rpn_boxes(
        self, out: dict, padded: tuple[int, int], size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Anchors of the top-k indices, box decoding (torchvision's ``BoxCoder``, float32,
        same operation order), clipping to ``size`` and the RPN's filters -> ``rpn_boxes
        (L, K, 4)``, ``rpn_scores (L, K)`` sigmoid probabilities, ``-1`` where filtered out."""
        logits, index, deltas = out["rpn_logits"], out["rpn_index"], out["rpn_deltas"]
        grids = [tuple(out[f"feature{i}"].shape[-2:]) for i in range(4)]
        while len(grids) < len(self.cell_anchors):  # FPN's extra max-pool levels (k 1, s 2)
            gh, gw = grids[-1]
            grids.append(((gh - 1) // 2 + 1, (gw - 1) // 2 + 1))
        boxes = np.zeros((*index.shape, 4), np.float32)
        valid = np.zeros(index.shape, bool)
        for lvl, (cell, (gh, gw)) in enumerate(zip(self.cell_anchors, grids, strict=True)):
            a = len(cell)
            n = gh * gw * a
            idx = index[lvl]
            valid[lvl] = idx < n
            idx = np.minimum(idx, n - 1)
            sh, sw = padded[0] // gh, padded[1] // gw
            pos, k = idx // a, idx % a
            x, y = (pos % gw) * sw, (pos // gw) * sh
            anchors = np.stack([x, y, x, y], 1).astype(np.float32) + cell[k]
            boxes[lvl] = _decode(
                deltas[lvl], anchors, self.spec["rpn_weights"], self.spec["rpn_clip"]
            )
        h, w = size
        boxes[..., 0::2] = np.clip(boxes[..., 0::2], 0, w)
        boxes[..., 1::2] = np.clip(boxes[..., 1::2], 0, h)
        with np.errstate(over="ignore"):  # padding logits (-1e6) give exp overflow: score 0
            scores = (np.float32(1.0) / (np.float32(1.0) + np.exp(-logits))).astype(np.float32)
        min_size = np.float32(self.spec["rpn_min_size"])
        valid &= (boxes[..., 2] - boxes[..., 0] >= min_size) & (
            boxes[..., 3] - boxes[..., 1] >= min_size
        )
        valid &= scores >= np.float32(self.spec["rpn_score_thresh"])
        return boxes, np.where(valid, scores, np.float32(-1.0)).astype(np.float32)

    def detect(self, index: int, frame: np.ndarray) -> Detections:
        image, (h, w) = self.preprocess(frame)
        out = self.detector.run({"image": image})
        rpn_boxes, rpn_scores = self.rpn_boxes(out, image.shape[-2:], (h, w))
        feeds = {f"feature{i}": out[f"feature{i}"] for i in range(4)}
        feeds.update(
            rpn_boxes=rpn_boxes,
            rpn_scores=rpn_scores,
            image_size=np.array([h, w], np.float32),
        )
        det = self.heads.run(feeds)
        keep = det["valid"].astype(bool)
        h0, w0 = frame.shape[:2]
        ratio = np.array(
            [np.float32(w0) / np.float32(w), np.float32(h0) / np.float32(h)] * 2, np.float32
        )
        return Detections(
            (det["boxes"][keep].astype(np.float32) * ratio).astype(np.float32),
            det["scores"][keep].astype(np.float32),
            det["masks"][keep].astype(np.float32),
            "box",
        )


def _linear_taps(n_in: int, n_out: int):
    """One axis of torch's CPU bilinear (``align_corners=False``): ``i0, i1, w0, w1``. The
    source coordinate ``scale * (dst + 0.5) - 0.5`` is rounded once, as the fused multiply-add
    torch's compiled kernel uses (float64 here, then float32); :func:`imaging.resize` rounds
    twice, up to ~3e-5 apart on unit-scale data, which a detector's deep layers amplify."""
    scale = np.float32(n_in) / np.float32(n_out)
    dst = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
    src = (np.float64(scale) * dst.astype(np.float64) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = src.astype(np.int64)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, np.minimum(i0 + 1, n_in - 1), np.float32(1.0) - w1, w1


def _bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(C, H, W)`` float32 resampled to ``size`` as ``F.interpolate(mode="bilinear")``:
    ``a0 * (b0 * x[y0, x0] + b1 * x[y0, x1]) + a1 * (b0 * x[y1, x0] + b1 * x[y1, x1])``, in
    that order of float operations."""
    y0, y1, a0, a1 = _linear_taps(x.shape[1], size[0])
    x0, x1, b0, b1 = _linear_taps(x.shape[2], size[1])
    rows = []
    for y, a in ((y0, a0), (y1, a1)):
        part = np.take(x, y, axis=1)
        out = b0 * np.take(part, x0, axis=2)
        out += b1 * np.take(part, x1, axis=2)
        out *= a[:, None]
        rows.append(out)
    rows[0] += rows[1]
    return rows[0]


def _decode(deltas: np.ndarray, anchors: np.ndarray, weights, clip: float) -> np.ndarray:
    """torchvision's ``BoxCoder.decode_single`` for ``(N, 4)`` deltas and anchors, float32."""
    f = np.float32
    wx, wy, ww, wh = (f(v) for v in weights)
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + f(0.5) * widths
    ctr_y = anchors[:, 1] + f(0.5) * heights
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw = np.minimum(deltas[:, 2] / ww, f(clip))
    dh = np.minimum(deltas[:, 3] / wh, f(clip))
    px, py = dx * widths + ctr_x, dy * heights + ctr_y
    half_w, half_h = f(0.5) * (np.exp(dw) * widths), f(0.5) * (np.exp(dh) * heights)
    return np.stack([px - half_w, py - half_h, px + half_w, py + half_h], 1).astype(f)


def maskrcnn_source(spec: dict, runners: dict):
    """The proposal source of a Mask R-CNN bundle: :class:`MaskRCNNDetector` for the split
    layout (graphs ``detector`` and ``proposals``), :class:`MaskRCNNStage` for a single graph."""
    if spec.get("layout") == "split":
        return MaskRCNNDetector(spec, runners["detector"], runners["proposals"])
    return MaskRCNNStage(runners["proposals"])


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
