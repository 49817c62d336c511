"""Proposal sources behind one small interface: ``detect(index, frame) -> Detections``.

* :class:`MaskRCNNProposals`: torchvision's Mask R-CNN (``maskrcnn_resnet50_fpn`` or ``_v2``)
  run on each frame; its box-relative 28 x 28 mask probabilities are returned, as the
  original's precomputed Mask R-CNN detections were.
* :class:`PrecomputedProposals`: detections stored on disk, one ``.npz`` file per video
  (format below; :func:`save_precomputed` writes it).
* :class:`OracleProposals`: for tests: ground-truth masks jittered, split, merged and mixed
  with distractors, seeded.

Precomputed file format (``numpy.savez_compressed``), ``N`` detections of the whole video:

=============== ================= ==========================================================
key             shape, dtype      meaning
=============== ================= ==========================================================
``frame``       (N,) int64        frame index (0 = first frame of the video) of each detection
``boxes``       (N, 4) float32    ``x1, y1, x2, y2`` in the frame's pixels
``scores``      (N,) float32      detection confidence
``masks``       (N, M, M) or      ``mask_kind == "box"``: box-relative mask probabilities
                (N, H, W)         (float16/float32 in [0, 1], or uint8 = probability x 255);
                                  ``"frame"``: full-frame maps, same dtypes
``mask_kind``   () str            ``"box"`` or ``"frame"``
``image_size``  (2,) int64        ``H, W`` of the frames the detections belong to
``num_frames``  () int64          frames in the video (frames without detections included)
=============== ================= ==========================================================
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from dmm_deploy.data.detections import PrecomputedFile, write_precomputed
from dmm_deploy.model.proposals import Detections

__all__ = [
    "MaskRCNNProposals",
    "OracleProposals",
    "PrecomputedProposals",
    "ProposalSource",
    "save_precomputed",
]


class ProposalSource(abc.ABC):
    """Where proposals come from: one call per frame, in video order."""

    @abc.abstractmethod
    def detect(self, index: int, frame: np.ndarray) -> Detections:
        """Detections for frame ``index`` (0 = the video's first frame).

        frame: ``(H, W, 3)`` uint8 RGB at its original resolution. Returns
        :class:`~dmm_deploy.model.Detections` in that frame's pixel coordinates.
        """


# --------------------------------------------------------------------------- Mask R-CNN


def _pin_roi_levels(pool) -> None:
    """Fix a torchvision ``MultiScaleRoIAlign``'s level scales to the FPN strides 4, 8, 16, 32
    (levels 2..5). torchvision infers them from the first image it pools and keeps them, so a
    tiny or extreme first frame would set them wrongly for the whole video; with FPN they are
    these for every ordinary image, and the exported detector graphs use the same."""
    from torchvision.ops.poolers import initLevelMapper

    n = len(pool.featmap_names)
    pool.scales = [2.0 ** -(2 + i) for i in range(n)]
    pool.map_levels = initLevelMapper(
        2, 1 + n, canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level
    )


class MaskRCNNProposals(ProposalSource):
    """torchvision Mask R-CNN on every frame, all classes pooled, no score threshold.

    Args:
        weights: a local file holding the detector's state dict (``.pt``/``.pth``, optionally
            under a ``"model"`` key), or the name of a torchvision weights enum member
            (``"DEFAULT"``, ``"COCO_V1"`` or ``"MaskRCNN_ResNet50_FPN_Weights.COCO_V1"``;
            downloads, so needs a network), or ``None`` for random weights (tests only).
        version: ``"v1"`` (``maskrcnn_resnet50_fpn``) or ``"v2"`` (``maskrcnn_resnet50_fpn_v2``).
        device: where the detector runs.
        min_size, max_size: the detector's own resizing (torchvision defaults 800, 1333).
        detections_per_img: detections kept per frame (100, as Mask R-CNN's default).
        score_thresh: torchvision's score filter; 0 keeps everything (the original's choice).
        **detector_options: further keyword arguments of the torchvision builder (e.g.
            ``rpn_post_nms_top_n_test`` to trade recall for speed).
    """

    def __init__(
        self,
        weights: str | os.PathLike | None,
        *,
        version: str = "v1",
        device: str | torch.device = "cpu",
        min_size: int = 800,
        max_size: int = 1333,
        detections_per_img: int = 100,
        score_thresh: float = 0.0,
        **detector_options,
    ) -> None:
        from torchvision.models import detection

        builders = {
            "v1": (detection.maskrcnn_resnet50_fpn, detection.MaskRCNN_ResNet50_FPN_Weights),
            "v2": (detection.maskrcnn_resnet50_fpn_v2, detection.MaskRCNN_ResNet50_FPN_V2_Weights),
        }
        if version not in builders:
            raise ValueError(f"version must be 'v1' or 'v2', got {version!r}")
        build, enum = builders[version]
        opts = dict(
            min_size=min_size,
            max_size=max_size,
            box_detections_per_img=detections_per_img,
            box_score_thresh=score_thresh,
        )
        opts.update(detector_options)
        state = None
        named = None
        if weights is not None:
            path = Path(weights)
            if path.suffix in (".pt", ".pth") or path.exists():
                if not path.is_file():
                    raise FileNotFoundError(f"Mask R-CNN weights file not found: {path}")
                state = torch.load(path, map_location="cpu", weights_only=True)
                if isinstance(state, dict) and "model" in state:
                    state = state["model"]
            else:
                member = str(weights).split(".")[-1]
                if member not in enum.__members__:
                    raise ValueError(
                        f"weights must be a file or one of {sorted(enum.__members__)}, "
                        f"got {weights!r}"
                    )
                named = enum[member]
        self.model = build(weights=named, weights_backbone=None, **opts)
        if state is not None:
            self.model.load_state_dict(state)
        self.model.eval().to(device)
        for pool in (self.model.roi_heads.box_roi_pool, self.model.roi_heads.mask_roi_pool):
            _pin_roi_levels(pool)
        self.device = torch.device(device)

    @torch.no_grad()
    def detect(self, index: int, frame: np.ndarray) -> Detections:
        from torchvision.models.detection.transform import resize_boxes

        image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)
        image = image.to(self.device, torch.float32) / 255.0
        m = self.model
        images, _ = m.transform([image])
        features = m.backbone(images.tensors)
        boxes, _ = m.rpn(images, features)
        det, _ = m.roi_heads(features, boxes, images.image_sizes)
        det = det[0]
        out_boxes = resize_boxes(det["boxes"], images.image_sizes[0], frame.shape[:2])
        return Detections(out_boxes.cpu(), det["scores"].cpu(), det["masks"][:, 0].cpu(), "box")


# --------------------------------------------------------------------------- precomputed


def save_precomputed(
    path: str | os.PathLike, detections: Sequence[Detections], image_size: tuple[int, int]
) -> None:
    """Write one video's detections (one :class:`Detections` per frame) in the format above.

    All frames must share one mask kind; masks are stored as uint8 (probability x 255).
    """
    kinds = {d.kind for d in detections if len(d)}
    if len(kinds) > 1:
        raise ValueError(f"all detections of a video must have one mask kind, got {kinds}")
    kind = kinds.pop() if kinds else "box"
    side = next((tuple(d.masks.shape[1:]) for d in detections if len(d)), (28, 28))
    frame = np.concatenate(
        [np.full(len(d), i, dtype=np.int64) for i, d in enumerate(detections)] + [np.zeros(0)]
    ).astype(np.int64)
    boxes = np.concatenate([d.boxes.numpy() for d in detections] + [np.zeros((0, 4))])
    scores = np.concatenate([d.scores.numpy() for d in detections] + [np.zeros(0)])
    masks = np.concatenate(
        [d.masks.float().numpy() for d in detections if len(d)] + [np.zeros((0, *side))]
    )
    write_precomputed(path, frame, boxes, scores, masks, kind, image_size, len(detections))


class PrecomputedProposals(PrecomputedFile, ProposalSource):
    """Detections read from one video's ``.npz`` file (format in this module's docstring).

    The file is read once, at construction, by the torch-free
    :class:`dmm_deploy.data.detections.PrecomputedFile`, which checks the whole file there (a
    missing or damaged file, missing keys, inconsistent shapes, frame indices outside the
    video, non-finite values: one error naming the file). ``detect`` checks that the frame has
    the stored ``image_size``.
    """

    def detect(self, index: int, frame: np.ndarray) -> Detections:
        return Detections(*self.frame_arrays(index, frame), self.kind)


# --------------------------------------------------------------------------- oracle


class OracleProposals(ProposalSource):
    """Proposals made from ground truth, for tests: the true masks plus plausible mistakes.

    For frame ``i`` with ground-truth label map ``labels(i)`` (``(H, W)`` integers, 0 =
    background) every object yields a *true* proposal: its mask shifted by up to ``jitter``
    pixels in x and y, with a score in ``true_scores``. Then, with low scores
    (``false_scores``): with probability ``split_prob`` per object its two halves (cut across
    its longer side); with probability ``merge_prob`` per frame the union of two objects;
    and ``n_distractors`` random ellipses. With probability ``drop_prob`` an object's true
    proposal is missing. Masks are full-frame maps, of value ``confidence`` inside for true
    proposals and ``false_confidence`` for the others (a wrong proposal's mask is usually
    less sure; where a true and a wrong mask of two objects overlap, the true one wins).
    Everything is drawn from ``numpy.random.default_rng((seed, i))``: a frame's proposals
    do not depend on the order of calls. Keep ``true_scores`` above ``false_scores`` so that
    NMS keeps the true proposals over the halves that overlap them.

    Args:
        labels: a sequence of label maps (one per frame) or a callable ``index -> label map``.
    """

    def __init__(
        self,
        labels: Sequence[np.ndarray] | Callable[[int], np.ndarray],
        *,
        seed: int = 0,
        jitter: int = 1,
        split_prob: float = 0.3,
        merge_prob: float = 0.3,
        n_distractors: int = 3,
        drop_prob: float = 0.0,
        confidence: float = 0.95,
        false_confidence: float = 0.75,
        true_scores: tuple[float, float] = (0.7, 1.0),
        false_scores: tuple[float, float] = (0.05, 0.6),
    ) -> None:
        if not callable(labels) and not isinstance(labels, (Sequence, np.ndarray)):
            raise TypeError("labels must be a sequence of label maps or a callable index -> map")
        for name, p in (
            ("split_prob", split_prob),
            ("merge_prob", merge_prob),
            ("drop_prob", drop_prob),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p!r}")
        if jitter < 0 or n_distractors < 0:
            raise ValueError("jitter and n_distractors must be >= 0")
        for name, p in (("confidence", confidence), ("false_confidence", false_confidence)):
            if not 0.0 < p <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {p!r}")
        self._labels = labels
        self.seed = int(seed)
        self.jitter = int(jitter)
        self.split_prob, self.merge_prob, self.drop_prob = split_prob, merge_prob, drop_prob
        self.n_distractors = int(n_distractors)
        self.confidence = float(confidence)
        self.false_confidence = float(false_confidence)
        self.true_scores, self.false_scores = true_scores, false_scores

    def _label(self, index: int) -> np.ndarray:
        lab = self._labels(index) if callable(self._labels) else self._labels[index]
        return np.asarray(lab)

    def detect(self, index: int, frame: np.ndarray) -> Detections:
        lab = self._label(index)
        if lab.shape != frame.shape[:2]:
            raise ValueError(
                f"oracle label map {index} has shape {lab.shape}, frame is {frame.shape[:2]}"
            )
        rng = np.random.default_rng((self.seed, index))
        h, w = lab.shape
        masks, scores, values = [], [], []

        def add(mask: np.ndarray, true: bool) -> None:
            if mask.any():
                masks.append(mask)
                scores.append(rng.uniform(*(self.true_scores if true else self.false_scores)))
                values.append(self.confidence if true else self.false_confidence)

        objects = [lab == i for i in np.unique(lab) if i != 0]
        for obj in objects:
            if rng.random() >= self.drop_prob:
                dy, dx = rng.integers(-self.jitter, self.jitter + 1, size=2)
                add(_shift(obj, int(dy), int(dx)), True)
            if rng.random() < self.split_prob:
                for half in _halves(obj):
                    add(half, False)
        if len(objects) >= 2 and rng.random() < self.merge_prob:
            a, b = rng.choice(len(objects), size=2, replace=False)
            add(objects[a] | objects[b], False)
        yy, xx = np.mgrid[0:h, 0:w]
        for _ in range(self.n_distractors):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(0.05, 0.25) * h, rng.uniform(0.05, 0.25) * w
            add(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0, False)
        if not masks:
            return Detections(np.zeros((0, 4)), np.zeros(0), np.zeros((0, h, w)), "frame")
        stack = np.stack(masks).astype(np.float32) * np.float32(values)[:, None, None]
        boxes = np.stack([_box(m) for m in masks]).astype(np.float32)
        return Detections(boxes, np.asarray(scores, np.float32), stack, "frame")


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def _box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)


def _halves(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x1, y1, x2, y2 = _box(mask).astype(int)
    first = np.zeros_like(mask)
    if x2 - x1 >= y2 - y1:
        cut = (x1 + x2 + 1) // 2
        first[:, :cut] = mask[:, :cut]
    else:
        cut = (y1 + y2 + 1) // 2
        first[:cut] = mask[:cut]
    return first, mask & ~first
