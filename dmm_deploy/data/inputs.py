"""Checks of the segmenters' per-frame inputs, in numpy (no torch): a frame
(:func:`frame_image`) and a label map (:func:`label_map`), as arrays, :class:`Frame` objects or
files. Used by :class:`dmm_deploy.model.VideoSegmenter` and
:class:`dmm_deploy.runtime.StreamingSegmenter`."""

from __future__ import annotations

import os

import numpy as np

from dmm_deploy.data.davis import read_mask
from dmm_deploy.data.frames import Frame, read_frame

__all__ = ["FrameLike", "MaskLike", "frame_image", "label_map"]

FrameLike = np.ndarray | Frame | str | os.PathLike
MaskLike = np.ndarray | str | os.PathLike


def frame_image(frame: FrameLike, name: str) -> np.ndarray:
    """A frame as ``(H, W, 3)`` uint8 RGB: image files and :class:`~dmm_deploy.data.Frame`
    objects go through the data layer's reader; arrays are checked (``name`` names them)."""
    if isinstance(frame, Frame):
        frame = frame.image
    elif isinstance(frame, (str, os.PathLike)):
        return read_frame(frame)
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"{name} must be an (H, W, 3) uint8 array, a Frame or an image path")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(
            f"{name} must be an (H, W, 3) uint8 RGB array, got {frame.shape} {frame.dtype}"
        )
    return frame


def label_map(mask: MaskLike, size: tuple[int, int], name: str) -> np.ndarray:
    """A ``(H, W)`` uint8 label map of a frame of ``size = (H, W)``: PNG files go through the
    data layer's :func:`~dmm_deploy.data.read_mask` (errors name the file); arrays are checked
    (``name`` names them)."""
    if isinstance(mask, (str, os.PathLike)):
        return read_mask(mask, expected_size=size)
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{name} must be an (H, W) integer array or a PNG path")
    if mask.ndim != 2 or not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
        raise ValueError(
            f"{name} must be an (H, W) integer label map, got {mask.shape} {mask.dtype}"
        )
    if tuple(mask.shape) != tuple(size):
        raise ValueError(
            f"{name} is {mask.shape[1]}x{mask.shape[0]} but the frame is {size[1]}x{size[0]}"
        )
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"{name} must hold object ids in 0..255")
    return mask.astype(np.uint8)
