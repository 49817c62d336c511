"""The precomputed-proposals ``.npz`` format in numpy (no torch): :class:`PrecomputedFile`
reads it, :func:`write_precomputed` writes it.

The format is documented in :mod:`dmm_deploy.model.sources`. This is the one place that parses,
validates and writes a file; the torch source
(:class:`dmm_deploy.model.PrecomputedProposals`) and the runtime's
(:class:`dmm_deploy.runtime.PrecomputedDetections`) wrap it.
"""

from __future__ import annotations

import os
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

__all__ = ["MASK_KINDS", "PrecomputedFile", "write_precomputed"]

MASK_KINDS = ("box", "frame")

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # as numpy.load tells an .npz from other files
# what numpy.load and zipfile raise for a damaged archive: a bad zip or .npy header, CRC or
# deflate stream, an unknown compression method, a shape too large to allocate
_READ_ERRORS = (
    MemoryError,  # a damaged .npy header claiming an enormous shape
    OSError,
    EOFError,
    ValueError,
    SyntaxError,
    NotImplementedError,
    tokenize.TokenError,
    zipfile.BadZipFile,
    zlib.error,
)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def _whole(values: np.ndarray) -> bool:
    """Whether ``values`` are integers, or floats of whole, finite values."""
    if np.issubdtype(values.dtype, np.integer):
        return True
    if not np.issubdtype(values.dtype, np.floating):
        return False
    return bool(np.isfinite(values).all() and (values == np.round(values)).all())


class PrecomputedFile:
    """One video's detections read from a ``.npz`` file, once, at construction.

    A missing file raises ``FileNotFoundError``; anything else wrong with it raises one
    ``ValueError`` naming the file: not an ``.npz`` archive, or a damaged one (empty, truncated,
    a bad checksum); a missing key; inconsistent shapes; a ``mask_kind`` not in
    :data:`MASK_KINDS`; a bad ``image_size`` or ``num_frames``; a frame index outside
    ``[0, num_frames)``; a NaN or infinite box, score or (float) mask value.
    :meth:`frame_arrays` gives one frame's arrays.

    Attributes:
        path: the file.
        image_size: ``(H, W)`` of the frames the detections belong to.
        kind: ``"box"`` or ``"frame"`` (:data:`MASK_KINDS`).
        num_frames: frames in the video (the file's ``num_frames``, else the last frame with
            detections + 1).
    """

    REQUIRED = ("frame", "boxes", "scores", "masks", "mask_kind", "image_size")

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"precomputed proposals file not found: {self.path}")
        arrays = self._read()
        missing = [k for k in self.REQUIRED if k not in arrays]
        if missing:
            raise self._invalid(f"missing key(s) {missing}")
        frame, boxes, scores = arrays["frame"], arrays["boxes"], arrays["scores"]
        masks, kind = arrays["masks"], str(arrays["mask_kind"])
        n = frame.shape[0] if frame.ndim else -1
        if (
            frame.ndim != 1
            or boxes.shape != (n, 4)
            or scores.shape != (n,)
            or masks.ndim != 3
            or masks.shape[0] != n
            or arrays["image_size"].shape != (2,)
        ):
            raise self._invalid(
                f"inconsistent shapes (frame {frame.shape}, boxes {boxes.shape}, scores "
                f"{scores.shape}, masks {masks.shape}, image_size {arrays['image_size'].shape})"
            )
        size = arrays["image_size"]
        if not _whole(size) or (size <= 0).any():
            raise self._invalid(f"image_size must be H, W > 0, got {size.tolist()!r}")
        if masks.dtype.kind not in "biuf":  # booleans, integers, floats
            raise self._invalid(f"masks must be numbers, got {masks.dtype} values")
        if kind not in MASK_KINDS:
            allowed = " or ".join(repr(k) for k in MASK_KINDS)
            raise self._invalid(f"mask_kind must be {allowed}, got {kind!r}")
        self._length_known = "num_frames" in arrays  # files of other writers may lack it
        if self._length_known:
            stored = arrays["num_frames"]
            if stored.shape != () or not _whole(stored) or stored < 0:
                raise self._invalid(
                    f"num_frames must be a whole number >= 0, got {stored.tolist()!r}"
                )
            self.num_frames = int(stored)
        if not _whole(frame):
            raise self._invalid(f"frame must hold whole frame indices, got {frame.dtype} values")
        if not self._length_known:
            self.num_frames = int(frame.max(initial=-1) + 1)
        outside = (frame < 0) | (frame >= self.num_frames)
        if outside.any():
            i = int(np.argmax(outside))
            raise self._invalid(
                f"frame index {frame[i]} (detection {i}) is outside [0, {self.num_frames}), "
                f"the frames of the video; {int(outside.sum())} detection(s) outside"
            )
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # refused just below
                boxes, scores = boxes.astype(np.float32), scores.astype(np.float32)
        except (TypeError, ValueError) as e:
            raise self._invalid(f"boxes and scores must be numbers ({_first_line(e)})") from None
        for what, values in (("box", boxes), ("score", scores)):
            finite = np.isfinite(values)
            bad = ~(finite.all(axis=1) if finite.ndim == 2 else finite)
            if bad.any():
                i = int(np.argmax(bad))
                raise self._invalid(
                    f"the {what} of detection {i} (frame {frame[i]}) is NaN or infinite: "
                    f"{', '.join(f'{v:g}' for v in np.atleast_1d(values[i]))}; "
                    f"{int(bad.sum())} detection(s) with such a {what}"
                )
        if np.issubdtype(masks.dtype, np.inexact):  # float64 sums: NaN/inf iff a value is
            bad = ~np.isfinite(masks.sum(axis=(1, 2), dtype=np.float64))
            if bad.any():
                i = int(np.argmax(bad))
                raise self._invalid(
                    f"the mask of detection {i} (frame {frame[i]}) has NaN or infinite values; "
                    f"{int(bad.sum())} detection(s) with such a mask"
                )
        self.image_size = tuple(int(v) for v in size)
        self.kind = kind
        order = np.argsort(frame, kind="stable")
        self._frame = frame[order]
        self._boxes = boxes[order]
        self._scores = scores[order]
        self._masks = masks[order]

    def _invalid(self, reason: str) -> ValueError:
        return ValueError(f"invalid precomputed proposals file {self.path}: {reason}")

    def _unreadable(self, reason: str) -> ValueError:
        return ValueError(f"{self.path} is not a readable precomputed-detections .npz: {reason}")

    def _read(self) -> dict[str, np.ndarray]:
        """Every array of the file, by key. A file that is not an ``.npz`` archive (which
        ``numpy.load`` would try to unpickle) or a damaged one is one ``ValueError``."""
        with open(self.path, "rb") as f:  # ours to close, also when numpy.load fails
            magic = f.read(len(_NPY_MAGIC))
            if not magic:
                raise self._unreadable("the file is empty")
            if magic.startswith(_NPY_MAGIC):
                raise self._unreadable("it is one .npy array, not an .npz archive of named arrays")
            if not magic.startswith(_ZIP_MAGICS):
                raise self._unreadable(
                    "it is not an .npz archive (a zip of .npy arrays, as numpy.savez writes)"
                )
            if not zipfile.is_zipfile(f):
                raise self._unreadable(
                    "truncated or damaged zip archive (no central directory at its end)"
                )
            f.seek(0)
            arrays, key = {}, None
            try:
                with np.load(f, allow_pickle=False) as data:
                    for key in data.files:
                        arrays[key] = data[key]
            except _READ_ERRORS as e:
                if key is None:
                    reason = f"truncated or damaged zip archive ({_first_line(e)})"
                else:
                    reason = f"array {key!r} cannot be read ({_first_line(e)})"
                raise self._unreadable(reason) from e
        for key, value in arrays.items():
            if not isinstance(value, np.ndarray):  # a member not named *.npy: its raw bytes
                raise self._unreadable(f"{key!r} in the archive is not a .npy array")
        return arrays

    def frame_arrays(
        self, index: int, frame: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame ``index``'s ``boxes (N, 4)``, ``scores (N,)`` and ``masks`` (probabilities;
        uint8 masks divided by 255), float32; ``frame`` must have the stored ``image_size`` and,
        when the file records its ``num_frames``, ``index`` must be below it."""
        if tuple(frame.shape[:2]) != self.image_size:
            raise ValueError(
                f"frame {index} is {frame.shape[1]}x{frame.shape[0]} but the proposals in "
                f"{self.path} are for {self.image_size[1]}x{self.image_size[0]} frames"
            )
        if self._length_known and not 0 <= index < self.num_frames:
            raise ValueError(
                f"frame {index} is beyond the {self.num_frames} frames of {self.path}: these "
                "detections belong to a shorter video"
            )
        lo, hi = np.searchsorted(self._frame, [index, index + 1])
        masks = self._masks[lo:hi]
        masks = masks.astype(np.float32) / 255.0 if masks.dtype == np.uint8 else masks
        return self._boxes[lo:hi], self._scores[lo:hi], masks.astype(np.float32)


def write_precomputed(
    path: str | os.PathLike,
    frame: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray,
    kind: str,
    image_size: tuple[int, int],
    num_frames: int,
) -> None:
    """Write ``N`` detections of one video (arrays as in the format table) to ``path``.

    Float masks are probabilities in ``[0, 1]`` and are stored as uint8 (probability x 255,
    rounded); uint8 masks are stored as given. Shapes are checked as :class:`PrecomputedFile`
    checks them, so what this writes reads back.
    """
    frame = np.asarray(frame, dtype=np.int64)
    n = frame.shape[0]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32)
    masks = np.asarray(masks)
    if masks.dtype != np.uint8:
        masks = np.round(np.clip(masks.astype(np.float32), 0, 1) * 255).astype(np.uint8)
    if kind not in MASK_KINDS:
        raise ValueError(f"kind must be one of {MASK_KINDS}, got {kind!r}")
    if frame.ndim != 1 or boxes.shape[0] != n or scores.shape != (n,) or masks.ndim != 3:
        raise ValueError(
            f"detections must be frame (N,), boxes (N, 4), scores (N,), masks (N, S, S); got "
            f"frame {frame.shape}, boxes {boxes.shape}, scores {scores.shape}, masks {masks.shape}"
        )
    if masks.shape[0] != n:
        raise ValueError(f"masks hold {masks.shape[0]} detections, frame holds {n}")
    if n and (frame.min() < 0 or frame.max() >= num_frames):
        raise ValueError(
            f"frame indices must lie in [0, {num_frames}), got {frame.min()}..{frame.max()}"
        )
    np.savez_compressed(
        path,
        frame=frame,
        boxes=boxes,
        scores=scores,
        masks=masks,
        mask_kind=np.array(kind),
        image_size=np.array(image_size, dtype=np.int64),
        num_frames=np.array(num_frames, dtype=np.int64),
    )
