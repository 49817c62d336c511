"""``dmm-deploy segment``: segment a video (frame folder or video file) with DMM-Net.

The command line (declared in :mod:`dmm_deploy.cli`) is turned into a
:class:`SegmentOptions` by :func:`options_from_args`; :func:`run_segment` builds the model
(:func:`build_model`), the proposal source (:func:`build_proposals`) and a
:class:`~dmm_deploy.model.VideoSegmenter`, then :func:`segment_frames` streams the frames:
one DAVIS palette PNG per frame (named like the frame), an optional overlay (PNG strip or
mp4) and a tqdm progress bar.

Weights: no pretrained weights ship with the project. DMM-Net's weights come from an original
checkpoint (``--checkpoint``), Mask R-CNN's from a torchvision weights file
(``--maskrcnn-weights``). Running without them needs ``--random-weights``, which says so on
stderr: the masks are then meaningless (smoke runs, timing).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from dmm_deploy.data import Frame, FrameSource, OverlayWriter, open_frames, read_mask, write_mask
from dmm_deploy.data.davis import list_images
from dmm_deploy.model.checkpoint import load_original_checkpoint
from dmm_deploy.model.config import BACKBONES, DMMConfig
from dmm_deploy.model.net import DMMNet
from dmm_deploy.model.segmenter import VideoSegmenter
from dmm_deploy.model.sources import MaskRCNNProposals, PrecomputedProposals, ProposalSource

__all__ = [
    "RANDOM_SEED",
    "SegmentOptions",
    "SegmentSummary",
    "build_model",
    "build_proposals",
    "options_from_args",
    "parse_proposals",
    "parse_size",
    "run_segment",
    "segment_frames",
]

RANDOM_SEED = 0
"""Seed of ``torch.manual_seed`` before random weights are drawn (``--random-weights``)."""

_MASKRCNN_MAX_OVER_MIN = 1333 / 800  # torchvision's default max_size / min_size


def parse_size(text: str, name: str = "--input-size") -> tuple[int, int]:
    """``"255x448"`` -> ``(255, 448)`` (height x width, both >= 32)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if m is None:
        raise ValueError(f"{name} must be HEIGHTxWIDTH, e.g. 255x448, got {text!r}")
    size = (int(m.group(1)), int(m.group(2)))
    if min(size) < 32:
        raise ValueError(f"{name} must be at least 32x32, got {text!r}")
    return size


def parse_proposals(text: str) -> tuple[str, Path | None]:
    """``"maskrcnn"`` -> ``("maskrcnn", None)``; ``"precomputed:FILE.npz"`` ->
    ``("precomputed", Path("FILE.npz"))``."""
    if text == "maskrcnn":
        return "maskrcnn", None
    if text.startswith("precomputed:") and len(text) > len("precomputed:"):
        return "precomputed", Path(text[len("precomputed:") :])
    raise ValueError(f"--proposals must be 'maskrcnn' or 'precomputed:FILE.npz', got {text!r}")


@dataclass(frozen=True)
class SegmentOptions:
    """Everything ``dmm-deploy segment`` needs (see ``dmm-deploy segment --help``).

    Attributes:
        frames: a folder of ``.jpg``/``.png`` frames or a video file.
        out: output folder of the palette PNGs (created).
        mask: the first frame's annotation (palette/greyscale PNG), or None when
            ``annotations`` holds a PNG named like the first frame.
        annotations: folder of later annotations named like the frames (``<frame>.png``):
            objects first appearing there are added (DAVIS first-appearance maps).
        proposals: ``"maskrcnn"`` or ``"precomputed"``.
        precomputed: the ``.npz`` file of precomputed proposals (``proposals="precomputed"``).
        maskrcnn_weights: a torchvision Mask R-CNN weights file, or a torchvision weights
            name (``DEFAULT``, ``COCO_V1``; downloads), or None.
        maskrcnn_version: ``"v1"`` (``maskrcnn_resnet50_fpn``) or ``"v2"``.
        detector_size: the detector's shorter image side (torchvision's ``min_size``, 800).
        checkpoint: an original DMM-Net checkpoint directory or ``trainer.pt``, or None.
        random_weights: allow random weights for whatever has no weights given.
        backbone: DMM-Net's encoder (``resnet101``, ``resnet50``, ``resnet34``, ``resnet18``).
        input_size: ``(height, width)`` of the model's input (255 x 448).
        matching_only: the paper's matching-only mode (no refinement decoder).
        device: ``"cpu"`` or ``"cuda"``.
        overlay: a ``.png`` strip or ``.mp4`` video of the masks over the frames, or None.
        max_frames: process only the first N frames (None: all).
        threads: CPU threads of torch (``torch.set_num_threads``; None: torch's default).
        progress: show a progress bar on stderr.
    """

    frames: Path
    out: Path
    mask: Path | None = None
    annotations: Path | None = None
    proposals: str = "maskrcnn"
    precomputed: Path | None = None
    maskrcnn_weights: str | None = None
    maskrcnn_version: str = "v1"
    detector_size: int = 800
    checkpoint: Path | None = None
    random_weights: bool = False
    backbone: str = "resnet101"
    input_size: tuple[int, int] = (255, 448)
    matching_only: bool = False
    device: str = "cpu"
    overlay: Path | None = None
    max_frames: int | None = None
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.proposals not in ("maskrcnn", "precomputed"):
            raise ValueError(
                f"proposals must be 'maskrcnn' or 'precomputed', got {self.proposals!r}"
            )
        if (self.proposals == "precomputed") != (self.precomputed is not None):
            raise ValueError("precomputed (a .npz file) goes with proposals='precomputed' only")
        if self.backbone not in BACKBONES:
            raise ValueError(
                f"--backbone must be one of {sorted(BACKBONES)}, got {self.backbone!r}"
            )
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"--max-frames must be >= 1, got {self.max_frames}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.detector_size < 32:
            raise ValueError(f"--detector-size must be >= 32, got {self.detector_size}")
        if self.maskrcnn_version not in ("v1", "v2"):
            raise ValueError(
                f"--maskrcnn-version must be 'v1' or 'v2', got {self.maskrcnn_version!r}"
            )
        if self.overlay is not None and self.overlay.suffix.lower() not in (".png", ".mp4"):
            raise ValueError(
                f"--overlay must end with .png (strip) or .mp4 (video), got {self.overlay}"
            )
        if self.mask is None and self.annotations is None:
            raise ValueError("give the first frame's annotation: --mask PNG (or --annotations DIR)")

    def missing_weights(self) -> list[str]:
        """The parts that have no weights given: ``"DMM-Net"`` and/or ``"Mask R-CNN"``."""
        out = []
        if self.checkpoint is None:
            out.append("DMM-Net")
        if self.proposals == "maskrcnn" and self.maskrcnn_weights is None:
            out.append("Mask R-CNN")
        return out


def options_from_args(args: argparse.Namespace) -> SegmentOptions:
    """The parsed command line -> :class:`SegmentOptions` (checks the combinations)."""
    kind, npz = parse_proposals(args.proposals)
    opts = SegmentOptions(
        frames=Path(args.frames if args.frames is not None else args.video),
        out=Path(args.out),
        mask=None if args.mask is None else Path(args.mask),
        annotations=None if args.annotations is None else Path(args.annotations),
        proposals=kind,
        precomputed=npz,
        maskrcnn_weights=args.maskrcnn_weights,
        maskrcnn_version=args.maskrcnn_version,
        detector_size=args.detector_size,
        checkpoint=None if args.checkpoint is None else Path(args.checkpoint),
        random_weights=args.random_weights,
        backbone=args.backbone,
        input_size=parse_size(args.input_size),
        matching_only=args.matching_only,
        device=args.device,
        overlay=None if args.overlay is None else Path(args.overlay),
        max_frames=args.max_frames,
        threads=args.threads,
        progress=not args.no_progress,
    )
    if args.video is not None and Path(args.video).is_dir():
        raise ValueError(
            f"--video must be a video file, got the folder {args.video} (use --frames)"
        )
    if args.frames is not None and Path(args.frames).is_file():
        raise ValueError(
            f"--frames must be a folder of images, got the file {args.frames} (use --video)"
        )
    return opts


def build_model(opts: SegmentOptions) -> DMMNet:
    """DMM-Net with the original checkpoint's weights, or random weights (seed
    :data:`RANDOM_SEED`) when ``opts.checkpoint`` is None; in ``eval()`` mode on CPU."""
    cfg = DMMConfig(
        backbone=opts.backbone, input_size=opts.input_size, refine=not opts.matching_only
    )
    torch.manual_seed(RANDOM_SEED)
    net = DMMNet(cfg)
    if opts.checkpoint is not None:
        try:
            load_original_checkpoint(net, opts.checkpoint)
        except ValueError as e:
            raise ValueError(f"{e} (is --backbone {opts.backbone} the checkpoint's?)") from e
    return net.eval()


def build_proposals(opts: SegmentOptions) -> ProposalSource:
    """The proposal source: precomputed detections, or torchvision Mask R-CNN (its weights
    file or name; random weights, seed :data:`RANDOM_SEED`, when none is given)."""
    if opts.proposals == "precomputed":
        return PrecomputedProposals(opts.precomputed)
    torch.manual_seed(RANDOM_SEED)
    max_size = max(opts.detector_size, round(opts.detector_size * _MASKRCNN_MAX_OVER_MIN))
    return MaskRCNNProposals(
        opts.maskrcnn_weights,
        version=opts.maskrcnn_version,
        device=opts.device,
        min_size=opts.detector_size,
        max_size=max_size,
    )


@dataclass
class SegmentSummary:
    """What :func:`segment_frames` did.

    Attributes:
        frames: frames processed.
        size: ``(H, W)`` of the frames (and of the written masks).
        seconds: wall time of the loop (reading, model, writing).
        masks: the written PNG files, in frame order.
        overlay: the overlay file, or None.
        object_ids: the objects tracked at the end.
        unused_annotations: annotation files whose name matched no processed frame.
    """

    frames: int
    size: tuple[int, int]
    seconds: float
    masks: list[Path] = field(default_factory=list)
    overlay: Path | None = None
    object_ids: list[int] = field(default_factory=list)
    unused_annotations: list[Path] = field(default_factory=list)

    @property
    def fps(self) -> float:
        """Frames per second of the whole loop."""
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


def _annotation_files(directory: Path, size: tuple[int, int]) -> dict[str, Path]:
    """``{frame name: PNG}`` of an annotation folder; every mask is checked against ``size``
    now, so that a wrong file fails before the video is processed."""
    files = list_images(directory, (".png",))
    if not files:
        raise FileNotFoundError(f"no PNG annotations in --annotations folder {directory}")
    for f in files:
        read_mask(f, expected_size=size)
    return {f.stem: f for f in files}


def segment_frames(
    segmenter: VideoSegmenter,
    frames: Iterable[Frame],
    out: str | Path,
    *,
    first_mask: str | Path | np.ndarray | None = None,
    annotations: dict[str, Path] | None = None,
    overlay: OverlayWriter | None = None,
    max_frames: int | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> SegmentSummary:
    """Segment a stream of :class:`~dmm_deploy.data.Frame` objects, writing the results.

    Args:
        segmenter: the :class:`VideoSegmenter` (its state is reset at the first frame).
        frames: the frames in order (e.g. :func:`dmm_deploy.data.open_frames`), read lazily.
        out: folder of the output palette PNGs, ``<out>/<frame name>.png`` (created).
        first_mask: the first frame's annotation (PNG path or label map); None takes the
            first frame's entry of ``annotations``.
        annotations: ``{frame name: PNG}`` of later annotations (first-appearance maps);
            the first frame's entry is used only when ``first_mask`` is None.
        overlay: an open :class:`~dmm_deploy.data.OverlayWriter`, fed every frame (the caller
            closes it).
        max_frames: stop after this many frames (None: all).
        progress: wraps the frame iterable (e.g. ``tqdm``), or None.

    Returns:
        :class:`SegmentSummary` (``unused_annotations`` lists the annotation files whose
        name matched no processed frame).
    """
    out = Path(out)
    annotations = dict(annotations or {})
    used: set[str] = set()
    written: list[Path] = []
    size: tuple[int, int] | None = None
    stream: Iterable[Frame] = frames if max_frames is None else islice(frames, max_frames)
    if progress is not None:
        stream = progress(stream)
    t0 = time.perf_counter()
    for frame in stream:
        ann = annotations.get(frame.name)
        if ann is not None:
            used.add(frame.name)
        if size is None:
            size = frame.image.shape[:2]
            mask = first_mask if first_mask is not None else ann
            if mask is None:
                raise ValueError(
                    f"no annotation for the first frame {frame.name!r}: pass --mask PNG or put "
                    f"{frame.name}.png in the --annotations folder"
                )
            labels = segmenter.start(frame, mask)
        else:
            labels = segmenter.step(frame, ann)
        written.append(write_mask(out / f"{frame.name}.png", labels))
        if overlay is not None:
            overlay.add(frame.image, labels)
    seconds = time.perf_counter() - t0
    if size is None:
        raise ValueError("no frames to segment")
    unused = [p for name, p in annotations.items() if name not in used]
    if first_mask is not None:
        first_name = written[0].stem
        unused = [p for p in unused if p.stem != first_name]
    return SegmentSummary(
        frames=len(written),
        size=size,
        seconds=seconds,
        masks=written,
        object_ids=segmenter.object_ids,
        unused_annotations=unused,
    )


def _warn(message: str) -> None:
    print(f"dmm-deploy segment: warning: {message}", file=sys.stderr)


def run_segment(opts: SegmentOptions) -> SegmentSummary:
    """Run ``dmm-deploy segment``: check the inputs, build everything, segment, report.

    The inputs are checked before any model is built (frames, masks, weights files); an
    unreadable frame met later stops the run with one error naming the file (the masks of
    the frames before it are written).
    """
    missing = opts.missing_weights()
    if missing and not opts.random_weights:
        hints = {
            "DMM-Net": "--checkpoint DIR (an original DMM-Net checkpoint)",
            "Mask R-CNN": "--maskrcnn-weights FILE (torchvision Mask R-CNN weights)",
        }
        raise ValueError(
            "no weights for "
            + " and ".join(missing)
            + ": pass "
            + " and ".join(hints[m] for m in missing)
            + ", or --random-weights for a smoke run (the masks are then meaningless)"
        )
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if opts.checkpoint is not None and not opts.checkpoint.exists():
        raise FileNotFoundError(f"--checkpoint not found: {opts.checkpoint}")
    if opts.precomputed is not None and not opts.precomputed.is_file():
        raise FileNotFoundError(f"precomputed proposals file not found: {opts.precomputed}")
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    source: FrameSource = open_frames(opts.frames)
    size = source.size
    if opts.mask is not None:
        read_mask(opts.mask, expected_size=size)
    annotations = {} if opts.annotations is None else _annotation_files(opts.annotations, size)
    if missing:
        _warn(
            f"random weights for {' and '.join(missing)} (no pretrained weights ship with "
            "dmm-deploy): the masks are meaningless"
        )

    segmenter = VideoSegmenter(build_model(opts), build_proposals(opts), device=opts.device)
    fps = getattr(source, "fps", 0.0) or 24.0
    overlay = None if opts.overlay is None else OverlayWriter(opts.overlay, fps=fps)
    total = len(source) or None
    if total is not None and opts.max_frames is not None:
        total = min(total, opts.max_frames)

    def progress(it: Iterable) -> Iterable:
        from tqdm import tqdm

        # disable=None: shown on a terminal only
        return tqdm(
            it, total=total, unit="frame", desc="segment", disable=None if opts.progress else True
        )

    ok = False
    try:
        summary = segment_frames(
            segmenter,
            source,
            opts.out,
            first_mask=opts.mask,
            annotations=annotations,
            overlay=overlay,
            max_frames=opts.max_frames,
            progress=progress,
        )
        ok = True
    finally:
        if overlay is not None:
            written = overlay.close(write=ok)
    if overlay is not None:
        summary.overlay = written
    h, w = summary.size
    print(
        f"segmented {summary.frames} frames ({w}x{h}) in {summary.seconds:.1f} s "
        f"({summary.fps:.2f} frames/s), objects {summary.object_ids}; masks in {opts.out}"
    )
    if summary.overlay is not None:
        print(f"overlay: {summary.overlay}")
    if summary.unused_annotations:
        names = ", ".join(p.name for p in summary.unused_annotations[:5])
        more = len(summary.unused_annotations) - 5
        _warn(
            f"annotations matching no processed frame: {names}"
            + (f" (+{more})" if more > 0 else "")
        )
    return summary
