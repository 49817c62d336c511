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


def run(args: argparse.Namespace) -> int:
    """Evaluate ``args.pred`` against ``args.gt``, print the table, write ``args.csv``."""
    from dmm_deploy.eval.folders import evaluate_dirs

    if not args.bound_th > 0:
        raise ValueError(f"--bound-th must be > 0, got {args.bound_th}")
    results = evaluate_dirs(
        args.gt,
        args.pred,
        exclude_first_last=not args.all_frames,
        bound_th=args.bound_th,
        progress=sys.stderr.isatty(),
    )
    print(results.format_table())
    if args.csv is not None:
        path = results.write_csv(args.csv)
        print(f"wrote {path}")
    return 0
