"""Lazy frame sources: a folder of images or a video file, one RGB frame at a time.

Both sources yield :class:`Frame` objects (index, name, ``(H, W, 3)`` uint8 RGB image) and
read each frame only when the iteration reaches it. A frame that cannot be decoded, or whose
size differs from the first frame's, raises :class:`~dmm_deploy.data.davis.DataFileError`
naming the file (and the frame index for videos).

Videos are decoded with ``imageio-ffmpeg`` (the optional extra ``video``), imported only when a
video is opened: anything ffmpeg reads, a file, a stream URL (``rtsp://``, ``http://``, ...) or a
camera device (``/dev/video0``). Streams and devices are *live*: read as they come, their length
is unknown and they cannot be read twice (:attr:`VideoFileSource.live`).
"""

from __future__ import annotations

import re
import stat
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmm_deploy.data.davis import IMAGE_SUFFIXES, DataFileError, list_images

__all__ = [
    "VIDEO_SUFFIXES",
    "Frame",
    "FrameSource",
    "ImageFolderSource",
    "VideoFileSource",
    "is_stream",
    "open_frames",
    "pil_nearest_index",
    "read_frame",
    "write_frames",
]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
"""File suffixes (lower case) that :func:`open_frames` opens as videos."""


@dataclass(frozen=True)
class Frame:
    """One video frame.

    Attributes:
        index: position in the video, from 0.
        name: file stem to use for outputs (the image's stem, or ``00000``-style for videos).
        image: ``(H, W, 3)`` uint8 RGB array.
    """

    index: int
    name: str
    image: np.ndarray


class FrameSource:
    """Base of the lazy frame sources: iterable of :class:`Frame`, re-iterable.

    Attributes:
        path: the folder or video file.
    """

    path: Path

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def __len__(self) -> int:
        """Number of frames (exact for folders; from the container's metadata for videos)."""
        raise NotImplementedError

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the frames (reads at most the first frame's header)."""
        raise NotImplementedError

    def read_all(self) -> np.ndarray:
        """All frames as one ``(T, H, W, 3)`` uint8 array (reads everything: short clips only)."""
        images = [f.image for f in self]
        if not images:
            raise DataFileError(self.path, f"no frames in {self.path}")
        return np.stack(images)


def pil_nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each of ``n_out`` output pixels when PIL resizes ``n_in`` pixels with
    ``Image.NEAREST``: ``int(s/2 + k s)`` with ``s = n_in / n_out``, the sum accumulated step by
    step in float64 as Pillow's affine scaling does (this differs from the exact
    ``floor((k + 0.5) s)`` at a few pixels, e.g. 13 of 255 rows for 480 -> 255). The original
    code's input resize, used by the model (:func:`dmm_deploy.model.net.frame_to_input`) and the
    runtime (:func:`dmm_deploy.runtime.imaging.resize`) under ``input_resize="nearest"`` and
    ``merge_at="input"``. Returns int64 ``(n_out,)``."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got {n_in} -> {n_out}")
    step = n_in / n_out
    steps = np.full(n_out, step, dtype=np.float64)
    steps[0] = step * 0.5
    return np.minimum(np.cumsum(steps).astype(np.int64), n_in - 1)


def read_frame(path: str | Path) -> np.ndarray:
    """Read one image file as an ``(H, W, 3)`` uint8 RGB array.

    Greyscale, palette and RGBA images are converted to RGB (alpha is dropped).

    Raises:
        FileNotFoundError: the file does not exist.
        DataFileError: the file cannot be decoded (corrupt, truncated, not an image).
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"frame not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8).copy()
    except Exception as e:  # PIL raises several types for unreadable data
        raise DataFileError(path, f"cannot read frame {path}: {e}") from e


class ImageFolderSource(FrameSource):
    """Frames from a folder of ``.jpg``/``.jpeg``/``.png`` images, in natural name order.

    Args:
        directory: the folder. Its file list is taken once, here; images are read lazily.
        suffixes: file suffixes taken as frames (case-insensitive).

    Raises:
        FileNotFoundError: the folder does not exist.
        DataFileError: the folder holds no image.
    """

    def __init__(self, directory: str | Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> None:
        self.path = Path(directory)
        self.files = list_images(self.path, suffixes)
        if not self.files:
            raise DataFileError(
                self.path, f"no images ({', '.join(suffixes)}) in frame folder {self.path}"
            )
        self._size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def size(self) -> tuple[int, int]:
        if self._size is None:
            from PIL import Image

            try:
                with Image.open(self.files[0]) as im:
                    self._size = (im.height, im.width)
            except Exception as e:
                raise DataFileError(self.files[0], f"cannot read frame {self.files[0]}: {e}") from e
        return self._size

    def __iter__(self) -> Iterator[Frame]:
        first_shape = None
        for i, f in enumerate(self.files):
            image = read_frame(f)
            if first_shape is None:
                first_shape = image.shape
            elif image.shape != first_shape:
                raise DataFileError(
                    f,
                    f"frame {f} is {image.shape[1]}x{image.shape[0]} (width x height) but the "
                    f"first frame is {first_shape[1]}x{first_shape[0]}",
                )
            yield Frame(i, f.stem, image)


def _import_imageio_ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError as e:
        raise ImportError(
            "reading or writing video files needs imageio-ffmpeg: "
            "pip install 'dmm-deploy[video]' (or pip install imageio-ffmpeg)"
        ) from e
    return imageio_ffmpeg


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_stream(path: str | Path) -> bool:
    """Whether ``path`` names a live source for ffmpeg: a URL (``rtsp://...``) or a device
    (a character device such as ``/dev/video0``)."""
    text = str(path)
    if _URL.match(text):
        return True
    try:
        return stat.S_ISCHR(Path(text).stat().st_mode)
    except OSError:
        return False


class VideoFileSource(FrameSource):
    """Frames decoded with ffmpeg (through ``imageio-ffmpeg``), one at a time.

    Frame names are the zero-padded index (``00000``, ``00001``, ...). ``len()`` is estimated
    from the container's frame rate and duration (0 when they are unknown, and always for live
    sources): use it for progress bars, not for indexing.

    Args:
        path: a video file (mp4 and whatever else ffmpeg reads), a stream URL
            (``rtsp://``, ``http://``, ...) or a camera device (``/dev/video0``, read with
            ffmpeg's ``v4l2`` input on Linux).

    Attributes:
        fps: frames per second from the container (0 when unknown).
        live: True for URLs and devices: frames are read as they come, not twice.

    Raises:
        FileNotFoundError: a file path that does not exist.
        DataFileError: ffmpeg cannot open it (its metadata is read here).
        ImportError: ``imageio-ffmpeg`` is not installed.
    """

    def __init__(self, path: str | Path) -> None:
        self.live = is_stream(path)
        # keep URLs as text: Path() would fold the "//" of "rtsp://host"
        self.path = path if self.live and not isinstance(path, Path) else Path(path)
        if not self.live and not Path(path).is_file():
            raise FileNotFoundError(f"video not found: {self.path}")
        self._ffmpeg = _import_imageio_ffmpeg()
        gen = self._open()
        try:
            meta = self._next(gen, -1)
        finally:
            gen.close()
        if meta is None:
            raise DataFileError(self.path, f"cannot read video {self.path}: no metadata")
        w, h = meta["size"]
        self._size = (int(h), int(w))
        self.fps = float(meta.get("fps") or 0.0)
        duration = float(meta.get("duration") or 0.0)
        ok = not self.live and self.fps > 0 and duration > 0 and duration != float("inf")
        self._len = round(self.fps * duration) if ok else 0

    def _open(self):
        text = str(self.path)
        params = None
        if sys.platform.startswith("linux") and text.startswith("/dev/video"):
            params = ["-f", "v4l2"]
        return self._ffmpeg.read_frames(text, pix_fmt="rgb24", input_params=params)

    def _next(self, gen, index: int):
        try:
            return next(gen)
        except StopIteration:
            return None
        except Exception as e:
            what = "video" if index < 0 else f"frame {index} of video"
            msg = str(e).strip().splitlines()
            reason = msg[0] if msg else type(e).__name__
            raise DataFileError(self.path, f"cannot read {what} {self.path}: {reason}") from e

    def __len__(self) -> int:
        return self._len

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def __iter__(self) -> Iterator[Frame]:
        h, w = self._size
        nbytes = h * w * 3
        gen = self._open()
        try:
            self._next(gen, -1)  # metadata
            index = 0
            while True:
                raw = self._next(gen, index)
                if raw is None:
                    return
                if len(raw) != nbytes:
                    raise DataFileError(
                        self.path,
                        f"cannot read frame {index} of video {self.path}: got {len(raw)} bytes, "
                        f"expected {nbytes}",
                    )
                image = np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3).copy()
                yield Frame(index, f"{index:05d}", image)
                index += 1
        finally:
            gen.close()


def open_frames(path: str | Path) -> FrameSource:
    """Open a folder of images, a video file, a stream URL or a camera device as a lazy
    :class:`FrameSource`.

    Args:
        path: a folder (-> :class:`ImageFolderSource`), a file whose suffix is in
            :data:`VIDEO_SUFFIXES`, a URL (``rtsp://...``) or a device (``/dev/video0``)
            (-> :class:`VideoFileSource`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a file that is not a video.
    """
    if is_stream(path):
        return VideoFileSource(path)
    path = Path(path)
    if path.is_dir():
        return ImageFolderSource(path)
    if not path.exists():
        raise FileNotFoundError(
            f"frames not found: {path} (expected a folder of images or a video)"
        )
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoFileSource(path)
    raise ValueError(
        f"frames must be a folder of images or a video file ({', '.join(VIDEO_SUFFIXES)}), "
        f"got {path}"
    )


def write_frames(
    directory: str | Path, frames: np.ndarray, names: Sequence[str] | None = None, ext: str = ".png"
) -> list[Path]:
    """Write a ``(T, H, W, 3)`` uint8 RGB stack as ``directory/<name><ext>`` images.

    Args:
        directory: output folder (created).
        frames: ``(T, H, W, 3)`` uint8 array.
        names: ``T`` file stems; default ``00000``, ``00001``, ...
        ext: ``.png`` (lossless) or ``.jpg`` (quality 95).

    Returns:
        The written paths.
    """
    from PIL import Image

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames must be a (T, H, W, 3) uint8 array, got shape {frames.shape} "
            f"dtype {frames.dtype}"
        )
    if ext.lower() not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"ext must be '.png', '.jpg' or '.jpeg', got {ext!r}")
    if names is None:
        names = [f"{t:05d}" for t in range(frames.shape[0])]
    if len(names) != frames.shape[0]:
        raise ValueError(f"names must have {frames.shape[0]} entries, got {len(names)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, image in zip(names, frames, strict=True):
        p = directory / f"{name}{ext}"
        kwargs = {"quality": 95} if ext.lower() != ".png" else {}
        Image.fromarray(image).save(p, **kwargs)
        out.append(p)
    return out
