"""Progress of long loops: a tqdm bar on a terminal, periodic lines elsewhere.

When stderr is not a terminal (a log file, a pipe, CI) a bar would print nothing useful, so
:class:`Progress` prints one line every ``interval`` seconds instead::

    segment: 40/120 frames (33%), 2.10 frames/s, about 38 s left

Torch-free; tqdm is imported only for a terminal.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "plural"]


def plural(n: int, word: str, words: str | None = None) -> str:
    """``plural(1, "frame")`` -> ``"1 frame"``, ``plural(3, "frame")`` -> ``"3 frames"``."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


class Progress:
    """Counts finished items and reports them on ``stream``.

    Args:
        desc: what is running (first word of each line).
        total: number of items, or None when unknown (live streams).
        unit: the item's name, singular (``"frame"``).
        enabled: False shows nothing.
        interval: seconds between lines when ``stream`` is not a terminal (0: every item).
        stream: where to report (default ``sys.stderr``).
    """

    def __init__(
        self,
        desc: str,
        total: int | None,
        unit: str = "frame",
        *,
        enabled: bool = True,
        interval: float = 10.0,
        stream: TextIO | None = None,
    ) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.interval = float(interval)
        self.stream = sys.stderr if stream is None else stream
        self.count = 0
        self._t0 = time.perf_counter()
        self._last = self._t0
        self._bar = None
        self.enabled = enabled
        if enabled and _isatty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream)

    def update(self, n: int = 1) -> None:
        """``n`` more items are done."""
        self.count += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float | None = None) -> str:
        """The progress line for the current count."""
        now = time.perf_counter() if now is None else now
        elapsed = now - self._t0
        rate = self.count / elapsed if elapsed > 0 else 0.0
        done = f"{self.count}/{self.total}" if self.total else str(self.count)
        text = f"{self.desc}: {done} {self.unit}{'' if self.count == 1 else 's'}"
        if self.total:
            text += f" ({100 * self.count / self.total:.0f}%)"
        text += f", {rate:.2f} {self.unit}s/s"
        if self.total and rate > 0 and self.count < self.total:
            text += f", about {(self.total - self.count) / rate:.0f} s left"
        return text

    def close(self) -> None:
        """Stop reporting (closes the bar)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.enabled = False


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
