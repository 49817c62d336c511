"""DAVIS-format label maps: the palette, reading and writing palette PNGs, label folders.

A label map is a ``(H, W)`` ``uint8`` array: 0 is background, ``k`` in 1..254 is object ``k``.
DAVIS annotations are 8-bit palette PNGs whose pixel values are these ids and whose palette is
the PASCAL VOC colour map (object 1 dark red, 2 dark green, 3 olive, ...).

The value 255 (:data:`VOID`) is "void" as in DAVIS: pixels whose label is unknown or ambiguous
(object borders). It is never an object: ``read_mask`` keeps it as read, the segmenter's
annotations treat it as background, and the evaluator counts it as background in the ground
truth (as the DAVIS 2017 semi-supervised evaluation does).

Folders: hidden files (names starting with ``.``, e.g. macOS ``._00000.jpg`` AppleDouble files
and ``.DS_Store``) are ignored; two images with the same stem (``00001.jpg`` and ``00001.png``)
are an error, since outputs are named by stem. Files are written atomically (a temporary name
beside the target, then a rename), so an interrupted run never leaves a truncated PNG.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_SOFTWARE",
    "VOID",
    "DataFileError",
    "atomic_output",
    "davis_palette",
    "list_images",
    "natural_key",
    "read_label_dir",
    "read_mask",
    "write_label_dir",
    "write_mask",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
"""File suffixes (lower case) taken as frames in an image folder."""

VOID = 255
"""The DAVIS "void" label: unknown pixels, never an object."""

MASK_SOFTWARE = "dmm-deploy"
"""The ``Software`` text chunk of every mask :func:`write_mask` writes: it tells this tool's
masks from palette PNGs other programs save the same way (Pillow, the original code), so that
``--overwrite`` and ``--resume`` never take a user's file for one of its own."""

# Modes whose pixel values are the object ids: palette, 8-bit greyscale, 1-bit.
_LABEL_MODES = ("P", "L", "1")


class DataFileError(ValueError):
    """A file that cannot be used (unreadable, corrupt, wrong kind or size); names the file.

    Attributes:
        path: the offending file.
    """

    def __init__(self, path: str | Path, message: str) -> None:
        super().__init__(message)
        self.path = Path(path)


def davis_palette() -> np.ndarray:
    """The standard DAVIS palette (the PASCAL VOC colour map) as a ``(256, 3)`` uint8 array.

    Entry ``i`` spreads the bits of ``i`` over the three channels, most significant first:
    bit ``3j`` goes to red, ``3j+1`` to green, ``3j+2`` to blue, at bit position ``7-j``.
    """
    ids = np.arange(256)
    pal = np.zeros((256, 3), dtype=np.int64)
    for j in range(8):
        for ch in range(3):
            pal[:, ch] |= ((ids >> (3 * j + ch)) & 1) << (7 - j)
    return pal.astype(np.uint8)


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs numerically (``"2.jpg"`` before ``"10.jpg"``)."""
    return tuple(
        (0, int(tok), tok) if tok.isdigit() else (1, 0, tok.lower())
        for tok in re.split(r"(\d+)", name)
        if tok
    )


def list_images(directory: str | Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Files of ``directory`` whose suffix (case-insensitive) is in ``suffixes``, naturally sorted.

    Hidden files (``.name``: AppleDouble ``._*`` files, ``.DS_Store``, temporary files) are
    left out.

    Raises:
        FileNotFoundError: ``directory`` does not exist or is not a folder.
        DataFileError: two files share a stem (``00001.jpg`` and ``00001.png``), or an image
            name is a link to nothing (a frame left out would shift every later one).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"folder not found: {directory}")
    suffixes = tuple(s.lower() for s in suffixes)
    named = [p for p in directory.iterdir() if not p.name.startswith(".")]
    named = [p for p in named if p.suffix.lower() in suffixes]
    for p in named:
        if p.is_symlink() and not p.exists():
            raise DataFileError(p, f"{p} is a link to a file that does not exist")
    files = [p for p in named if p.is_file()]
    files = sorted(files, key=lambda p: natural_key(p.name))
    seen: dict[str, Path] = {}
    for f in files:
        other = seen.setdefault(f.stem, f)
        if other is not f:
            raise DataFileError(
                f,
                f"{directory} holds two images named {f.stem!r} ({other.name} and {f.name}); "
                "outputs are named by stem: keep one of them",
            )
    return files


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Write a file atomically: yields a temporary path beside ``path`` (hidden, same suffix);
    on success it is renamed to ``path``, on error it is removed. Parent folders are created.

    Example::

        with atomic_output("out/00001.png") as tmp:
            image.save(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _size_text(hw: tuple[int, int]) -> str:
    return f"{hw[1]}x{hw[0]}"


def read_mask(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a DAVIS label map from a palette (or greyscale) PNG.

    Args:
        path: the PNG. Palette images give their pixel indices, greyscale images their grey
            values, 1-bit images 0/1. Colour images (RGB, RGBA, ...) are refused: their pixels
            are colours, not object ids.
        expected_size: ``(H, W)`` the mask must have (e.g. the frames' size), or None.

    Returns:
        ``(H, W)`` uint8 label map.

    Raises:
        FileNotFoundError: the file does not exist.
        DataFileError: unreadable/corrupt, not a label image, or not ``expected_size``.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode not in _LABEL_MODES:
                raise DataFileError(
                    path,
                    f"mask {path} is a {mode!r} image; expected a palette ('P') or greyscale "
                    "('L') PNG whose pixel values are object ids",
                )
            labels = np.array(im.convert("L") if mode == "1" else im, dtype=np.uint8)
    except DataFileError:
        raise
    except Exception as e:  # PIL raises several types for unreadable data
        raise DataFileError(path, f"cannot read mask {path}: {e}") from e
    if mode == "1":
        labels = (labels > 0).astype(np.uint8)
    if expected_size is not None:
        expected = (int(expected_size[0]), int(expected_size[1]))
        if labels.shape != expected:
            raise DataFileError(
                path,
                f"mask {path} is {_size_text(labels.shape)} (width x height) but the frames are "
                f"{_size_text(expected)}",
            )
    return labels


def _check_label_map(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) label map, got shape {labels.shape}")
    if labels.dtype == np.uint8:
        return labels
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{name} must be an integer (or bool) array, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(
            f"{name} must hold ids in 0..255, got values in {labels.min()}..{labels.max()}"
        )
    return labels.astype(np.uint8)


def write_mask(path: str | Path, labels: np.ndarray) -> Path:
    """Write a ``(H, W)`` label map as a DAVIS palette PNG, atomically (parent folders are
    created; see :func:`atomic_output`).

    The PNG carries one text chunk, ``Software`` = :data:`MASK_SOFTWARE`.

    Args:
        path: the output file (``.png``).
        labels: integer or bool array of object ids in 0..255.

    Returns:
        ``path`` as a ``Path``.
    """
    from PIL import Image, PngImagePlugin

    labels = _check_label_map(labels)
    path = Path(path)
    im = Image.fromarray(np.ascontiguousarray(labels))  # mode "L", values kept
    im.putpalette(davis_palette().tobytes())  # turns it into a "P" image, same values
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", MASK_SOFTWARE)
    with atomic_output(path) as tmp:
        im.save(tmp, format="PNG", pnginfo=info)
    return path


def read_label_dir(
    directory: str | Path, expected_size: tuple[int, int] | None = None
) -> tuple[list[str], np.ndarray]:
    """Read every ``*.png`` label map of a folder (naturally sorted).

    Args:
        directory: the folder.
        expected_size: ``(H, W)`` every mask must have; None takes the first mask's size.

    Returns:
        ``(names, labels)``: the file stems and a ``(T, H, W)`` uint8 array.

    Raises:
        FileNotFoundError: the folder does not exist.
        DataFileError: no PNG in the folder, or a mask that cannot be read / has another size.
    """
    files = list_images(directory, (".png",))
    if not files:
        raise DataFileError(directory, f"no PNG label maps in {directory}")
    first = read_mask(files[0], expected_size)
    out = np.empty((len(files), *first.shape), dtype=np.uint8)
    out[0] = first
    for i, f in enumerate(files[1:], start=1):
        out[i] = read_mask(f, first.shape)
    return [f.stem for f in files], out


def write_label_dir(
    directory: str | Path, labels: np.ndarray, names: Sequence[str] | None = None
) -> list[Path]:
    """Write a ``(T, H, W)`` stack of label maps as ``directory/<name>.png`` palette PNGs.

    Args:
        directory: output folder (created).
        labels: ``(T, H, W)`` integer array of ids in 0..255.
        names: ``T`` file stems; default ``00000``, ``00001``, ...

    Returns:
        The written paths.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(
            f"labels must be a (T, H, W) stack of label maps, got shape {labels.shape}"
        )
    if names is None:
        names = [f"{t:05d}" for t in range(labels.shape[0])]
    if len(names) != labels.shape[0]:
        raise ValueError(f"names must have {labels.shape[0]} entries, got {len(names)}")
    directory = Path(directory)
    return [write_mask(directory / f"{n}.png", lab) for n, lab in zip(names, labels, strict=True)]
