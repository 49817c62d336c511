"""Overlays of label maps on frames: a blended image, a PNG strip and an mp4.

:func:`overlay_labels` colours each object with the DAVIS palette, blends it with the frame and
draws the objects' contours. :class:`OverlayWriter` takes frames one at a time (streaming) and
writes either a PNG strip of at most ``max_tiles`` evenly spread thumbnails (memory bounded,
the number of frames need not be known; the first and last frames are always in it) or an mp4
of every frame (``imageio-ffmpeg``). Both are written under a temporary name and renamed when
closed: an interrupted run leaves no overlay (``close(write=False)`` removes the temporary file).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from dmm_deploy.data.davis import davis_palette

__all__ = ["OVERLAY_SUFFIXES", "OverlayWriter", "label_contours", "overlay_labels"]

OVERLAY_SUFFIXES = (".png", ".mp4")
"""Output kinds of :class:`OverlayWriter`: a PNG strip or an mp4 video."""


def label_contours(labels: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Pixels on the border of an object: ``(H, W)`` bool.

    A pixel is on a contour when it belongs to an object (label > 0) and one of its four
    neighbours has another label; ``thickness`` > 1 grows the contour inwards by that many
    pixels in total.
    """
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, dtype=bool)
    diff_x = labels[:, 1:] != labels[:, :-1]
    diff_y = labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= diff_x
    edge[:, :-1] |= diff_x
    edge[1:, :] |= diff_y
    edge[:-1, :] |= diff_y
    fg = labels > 0
    out = edge & fg
    for _ in range(max(0, int(thickness) - 1)):
        grown = out.copy()
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        grown[1:, :] |= out[:-1, :]
        grown[:-1, :] |= out[1:, :]
        out = grown & fg
    return out


def overlay_labels(
    image: np.ndarray,
    labels: np.ndarray,
    alpha: float = 0.5,
    contour_color: tuple[int, int, int] | None = (255, 255, 255),
    contour_thickness: int = 1,
) -> np.ndarray:
    """Blend a label map over a frame.

    Args:
        image: ``(H, W, 3)`` uint8 RGB frame.
        labels: ``(H, W)`` integer label map (0 background).
        alpha: weight of the object colour inside objects, in [0, 1].
        contour_color: RGB colour of the object contours, or None for no contours.
        contour_thickness: contour width in pixels.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be an (H, W, 3) uint8 array, got shape {image.shape} dtype {image.dtype}"
        )
    if labels.shape != image.shape[:2]:
        raise ValueError(
            f"labels must have the image's shape {image.shape[:2]}, got {labels.shape}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    palette = davis_palette().astype(np.float32)
    idx = np.clip(labels, 0, 255).astype(np.intp)
    fg = (idx > 0)[..., None]
    out = image.astype(np.float32)
    out = np.where(fg, (1.0 - alpha) * out + alpha * palette[idx], out)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if contour_color is not None:
        out[label_contours(idx, contour_thickness)] = np.asarray(contour_color, dtype=np.uint8)
    return out


def _resize(image: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    if h == height:
        return image
    width = max(1, round(w * height / h))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


class OverlayWriter:
    """Collects overlays frame by frame and writes them as a PNG strip or an mp4.

    Use as a context manager (or call :meth:`close`)::

        with OverlayWriter("overlay.mp4", fps=24) as ow:
            for frame, labels in ...:
                ow.add(frame, labels)

    Args:
        path: output file; ``.png`` writes a horizontal strip of thumbnails, ``.mp4`` a video
            of every frame at full size (needs ``imageio-ffmpeg``).
        fps: frame rate of the mp4.
        max_tiles: at most this many thumbnails in a strip, evenly spread over the video.
        tile_height: thumbnail height in pixels in a strip (width keeps the aspect ratio).
        alpha: object colour weight (see :func:`overlay_labels`).
    """

    def __init__(
        self,
        path: str | Path,
        fps: float = 24.0,
        max_tiles: int = 8,
        tile_height: int = 160,
        alpha: float = 0.5,
    ) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in OVERLAY_SUFFIXES:
            raise ValueError(
                f"overlay file must end with .png (strip) or .mp4 (video), got {self.path}"
            )
        if max_tiles < 1:
            raise ValueError(f"max_tiles must be >= 1, got {max_tiles}")
        if tile_height < 8:
            raise ValueError(f"tile_height must be >= 8, got {tile_height}")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.kind = "strip" if suffix == ".png" else "video"
        self.fps = float(fps)
        self.max_tiles = int(max_tiles)
        self.tile_height = int(tile_height)
        self.alpha = float(alpha)
        self.count = 0
        self._tiles: list[tuple[int, np.ndarray]] = []
        self._stride = 1
        self._last: tuple[int, np.ndarray] | None = None
        self._writer = None
        self._size: tuple[int, int] | None = None
        self._closed = False
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp{os.getpid()}{self.path.suffix}")

    def __enter__(self) -> OverlayWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(write=exc_type is None)

    def add(self, image: np.ndarray, labels: np.ndarray) -> None:
        """Add the next frame ``(H, W, 3)`` uint8 and its ``(H, W)`` label map."""
        if self._closed:
            raise RuntimeError("OverlayWriter is closed")
        ov = overlay_labels(image, labels, alpha=self.alpha)
        if self._size is None:
            self._size = ov.shape[:2]
        elif ov.shape[:2] != self._size:
            raise ValueError(
                f"every frame must have the first frame's size {self._size}, got {ov.shape[:2]}"
            )
        if self.kind == "video":
            self._write_video_frame(ov)
        else:
            self._keep_tile(ov)
        self.count += 1

    def _keep_tile(self, ov: np.ndarray) -> None:
        # Keep every ``stride``-th frame; when twice the budget is held, halve the set and
        # double the stride. Memory stays below 2 * max_tiles thumbnails.
        self._last = (self.count, ov)
        if self.count % self._stride == 0:
            self._tiles.append((self.count, _resize(ov, self.tile_height)))
            if len(self._tiles) >= 2 * self.max_tiles:
                self._tiles = self._tiles[::2]
                self._stride *= 2

    def _write_video_frame(self, ov: np.ndarray) -> None:
        if self._writer is None:
            from dmm_deploy.data.frames import _import_imageio_ffmpeg

            ffmpeg = _import_imageio_ffmpeg()
            h, w = ov.shape[:2]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # yuv420p needs even sizes: pad by at most one pixel instead of letting ffmpeg scale.
            self._even = (h + h % 2, w + w % 2)
            self._writer = ffmpeg.write_frames(
                str(self._tmp),
                (self._even[1], self._even[0]),
                fps=self.fps,
                macro_block_size=1,
                ffmpeg_log_level="error",
            )
            self._writer.send(None)
        h, w = ov.shape[:2]
        if (h, w) != self._even:
            ov = np.pad(ov, ((0, self._even[0] - h), (0, self._even[1] - w), (0, 0)), mode="edge")
        self._writer.send(np.ascontiguousarray(ov))

    def close(self, write: bool = True) -> Path | None:
        """Finish the file. Returns its path, or None when nothing was written.

        Args:
            write: False discards the overlay (used when an error interrupted the video):
                nothing is left at ``path``.
        """
        if self._closed:
            return self.path if self.count and self.path.exists() else None
        self._closed = True
        try:
            if self.kind == "video":
                if self._writer is not None:
                    self._writer.close()
                    self._writer = None
                if write and self.count:
                    os.replace(self._tmp, self.path)
                    return self.path
                return None
            if not write or not self._tiles:
                return None
            self._write_strip()
            os.replace(self._tmp, self.path)
            return self.path
        finally:
            with contextlib.suppress(OSError):
                self._tmp.unlink()

    def _write_strip(self) -> None:
        from PIL import Image

        if self._last is not None and self._last[0] != self._tiles[-1][0]:
            # the last frame always ends the strip
            self._tiles.append((self._last[0], _resize(self._last[1], self.tile_height)))
        n = len(self._tiles)
        pick = np.unique(np.round(np.linspace(0, n - 1, min(n, self.max_tiles))).astype(int))
        tiles = [self._tiles[i][1] for i in pick]
        gap = 4
        width = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)
        strip = np.zeros((self.tile_height, width, 3), dtype=np.uint8)
        x = 0
        for t in tiles:
            strip[:, x : x + t.shape[1]] = t
            x += t.shape[1] + gap
        self.path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(strip).save(self._tmp, format="PNG")
