"""Result folders that are never lost or mixed: checks, a lock, a partial marker.

:class:`ResultFolder` guards an output folder of per-frame files (palette PNGs):

- :func:`check_output_path` refuses, before any work, a path that is a file, lies below a
  file, or cannot be written;
- :meth:`ResultFolder.open` refuses a non-empty folder unless ``overwrite`` (which deletes the
  previous masks, and refuses to delete anything else: a PNG counts as a mask only when it
  is one this tool writes, see :func:`is_written_mask`) or ``resume`` (which continues an
  unfinished run with the same settings, in a folder holding nothing else); a lock file (``.dmm-deploy.lock``, held with
  ``flock`` while the run lasts) refuses a second writer;
- while the run lasts, and after it stopped early, the folder holds :data:`PARTIAL_MARKER`
  (JSON: status, settings, frames written, reason); :meth:`ResultFolder.finish` removes it, so
  a folder without the marker holds a finished run;
- masks are written atomically (:func:`~dmm_deploy.data.davis.atomic_output`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from dmm_deploy.data.davis import MASK_SOFTWARE, davis_palette, write_mask

__all__ = [
    "LOCK_FILE",
    "PARTIAL_MARKER",
    "ResultFolder",
    "check_not_an_input",
    "check_output_path",
    "check_replaceable_file",
    "describe_partial",
    "is_written_mask",
    "read_partial",
    "replace_folder",
]

PARTIAL_MARKER = "dmm-deploy.partial.json"
"""Name of the marker file of an unfinished run (in the output folder)."""

LOCK_FILE = ".dmm-deploy.lock"
"""Name of the lock file held by the run writing a folder."""

_TMP = re.compile(r"^\..+\.tmp\d+\.[A-Za-z0-9]+$")  # atomic_output's temporary names

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SOFTWARE_CHUNK = b"Software\x00" + MASK_SOFTWARE.encode("latin-1")  # write_mask's tEXt data

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    return p


def check_output_path(path: str | Path, arg: str, kind: str = "folder") -> None:
    """Refuse an output path that cannot be created or written, before any work is done.

    Args:
        path: the output folder or file.
        arg: the command-line argument that gave it (named in the error).
        kind: ``"folder"`` or ``"file"``.

    Raises:
        ValueError: ``path`` is of the other kind, lies below a file, or its nearest existing
            folder is not writable; the message names the argument and the path.
    """
    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        raise ValueError(f"{arg} {path} is a file; expected a folder (new or empty)")
    if kind == "file" and path.is_dir():
        raise ValueError(f"{arg} {path} is a folder; expected a file name")
    start = path if kind == "folder" else path.parent
    anc = _existing_ancestor(start)
    if not anc.is_dir():
        raise ValueError(f"{arg} {path} lies below the file {anc}; expected a path in a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ValueError(f"{arg} {path}: no permission to write in {anc}")


def check_replaceable_file(path: str | Path, arg: str, overwrite: bool) -> None:
    """An existing output file ``path`` (given as ``arg``) is replaced only with ``overwrite``,
    and only when it is a regular file (not a folder, a link, a device, a FIFO)."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise ValueError(
            f"{arg} {path} exists: pass --overwrite to replace it, or choose another file"
        )
    if path.is_symlink() or not path.is_file():
        what = "a symbolic link" if path.is_symlink() else "not a regular file"
        raise ValueError(
            f"{arg} {path} is {what}; --overwrite replaces regular files only, choose another file"
        )


def check_not_an_input(
    arg: str,
    path: str | Path,
    files: Iterable[tuple[str, Path | str | None]] = (),
    folders: Iterable[tuple[str, Path | str | None]] = (),
) -> None:
    """Refuse an output ``path`` that is one of the input ``files`` or lies in one of the input
    ``folders`` (``(argument, path)`` pairs, ``None`` paths skipped): writing it would destroy
    or pollute an input.

    Raises:
        ValueError: one line naming ``arg``, ``path`` and the input argument.
    """
    target = Path(path).resolve()
    for name, f in files:
        if f is not None and Path(f).resolve() == target:
            raise ValueError(f"{arg} {path} is the {name} file; choose another file")
    for name, d in folders:
        if d is not None and Path(d).resolve() in target.parents:
            raise ValueError(f"{arg} {path} lies in the {name} folder {d}; choose another place")


def replace_folder(new: str | Path, out: str | Path) -> None:
    """Put the finished folder ``new`` (made beside ``out``) at ``out``.

    An existing empty ``out`` keeps its place (a mount point, or the current folder): ``new``'s
    entries are moved into it. Any other existing ``out`` is moved aside under a unique name,
    ``new`` takes its place, and the old one is deleted; when that move fails, the old one is
    moved back, so ``out`` is never lost.
    """
    new, out = Path(new), Path(out).resolve()
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        for entry in new.iterdir():
            os.replace(entry, out / entry.name)
        new.rmdir()
        return
    old = None
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.replaced-{os.getpid()}-{secrets.token_hex(4)}")
        os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


@functools.lru_cache(maxsize=1)
def _palette_bytes() -> bytes:
    return davis_palette().tobytes()


def is_written_mask(path: str | Path) -> bool:
    """Whether ``path`` is a mask as :func:`~dmm_deploy.data.davis.write_mask` writes it: a
    regular file (no link) named ``<stem>.png``, an 8-bit palette PNG (not interlaced) whose
    chunks are exactly IHDR, tEXt (``Software`` = :data:`~dmm_deploy.data.davis.MASK_SOFTWARE`),
    PLTE (the DAVIS palette), IDAT... and IEND. Other PNGs (photos, greyscale or RGB images,
    palette PNGs saved by other programs, DAVIS's own annotations among them) and other files
    are not. Reads the chunk headers, IHDR, tEXt and PLTE (not the pixel data, nor the CRCs)."""
    path = Path(path)
    if path.suffix != ".png" or path.name.startswith(".") or path.is_symlink():
        return False
    if not path.is_file():  # a folder, a FIFO (opening one would block), a device
        return False
    try:
        with path.open("rb") as f:
            if f.read(8) != _PNG_SIGNATURE:
                return False
            seen: list[bytes] = []
            while True:
                head = f.read(8)
                if len(head) != 8:
                    return False  # truncated: no IEND
                length, kind = struct.unpack(">I4s", head)
                order = {
                    b"IHDR": not seen,
                    b"tEXt": seen == [b"IHDR"],
                    b"PLTE": seen == [b"IHDR", b"tEXt"],
                }
                order[b"IDAT"] = bool(seen) and seen[-1] in (b"PLTE", b"IDAT")
                order[b"IEND"] = bool(seen) and seen[-1] == b"IDAT"
                if not order.get(kind, False):
                    return False  # another chunk, or one out of place
                if kind == b"IHDR":
                    # width, height, then bit depth 8, colour type 3 (palette), compression,
                    # filter, interlace 0
                    if length != 13 or f.read(13)[8:] != b"\x08\x03\x00\x00\x00":
                        return False
                elif kind == b"tEXt":
                    if f.read(length) != _SOFTWARE_CHUNK:
                        return False
                elif kind == b"PLTE":
                    if not 0 < length <= 768 or f.read(length) != _palette_bytes()[:length]:
                        return False
                elif kind == b"IEND":
                    return length == 0 and len(f.read(5)) == 4  # its CRC, then the end
                else:
                    f.seek(length, os.SEEK_CUR)
                f.seek(4, os.SEEK_CUR)  # CRC
                seen.append(kind)
    except OSError:
        return False


def read_partial(folder: str | Path) -> dict[str, Any] | None:
    """The partial marker of ``folder`` (a dict), or None when there is none or it is
    unreadable."""
    path = Path(folder) / PARTIAL_MARKER
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None if not path.exists() else {"status": "partial"}
    return data if isinstance(data, dict) else {"status": "partial"}


def describe_partial(marker: dict[str, Any], folder: str | Path | None = None) -> str:
    """A short text for a partial marker, e.g. ``"unfinished run, 12 of 16 frames written
    (interrupted after 12 of 16 frames)"``; with ``folder``, the masks found there are counted
    (a killed run could not update its marker)."""
    done, total = marker.get("frames_written"), marker.get("total")
    if folder is not None:
        done = sum(1 for p in Path(folder).glob("*.png") if p.is_file())
    text = "unfinished run"
    if isinstance(done, int):
        text += f", {done}" + (f" of {total}" if isinstance(total, int) else "") + " frames written"
    if marker.get("reason"):
        text += f" ({marker['reason']})"
    return text


class ResultFolder:
    """An output folder of masks, guarded (see the module's text).

    Args:
        path: the folder (created by :meth:`open`).
        settings: JSON-able values that determine the results; a resumed run must have the
            same (written into the marker).
        overwrite: a non-empty folder's previous masks are deleted.
        resume: continue the unfinished run in the folder (its masks are kept).
        arg: the command-line argument naming the folder (in errors).

    Attributes:
        existing: stems of the masks already in the folder when resuming (else empty).
        written: number of masks written by this run.
    """

    def __init__(
        self,
        path: str | Path,
        settings: dict[str, Any],
        *,
        overwrite: bool = False,
        resume: bool = False,
        arg: str = "--out",
    ) -> None:
        if overwrite and resume:
            raise ValueError("--overwrite and --resume exclude each other")
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))  # normalised (tuples -> lists)
        self.overwrite, self.resume, self.arg = overwrite, resume, arg
        self.existing: set[str] = set()
        self.written = 0
        self.total: int | None = None
        self._lock_fd: int | None = None
        self._created = False
        self._started = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    # -- checks that need no writing --------------------------------------------------------

    def check(self) -> None:
        """Refuse, without writing anything, a folder that :meth:`open` would refuse
        (lock aside)."""
        check_output_path(self.path, self.arg, "folder")
        if self.path.is_dir():
            self._check_contents()
        elif self.resume:
            raise ValueError(
                f"--resume: {self.arg} {self.path} does not exist: there is no unfinished run to "
                "continue (start without --resume, or name the run's folder)"
            )

    def _entries(self) -> list[Path]:
        return [e for e in self.path.iterdir() if e.name != LOCK_FILE and not _TMP.match(e.name)]

    def _check_contents(self) -> list[Path]:
        """Refuse the folder's contents (see :meth:`check`); the entries ``overwrite`` deletes
        (else empty)."""
        entries = self._entries()
        marker = read_partial(self.path)
        if self.resume:
            if marker is None:
                if entries:
                    raise ValueError(
                        f"--resume: {self.arg} {self.path} holds no unfinished run (no "
                        f"{PARTIAL_MARKER}); use --overwrite to replace it"
                    )
                raise ValueError(
                    f"--resume: {self.arg} {self.path} is empty: there is no unfinished run to "
                    "continue (start without --resume, or name the run's folder)"
                )
            old = marker.get("settings")
            if old is not None and old != self.settings:
                diff = [
                    k for k in sorted({*old, *self.settings}) if old.get(k) != self.settings.get(k)
                ]
                k = diff[0]
                raise ValueError(
                    f"--resume: the unfinished run in {self.path} used other settings "
                    f"({k}: {old.get(k)!r}, now {self.settings.get(k)!r}); rerun with its "
                    "settings, or use --overwrite"
                )
            others = self._foreign(entries)
            if others:  # a PNG named like a frame would pass for that frame's mask
                raise ValueError(
                    f"--resume: {self.arg} {self.path} holds other things than masks written "
                    f"by dmm-deploy ({others}); move them out to continue the run"
                )
            return []
        if not entries:
            return []
        if not self.overwrite:
            what = describe_partial(marker, self.path) if marker is not None else None
            names = ", ".join(sorted(e.name for e in entries)[:3])
            raise ValueError(
                f"{self.arg} {self.path} is not empty ("
                + (f"{what}; " if what else "")
                + f"{len(entries)} entries, e.g. {names}): pass --overwrite to replace its masks"
                + (", --resume to continue it" if what else "")
                + ", or choose another folder"
            )
        others = self._foreign(entries)
        if others:
            raise ValueError(
                f"--overwrite: {self.arg} {self.path} holds other things than masks written by "
                f"dmm-deploy ({others}); they are not deleted: move them or choose another folder"
            )
        return entries

    @staticmethod
    def _foreign(entries: list[Path]) -> str:
        """The entries that are neither masks this tool wrote nor its partial marker, named
        (three, then a count); empty when there are none."""
        others = sorted(
            e.name
            for e in entries
            if not (
                is_written_mask(e)
                or (e.name == PARTIAL_MARKER and e.is_file() and not e.is_symlink())
            )
        )
        return ", ".join(others[:3]) + (f" and {len(others) - 3} more" if others[3:] else "")

    # -- the run ----------------------------------------------------------------------------

    def open(self, total: int | None = None) -> None:
        """Create and lock the folder, apply ``overwrite``/``resume``, write the marker.

        Raises:
            ValueError: the folder is refused (see :meth:`check`) or another run holds it.
        """
        check_output_path(self.path, self.arg, "folder")
        self._created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            replaced = self._check_contents()
            for e in self.path.iterdir():
                if _TMP.match(e.name):  # left by a killed run
                    e.unlink()
            if self.resume:
                self.existing = {p.stem for p in self.path.glob("*.png") if p.is_file()}
            elif self.overwrite:
                for e in replaced:  # only what the check passed
                    e.unlink(missing_ok=True)
            self.total = total
            self._write_marker("running")
        except BaseException:
            self.release()
            raise

    def _lock(self) -> None:
        lock = self.path / LOCK_FILE
        if fcntl is None:  # pragma: no cover - Windows: exclusive creation
            try:
                self._lock_fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                raise ValueError(self._busy(lock)) from None
        else:
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise ValueError(self._busy(lock)) from None
            self._lock_fd = fd
            os.ftruncate(fd, 0)
        os.write(self._lock_fd, f"{os.getpid()}\n".encode())

    def _busy(self, lock: Path) -> str:
        try:
            pid = lock.read_text().strip() or "?"
        except OSError:
            pid = "?"
        return (
            f"{self.arg} {self.path} is being written by another run (process {pid}, lock "
            f"{lock}); wait for it to finish or choose another folder"
        )

    def _write_marker(self, status: str, reason: str | None = None) -> None:
        data = {
            "status": status,
            "frames_written": len(self.existing) + self.written,
            "total": self.total,
            "reason": reason,
            "started": self._started,
            "settings": self.settings,
        }
        from dmm_deploy.data.davis import atomic_output

        with atomic_output(self.path / PARTIAL_MARKER) as tmp:
            tmp.write_text(json.dumps(data, indent=1) + "\n")

    def write_mask(self, name: str, labels: np.ndarray) -> Path:
        """Write ``<folder>/<name>.png`` atomically."""
        path = write_mask(self.path / f"{name}.png", labels)
        self.written += 1
        return path

    def mark_partial(self, reason: str) -> None:
        """Record that the run stopped early (keeps the marker, with ``reason``)."""
        with contextlib.suppress(OSError):
            self._write_marker("partial", reason)

    def stop(self, reason: str) -> bool:
        """The run stopped early: a folder holding masks (written now, or before a resume) is
        marked partial with ``reason`` (True); one holding none is released and, when this run
        made it, removed (False)."""
        if self.written or self.existing:
            self.mark_partial(reason)
            self.release()
            return True
        self.release(discard_if_empty=True)
        return False

    def finish(self) -> None:
        """The run is complete: remove the marker and the lock."""
        (self.path / PARTIAL_MARKER).unlink(missing_ok=True)
        self.release()

    def release(self, discard_if_empty: bool = False) -> None:
        """Release the lock; with ``discard_if_empty``, a folder this run created and left
        with nothing but its marker is removed."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                (self.path / LOCK_FILE).unlink()
            os.close(self._lock_fd)
            self._lock_fd = None
        if discard_if_empty and self.written == 0 and not self.existing:
            with contextlib.suppress(OSError):
                (self.path / PARTIAL_MARKER).unlink(missing_ok=True)
                if self._created:
                    self.path.rmdir()
