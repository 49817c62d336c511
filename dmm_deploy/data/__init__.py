"""Video data: lazy frame sources, DAVIS palette PNGs, overlays and synthetic test videos.

- Frames: :func:`open_frames` (folder of ``.jpg``/``.png`` or a video file) gives a lazy
  :class:`FrameSource` of :class:`Frame` (``index``, ``name``, ``(H, W, 3)`` uint8 RGB).
- Masks: :func:`read_mask` / :func:`write_mask` for ``(H, W)`` uint8 label maps stored as DAVIS
  palette PNGs (:func:`davis_palette`); :func:`read_label_dir` / :func:`write_label_dir`.
- Overlays: :func:`overlay_labels`, :class:`OverlayWriter` (PNG strip or mp4).
- Synthetic videos: :func:`make_synthetic_video` -> :class:`SyntheticVideo`.

Unusable files raise :class:`DataFileError` (a ``ValueError``) whose message names the file.
"""

from dmm_deploy.data.davis import (
    DataFileError,
    davis_palette,
    read_label_dir,
    read_mask,
    write_label_dir,
    write_mask,
)
from dmm_deploy.data.frames import (
    Frame,
    FrameSource,
    ImageFolderSource,
    VideoFileSource,
    open_frames,
    read_frame,
    write_frames,
)
from dmm_deploy.data.overlay import OverlayWriter, overlay_labels
from dmm_deploy.data.synthetic import SyntheticVideo, make_synthetic_video

__all__ = [
    "DataFileError",
    "Frame",
    "FrameSource",
    "ImageFolderSource",
    "OverlayWriter",
    "SyntheticVideo",
    "VideoFileSource",
    "davis_palette",
    "make_synthetic_video",
    "open_frames",
    "overlay_labels",
    "read_frame",
    "read_label_dir",
    "read_mask",
    "write_frames",
    "write_label_dir",
    "write_mask",
]
