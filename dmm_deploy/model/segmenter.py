"""Streaming video segmentation with DMM-Net: one frame in, one label map out."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dmm_deploy.data.inputs import FrameLike, MaskLike
from dmm_deploy.data.inputs import frame_image as _frame_image
from dmm_deploy.data.inputs import label_map as _label_map
from dmm_deploy.model.decoder import to_probabilities
from dmm_deploy.model.embed import tight_boxes
from dmm_deploy.model.matching import MatchResult, match_proposals
from dmm_deploy.model.net import (
    DMMNet,
    frame_to_input,
    merge_probabilities,
    resize_labels,
    resize_masks,
)
from dmm_deploy.model.proposals import Proposals, prepare_proposals
from dmm_deploy.model.sources import ProposalSource

__all__ = ["STAGES", "FrameLike", "MaskLike", "VideoSegmenter"]

STAGES = ("encoder", "templates", "proposals", "features_cost", "matching", "refinement", "merge")
"""The stages a :class:`VideoSegmenter` ``timer`` is called with, in pipeline order."""


def _no_timer(stage: str) -> AbstractContextManager:
    return nullcontext()


@dataclass
class _Object:
    """Per-object state: template embedding, masks at the input resolution, decoder state."""

    id: int
    template: torch.Tensor  # (D,)
    first: torch.Tensor  # (h, w) the annotated mask
    prev: torch.Tensor  # (h, w) last soft prediction
    temporal: tuple | None = None  # decoder hidden states from the previous frame


class VideoSegmenter:
    """Semi-supervised video object segmentation, one frame at a time.

    Usage::

        seg = VideoSegmenter(DMMNet(cfg), OracleProposals(gt))   # or MaskRCNNProposals(...)
        labels0 = seg.start(frame0, mask0)       # (H, W) uint8 label map, = mask0
        labels1 = seg.step(frame1)               # predicted
        labels2 = seg.step(frame2, new_masks=m)  # objects of m added (or re-annotated)
        # or: for labels in seg.segment(frames, mask0, annotations={5: m5}): ...

    Frames are ``(H, W, 3)`` uint8 RGB arrays, image paths or :class:`dmm_deploy.data.Frame`
    objects (so ``segment(open_frames(folder_or_video), mask)`` streams a video); masks
    ``(H, W)`` uint8 label maps (0 = background, any ids 1..255, not necessarily contiguous)
    or palette/greyscale PNG paths. Files are read with the data layer
    (:func:`dmm_deploy.data.read_frame`, :func:`dmm_deploy.data.read_mask`): an unreadable
    frame, or a mask whose size is not the frame's, raises one error naming the file. Label
    maps come back at each frame's own resolution. Any number of objects; an object first
    annotated at a later frame gets its template from that frame.

    Per frame: the encoder runs at ``cfg.input_size``; the proposal source's detections are
    post-processed (:func:`~dmm_deploy.model.prepare_proposals`) and embedded; the cost of
    every object against every proposal goes through the DMM layer; then either the
    refinement decoder runs once per object (spatial recurrence over objects in slot order,
    temporal recurrence per object), or, with ``cfg.refine=False`` (matching-only), each
    object's output is its matched proposal's mask. Probabilities are merged (background
    ``1 - max_k p_k``, argmax) at the frame's resolution after a bilinear upsampling
    (``cfg.merge_at="frame"``) or at the input resolution, the label map then resized to the
    frame with PIL's NEAREST (``"input"``, the original's way). A frame without detections
    gets no proposal, or (``cfg.no_detections="last"``) the proposals of the most recent frame
    of this stream that had detections (kept at the input resolution; ``start`` forgets them).

    On an annotated frame (``start``, or ``step`` with ``new_masks``) the annotated objects
    are run like the others (their decoder state is built from the annotation, as the
    original does on the first frame), but their output is the annotation itself. A new id
    gets a template pooled from that frame's features (never updated); a known id only has
    its previous mask replaced.

    Args:
        model: the :class:`DMMNet` (put in ``eval()`` mode here).
        proposals: the :class:`ProposalSource` called once per frame.
        device: moves the model there (None: where its parameters are).
        timer: optional ``timer(stage) -> context manager`` wrapped around each stage of a
            frame, with the names of :data:`STAGES` (``"templates"`` on annotated frames
            only, ``"refinement"`` with ``cfg.refine`` only); for per-stage benchmarks.

    Attributes (read-only, for inspection and tests):
        object_ids: the tracked ids in slot order.
        frame_index: index of the last processed frame (``-1`` before ``start``).
        last_probabilities: ``(K, h, w)`` the last frame's per-object probabilities at the
            input resolution (annotated objects: their annotation).
        last_proposals / last_match: the last frame's :class:`Proposals` and
            :class:`MatchResult` (``None`` when no object was tracked).
    """

    def __init__(
        self,
        model: DMMNet,
        proposals: ProposalSource,
        *,
        device: str | torch.device | None = None,
        timer: Callable[[str], AbstractContextManager] | None = None,
    ) -> None:
        if not isinstance(model, DMMNet):
            raise TypeError(f"model must be a DMMNet, got {type(model).__name__}")
        if not isinstance(proposals, ProposalSource):
            raise TypeError(f"proposals must be a ProposalSource, got {type(proposals).__name__}")
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.cfg = model.cfg
        self.source = proposals
        self.device = next(model.parameters()).device
        self.timer = _no_timer if timer is None else timer
        self._objects: list[_Object] = []
        self.frame_index = -1
        self.last_probabilities: torch.Tensor | None = None
        self.last_proposals: Proposals | None = None
        self.last_match: MatchResult | None = None
        self._last_nonempty: Proposals | None = None
        # annotations reach the input size as frames do: PIL's NEAREST under "nearest"
        self._mask_mode = "pil-nearest" if self.cfg.input_resize == "nearest" else "nearest"

    @property
    def object_ids(self) -> list[int]:
        return [o.id for o in self._objects]

    def start(self, frame: FrameLike, mask: MaskLike) -> np.ndarray:
        """Begin a video: forget all state, process frame 0 with its annotation ``mask``."""
        self._objects = []
        self.frame_index = -1
        self._last_nonempty = None
        return self.step(frame, new_masks=mask)

    def step(self, frame: FrameLike, new_masks: MaskLike | None = None) -> np.ndarray:
        """Process the next frame; returns its ``(H, W)`` uint8 label map.

        new_masks: optional label map of this frame: its ids become (or re-annotate) objects.
        """
        if self.frame_index < 0 and new_masks is None:
            raise RuntimeError("call start(frame, mask) before step()")
        index = self.frame_index + 1
        image = _frame_image(frame, f"frame {index}")
        size0 = image.shape[:2]
        ann = None
        if new_masks is not None:
            label = "mask" if index == 0 else "new_masks"
            ann = _label_map(new_masks, size0, f"{label} of frame {index}")
        with torch.no_grad():
            out = self._step(index, image, ann)
        self.frame_index = index
        return out

    def segment(
        self,
        frames: Iterable[FrameLike],
        first_mask: MaskLike,
        annotations: Mapping[int, MaskLike] | None = None,
    ) -> Iterator[np.ndarray]:
        """Segment a whole video lazily: yields one label map per frame, frame 0 included.

        frames: any iterable of frames (a list of paths, :func:`dmm_deploy.data.open_frames`);
            consumed one frame at a time.
        first_mask: the annotation of frame 0.
        annotations: optional ``{frame index: label map}`` introducing objects later (or
            re-annotating known ones); an entry for frame 0 is ignored (``first_mask`` is
            frame 0's annotation), so DAVIS-style first-appearance maps can be passed whole.
        """
        annotations = {} if annotations is None else dict(annotations)
        for i, frame in enumerate(frames):
            if i == 0:
                yield self.start(frame, first_mask)
            else:
                yield self.step(frame, annotations.get(i))

    # ------------------------------------------------------------------ internals

    def _step(self, index: int, image: np.ndarray, ann: np.ndarray | None) -> np.ndarray:
        cfg, model, dev = self.cfg, self.model, self.device
        size0 = image.shape[:2]
        size = cfg.input_size
        timer = self.timer
        with timer("encoder"):
            x = frame_to_input(image, size, cfg.input_resize).to(dev)
            match, skip = model.encoder(x)

        annotated: dict[int, torch.Tensor] = {}
        if ann is not None:
            ids = [int(v) for v in np.unique(ann) if v != 0]
            full = torch.from_numpy(ann).to(dev)
            for oid in ids:
                annotated[oid] = full == oid
            if annotated:
                with timer("templates"):
                    self._add_objects(annotated, match, size)

        if not self._objects:
            self.last_probabilities = torch.zeros(0, *size, device=dev)
            self.last_proposals = self.last_match = None
            return np.zeros(size0, np.uint8)

        with timer("proposals"):
            props = self._proposals(index, image)
        with timer("features_cost"):
            emb = model.embedder(match, props.boxes)
            templates = torch.stack([o.template for o in self._objects])
            prev = torch.stack([o.prev for o in self._objects])
            cost = model.cost(templates, emb, prev, props.masks)
        with timer("matching"):
            res = match_proposals(cost, props.masks, cfg)

        if cfg.refine:
            with timer("refinement"):
                probs = self._refine(skip, res.matched, size)
        else:
            probs = res.selected
        with timer("merge"):
            for k, obj in enumerate(self._objects):
                if obj.id in annotated:
                    probs[k] = resize_masks(annotated[obj.id][None], size, self._mask_mode)[0]
                obj.prev = probs[k]
            labels = self._labels(probs, annotated, size0)
        self.last_probabilities = probs
        self.last_proposals, self.last_match = props, res
        return labels

    def _proposals(self, index: int, image: np.ndarray) -> Proposals:
        det = self.source.detect(index, image)
        if len(det) == 0 and self.cfg.no_detections == "last" and self._last_nonempty is not None:
            return self._last_nonempty
        props = prepare_proposals(det, image.shape[:2], self.cfg)
        props = Proposals(*(t.to(self.device) for t in props))
        if len(det):
            self._last_nonempty = props
        return props

    def _add_objects(self, annotated: dict[int, torch.Tensor], match, size) -> None:
        known = {o.id: o for o in self._objects}
        new_ids = [oid for oid in annotated if oid not in known]
        masks = resize_masks(torch.stack([annotated[i] for i in annotated]), size, self._mask_mode)
        by_id = dict(zip(annotated, masks, strict=True))
        for oid in annotated:
            if oid in known:
                known[oid].prev = by_id[oid]
        if not new_ids:
            return
        new_masks = torch.stack([by_id[i] for i in new_ids])
        boxes, nonempty = tight_boxes(new_masks, 0.5)
        h0, w0 = annotated[new_ids[0]].shape
        full_boxes, _ = tight_boxes(torch.stack([annotated[i] for i in new_ids]).float(), 0.5)
        ratio = full_boxes.new_tensor([size[1] / w0, size[0] / h0] * 2)
        boxes = torch.where(nonempty[:, None], boxes, full_boxes * ratio)
        templates = self.model.embedder(match, boxes)
        for oid, tmpl, m in zip(new_ids, templates, new_masks, strict=True):
            self._objects.append(_Object(oid, tmpl, m, m.clone()))

    def _refine(self, skip, matched: torch.Tensor, size) -> torch.Tensor:
        dec = self.model.decoder
        zeros = dec.zero_state(skip)
        h, c = zeros, zeros
        probs = []
        for k, obj in enumerate(self._objects):
            masks = torch.stack([obj.prev, obj.first, matched[k]])[None]
            temporal = zeros if obj.temporal is None else obj.temporal
            logits, h, c = dec(skip, masks, h, c, temporal)
            obj.temporal = h
            probs.append(to_probabilities(logits, size)[0])
        return torch.stack(probs)

    def _labels(self, probs: torch.Tensor, annotated: dict[int, torch.Tensor], size0) -> np.ndarray:
        ids = torch.tensor(self.object_ids, dtype=torch.uint8, device=probs.device)
        if self.cfg.merge_at == "input":
            labels = resize_labels(merge_probabilities(probs, ids), size0)
        else:
            full = F.interpolate(probs[:, None], size=size0, mode="bilinear", align_corners=False)
            full = full[:, 0]
            for k, obj in enumerate(self._objects):
                if obj.id in annotated:
                    full[k] = annotated[obj.id].to(full.dtype)
            labels = merge_probabilities(full, ids)
        for oid, m in annotated.items():
            labels[m] = oid
        return labels.cpu().numpy()
