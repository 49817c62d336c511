"""Evaluation of DAVIS-layout folders: ``ROOT/<sequence>/<frame>.png`` or one sequence folder.

``--gt`` and ``--pred`` may each be a root whose sub-folders are sequences, or a single
sequence folder holding the PNGs itself. The frames of a sequence are the ground truth's PNGs,
in the official evaluator's order (file names sorted by code point, so ``10.png`` comes before
``2.png``: name frames with zero-padded numbers, as DAVIS does); the prediction must have a
PNG of the same name and size for every scored frame. Predictions of frames that are not
scored (the first and the last) are not read, as in the official evaluator.

Not scored, but reported in :attr:`EvalResults.warnings` (``strict=True`` refuses them): extra
predicted frames and sequences, predicted ids that are not ground-truth objects, and a
prediction folder marked partial by ``dmm-deploy segment`` (an unfinished run).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmm_deploy.data.davis import DataFileError, list_images, read_label_dir, read_mask
from dmm_deploy.data.output import describe_partial, read_partial
from dmm_deploy.eval.evaluate import (
    EvalResults,
    _check_some_object,
    _no_object_warning,
    evaluate_sequence,
    object_ids,
    scored_frames,
    unknown_ids,
)

__all__ = [
    "davis_image_set",
    "evaluate_dirs",
    "find_sequences",
    "load_prediction",
    "read_image_set",
]


def find_sequences(root: str | Path, what: str = "folder") -> dict[str, Path]:
    """Sequence name -> folder of PNG label maps.

    Args:
        root: a folder holding PNGs (one sequence, named after the folder) or sub-folders that
            hold PNGs (one sequence each, sub-folders without PNGs are skipped).
        what: how to name ``root`` in errors (e.g. ``"ground-truth folder"``).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        DataFileError: neither ``root`` nor its sub-folders hold PNGs.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} not found: {root}")
    seqs = {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and list_images(d, (".png",))}
    if list_images(root, (".png",)):
        if seqs:
            raise DataFileError(
                root,
                f"{what} {root} holds both PNGs and sequence folders ({next(iter(seqs))}, ...): "
                "expected one sequence's PNGs or a root of sequence folders",
            )
        return {root.resolve().name: root}
    if not seqs:
        raise DataFileError(root, f"no PNG label maps in {what} {root} or its sub-folders")
    return seqs


def read_image_set(path: str | Path) -> list[str]:
    """Sequence names of an ``ImageSets/2017/<set>.txt``-style file: one per line, in order
    (blank lines skipped, surrounding spaces stripped).

    Raises:
        FileNotFoundError: no such file.
        DataFileError: the file names no sequence, or one twice.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sequence list not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataFileError(path, f"sequence list {path} is not UTF-8 text") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DataFileError(path, f"sequence list {path} names no sequence")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataFileError(path, f"sequence list {path} names {dup[0]!r} more than once")
    return names


def davis_image_set(gt: str | Path, subset: str) -> Path | None:
    """``<root>/ImageSets/2017/<subset>.txt`` when ``gt`` is ``<root>/Annotations/<resolution>``
    of a DAVIS 2017 folder and that file exists (the sequences the official evaluator scores
    for ``--set <subset>``); None outside a DAVIS folder. Raises ``ValueError`` when the folder
    has ``ImageSets/2017`` but no list for ``subset`` (a misspelt set)."""
    gt = Path(gt).resolve()
    if gt.parent.name != "Annotations":
        return None
    sets = gt.parent.parent / "ImageSets" / "2017"
    path = sets / f"{subset}.txt"
    if path.is_file():
        return path
    if sets.is_dir():
        known = sorted(p.stem for p in sets.glob("*.txt"))
        raise ValueError(
            f"--set {subset}: {sets} has no {subset}.txt (it lists {', '.join(known) or 'none'}); "
            "pass the set to score, or --sequences FILE"
        )
    return None


def load_prediction(
    pred_dir: Path, names: list[str], size: tuple[int, int], frames: np.ndarray | None = None
) -> np.ndarray:
    """Read ``pred_dir/<name>.png`` for the scored names into a ``(T, H, W)`` uint8 stack.

    Args:
        pred_dir: the predicted sequence's folder.
        names: frame stems, in order (the ground truth's).
        size: ``(H, W)`` every prediction must have.
        frames: positions in ``names`` to read (default all); the others are not opened and
            are left as zeros (they are not scored).

    Raises:
        DataFileError: a needed prediction is missing, unreadable or of another size.
    """
    out = np.zeros((len(names), *size), dtype=np.uint8)
    for i in range(len(names)) if frames is None else frames:
        path = pred_dir / f"{names[i]}.png"
        if not path.is_file():
            raise DataFileError(
                path, f"missing prediction {path} (ground truth has frame {names[i]})"
            )
        labels = read_mask(path)
        if labels.shape != tuple(size):
            raise DataFileError(
                path,
                f"prediction {path} is {labels.shape[1]}x{labels.shape[0]} (width x height) but "
                f"the ground truth is {size[1]}x{size[0]}",
            )
        out[i] = labels
    return out


def evaluate_dirs(
    gt: str | Path,
    pred: str | Path,
    *,
    exclude_first_last: bool = True,
    bound_th: float = 0.008,
    include_late: bool = False,
    progress: bool = False,
    strict: bool = False,
    sequences: list[str] | None = None,
) -> EvalResults:
    """Evaluate predicted palette PNGs against DAVIS ground truth folders.

    Args:
        gt: ground-truth root (sub-folder per sequence) or one sequence folder.
        pred: prediction root, or one sequence folder when ``gt`` is one sequence.
        exclude_first_last: leave out each sequence's first and last frame (DAVIS 2017
            semi-supervised).
        bound_th: boundary tolerance (fraction of the diagonal if < 1, else pixels).
        include_late: also score ids above the first frame's largest that appear later
            (not the DAVIS rule; :func:`~dmm_deploy.eval.evaluate.object_ids`).
        progress: report progress over sequences on stderr (a bar on a terminal, else lines).
        strict: refuse (``DataFileError``) what is otherwise only reported in
            ``warnings``: predicted ids that are not ground-truth objects (in the scored
            frames), extra predicted frames or sequences, a partial prediction folder, a
            sequence whose first ground-truth frame holds no object.
        sequences: score only these sequences of ``gt``, in this order (the official
            evaluator's ``ImageSets/2017/<set>.txt``, :func:`read_image_set`); default every
            sequence folder of ``gt``, sorted by name. Predicted sequences outside it are
            extra.

    Returns:
        :class:`~dmm_deploy.eval.evaluate.EvalResults` (``warnings`` lists what was not
        scored).

    Raises:
        FileNotFoundError: a folder does not exist.
        DataFileError: missing sequences/frames, unreadable files, or size mismatches (the
            message names the file); with ``strict``, the first warning.
    """
    from dmm_deploy.progress import Progress

    warnings: list[str] = []

    def warn(path: Path, message: str) -> None:
        if strict:
            raise DataFileError(path, f"{message} (refused by --strict)")
        warnings.append(message)

    gt, pred = Path(gt), Path(pred)
    gt_seqs = find_sequences(gt, "ground-truth folder")
    if sequences is not None:
        missing = [s for s in sequences if s not in gt_seqs]
        if missing:
            raise DataFileError(
                gt / missing[0],
                f"{len(missing)} listed sequence(s) not in the ground truth {gt}: "
                + ", ".join(missing[:5]),
            )
        gt_seqs = {s: gt_seqs[s] for s in sequences}
    if not pred.is_dir():
        raise FileNotFoundError(f"prediction folder not found: {pred}")
    single = len(gt_seqs) == 1 and next(iter(gt_seqs.values())) == gt
    pred_dirs: dict[str, Path] = {}
    for seq in gt_seqs:
        if single and list_images(pred, (".png",)):
            pred_dirs[seq] = pred
        elif (pred / seq).is_dir():
            pred_dirs[seq] = pred / seq
        else:
            raise DataFileError(
                pred / seq, f"no prediction for sequence {seq!r}: {pred / seq} not found"
            )
    if not single and not list_images(pred, (".png",)):
        extra = sorted(
            d.name
            for d in pred.iterdir()
            if d.is_dir() and d.name not in gt_seqs and list_images(d, (".png",))
        )
        if extra:
            warn(
                pred / extra[0],
                f"{len(extra)} predicted sequence(s) not "
                + ("in the sequence list" if sequences is not None else "in the ground truth")
                + ", not scored: "
                + ", ".join(extra[:5]),
            )
    for d in dict.fromkeys(pred_dirs.values()):
        marker = read_partial(d)
        if marker is not None:
            warn(d, f"prediction folder {d} is marked partial: {describe_partial(marker, d)}")
    objects = []
    bar = Progress("eval", len(gt_seqs), "sequence", enabled=progress)
    for seq, gdir in gt_seqs.items():
        names, g = read_label_dir(gdir)
        # the official evaluator sorts the ground-truth file names by code point
        order = sorted(range(len(names)), key=lambda i: f"{names[i]}.png")
        names, g = [names[i] for i in order], g[order]
        try:
            scored = scored_frames(len(names), exclude_first_last)
        except ValueError as e:
            raise DataFileError(gdir, f"sequence {seq!r} ({gdir}) has {e}") from None
        p = load_prediction(pred_dirs[seq], names, g.shape[1:], scored)
        extra = sorted(set(f.stem for f in list_images(pred_dirs[seq], (".png",))) - set(names))
        if extra:
            warn(
                pred_dirs[seq] / f"{extra[0]}.png",
                f"sequence {seq!r}: {len(extra)} predicted frame(s) not in the ground truth, "
                f"not scored: {', '.join(extra[:5])}",
            )
        if not object_ids(g, include_late=include_late):
            warn(gdir, _no_object_warning(seq))
        unknown = unknown_ids(g, p[scored], include_late=include_late)
        if unknown:
            warn(
                pred_dirs[seq],
                f"sequence {seq!r}: predicted ids {unknown} are not ground-truth objects "
                "(scored as background; the official DAVIS evaluator refuses them)",
            )
        objects += evaluate_sequence(
            g,
            p,
            seq,
            exclude_first_last=exclude_first_last,
            bound_th=bound_th,
            include_late=include_late,
        )
        bar.update()
    bar.close()
    _check_some_object(objects)
    return EvalResults(objects, tuple(warnings))
