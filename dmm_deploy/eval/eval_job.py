"""``dmm-deploy eval``: arguments and run (the CLI file only forwards to these)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_args(p: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``dmm-deploy eval``."""
    p.add_argument(
        "--gt",
        type=Path,
        required=True,
        help="ground truth: a root of sequence folders of palette PNGs, or one sequence folder",
    )
    p.add_argument(
        "--pred",
        type=Path,
        required=True,
        help="predictions in the same layout (PNG names as in --gt)",
    )
    p.add_argument(
        "--csv",
        type=Path,
        default=None,
        help="also write every object, sequence and the global row (all statistics) to this "
        "CSV file",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --csv file (a regular file only, never a folder; without it "
        "an existing --csv is refused; --davis-csv files are never replaced)",
    )
    p.add_argument(
        "--davis-csv",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write the official DAVIS 2017 evaluator's files into DIR: "
        "global_results-SET.csv and per-sequence_results-SET.csv (same columns and format)",
    )
    p.add_argument(
        "--set",
        default="val",
        help="the DAVIS subset (default: val): names the --davis-csv files, and when --gt is "
        "a DAVIS 2017 folder's Annotations/<resolution> with ImageSets/2017/SET.txt beside it, "
        "only the sequences listed there are scored, in its order, as the official evaluator "
        "does",
    )
    p.add_argument(
        "--sequences",
        type=Path,
        default=None,
        metavar="FILE",
        help="score only the sequences named in FILE (one per line, e.g. ImageSets/2017/val.txt), "
        "in its order (default: as --set says, else every sequence folder of --gt)",
    )
    p.add_argument(
        "--all-frames",
        action="store_true",
        help="score every frame (not an official mode; default: leave out each sequence's "
        "first and last frame, as the DAVIS 2017 semi-supervised evaluation)",
    )
    p.add_argument(
        "--include-late",
        action="store_true",
        help="also score objects whose ids first appear after the first frame (not an official "
        "mode; default: the objects are ids 1..max id of the first ground-truth frame, as DAVIS)",
    )
    p.add_argument(
        "--bound-th",
        type=float,
        default=0.008,
        help="boundary tolerance: fraction of the image diagonal if < 1, else a whole number "
        "of pixels (default 0.008, the official value)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse (exit 2) instead of warning: predicted ids that are not ground-truth "
        "objects (the official evaluator refuses them too), extra predicted frames or "
        "sequences, a partial prediction folder, a sequence without object in its first frame",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")


def _refuse_overlap(targets, inputs, sequences) -> None:
    """No output file may be an input: inside ``--gt``/``--pred``, the ``--sequences`` list, or
    another output (``--csv`` equal to a ``--davis-csv`` file)."""
    from dmm_deploy.data.output import check_not_an_input

    seen: dict[Path, str] = {}
    for arg, path in targets:
        r = path.resolve()
        if r in seen:
            raise ValueError(f"{arg} {path} is also written by {seen[r]}; choose another file")
        seen[r] = arg
        check_not_an_input(arg, path, [("--sequences", sequences)], inputs)


def run(args: argparse.Namespace) -> int:
    """Evaluate ``args.pred`` against ``args.gt``, print the table, write the CSV files asked
    for (``args.csv``, replacing an existing file only with ``args.overwrite``;
    ``args.davis_csv``, never replacing)."""
    from dmm_deploy.data.output import check_output_path, check_replaceable_file
    from dmm_deploy.eval.folders import davis_image_set, evaluate_dirs, read_image_set
    from dmm_deploy.eval.metrics import disk_radius

    try:
        disk_radius((1, 1), args.bound_th)  # the same checks as the evaluation's
    except ValueError as e:
        raise ValueError(str(e).replace("bound_th", "--bound-th", 1)) from None
    if args.set != Path(args.set).name or args.set in ("", ".", ".."):
        raise ValueError(f"--set must be a plain name (used in file names), got {args.set!r}")
    # before the work, not after the table
    inputs = [("--gt", Path(args.gt)), ("--pred", Path(args.pred))]
    targets = []
    if args.csv is not None:
        check_output_path(args.csv, "--csv", "file")
        targets.append(("--csv", Path(args.csv)))
    if args.davis_csv is not None:
        check_output_path(args.davis_csv, "--davis-csv", "folder")
        for name in (f"global_results-{args.set}.csv", f"per-sequence_results-{args.set}.csv"):
            path = Path(args.davis_csv) / name
            if path.exists():
                raise ValueError(
                    f"--davis-csv {args.davis_csv} already holds {name}; choose another folder "
                    "or move the file"
                )
            targets.append(("--davis-csv", path))
    _refuse_overlap(targets, inputs, args.sequences)
    if args.csv is not None:  # after the overlap checks: their messages say more
        check_replaceable_file(args.csv, "--csv", args.overwrite)
    listing = args.sequences
    if listing is None:
        listing = davis_image_set(args.gt, args.set)
        if listing is not None:
            print(
                f"scoring the sequences of {listing} (--set {args.set}), as the official evaluator",
                file=sys.stderr,
            )
    try:
        sequences = None if listing is None else read_image_set(listing)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--sequences: {e}") from None
    results = evaluate_dirs(
        args.gt,
        args.pred,
        sequences=sequences,
        exclude_first_last=not args.all_frames,
        bound_th=args.bound_th,
        include_late=args.include_late,
        progress=not args.no_progress and getattr(args, "verbosity", 0) >= 0,
        strict=args.strict,
    )
    for w in results.warnings:
        print(f"dmm-deploy eval: warning: {w}", file=sys.stderr)
    print(results.format_table())
    if args.csv is not None:
        check_replaceable_file(args.csv, "--csv", args.overwrite)  # made during the evaluation?
        path = results.write_csv(args.csv)
        print(f"wrote {path}")
    if args.davis_csv is not None:
        for path in results.write_davis_csv(args.davis_csv, args.set):
            print(f"wrote {path}")
    return 0
