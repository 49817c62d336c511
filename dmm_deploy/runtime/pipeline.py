"""The per-frame pipeline over a bundle: :class:`Runtime` (the stage runners),
:class:`StreamState` (one video's state), :func:`step_streams` (one frame of several streams,
batched) and :class:`StreamingSegmenter` (one stream, ``VideoSegmenter``'s API)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dmm_deploy.data.inputs import frame_image as _frame_image
from dmm_deploy.data.inputs import label_map as _label_map
from dmm_deploy.runtime.assignment import linear_sum_assignment
from dmm_deploy.runtime.backends import BACKENDS, DEVICES, open_stage
from dmm_deploy.runtime.bundle import COARSE, LEVELS, Bundle, BundleError, behaviour
from dmm_deploy.runtime.imaging import frame_to_input, merge_probabilities, resize, tight_boxes
from dmm_deploy.runtime.proposals import Proposals, maskrcnn_source, prepare_proposals

__all__ = [
    "STAGES",
    "ObjectState",
    "Runtime",
    "StreamState",
    "StreamingSegmenter",
    "step_streams",
]

STAGES = ("encoder", "templates", "proposals", "features_cost", "matching", "refinement", "merge")
"""Timer stage names, as :data:`dmm_deploy.model.STAGES` (``features_cost`` covers the embed
call; ``matching`` the cost + matcher graph)."""


def _no_timer(stage: str) -> AbstractContextManager:
    return nullcontext()


class Runtime:
    """A verified bundle with one runner per stage graph. Build with :meth:`open`.

    ``cfg`` is the bundle's model config (a dict) with the behaviour settings filled in
    (:func:`~dmm_deploy.runtime.bundle.behaviour`); the pipeline follows them as
    :class:`dmm_deploy.model.VideoSegmenter` does.
    """

    def __init__(self, bundle: Bundle, runners: dict, backend: str, device: str) -> None:
        self.bundle = bundle
        self.cfg = {
            **bundle.config,
            **behaviour(bundle.config),
            "input_size": list(bundle.input_size),
        }
        self.input_size = bundle.input_size
        self.runners = runners
        self.backend, self.device = backend, device

    @classmethod
    def open(
        cls,
        bundle: str | os.PathLike | Bundle,
        backend: str = "onnxruntime",
        device: str = "cpu",
        *,
        threads: int | None = None,
        trt_ep: bool = False,
        allow_fp16_on_cpu: bool = False,
        verify: bool = True,
    ) -> Runtime:
        """Open ``bundle`` (a folder or a loaded :class:`Bundle`) on ``backend``/``device``.

        backend: ``"onnxruntime"`` (``device="cpu"``: CPU provider; ``"cuda"``: CUDA provider,
            or the TensorRT provider with ``trt_ep=True``) or ``"tensorrt"`` (engines, CUDA only).
        threads: onnxruntime intra-op threads (None: onnxruntime's default).
        allow_fp16_on_cpu: run an ``fp16`` bundle on the CPU provider anyway (onnxruntime
            emulates float16 there with casts around float32 kernels; for measurements).
        Raises ``BundleError`` / ``ValueError`` / ``RuntimeError`` with one line.
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if not isinstance(bundle, Bundle):
            bundle = Bundle.load(bundle, verify=verify)
        if bundle.precision == "fp16" and device == "cpu" and not allow_fp16_on_cpu:
            raise BundleError(
                f"bundle: precision fp16 ({bundle.path}) is for GPUs; onnxruntime's CPU provider "
                "has no float16 kernels for these graphs (export with --precision fp32 or mixed)"
            )
        runners = {
            name: open_stage(bundle, name, backend, device, threads=threads, trt_ep=trt_ep)
            for name in bundle.stages
        }
        return cls(bundle, runners, backend, device)

    def proposal_source(self, precomputed: str | os.PathLike | None = None):
        """The proposal source: the bundle's Mask R-CNN stage, or a precomputed ``.npz``."""
        if precomputed is not None:
            from dmm_deploy.runtime.proposals import PrecomputedDetections

            return PrecomputedDetections(precomputed)
        if "proposals" not in self.runners:
            raise ValueError(
                "this bundle has no proposals stage (it was exported with --proposals "
                "precomputed): give it precomputed detections, a .npz (segment: --proposals "
                "precomputed:FILE.npz)"
            )
        return maskrcnn_source(self.bundle.proposals, self.runners)

    def run(self, stage: str, feeds: dict) -> dict:
        return self.runners[stage].run(feeds)


@dataclass
class ObjectState:
    """One tracked object: ``template (D,)``, ``first``/``prev`` ``(h, w)`` float32 masks at
    the input size, ``temporal``: the decoder's 4 hidden states from the previous frame
    (``(C, h/s, w/s)``, coarse to fine) or None before its first decoder step."""

    id: int
    template: np.ndarray
    first: np.ndarray
    prev: np.ndarray
    temporal: list[np.ndarray] | None = None


@dataclass
class StreamState:
    """Everything one video carries from frame to frame (no arrays of other streams):
    the proposal ``source`` (``detect(index, frame) -> Detections``), the objects in slot
    order, the index of the last processed frame, and ``last_detected``: the proposals of the
    most recent frame that had detections, which a frame without detections reuses when the
    model has ``no_detections="last"`` (a fresh state, as after ``start``, has none).
    ``last_probabilities``, ``last_proposals`` and ``last_index`` are kept for inspection."""

    source: object
    objects: list[ObjectState] = field(default_factory=list)
    frame_index: int = -1
    last_detected: Proposals | None = None
    last_probabilities: np.ndarray | None = None
    last_proposals: Proposals | None = None
    last_index: np.ndarray | None = None


def _mask_mode(cfg: dict) -> str:
    """How annotations reach the input size: as the frames do (PIL's NEAREST under
    ``input_resize="nearest"``), else ``nearest-exact``."""
    return "pil-nearest" if cfg["input_resize"] == "nearest" else "nearest-exact"


def _proposals(st: StreamState, image: np.ndarray, cfg: dict) -> Proposals:
    """One frame's proposals; under ``no_detections="last"`` a frame without detections
    reuses the stream's most recent proposals from a frame that had some."""
    det = st.source.detect(st.frame_index + 1, image)
    if not len(det.boxes) and cfg["no_detections"] == "last" and st.last_detected is not None:
        return st.last_detected
    props = prepare_proposals(det, image.shape[:2], cfg)
    if len(det.boxes):
        st.last_detected = props
    return props


def _new_objects(
    state: StreamState, ann: np.ndarray, size, mode: str
) -> tuple[dict[int, np.ndarray], list, np.ndarray]:
    """Apply an annotation: known ids get their ``prev`` replaced; returns the annotated
    full-size masks, the new ids with their small masks (resized with ``mode``), and their
    template boxes."""
    annotated = {int(v): ann == v for v in np.unique(ann) if v != 0}
    if not annotated:
        return annotated, [], np.zeros((0, 4), np.float32)
    small = resize(np.stack(list(annotated.values())).astype(np.float32), size, mode)
    by_id = dict(zip(annotated, small, strict=True))
    known = {o.id: o for o in state.objects}
    for oid in annotated:
        if oid in known:
            known[oid].prev = by_id[oid]
    new_ids = [oid for oid in annotated if oid not in known]
    if not new_ids:
        return annotated, [], np.zeros((0, 4), np.float32)
    new_small = np.stack([by_id[i] for i in new_ids])
    boxes, nonempty = tight_boxes(new_small, 0.5)
    full_boxes, _ = tight_boxes(np.stack([annotated[i] for i in new_ids]).astype(np.float32), 0.5)
    h0, w0 = ann.shape
    ratio = np.array([size[1] / w0, size[0] / h0] * 2, np.float32)
    boxes = np.where(nonempty[:, None], boxes, full_boxes * ratio).astype(np.float32)
    return annotated, list(zip(new_ids, new_small, strict=True)), boxes


def step_streams(
    rt: Runtime,
    streams: list[StreamState],
    images: list[np.ndarray],
    annotations: list[np.ndarray | None],
    timer: Callable[[str], AbstractContextManager] = _no_timer,
) -> list[np.ndarray]:
    """Process one frame of each stream, batching the stages across streams; returns one
    ``(H, W)`` uint8 label map per stream (at each frame's own resolution).

    images: ``(H, W, 3)`` uint8 RGB (sizes may differ between streams); annotations: a label
    map of that frame (new or re-annotated objects) or None. The encoder runs once over all
    frames, the embed stage once over all boxes, the match stage once over all streams'
    problems padded to one ``(B, O, M)`` with ``sizes``, and the decoder once per object slot
    over the streams that have that slot. States are updated in place.
    """
    cfg, size = rt.cfg, rt.input_size
    mask_mode = _mask_mode(cfg)
    b = len(streams)
    with timer("encoder"):
        x = np.stack([frame_to_input(im, size, cfg["input_resize"]) for im in images])
        feats = rt.run("encoder", {"image": x})
    match_feats = {f"match{s}": feats[f"match{s}"] for s in LEVELS}

    annotated: list[dict[int, np.ndarray]] = []
    pending: list[list] = []
    boxes_all, bidx_all, counts = [], [], []
    for i, st in enumerate(streams):
        ann = annotations[i]
        if ann is None:
            annotated.append({})
            pending.append([])
            tb = np.zeros((0, 4), np.float32)
        else:
            a, new, tb = _new_objects(st, ann, size, mask_mode)
            annotated.append(a)
            pending.append(new)
        boxes_all.append(tb)
        bidx_all.append(np.full(len(tb), i, np.int64))
        counts.append(len(tb))

    props: list[Proposals | None] = [None] * b
    active = [i for i, st in enumerate(streams) if st.objects or pending[i]]
    with timer("proposals"):
        for i in active:
            props[i] = _proposals(streams[i], images[i], cfg)
    for i in range(b):
        p = props[i]
        n = 0 if p is None else len(p.boxes)
        boxes_all.append(p.boxes if n else np.zeros((0, 4), np.float32))
        bidx_all.append(np.full(n, i, np.int64))
        counts.append(n)

    boxes = np.concatenate(boxes_all).astype(np.float32)
    bidx = np.concatenate(bidx_all)
    with timer("features_cost"):
        if len(boxes):
            emb = rt.run("embed", {**match_feats, "boxes": boxes, "batch_index": bidx})[
                "embeddings"
            ].astype(np.float32)
        else:
            emb = np.zeros((0, 4 * int(cfg["hidden_size"])), np.float32)
    parts = np.split(emb, np.cumsum(counts)[:-1])
    tmpl_parts, prop_parts = parts[:b], parts[b:]
    for i in range(b):
        for (oid, m), t in zip(pending[i], tmpl_parts[i], strict=True):
            streams[i].objects.append(ObjectState(oid, t, m, m.copy()))

    out_labels: list[np.ndarray] = [np.zeros(im.shape[:2], np.uint8) for im in images]
    live = [i for i in range(b) if streams[i].objects]
    h, w = size
    probs: dict[int, np.ndarray] = {}
    if live:
        # one padded matching problem per live stream (the original's own padding first)
        problems = []
        for i in live:
            objs = streams[i].objects
            o, p = len(objs), len(prop_parts[i])
            m = p if p > o else o + 1
            e = np.zeros((m, emb.shape[1]), np.float32)
            e[:p] = prop_parts[i]
            pm = np.zeros((m, h, w), np.float32)
            pm[:p] = props[i].masks
            problems.append((objs, e, pm, o, m, p))
        omax = max(pr[3] for pr in problems)
        mmax = max(pr[4] for pr in problems)
        nb = len(live)
        templates = np.zeros((nb, omax, emb.shape[1]), np.float32)
        embeddings = np.zeros((nb, mmax, emb.shape[1]), np.float32)
        prev = np.zeros((nb, omax, h, w), np.float32)
        pmasks = np.zeros((nb, mmax, h, w), np.float32)
        sizes = np.zeros((nb, 2), np.int64)
        for j, (objs, e, pm, o, m, _) in enumerate(problems):
            templates[j, :o] = np.stack([ob.template for ob in objs])
            prev[j, :o] = np.stack([ob.prev for ob in objs])
            embeddings[j, :m] = e
            pmasks[j, :m] = pm
            sizes[j] = (o, m)
        exact = cfg["matching"] == "exact"
        with timer("matching"):
            res = rt.run(
                "match",
                {
                    "templates": templates,
                    "embeddings": embeddings,
                    "prev_masks": prev,
                    "proposal_masks": pmasks,
                    "sizes": sizes,
                },
            )
            if exact:  # the graph gives the cost; the exact assignment is solved here
                cost = res["cost"].astype(np.float64)
                picks = [
                    linear_sum_assignment(cost[j, : pr[3], : pr[4]])
                    for j, pr in enumerate(problems)
                ]
                matched = np.zeros((nb, omax, h, w), np.float32)
                for j, pick in enumerate(picks):
                    matched[j, : len(pick)] = problems[j][2][pick]
            else:
                assignment = res["assignment"].astype(np.float32)
                matched = res["matched"].astype(np.float32)
        for j, i in enumerate(live):
            _, _, pm, o, m, p = problems[j]
            index = picks[j] if exact else assignment[j, :o, :m].argmax(axis=1)
            streams[i].last_index = np.where(index < p, index, -1)
            if not bool(cfg.get("refine", True)):
                probs[i] = pm[index].copy()
        if bool(cfg.get("refine", True)):
            with timer("refinement"):
                _refine(rt, streams, live, feats, matched, probs)

    with timer("merge"):
        for i in live:
            st, pr = streams[i], probs[i]
            for k, ob in enumerate(st.objects):
                if ob.id in annotated[i]:
                    pr[k] = resize(annotated[i][ob.id][None].astype(np.float32), size, mask_mode)[0]
                ob.prev = pr[k]
            ids = np.array([ob.id for ob in st.objects], np.uint8)
            size0 = images[i].shape[:2]
            if cfg["merge_at"] == "input":  # merged at the input size, PIL NEAREST up
                labels = resize(merge_probabilities(pr, ids), size0, "pil-nearest")
                labels = np.array(labels, np.uint8, copy=True)
            else:
                full = np.array(resize(pr, size0, "bilinear"), np.float32, copy=True)
                for k, ob in enumerate(st.objects):
                    if ob.id in annotated[i]:
                        full[k] = annotated[i][ob.id]
                labels = merge_probabilities(full, ids)
            for oid, mk in annotated[i].items():
                labels[mk] = oid
            out_labels[i] = labels
            st.last_probabilities = pr
    for i, st in enumerate(streams):
        st.frame_index += 1
        st.last_proposals = props[i]
        if not st.objects:
            st.last_probabilities = np.zeros((0, *size), np.float32)
    return out_labels


def _refine(rt: Runtime, streams, live: list[int], feats, matched, probs) -> None:
    """The decoder, slot by slot (spatial recurrence inside a stream), batched over streams."""
    spec = rt.bundle.stages["decoder"]
    shapes = {t.name: t.shape[1:] for t in spec.inputs}
    kmax = max(len(streams[i].objects) for i in live)
    state_h: dict[int, list[np.ndarray]] = {}
    state_c: dict[int, list[np.ndarray]] = {}
    out: dict[int, list[np.ndarray]] = {i: [] for i in live}
    zero = {s: np.zeros(shapes[f"h{s}"], np.float32) for s in COARSE}
    for k in range(kmax):
        rows = [(j, i) for j, i in enumerate(live) if len(streams[i].objects) > k]
        idx = np.array([i for _, i in rows])
        feeds = {f"skip{s}": feats[f"skip{s}"][idx] for s in LEVELS}
        masks = []
        for j, i in rows:
            ob = streams[i].objects[k]
            masks.append(np.stack([ob.prev, ob.first, matched[j, k]]))
        feeds["masks"] = np.stack(masks)
        for n, s in enumerate(COARSE):
            feeds[f"h{s}"] = np.stack([state_h[i][n] if i in state_h else zero[s] for _, i in rows])
            feeds[f"c{s}"] = np.stack([state_c[i][n] if i in state_c else zero[s] for _, i in rows])
            feeds[f"t{s}"] = np.stack(
                [
                    zero[s]
                    if streams[i].objects[k].temporal is None
                    else streams[i].objects[k].temporal[n]
                    for _, i in rows
                ]
            )
        res = rt.run("decoder", feeds)
        for r, (_, i) in enumerate(rows):
            hs = [res[f"h{s}_out"][r] for s in COARSE]
            state_h[i] = hs
            state_c[i] = [res[f"c{s}_out"][r] for s in COARSE]
            streams[i].objects[k].temporal = hs
            out[i].append(res["probabilities"][r].astype(np.float32))
    for i in live:
        probs[i] = np.stack(out[i])


class StreamingSegmenter:
    """Video object segmentation over a bundle, one frame at a time; the API and the object
    handling of :class:`dmm_deploy.model.VideoSegmenter` (late objects, re-annotation, any ids
    1..255), without torch.

    Usage::

        rt = Runtime.open("bundle/")                     # or backend="tensorrt", device="cuda"
        seg = StreamingSegmenter(rt, rt.proposal_source("video.npz"))
        for labels in seg.segment(open_frames("frames/"), mask0, annotations={5: m5}): ...

    Args:
        runtime: a :class:`Runtime`, or a bundle folder (opened on the CPU).
        source: the proposal source (``detect(index, frame) -> Detections``); default: the
            bundle's Mask R-CNN stage.
        timer: optional ``timer(stage) -> context manager`` (names of :data:`STAGES`).
    """

    def __init__(
        self,
        runtime: Runtime | str | os.PathLike,
        source=None,
        *,
        timer: Callable[[str], AbstractContextManager] | None = None,
    ) -> None:
        if isinstance(runtime, (str, Path, os.PathLike)):
            runtime = Runtime.open(runtime)
        self.runtime = runtime
        self.cfg = runtime.cfg
        self.source = runtime.proposal_source() if source is None else source
        self.timer = _no_timer if timer is None else timer
        self.state = StreamState(self.source)

    @property
    def object_ids(self) -> list[int]:
        return [o.id for o in self.state.objects]

    @property
    def frame_index(self) -> int:
        return self.state.frame_index

    @property
    def last_probabilities(self) -> np.ndarray | None:
        return self.state.last_probabilities

    def start(self, frame, mask) -> np.ndarray:
        """Begin a video: forget all state, process frame 0 with its annotation ``mask``."""
        self.state = StreamState(self.source)
        return self.step(frame, new_masks=mask)

    def step(self, frame, new_masks=None) -> np.ndarray:
        """Process the next frame; ``new_masks`` adds or re-annotates objects."""
        if self.state.frame_index < 0 and new_masks is None:
            raise RuntimeError("call start(frame, mask) before step()")
        index = self.state.frame_index + 1
        image = _frame_image(frame, f"frame {index}")
        ann = None
        if new_masks is not None:
            label = "mask" if index == 0 else "new_masks"
            ann = _label_map(new_masks, image.shape[:2], f"{label} of frame {index}")
        return step_streams(self.runtime, [self.state], [image], [ann], self.timer)[0]

    def segment(
        self,
        frames: Iterable,
        first_mask,
        annotations: Mapping[int, object] | None = None,
    ) -> Iterator[np.ndarray]:
        """Segment a whole video lazily (one label map per frame, frame 0 included);
        ``annotations`` ``{frame index: label map}`` adds objects later (frame 0's is ignored)."""
        annotations = {} if annotations is None else dict(annotations)
        for i, frame in enumerate(frames):
            if i == 0:
                yield self.start(frame, first_mask)
            else:
                yield self.step(frame, annotations.get(i))
