"""DAVIS 2017 semi-supervised evaluation of label-map sequences: J&F per object and overall.

Semantics (those of the official DAVIS 2017 evaluator, ``davis2017-evaluation``, in its
semi-supervised setting):

- The objects of a sequence are ids 1..N, N the largest id of its *first* ground-truth frame
  (255 excluded: DAVIS marks "void" pixels with 255; the semi-supervised evaluation does not
  use the void mask, so 255 counts as background in the ground truth). An id below N that the
  first frame lacks is an object too; an id above N that appears only later is not scored.
  A sequence whose first frame holds no object is not scored at all (reported in warnings).
- Predicted ids above N (255 included) are refused by the official evaluator ("there is an
  index higher than the number of objects"). Here they count as background and are reported
  (:func:`unknown_ids`; ``dmm-deploy eval`` warns, and refuses with ``--strict``): the scores
  of a submission the official evaluator accepts are never changed by this.
- Each object gets per-frame J and F (see :mod:`dmm_deploy.eval.metrics`); the first and the
  last frame of every sequence are left out (the first holds the given annotation), unless
  ``exclude_first_last=False`` (an extension: the official evaluator always leaves them out).
- Per object: Mean, Recall, Decay of J and of F (:func:`~dmm_deploy.eval.metrics.db_statistics`).
  J&F-Mean = (J-Mean + F-Mean) / 2.
- Overall ("global"): each statistic averaged over all objects of all sequences (every object
  weighs the same, whatever its sequence); sequence rows average the objects of one sequence.
  :meth:`EvalResults.write_davis_csv` writes the official evaluator's two CSV files.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmm_deploy.data.davis import VOID
from dmm_deploy.eval.metrics import (
    _boundary_from_maps,
    db_statistics,
    disk_radius,
    seg2bmap,
)

__all__ = [
    "DAVIS_SEQUENCE_COLUMNS",
    "METRICS",
    "EvalResults",
    "ObjectScores",
    "evaluate_sequence",
    "evaluate_sequences",
    "object_ids",
    "scored_frames",
    "unknown_ids",
]

METRICS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
"""Names of the reported statistics, in table / CSV order (the official global CSV's columns)."""

DAVIS_SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")
"""Columns of the official per-object CSV (``per-sequence_results-<set>.csv``)."""


@dataclass(frozen=True)
class ObjectScores:
    """Scores of one object of one sequence.

    Attributes:
        sequence: sequence name.
        object_id: the object's id in the label maps.
        frames: indices of the scored frames.
        j: per-frame region similarity on those frames.
        f: per-frame boundary measure on those frames.
    """

    sequence: str
    object_id: int
    frames: np.ndarray
    j: np.ndarray
    f: np.ndarray

    @property
    def name(self) -> str:
        """``<sequence>_<object id>``, the DAVIS row name."""
        return f"{self.sequence}_{self.object_id}"

    def stats(self) -> dict[str, float]:
        """The :data:`METRICS` of this object."""
        jm, jr, jd = db_statistics(self.j)
        fm, fr, fd = db_statistics(self.f)
        return {
            "J&F-Mean": (jm + fm) / 2,
            "J-Mean": jm,
            "J-Recall": jr,
            "J-Decay": jd,
            "F-Mean": fm,
            "F-Recall": fr,
            "F-Decay": fd,
        }


def _mean_stats(objects: list[ObjectScores]) -> dict[str, float]:
    rows = [o.stats() for o in objects]
    out = {k: float(np.mean([r[k] for r in rows])) for k in METRICS if k != "J&F-Mean"}
    out = {"J&F-Mean": (out["J-Mean"] + out["F-Mean"]) / 2, **out}
    return out


@dataclass(frozen=True)
class EvalResults:
    """Scores of every object of every evaluated sequence.

    Attributes:
        objects: one :class:`ObjectScores` per (sequence, object), sequences in input order.
        warnings: what was read but not scored (extra frames or sequences, predicted ids
            that are not objects), one line each.
    """

    objects: list[ObjectScores]
    warnings: tuple[str, ...] = ()

    @property
    def sequences(self) -> list[str]:
        """Sequence names, in input order."""
        return list(dict.fromkeys(o.sequence for o in self.objects))

    def global_stats(self) -> dict[str, float]:
        """The :data:`METRICS` averaged over all objects."""
        return _mean_stats(self.objects)

    def sequence_stats(self, sequence: str) -> dict[str, float]:
        """The :data:`METRICS` averaged over the objects of one sequence."""
        objs = [o for o in self.objects if o.sequence == sequence]
        if not objs:
            raise KeyError(f"no sequence named {sequence!r}")
        return _mean_stats(objs)

    def rows(self) -> list[dict]:
        """Table rows: per sequence its objects then the sequence mean, finally the global row.

        Each row has ``level`` (``object``/``sequence``/``global``), ``name``, ``sequence``,
        ``object`` (id, or empty), ``frames`` (scored frames per object) and the :data:`METRICS`.
        """

        def row(level, name, seq, obj, frames, stats):
            return {"level": level, "name": name, "sequence": seq, "object": obj,
                    "frames": frames, **stats}  # fmt: skip

        out = []
        for seq in self.sequences:
            objs = [o for o in self.objects if o.sequence == seq]
            out += [row("object", o.name, seq, o.object_id, len(o.frames), o.stats()) for o in objs]
            out.append(row("sequence", seq, seq, "", len(objs[0].frames), _mean_stats(objs)))
        out.append(row("global", "Global", "", "", "", self.global_stats()))
        return out

    def to_csv(self) -> str:
        """The :meth:`rows` as CSV text (statistics with 6 decimals)."""
        buf = io.StringIO()
        fields = ["level", "name", "sequence", "object", "frames", *METRICS]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            writer.writerow({k: (f"{v:.6f}" if k in METRICS else v) for k, v in row.items()})
        return buf.getvalue()

    def write_csv(self, path: str | Path) -> Path:
        """Write :meth:`to_csv` to ``path`` atomically (parent folders are created)."""
        from dmm_deploy.data.davis import atomic_output

        path = Path(path)
        with atomic_output(path) as tmp:
            tmp.write_text(self.to_csv())
        return path

    def davis_csv(self) -> tuple[str, str]:
        """The official DAVIS 2017 evaluator's two CSV files, as text.

        Returns:
            ``(global, per_object)``: the global file has the :data:`METRICS` as header and
            one row; the per-object file (``per-sequence_results``) has the header
            :data:`DAVIS_SEQUENCE_COLUMNS` and one row per object, ``<sequence>_<id>``.
            Numbers with 3 decimals, as the official files.
        """
        g = io.StringIO()
        w = csv.writer(g, lineterminator="\n")
        w.writerow(METRICS)
        stats = self.global_stats()
        w.writerow([f"{stats[k]:.3f}" for k in METRICS])
        per = io.StringIO()
        w = csv.writer(per, lineterminator="\n")
        w.writerow(DAVIS_SEQUENCE_COLUMNS)
        for o in self.objects:
            s = o.stats()
            w.writerow([o.name, f"{s['J-Mean']:.3f}", f"{s['F-Mean']:.3f}"])
        return g.getvalue(), per.getvalue()

    def write_davis_csv(self, folder: str | Path, subset: str = "val") -> tuple[Path, Path]:
        """Write :meth:`davis_csv` as ``global_results-<subset>.csv`` and
        ``per-sequence_results-<subset>.csv`` in ``folder`` (created), the official names.

        Returns:
            The two paths.
        """
        from dmm_deploy.data.davis import atomic_output

        folder = Path(folder)
        paths = (
            folder / f"global_results-{subset}.csv",
            folder / f"per-sequence_results-{subset}.csv",
        )
        for path, text in zip(paths, self.davis_csv(), strict=True):
            with atomic_output(path) as tmp:
                tmp.write_text(text)
        return paths

    def format_table(self) -> str:
        """A text table: object rows, sequence means (for sequences of several objects), global."""
        rows = self.rows()
        per_seq = {s: sum(o.sequence == s for o in self.objects) for s in self.sequences}
        shown = [r for r in rows if r["level"] != "sequence" or per_seq[r["sequence"]] > 1]
        for r in shown:
            if r["level"] == "sequence":
                r["name"] = f"{r['name']} (mean)"
            elif r["level"] == "global":
                r["name"] = f"Global ({len(self.objects)} objects)"
        width = max(len("Sequence"), *(len(r["name"]) for r in shown))
        head = f"{'Sequence':<{width}}  " + "  ".join(f"{m:>8}" for m in METRICS)
        lines = [head, "-" * len(head)]
        for r in shown:
            if r["level"] == "global":
                lines.append("-" * len(head))
            lines.append(f"{r['name']:<{width}}  " + "  ".join(f"{r[m]:>8.3f}" for m in METRICS))
        return "\n".join(lines)


def object_ids(gt: np.ndarray, *, include_late: bool = False) -> list[int]:
    """The objects of a sequence: ids 1..N, N the largest id of its first ground-truth frame.

    As the official DAVIS 2017 semi-supervised evaluation: 255 (void) is not an id; ids
    missing from the first frame but below N are objects; later ids above N are not.

    Args:
        gt: ``(T, H, W)`` ground-truth label maps, or only the first ``(H, W)`` one.
        include_late: also the ids above N that appear in later frames (not a DAVIS rule: for
            data whose objects enter later; needs the whole ``(T, H, W)`` ground truth). The
            official objects and their scores stay the same.

    Returns:
        ``[1, ..., N]`` and, with ``include_late``, the later ids ascending (empty when the
        first frame holds no object and nothing is included later).
    """
    gt = np.asarray(gt)
    first = gt[0] if gt.ndim == 3 else gt
    ids = first[first != VOID]
    n = int(ids.max()) if ids.size else 0
    out = list(range(1, n + 1))
    if include_late:
        if gt.ndim != 3:
            raise ValueError("include_late needs the (T, H, W) ground truth, not one frame")
        out += [int(i) for i in np.unique(gt) if n < i != VOID]
    return out


def scored_frames(t_n: int, exclude_first_last: bool = True) -> np.ndarray:
    """Indices of the scored frames of a sequence of ``t_n`` frames (ground-truth order).

    Raises:
        ValueError: ``exclude_first_last`` and fewer than 3 frames, or no frame at all.
    """
    if exclude_first_last:
        if t_n < 3:
            raise ValueError(
                f"{t_n} frame(s); at least 3 are needed when the first and last frames are excluded"
            )
        return np.arange(1, t_n - 1)
    if t_n < 1:
        raise ValueError("no frame")
    return np.arange(t_n)


def unknown_ids(gt: np.ndarray, pred: np.ndarray, *, include_late: bool = False) -> list[int]:
    """Ids in ``pred`` that are not objects of ``gt`` (:func:`object_ids`; 255 included).

    The official evaluator refuses a prediction holding an id above the first frame's largest
    one; here such ids count as background.

    Args:
        gt: ``(T, H, W)`` ground truth (its first frame gives the objects) or that frame.
        pred: predicted label maps; pass only the scored frames to check what is scored.
        include_late: as in :func:`object_ids`.
    """
    known = {0, *object_ids(gt, include_late=include_late)}
    return [int(i) for i in np.unique(pred) if int(i) not in known]


def _no_object_warning(seq: str) -> str:
    """The warning for a sequence whose first ground-truth frame holds no object."""
    return (
        f"sequence {seq!r}: the first ground-truth frame holds no object; not scored "
        "(semi-supervised: the first frame gives the objects)"
    )


def _check_some_object(objects: list[ObjectScores]) -> None:
    """Refuse an evaluation that scored no object at all (its means would be undefined)."""
    if not objects:
        raise ValueError(
            "no object to score: every sequence's first ground-truth frame holds only 0/255 "
            "(semi-supervised: the first frame gives the objects)"
        )


def _as_label_stack(name: str, a) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 3:
        raise ValueError(f"{name} must be a (T, H, W) stack of label maps, got shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must be an integer label array, got dtype {a.dtype}")
    return a


def evaluate_sequence(
    gt: np.ndarray,
    pred: np.ndarray,
    name: str = "sequence",
    *,
    exclude_first_last: bool = True,
    bound_th: float = 0.008,
    include_late: bool = False,
) -> list[ObjectScores]:
    """Score one sequence, object by object.

    Args:
        gt: ``(T, H, W)`` integer ground-truth label maps.
        pred: ``(T, H, W)`` integer predicted label maps (same shape).
        name: the sequence name used in the results.
        exclude_first_last: leave out frames 0 and T-1 (DAVIS semi-supervised); needs T >= 3.
        bound_th: boundary tolerance (fraction of the diagonal if < 1, else pixels).
        include_late: also score ids above the first frame's largest that appear later
            (not the DAVIS rule; :func:`object_ids`).

    Returns:
        One :class:`ObjectScores` per object (:func:`object_ids` of the first ground-truth
        frame), ids ascending; empty when the first frame holds no object.

    Raises:
        ValueError: shapes differ or too few frames.
    """
    gt = _as_label_stack(f"gt[{name!r}]", gt)
    pred = _as_label_stack(f"pred[{name!r}]", pred)
    if gt.shape != pred.shape:
        raise ValueError(
            f"sequence {name!r}: prediction has shape {pred.shape} (T, H, W) but the ground "
            f"truth has {gt.shape}"
        )
    try:
        frames = scored_frames(gt.shape[0], exclude_first_last)
    except ValueError as e:
        raise ValueError(f"sequence {name!r} has {e}") from None
    ids = object_ids(gt, include_late=include_late)
    r = disk_radius(gt.shape[1:], bound_th)
    j = np.empty((len(ids), len(frames)))
    f = np.empty((len(ids), len(frames)))
    for col, t in enumerate(frames):
        g_t, p_t = gt[t], pred[t]
        for row, o in enumerate(ids):
            gm, pm = g_t == o, p_t == o
            both = gm | pm
            ys = np.flatnonzero(both.any(axis=1))
            if ys.size == 0:  # both empty
                j[row, col] = f[row, col] = 1.0
                continue
            xs = np.flatnonzero(both.any(axis=0))
            # seg2bmap marks at most one pixel above/left of a mask and nothing below/right
            # of its box, so a box grown by one pixel gives the full-frame boundaries.
            box = (
                slice(max(ys[0] - 1, 0), ys[-1] + 2),
                slice(max(xs[0] - 1, 0), xs[-1] + 2),
            )
            gm, pm = gm[box], pm[box]
            j[row, col] = np.count_nonzero(gm & pm) / np.count_nonzero(both[box])
            f[row, col] = _boundary_from_maps(seg2bmap(gm), seg2bmap(pm), r)[0]
    return [ObjectScores(name, o, frames, j[k], f[k]) for k, o in enumerate(ids)]


def evaluate_sequences(
    gt: Mapping[str, np.ndarray],
    pred: Mapping[str, np.ndarray],
    *,
    exclude_first_last: bool = True,
    bound_th: float = 0.008,
    include_late: bool = False,
) -> EvalResults:
    """Score several sequences held in memory.

    Args:
        gt: sequence name -> ``(T, H, W)`` integer ground-truth label maps.
        pred: sequence name -> ``(T, H, W)`` predicted label maps; must cover every sequence
            of ``gt`` (extra sequences are not scored; they are listed in ``warnings``, as are
            predicted ids that are not ground-truth objects).
        exclude_first_last: leave out the first and last frame of each sequence.
        bound_th: boundary tolerance (fraction of the diagonal if < 1, else pixels).
        include_late: also score ids above the first frame's largest that appear later
            (not the DAVIS rule; :func:`object_ids`).

    Returns:
        :class:`EvalResults` (use ``global_stats()``, ``rows()``, ``format_table()``,
        ``write_csv()``).
    """
    if not isinstance(gt, Mapping) or not isinstance(pred, Mapping):
        raise TypeError("gt and pred must be mappings of sequence name -> (T, H, W) label array")
    if not gt:
        raise ValueError("gt holds no sequence")
    missing = [s for s in gt if s not in pred]
    if missing:
        raise ValueError(f"pred has no sequence named {', '.join(map(repr, missing))}")
    warnings = []
    extra = [s for s in pred if s not in gt]
    if extra:
        warnings.append(
            f"{len(extra)} predicted sequence(s) not in the ground truth, not scored: "
            + ", ".join(map(str, extra[:5]))
        )
    objects: list[ObjectScores] = []
    for seq in gt:
        scores = evaluate_sequence(
            gt[seq],
            pred[seq],
            seq,
            exclude_first_last=exclude_first_last,
            bound_th=bound_th,
            include_late=include_late,
        )
        if not scores:
            warnings.append(_no_object_warning(seq))
        objects += scores
        scored = scored_frames(len(gt[seq]), exclude_first_last)
        unknown = unknown_ids(
            np.asarray(gt[seq]), np.asarray(pred[seq])[scored], include_late=include_late
        )
        if unknown:
            warnings.append(
                f"sequence {seq!r}: predicted ids {unknown} are not ground-truth objects "
                "(scored as background)"
            )
    _check_some_object(objects)
    return EvalResults(objects, tuple(warnings))
