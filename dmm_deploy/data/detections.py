"""The precomputed-proposals ``.npz`` format in numpy (no torch): :class:`PrecomputedFile`
reads it, :func:`write_precomputed` writes it.

The format is documented in :mod:`dmm_deploy.model.sources`. This is the one place that parses,
validates and writes a file; the torch source
(:class:`dmm_deploy.model.PrecomputedProposals`) and the runtime's
(:class:`dmm_deploy.runtime.PrecomputedDetections`) wrap it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["MASK_KINDS", "PrecomputedFile", "write_precomputed"]

MASK_KINDS = ("box", "frame")


class PrecomputedFile:
    """One video's detections read from a ``.npz`` file, once, at construction.

    A missing file raises ``FileNotFoundError``; a missing key or inconsistent shapes raise one
    ``ValueError`` naming the file. :meth:`frame_arrays` gives one frame's arrays.

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
        try:
            with np.load(self.path, allow_pickle=False) as data:
                missing = [k for k in self.REQUIRED if k not in data.files]
                if missing:
                    raise ValueError(f"missing key(s) {missing}")
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as e:
            raise ValueError(f"invalid precomputed proposals file {self.path}: {e}") from e
        frame, boxes, scores = arrays["frame"], arrays["boxes"], arrays["scores"]
        masks, kind = arrays["masks"], str(arrays["mask_kind"])
        n = frame.shape[0]
        if (
            frame.ndim != 1
            or boxes.shape != (n, 4)
            or scores.shape != (n,)
            or masks.ndim != 3
            or masks.shape[0] != n
            or kind not in MASK_KINDS
            or arrays["image_size"].shape != (2,)
        ):
            raise ValueError(
                f"invalid precomputed proposals file {self.path}: inconsistent shapes "
                f"(frame {frame.shape}, boxes {boxes.shape}, scores {scores.shape}, "
                f"masks {masks.shape}, mask_kind {kind!r})"
            )
        self.image_size = tuple(int(v) for v in arrays["image_size"])
        self.kind = kind
        self.num_frames = int(arrays.get("num_frames", frame.max(initial=-1) + 1))
        self._length_known = "num_frames" in arrays  # files of other writers may lack it
        order = np.argsort(frame, kind="stable")
        self._frame = frame[order]
        self._boxes = boxes[order].astype(np.float32)
        self._scores = scores[order].astype(np.float32)
        self._masks = masks[order]

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
