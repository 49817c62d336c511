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
    p.add_argument("--csv", type=Path, default=None, help="also write the results to this CSV file")
    p.add_argument(
        "--all-frames",
        action="store_true",
        help="score every frame (default: leave out each sequence's first and last frame, "
        "as the DAVIS 2017 semi-supervised evaluation)",
    )
    p.add_argument(
        "--bound-th",
        type=float,
        default=0.008,
        help="boundary tolerance: fraction of the image diagonal if < 1, else pixels "
        "(default 0.008)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse (exit 2) instead of warning: predicted ids that are not ground-truth "
        "objects, extra predicted frames or sequences, a partial prediction folder",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar or lines")


def run(args: argparse.Namespace) -> int:
    """Evaluate ``args.pred`` against ``args.gt``, print the table, write ``args.csv``."""
    from dmm_deploy.data.output import check_output_path
    from dmm_deploy.eval.folders import evaluate_dirs

    if not args.bound_th > 0:
        raise ValueError(f"--bound-th must be > 0, got {args.bound_th}")
    if args.csv is not None:
        check_output_path(args.csv, "--csv", "file")  # before the work, not after the table
    results = evaluate_dirs(
        args.gt,
        args.pred,
        exclude_first_last=not args.all_frames,
        bound_th=args.bound_th,
        progress=not args.no_progress and getattr(args, "verbosity", 0) >= 0,
        strict=args.strict,
    )
    for w in results.warnings:
        print(f"dmm-deploy eval: warning: {w}", file=sys.stderr)
    print(results.format_table())
    if args.csv is not None:
        path = results.write_csv(args.csv)
        print(f"wrote {path}")
    return 0
