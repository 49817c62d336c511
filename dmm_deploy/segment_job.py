"""``dmm-deploy segment``: segment a video with DMM-Net, in PyTorch or from an exported bundle.

Torch-free at import: torch and the model are imported inside :func:`build_segmenter` for the
PyTorch path only. With ``--bundle DIR`` the segmenter comes from
``dmm_deploy.runtime.jobs.build_segmenter`` (onnxruntime or TensorRT) and torch is never
imported. Both paths share everything else: the input checks, the frame loop
(:func:`segment_frames`, which takes any object with ``start(frame, mask) -> labels`` and
``step(frame, new_masks=None) -> labels``) and the output guarantees:

- every bad input is one line naming the argument or file (exit 2), checked before the model
  is built: frames, masks (size, at least one object in the first), annotation files,
  weights/bundle/proposal files, the output folder and the overlay path;
- a non-empty ``--out`` is refused unless ``--overwrite`` (deletes its previous masks) or
  ``--resume``; a lock refuses a second writer; masks and overlays are written atomically; a
  run that stops early (bad frame, Ctrl-C: exit 130 "interrupted after N of M frames") leaves
  ``dmm-deploy.partial.json`` in ``--out`` and no overlay;
- ``--resume`` continues an unfinished run with the same settings. The segmenter is recurrent
  (templates, previous masks, ConvLSTM state), so the frames already written are *replayed*
  (run through the model, not rewritten) to rebuild the state exactly; the result equals an
  uninterrupted run's (each replayed mask is compared with the file; a difference is rewritten
  and reported). Resume saves the writing, not the model time, and is refused for live sources
  (stream URLs, cameras), which cannot be replayed;
- progress: a bar on a terminal, a line every ``--progress-interval`` seconds otherwise; the
  summary gives the loop's frames/s and the setup time (model loading) apart.

Mask ids: 0 is background, 1..254 objects, 255 "void" as in DAVIS (treated as background in
annotations, never an object). Weights: no pretrained weights ship with the project; running
without them needs ``--random-weights`` (smoke runs, timing: the masks are meaningless).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dmm_deploy.data import FrameSource, OverlayWriter, open_frames, read_mask
from dmm_deploy.data.davis import VOID, list_images
from dmm_deploy.data.frames import VIDEO_SUFFIXES, is_stream
from dmm_deploy.data.output import ResultFolder, check_not_an_input, check_output_path
from dmm_deploy.progress import Progress, plural

__all__ = [
    "BACKBONES",
    "MAX_SIDE",
    "MAX_THREADS",
    "RANDOM_SEED",
    "SegmentOptions",
    "SegmentSummary",
    "Segmenter",
    "add_args",
    "build_model",
    "build_proposals",
    "build_segmenter",
    "check_threads",
    "first_line",
    "options_from_args",
    "parse_proposals",
    "parse_size",
    "run",
    "run_segment",
    "segment_frames",
]

RANDOM_SEED = 0
"""Seed of ``torch.manual_seed`` before random weights are drawn (``--random-weights``)."""

BACKBONES = ("resnet101", "resnet50", "resnet34", "resnet18")
"""Encoders of DMM-Net (as ``dmm_deploy.model.BACKBONES``; listed here to stay torch-free)."""

MAX_THREADS = 256
"""Largest ``--threads``: more threads than this per stage only exhaust the machine."""


def check_threads(threads: int | None) -> None:
    """``--threads`` is None (the backend's default) or in 1..:data:`MAX_THREADS`."""
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"--threads must be in 1..{MAX_THREADS}, got {threads}")


MAX_SIDE = 2048
"""Largest ``--input-size`` side and ``--detector-size``: beyond it a frame's features no longer
fit in memory on the machines this targets (checked before the model is built)."""

_MASKRCNN_MAX_OVER_MIN = 1333 / 800  # torchvision's default max_size / min_size

# options a bundle fixes at export time: refused together with --bundle
_BUNDLE_FIXED = {
    "backbone": "--backbone",
    "checkpoint": "--checkpoint",
    "input_size": "--input-size",
    "matching_only": "--matching-only",
    "compat": "--compat",
    "random_weights": "--random-weights",
    "maskrcnn_weights": "--maskrcnn-weights",
    "maskrcnn_version": "--maskrcnn-version",
    "detector_size": "--detector-size",
}


class Segmenter(Protocol):
    """What the frame loop needs (``VideoSegmenter`` and the runtime's segmenter)."""

    def start(self, frame: Any, mask: Any) -> np.ndarray: ...

    def step(self, frame: Any, new_masks: Any = None) -> np.ndarray: ...


# -- arguments ----------------------------------------------------------------------------------


def add_args(p: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``dmm-deploy segment`` (imports nothing heavy)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--frames", metavar="DIR", help="folder of .jpg/.png frames")
    src.add_argument(
        "--video",
        metavar="SRC",
        help="anything ffmpeg reads: a video file, a stream URL (rtsp://...) or a camera "
        "device (/dev/video0); read live, frame by frame (needs imageio-ffmpeg)",
    )
    p.add_argument("--mask", metavar="PNG", help="first frame's annotation (DAVIS palette PNG)")
    p.add_argument(
        "--annotations",
        metavar="DIR",
        help="annotations named like the frames (objects appearing later); "
        "its PNG for the first frame serves when --mask is not given",
    )
    p.add_argument("--out", metavar="DIR", required=True, help="output folder of palette PNGs")
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the masks of a non-empty --out (and an existing --overlay)",
    )
    out.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished run in --out (same settings; its frames are replayed, "
        "not rewritten, so the result equals an uninterrupted run's)",
    )
    m = p.add_argument_group("model (PyTorch)")
    m.add_argument(
        "--checkpoint", metavar="PATH", help="original DMM-Net checkpoint dir or trainer.pt"
    )
    m.add_argument(
        "--random-weights",
        action="store_true",
        help="allow random weights for what has none given (smoke runs: meaningless masks)",
    )
    m.add_argument(
        "--backbone",
        metavar="NAME",
        help="resnet101 (default), resnet50, resnet34, resnet18",
    )
    m.add_argument("--input-size", metavar="HxW", help="model input (default 255x448)")
    m.add_argument(
        "--matching-only", action="store_true", help="no refinement: matched proposal masks"
    )
    m.add_argument(
        "--compat",
        choices=("original", "default"),
        help="'original': the original code's test-time conventions (default with "
        "--checkpoint); 'default': this project's (default otherwise)",
    )
    d = p.add_argument_group("proposals")
    d.add_argument(
        "--proposals",
        default="maskrcnn",
        metavar="SRC",
        help="'maskrcnn' (default, torchvision Mask R-CNN) or 'precomputed:FILE.npz'",
    )
    d.add_argument(
        "--maskrcnn-weights",
        metavar="FILE",
        help="torchvision Mask R-CNN weights file (e.g. maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth), "
        "or a torchvision weights name such as COCO_V1 (downloads)",
    )
    d.add_argument("--maskrcnn-version", metavar="V", help="v1 (default) or v2")
    d.add_argument(
        "--detector-size", type=int, metavar="PX", help="Mask R-CNN's shorter side (800)"
    )
    b = p.add_argument_group("exported bundle (no PyTorch)")
    b.add_argument(
        "--bundle",
        metavar="DIR",
        help="run an exported model bundle (dmm-deploy export-model) with the torch-free runtime",
    )
    b.add_argument(
        "--backend",
        choices=("onnxruntime", "tensorrt"),
        help="runtime backend for --bundle (default onnxruntime)",
    )
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu (default) or cuda")
    p.add_argument("--overlay", metavar="FILE", help="overlay as a .png strip or an .mp4 video")
    p.add_argument("--max-frames", type=int, metavar="N", help="only the first N frames")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: the backend's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    p.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between progress lines when stderr is not a terminal (10)",
    )


def parse_size(text: str, name: str = "--input-size") -> tuple[int, int]:
    """``"255x448"`` -> ``(255, 448)`` (height x width, each in 32..:data:`MAX_SIDE`)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if m is None:
        raise ValueError(f"{name} must be HEIGHTxWIDTH, e.g. 255x448, got {text!r}")
    size = (int(m.group(1)), int(m.group(2)))
    if min(size) < 32:
        raise ValueError(f"{name} must be at least 32x32, got {text!r}")
    if max(size) > MAX_SIDE:
        raise ValueError(f"{name} must be at most {MAX_SIDE}x{MAX_SIDE}, got {text!r}")
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
        frames: a folder of ``.jpg``/``.png`` frames, a video file, a stream URL or a device.
        out: output folder of the palette PNGs (created).
        mask: the first frame's annotation, or None when ``annotations`` holds a PNG named
            like the first frame.
        annotations: folder of later annotations named like the frames (``<frame>.png``).
        proposals: ``"maskrcnn"`` or ``"precomputed"``.
        precomputed: the ``.npz`` file of precomputed proposals (``proposals="precomputed"``).
        maskrcnn_weights: a torchvision Mask R-CNN weights file or weights name, or None.
        maskrcnn_version: ``"v1"`` or ``"v2"``.
        detector_size: the detector's shorter image side (torchvision's ``min_size``).
        checkpoint: an original DMM-Net checkpoint directory or ``trainer.pt``, or None.
        random_weights: allow random weights for whatever has no weights given.
        backbone: DMM-Net's encoder.
        input_size: ``(height, width)`` of the model's input.
        matching_only: the paper's matching-only mode (no refinement decoder).
        compat: ``"original"`` or ``"default"`` (None: original with a checkpoint, else
            default); passed to ``DMMConfig(compat=...)``.
        bundle: an exported model bundle folder (torch-free runtime), or None (PyTorch).
        backend: the runtime's backend for ``bundle``: ``"onnxruntime"`` or ``"tensorrt"``.
        device: ``"cpu"`` or ``"cuda"``.
        overlay: a ``.png`` strip or ``.mp4`` video of the masks over the frames, or None.
        max_frames: process only the first N frames (None: all).
        threads: CPU threads of the backend (None: its default).
        progress: report progress on stderr.
        progress_interval: seconds between progress lines when stderr is not a terminal.
        overwrite: replace a non-empty ``out``'s masks (and an existing overlay).
        resume: continue the unfinished run in ``out``.
        verbosity: -1 quiet (no progress, no summary), 0 normal, 1 more detail.
    """

    frames: Path | str
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
    compat: str | None = None
    bundle: Path | None = None
    backend: str = "onnxruntime"
    device: str = "cpu"
    overlay: Path | None = None
    max_frames: int | None = None
    threads: int | None = None
    progress: bool = True
    progress_interval: float = 10.0
    overwrite: bool = False
    resume: bool = False
    verbosity: int = 0

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
        if self.backend not in ("onnxruntime", "tensorrt"):
            raise ValueError(f"--backend must be 'onnxruntime' or 'tensorrt', got {self.backend!r}")
        if self.backend == "tensorrt" and self.device != "cuda":
            raise ValueError("--backend tensorrt runs on --device cuda only")
        if self.compat not in (None, "original", "default"):
            raise ValueError(f"--compat must be 'original' or 'default', got {self.compat!r}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"--max-frames must be >= 1, got {self.max_frames}")
        check_threads(self.threads)
        if not 32 <= self.detector_size <= MAX_SIDE:
            raise ValueError(
                f"--detector-size must be in 32..{MAX_SIDE} pixels, got {self.detector_size}"
            )
        if not self.progress_interval >= 0:
            raise ValueError(f"--progress-interval must be >= 0, got {self.progress_interval}")
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
        if self.overwrite and self.resume:
            raise ValueError("--overwrite and --resume exclude each other")

    @property
    def resolved_compat(self) -> str:
        """``compat``, or its default: ``"original"`` with a checkpoint, else ``"default"``."""
        if self.compat is not None:
            return self.compat
        return "original" if self.checkpoint is not None else "default"

    def missing_weights(self) -> list[str]:
        """The parts that have no weights given: ``"DMM-Net"`` and/or ``"Mask R-CNN"``
        (none with a bundle, which holds its weights)."""
        if self.bundle is not None:
            return []
        out = []
        if self.checkpoint is None:
            out.append("DMM-Net")
        if self.proposals == "maskrcnn" and self.maskrcnn_weights is None:
            out.append("Mask R-CNN")
        return out

    def settings(self) -> dict[str, Any]:
        """The settings that determine the masks (a resumed run must have the same)."""

        def p(x):
            return None if x is None else (x if is_stream(x) else str(Path(x).resolve()))

        s = {
            "frames": p(self.frames),
            "mask": p(self.mask),
            "annotations": p(self.annotations),
            "proposals": self.proposals,
            "precomputed": p(self.precomputed),
            "device": self.device,
        }
        if self.bundle is not None:
            s.update(bundle=p(self.bundle), backend=self.backend)
        else:
            s.update(
                checkpoint=p(self.checkpoint),
                backbone=self.backbone,
                input_size=list(self.input_size),
                matching_only=self.matching_only,
                compat=self.resolved_compat,
            )
            if self.proposals == "maskrcnn":
                s.update(
                    maskrcnn_weights=self.maskrcnn_weights,
                    maskrcnn_version=self.maskrcnn_version,
                    detector_size=self.detector_size,
                )
        return s


def options_from_args(args: argparse.Namespace) -> SegmentOptions:
    """The parsed command line -> :class:`SegmentOptions` (checks the combinations)."""
    kind, npz = parse_proposals(args.proposals)
    if args.bundle is not None:
        given = [flag for key, flag in _BUNDLE_FIXED.items() if getattr(args, key, None)]
        if given:
            raise ValueError(
                f"{given[0]} does not go with --bundle: the bundle fixes the model "
                "(its weights, backbone, input size and detector are set at export)"
            )
    elif args.backend is not None:
        raise ValueError("--backend goes with --bundle only (the PyTorch path has no backend)")
    if args.video is not None:
        source: Path | str = args.video if is_stream(args.video) else Path(args.video)
        if isinstance(source, Path):
            if source.is_dir():
                raise ValueError(
                    f"--video must be a video file, a stream URL or a device, got the folder "
                    f"{source} (use --frames)"
                )
            if not source.exists():
                raise FileNotFoundError(
                    f"--video not found: {source} (expected a video file, a stream URL such as "
                    "rtsp://host/path, or a camera device such as /dev/video0)"
                )
    else:
        source = Path(args.frames)
        if source.is_file():
            raise ValueError(
                f"--frames must be a folder of images, got the file {source} (use --video)"
            )
    if not str(args.out).strip():
        raise ValueError(f"--out must name a folder, got {args.out!r}")
    return SegmentOptions(
        frames=source,
        out=Path(args.out),
        mask=None if args.mask is None else Path(args.mask),
        annotations=None if args.annotations is None else Path(args.annotations),
        proposals=kind,
        precomputed=npz,
        maskrcnn_weights=args.maskrcnn_weights,
        maskrcnn_version=args.maskrcnn_version or "v1",
        detector_size=800 if args.detector_size is None else args.detector_size,
        checkpoint=None if args.checkpoint is None else Path(args.checkpoint),
        random_weights=args.random_weights,
        backbone=args.backbone or "resnet101",
        input_size=parse_size(args.input_size or "255x448"),
        matching_only=args.matching_only,
        compat=args.compat,
        bundle=None if args.bundle is None else Path(args.bundle),
        backend=args.backend or "onnxruntime",
        device=args.device,
        overlay=None if args.overlay is None else Path(args.overlay),
        max_frames=args.max_frames,
        threads=args.threads,
        progress=not args.no_progress and getattr(args, "verbosity", 0) >= 0,
        progress_interval=args.progress_interval,
        overwrite=args.overwrite,
        resume=args.resume,
        verbosity=getattr(args, "verbosity", 0),
    )


# -- checks before any heavy work ------------------------------------------------------------


@dataclass
class _Inputs:
    source: FrameSource
    size: tuple[int, int]
    first_mask: np.ndarray | None
    annotations: dict[str, Path]
    folder: ResultFolder


def _annotation(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A label map for the segmenter: size checked, void (255) -> background."""
    labels = read_mask(path, expected_size=size)
    if (labels == VOID).any():
        labels = np.where(labels == VOID, 0, labels).astype(np.uint8)
    return labels


def _require_objects(labels: np.ndarray, what: str) -> None:
    if not labels.any():
        raise ValueError(
            f"{what} holds no object (only background 0 and void 255); expected object ids "
            "in 1..254 on the first frame"
        )


def _same_folder(a: Path | str, b: Path) -> bool:
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


def _refuse_input_overlap(opts: SegmentOptions) -> None:
    """Refuse an ``--overlay`` that is one of the run's input files or lies in an input folder
    (frames, annotations, bundle, checkpoint): writing it would destroy or pollute an input."""
    files = [
        ("--mask", opts.mask),
        ("--proposals", opts.precomputed),
        ("--maskrcnn-weights", Path(opts.maskrcnn_weights) if opts.maskrcnn_weights else None),
    ]
    folders = [("--annotations", opts.annotations), ("--bundle", opts.bundle)]
    for name, path in (("--frames", opts.frames), ("--checkpoint", opts.checkpoint)):
        if isinstance(path, Path) and not is_stream(path):
            (folders if path.is_dir() else files).append((name, path))
    check_not_an_input("--overlay", opts.overlay, files, folders)


def check_inputs(opts: SegmentOptions) -> _Inputs:
    """Every check that needs no model: files, sizes, first mask, output folder, overlay.

    Raises:
        ValueError / FileNotFoundError: one line naming the argument or file.
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
    if opts.bundle is not None:
        if opts.bundle.exists() and not opts.bundle.is_dir():
            raise ValueError(
                f"--bundle {opts.bundle} is a file: expected a folder written by "
                "dmm-deploy export-model"
            )
        if not opts.bundle.is_dir():
            raise FileNotFoundError(f"--bundle not found: {opts.bundle} (expected a folder)")
        if not (opts.bundle / "manifest.json").is_file():
            raise ValueError(
                f"--bundle {opts.bundle} has no manifest.json: expected a folder written by "
                "dmm-deploy export-model"
            )
    if opts.checkpoint is not None and not opts.checkpoint.exists():
        raise FileNotFoundError(f"--checkpoint not found: {opts.checkpoint}")
    if opts.precomputed is not None and opts.precomputed.is_dir():
        raise ValueError(f"--proposals precomputed:{opts.precomputed} is a folder: expected a .npz")
    if opts.precomputed is not None and not opts.precomputed.is_file():
        raise FileNotFoundError(f"--proposals: precomputed file not found: {opts.precomputed}")
    for name, path, what in (
        ("--mask", opts.mask, "the first frame's annotation, a PNG file"),
        ("--annotations", opts.annotations, "a folder of PNG annotations"),
    ):
        if path is None:
            continue
        if not path.exists():
            raise FileNotFoundError(f"{name} not found: {path} (expected {what})")
        if path.is_dir() != (name == "--annotations"):
            kind = "folder" if path.is_dir() else "file"
            raise ValueError(f"{name} {path} is a {kind}: expected {what}")
    w = opts.maskrcnn_weights
    looks_like_file = w is not None and ("/" in w or "\\" in w or Path(w).suffix in (".pt", ".pth"))
    if looks_like_file and not Path(w).is_file():
        raise FileNotFoundError(f"--maskrcnn-weights file not found: {w}")
    for name, path in (("--frames", opts.frames), ("--annotations", opts.annotations)):
        if path is not None and not is_stream(path) and _same_folder(path, opts.out):
            raise ValueError(f"--out {opts.out} is the {name} folder; expected another folder")
    if opts.overwrite and opts.mask is not None and _same_folder(opts.mask.parent, opts.out):
        raise ValueError(
            f"--overwrite would delete --mask {opts.mask}, which lies in --out {opts.out}; "
            "move the mask or choose another folder"
        )
    if opts.resume and is_stream(opts.frames):
        raise ValueError(
            f"--resume: {opts.frames} is a live source, which cannot be replayed to rebuild "
            "the segmenter's state; start a new run"
        )
    try:
        source = open_frames(opts.frames)
    except (FileNotFoundError, ValueError) as e:
        frames = opts.frames
        video = is_stream(frames) or frames.is_file() or frames.suffix.lower() in VIDEO_SUFFIXES
        arg = "--video" if video else "--frames"  # --frames takes folders only
        kind = FileNotFoundError if isinstance(e, FileNotFoundError) else ValueError
        raise kind(f"{arg}: {e}") from e
    size = source.size
    first_mask = None
    if opts.mask is not None:
        first_mask = _annotation(opts.mask, size)
        _require_objects(first_mask, f"--mask {opts.mask}")
    annotations: dict[str, Path] = {}
    if opts.annotations is not None:
        files = list_images(opts.annotations, (".png",))
        if not files:
            raise FileNotFoundError(
                f"no PNG annotations in --annotations folder {opts.annotations}"
            )
        for f in files:
            read_mask(f, expected_size=size)
        annotations = {f.stem: f for f in files}
        if first_mask is None:
            first_name = _first_name(source)
            if first_name not in annotations:
                raise ValueError(
                    f"no annotation for the first frame {first_name!r}: pass --mask PNG or put "
                    f"{first_name}.png in the --annotations folder {opts.annotations}"
                )
            _require_objects(
                _annotation(annotations[first_name], size), str(annotations[first_name])
            )
    folder = ResultFolder(
        opts.out, opts.settings(), overwrite=opts.overwrite, resume=opts.resume, arg="--out"
    )
    folder.check()
    if opts.overlay is not None:
        check_output_path(opts.overlay, "--overlay", "file")
        _refuse_input_overlap(opts)
        # an interrupted run writes no overlay: an existing file is never this run's own
        if opts.overlay.exists() and not opts.overwrite:
            raise ValueError(
                f"--overlay {opts.overlay} exists: pass --overwrite to replace it, or choose "
                "another file"
            )
        if opts.overlay.suffix.lower() == ".png" and _same_folder(opts.overlay.parent, opts.out):
            raise ValueError(
                f"--overlay {opts.overlay} lies in --out: a PNG strip would be mixed with the "
                "masks; put it elsewhere"
            )
    return _Inputs(source, size, first_mask, annotations, folder)


def _first_name(source: FrameSource) -> str:
    files = getattr(source, "files", None)
    return files[0].stem if files else "00000"


# -- building the segmenter ------------------------------------------------------------------


def build_model(opts: SegmentOptions):
    """DMM-Net (a ``DMMNet`` in ``eval()`` mode, CPU) with the original checkpoint's weights,
    or random weights (seed :data:`RANDOM_SEED`) when ``opts.checkpoint`` is None."""
    import dataclasses

    import torch

    from dmm_deploy.model.checkpoint import load_original_checkpoint
    from dmm_deploy.model.config import DMMConfig
    from dmm_deploy.model.net import DMMNet

    cfg_args: dict[str, Any] = dict(
        backbone=opts.backbone, input_size=opts.input_size, refine=not opts.matching_only
    )
    if any(f.name == "compat" for f in dataclasses.fields(DMMConfig)):
        cfg_args["compat"] = opts.resolved_compat
    elif opts.compat == "original":
        raise ValueError("--compat original: this version's model has no compat setting")
    torch.manual_seed(RANDOM_SEED)
    net = DMMNet(DMMConfig(**cfg_args))
    if opts.checkpoint is not None:
        try:
            load_original_checkpoint(net, opts.checkpoint)
        except (ValueError, FileNotFoundError) as e:
            text = "; ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
            if "shape" in text:  # the model layer's own list of mismatches: kept whole
                text += f" (is --backbone {opts.backbone} the checkpoint's?)"
            else:  # e.g. torch's many-line unpickling message: its beginning
                text = first_line(e)
            raise ValueError(text) from e
        except Exception as e:  # unpickling / zip / torch errors of a garbage file
            raise ValueError(
                f"--checkpoint {opts.checkpoint} is not a readable DMM-Net checkpoint: "
                f"{first_line(e)}"
            ) from e
    return net.eval()


def build_proposals(opts: SegmentOptions):
    """The proposal source: precomputed detections, or torchvision Mask R-CNN (its weights
    file or name; random weights, seed :data:`RANDOM_SEED`, when none is given)."""
    import torch

    from dmm_deploy.model.checkpoint import torch_load_reason
    from dmm_deploy.model.sources import MaskRCNNProposals, PrecomputedProposals

    if opts.proposals == "precomputed":
        return PrecomputedProposals(opts.precomputed)
    torch.manual_seed(RANDOM_SEED)
    max_size = max(opts.detector_size, round(opts.detector_size * _MASKRCNN_MAX_OVER_MIN))
    try:
        return MaskRCNNProposals(
            opts.maskrcnn_weights,
            version=opts.maskrcnn_version,
            device=opts.device,
            min_size=opts.detector_size,
            max_size=max_size,
        )
    except (ValueError, FileNotFoundError):
        raise
    except Exception as e:  # garbage file (unpickling), another model's state dict, download
        raise ValueError(
            f"--maskrcnn-weights {opts.maskrcnn_weights}: not usable as torchvision Mask R-CNN "
            f"{opts.maskrcnn_version} weights ({torch_load_reason(e)})"
        ) from e


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's text (at most 240 characters)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def build_segmenter(opts: SegmentOptions, timings: dict[str, float] | None = None) -> Segmenter:
    """The segmenter of ``opts``: the runtime's (``opts.bundle``, no torch) or a PyTorch
    ``VideoSegmenter``. ``timings`` receives the seconds of each setup step."""
    timings = {} if timings is None else timings
    t = time.perf_counter()
    if opts.bundle is not None:
        try:
            from dmm_deploy.runtime.jobs import build_segmenter as build_runtime
        except ImportError as e:
            raise ValueError(f"--bundle needs the runtime (dmm_deploy.runtime): {e}") from e
        try:
            seg = build_runtime(opts)
        except (RuntimeError, ImportError) as e:  # no provider / backend library: one line
            raise ValueError(f"--bundle {opts.bundle}: {first_line(e)}") from e
        timings["runtime"] = time.perf_counter() - t
        return seg
    import torch

    from dmm_deploy.model.segmenter import VideoSegmenter

    timings["imports"] = time.perf_counter() - t  # torch, torchvision, the model's modules
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    t = time.perf_counter()
    model = build_model(opts)
    timings["model"] = time.perf_counter() - t
    t = time.perf_counter()
    proposals = build_proposals(opts)
    timings["proposals"] = time.perf_counter() - t
    return VideoSegmenter(model, proposals, device=opts.device)


# -- the frame loop ---------------------------------------------------------------------------


@dataclass
class SegmentSummary:
    """What :func:`segment_frames` did (filled while it runs, so that it is true after an
    interruption too).

    Attributes:
        frames: frames processed (replayed ones included).
        size: ``(H, W)`` of the frames (and of the written masks), None before the first.
        seconds: wall time of the frame loop (reading, model, writing).
        setup_seconds: time before the loop (checks, imports, building the model).
        written: masks written by this run.
        replayed: frames of a resumed run whose masks existed (run, not rewritten).
        rewritten: replayed frames whose existing mask differed (rewritten).
        masks: the masks of the processed frames, in frame order.
        overlay: the overlay file, or None.
        object_ids: the objects tracked at the end.
        unused_annotations: annotation files whose name matched no processed frame.
    """

    frames: int = 0
    size: tuple[int, int] | None = None
    seconds: float = 0.0
    setup_seconds: float = 0.0
    written: int = 0
    replayed: int = 0
    rewritten: int = 0
    masks: list[Path] = field(default_factory=list)
    overlay: Path | None = None
    object_ids: list[int] = field(default_factory=list)
    unused_annotations: list[Path] = field(default_factory=list)

    @property
    def fps(self) -> float:
        """Frames per second of the frame loop (setup excluded)."""
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


def segment_frames(
    segmenter: Segmenter,
    frames: Iterable,
    out: ResultFolder | str | Path,
    *,
    first_mask: str | Path | np.ndarray | None = None,
    annotations: dict[str, Path] | None = None,
    overlay: OverlayWriter | None = None,
    max_frames: int | None = None,
    progress: Progress | None = None,
    summary: SegmentSummary | None = None,
) -> SegmentSummary:
    """Segment a stream of :class:`~dmm_deploy.data.Frame` objects, writing the results.

    Args:
        segmenter: any object with ``start(frame, mask)`` and ``step(frame, new_masks)``
            returning ``(H, W)`` uint8 label maps (state reset at the first frame).
        frames: the frames in order (e.g. :func:`dmm_deploy.data.open_frames`), read lazily.
        out: a :class:`~dmm_deploy.data.output.ResultFolder` (opened), or a folder path
            (masks written there atomically, without the folder guards).
        first_mask: the first frame's annotation (PNG path or label map); None takes the
            first frame's entry of ``annotations``.
        annotations: ``{frame name: PNG}`` of later annotations (void 255 -> background).
        overlay: an open :class:`~dmm_deploy.data.OverlayWriter`, fed every frame (the caller
            closes it).
        max_frames: stop after this many frames (None: all).
        progress: a :class:`~dmm_deploy.progress.Progress` (updated per frame), or None.
        summary: filled in place as frames are done (default: a new one).

    Returns:
        ``summary``.
    """
    folder = out if isinstance(out, ResultFolder) else None
    out_dir = folder.path if folder is not None else Path(out)
    existing = folder.existing if folder is not None else set()
    annotations = dict(annotations or {})
    summary = SegmentSummary() if summary is None else summary
    used: set[str] = set()
    t0 = time.perf_counter()
    stream = frames if max_frames is None else islice(frames, max_frames)  # reads no more
    for frame in stream:
        ann_path = annotations.get(frame.name)
        if ann_path is not None:
            used.add(frame.name)
        image = frame.image
        size = image.shape[:2]
        if summary.size is None:
            summary.size = size
            mask = first_mask if first_mask is not None else ann_path
            if mask is None:
                raise ValueError(
                    f"no annotation for the first frame {frame.name!r}: pass --mask PNG or put "
                    f"{frame.name}.png in the --annotations folder"
                )
            if not isinstance(mask, np.ndarray):
                mask = _annotation(Path(mask), size)
            labels = segmenter.start(image, mask)
        else:
            ann = None if ann_path is None else _annotation(ann_path, size)
            labels = segmenter.step(image, ann)
        path = out_dir / f"{frame.name}.png"
        if frame.name in existing:  # resumed: replayed to rebuild the state, not rewritten
            summary.replayed += 1
            if not np.array_equal(read_mask(path), labels):
                folder.write_mask(frame.name, labels)
                summary.rewritten += 1
        elif folder is not None:
            folder.write_mask(frame.name, labels)
            summary.written += 1
        else:
            from dmm_deploy.data import write_mask

            write_mask(path, labels)
            summary.written += 1
        summary.masks.append(path)
        if overlay is not None:
            overlay.add(image, labels)
        summary.frames += 1
        summary.seconds = time.perf_counter() - t0
        if progress is not None:
            progress.update()
    summary.seconds = time.perf_counter() - t0
    if summary.size is None:
        raise ValueError("no frames to segment")
    summary.object_ids = list(getattr(segmenter, "object_ids", []))
    done = {p.stem for p in summary.masks}
    summary.unused_annotations = [
        p for name, p in annotations.items() if name not in used and name not in done
    ]
    if first_mask is not None:
        first = summary.masks[0].stem
        summary.unused_annotations = [p for p in summary.unused_annotations if p.stem != first]
    return summary


# -- the command -------------------------------------------------------------------------------


def _warn(message: str) -> None:
    print(f"dmm-deploy segment: warning: {message}", file=sys.stderr)


def _report(opts: SegmentOptions, summary: SegmentSummary, timings: dict[str, float]) -> None:
    h, w = summary.size
    ids = summary.object_ids
    setup = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
    print(
        f"segmented {plural(summary.frames, 'frame')} ({w}x{h}) in {summary.seconds:.1f} s, "
        f"{summary.fps:.2f} frames/s; setup {summary.setup_seconds:.1f} s before that "
        f"(not in frames/s); {plural(len(ids), 'object')} {ids}; masks in {opts.out}"
    )
    if opts.verbosity > 0 and setup:
        print(f"setup: {setup}")
    if summary.replayed:
        print(
            f"resumed: {plural(summary.replayed, 'frame')} replayed (masks kept), "
            f"{summary.written} written"
        )
    if summary.overlay is not None:
        print(f"overlay: {summary.overlay}")


def run_segment(opts: SegmentOptions) -> SegmentSummary:
    """Run ``dmm-deploy segment``: check the inputs, build the segmenter, segment, report.

    Raises:
        ValueError / FileNotFoundError / OSError: bad input (one line naming it); the
            output folder is left marked partial when frames were written.
        KeyboardInterrupt: Ctrl-C, with "interrupted after N of M frames" as its message.
    """
    t_start = time.perf_counter()
    inputs = check_inputs(opts)
    source, folder = inputs.source, inputs.folder
    live = bool(getattr(source, "live", False))
    total = len(source) or None
    if total is not None and opts.max_frames is not None:
        total = min(total, opts.max_frames)
    missing = opts.missing_weights()
    if missing:
        _warn(
            f"random weights for {' and '.join(missing)} (no pretrained weights ship with "
            "dmm-deploy): the masks are meaningless"
        )
    folder.open(total)
    timings: dict[str, float] = {}
    summary = SegmentSummary()
    overlay = None
    progress = None
    try:
        segmenter = build_segmenter(opts, timings)
        fps = getattr(source, "fps", 0.0) or 24.0
        overlay = None if opts.overlay is None else OverlayWriter(opts.overlay, fps=fps)
        summary.setup_seconds = time.perf_counter() - t_start
        progress = Progress(
            "segment",
            total,
            "frame",
            enabled=opts.progress,
            interval=opts.progress_interval,
        )
        segment_frames(
            segmenter,
            source,
            folder,
            first_mask=inputs.first_mask,
            annotations=inputs.annotations,
            overlay=overlay,
            max_frames=opts.max_frames,
            progress=progress,
            summary=summary,
        )
    except BaseException as e:
        if progress is not None:
            progress.close()
        done = summary.frames
        of = f"{done} of {total}" if total else str(done)
        if isinstance(e, KeyboardInterrupt) and live and done:
            # Ctrl-C is how a live stream ends: what was written is complete up to there
            summary.overlay = None if overlay is None else overlay.close(write=True)
            folder.finish()
            raise KeyboardInterrupt(
                f"interrupted after {plural(done, 'frame')} of the live stream; "
                f"masks in {opts.out}" + (f", overlay {summary.overlay}" if summary.overlay else "")
            ) from None
        if overlay is not None:
            overlay.close(write=False)
        reason = (
            f"interrupted after {of} frames"
            if isinstance(e, KeyboardInterrupt)
            else f"stopped after {of} frames: {first_line(e)}"
        )
        if folder.stop(reason):
            where = f"{opts.out} is marked partial; continue with --resume"
        else:
            where = "nothing written"
        if isinstance(e, KeyboardInterrupt):
            raise KeyboardInterrupt(f"interrupted after {of} frames ({where})") from None
        raise
    if progress is not None:
        progress.close()
    if overlay is not None:
        summary.overlay = overlay.close(write=True)
    folder.finish()
    if opts.verbosity >= 0:
        _report(opts, summary, timings)
    if summary.rewritten:
        _warn(
            f"{plural(summary.rewritten, 'resumed mask')} differed from the replay and "
            "were rewritten (the folder now holds this run's result)"
        )
    if summary.unused_annotations:
        names = ", ".join(p.name for p in summary.unused_annotations[:5])
        more = len(summary.unused_annotations) - 5
        _warn(
            f"annotations matching no processed frame: {names}"
            + (f" (+{more})" if more > 0 else "")
        )
    return summary


def run(args: argparse.Namespace) -> int:
    """``dmm-deploy segment``: the command line -> :func:`run_segment`; returns 0."""
    try:
        run_segment(options_from_args(args))
    except ImportError as e:  # a video without imageio-ffmpeg
        raise ValueError(first_line(e)) from e
    return 0
