"""Shared helpers of the benchmark scripts: machine description, timing, CSV/markdown output.

Imported by the scripts of this folder (``python bench/<name>.py`` puts the folder on
``sys.path``); not part of the installed package.
"""

from __future__ import annotations

import csv
import datetime as _dt
import importlib.util
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "cpu"
SPEC_FILE = REPO_ROOT / "tests" / "spec_listing1.py"


def check_out_arg(parser, path: Path | None, arg: str = "--out") -> None:
    """Refuse, before any work, an output folder ``path`` that is a file or lies below one
    (``parser.error``: one line, exit 2); None (the script's default) passes."""
    from dmm_deploy.data.output import check_output_path

    if path is None:
        return
    try:
        check_output_path(path, arg, "folder")
    except ValueError as e:
        parser.error(str(e))


def check_model_options(input_size: str, backbones: list[str], threads: list[int]):
    """The ``--input-size``, ``--backbones`` and ``--threads`` of the pipeline benchmarks,
    checked before any work: the parsed ``(height, width)``; ``ValueError`` naming one."""
    from dmm_deploy.segment_job import BACKBONES, check_threads, parse_size

    size = parse_size(input_size)
    if not backbones:
        raise ValueError(f"--backbones: give one or more of {', '.join(BACKBONES)}")
    for b in backbones:
        if b not in BACKBONES:
            raise ValueError(f"--backbones: {b!r} is not one of {', '.join(BACKBONES)}")
    for t in threads:
        check_threads(t)
    return size


def load_spec():
    """The literal per-problem transcription of Listing 1 kept in ``tests/spec_listing1.py``.

    Returns the module; its ``relax_matching(C, X_init, max_iter, proj_iter, lr)`` is the
    specification, solved one problem at a time.
    """
    if not SPEC_FILE.is_file():
        raise FileNotFoundError(f"specification transcription not found at {SPEC_FILE}")
    spec = importlib.util.spec_from_file_location("spec_listing1", SPEC_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_model() -> str:
    """The CPU's model name as ``/proc/cpuinfo`` reports it (or ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), falling back to ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _version(name: str) -> str:
    try:
        module = __import__(name)
    except ImportError:
        return "not installed"
    return getattr(module, "__version__", "unknown")


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def machine_info() -> dict[str, str]:
    """What the numbers were measured on: CPU, cores, library versions, date (UTC), commit."""
    return {
        "cpu": cpu_model(),
        "cores": str(usable_cores()),
        "logical_cpus": str(os.cpu_count()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "numpy": np.__version__,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
    }


def machine_markdown(info: dict[str, str]) -> str:
    """The machine description as a markdown bullet list."""
    return "\n".join(f"- {k}: {v}" for k, v in info.items())


def time_calls(
    fn: Callable[[], object],
    *,
    warmup: int = 2,
    min_repeats: int = 5,
    max_repeats: int = 50,
    budget_s: float = 3.0,
) -> list[float]:
    """Wall times (seconds) of repeated ``fn()`` calls, warm-up calls excluded.

    Repeats until ``max_repeats`` calls, or until ``budget_s`` seconds of timed calls have
    passed and at least ``min_repeats`` calls were made.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent = 0.0
    while len(times) < max_repeats and (len(times) < min_repeats or spent < budget_s):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
    return times


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median, 20th and 80th percentiles (milliseconds) and the number of timed calls."""
    t = np.asarray(times, dtype=np.float64) * 1e3
    return {
        "median_ms": float(np.median(t)),
        "p20_ms": float(np.percentile(t, 20)),
        "p80_ms": float(np.percentile(t, 80)),
        "repeats": len(t),
    }


def _fmt(value) -> str:
    if isinstance(value, float):
        if value != 0.0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def write_csv(
    path: Path,
    rows: Sequence[dict],
    columns: Sequence[str] | None = None,
    digits: int | None = None,
) -> None:
    """Write ``rows`` (dicts) to ``path`` with a header.

    Floats are written in full precision, or with ``digits`` significant digits.
    """
    columns = list(columns or rows[0].keys())
    if digits is not None:
        rows = [
            {k: f"{v:.{digits}g}" if isinstance(v, float) else v for k, v in row.items()}
            for row in rows
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def markdown_table(rows: Sequence[dict], columns: Sequence[str], headers=None) -> str:
    """A GitHub markdown table of ``rows`` restricted to ``columns``."""
    headers = list(headers or columns)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pingpong(n_available: int, n_wanted: int) -> list[int]:
    """Frame indices ``0, 1, ..., n-1, n-2, ..., 1, 0, 1, ...`` (``n_wanted`` of them): a
    longer video from a short clip without a jump."""
    if n_available < 1 or n_wanted < 1:
        raise ValueError("need at least one frame")
    if n_available == 1:
        return [0] * n_wanted
    period = 2 * (n_available - 1)
    return [i if i < n_available else period - i for i in (k % period for k in range(n_wanted))]
