"""``dmm-deploy``: one console script, thin subcommands.

Each subcommand is a pair of functions: ``_add_<name>(parser)`` declares its arguments and
``_run_<name>(args) -> int`` imports what it needs (heavy imports happen here, not at start-up)
and calls into the package. Bad arguments and user errors end with one line on stderr.
"""

from __future__ import annotations

import argparse
import sys


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit code 2."""


# -- export ---------------------------------------------------------------------------------


def _add_export(p: argparse.ArgumentParser) -> None:
    from dmm_deploy.export.matcher_job import add_export_args

    add_export_args(p)


def _run_export(args: argparse.Namespace) -> int:
    from dmm_deploy.export.matcher_job import options_from_args, run_export

    return run_export(options_from_args(args), args.out, verify=not args.no_verify)


# -- trt-build / trt-run --------------------------------------------------------------------


def _add_trt_build(p: argparse.ArgumentParser) -> None:
    from dmm_deploy.export.engine_job import add_build_args

    add_build_args(p)


def _run_trt_build(args: argparse.Namespace) -> int:
    from dmm_deploy.export.engine_job import run_build

    try:
        return run_build(args)
    except (ImportError, RuntimeError) as e:  # no TensorRT / no GPU / parser errors (whole)
        raise UserError(str(e)) from e


def _add_trt_run(p: argparse.ArgumentParser) -> None:
    from dmm_deploy.export.engine_job import add_run_args

    add_run_args(p)


def _run_trt_run(args: argparse.Namespace) -> int:
    from dmm_deploy.export.engine_job import run_engine

    try:
        return run_engine(args)
    except (ImportError, RuntimeError) as e:
        raise UserError(str(e)) from e


# -- eval -----------------------------------------------------------------------------------


def _add_eval(p: argparse.ArgumentParser) -> None:
    from dmm_deploy.eval.eval_job import add_eval_args

    add_eval_args(p)


def _run_eval(args: argparse.Namespace) -> int:
    from dmm_deploy.eval.eval_job import run_eval

    return run_eval(args)


# -- segment --------------------------------------------------------------------------------


def _add_segment(p: argparse.ArgumentParser) -> None:
    # declared here (not in dmm_deploy.model) so that building the parser stays light
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--frames", metavar="DIR", help="folder of .jpg/.png frames")
    src.add_argument("--video", metavar="FILE", help="video file (needs imageio-ffmpeg)")
    p.add_argument("--mask", metavar="PNG", help="first frame's annotation (DAVIS palette PNG)")
    p.add_argument(
        "--annotations",
        metavar="DIR",
        help="annotations named like the frames (objects appearing later); "
        "its PNG for the first frame serves when --mask is not given",
    )
    p.add_argument("--out", metavar="DIR", required=True, help="output folder of palette PNGs")
    p.add_argument(
        "--proposals",
        default="maskrcnn",
        metavar="SRC",
        help="'maskrcnn' (default, torchvision Mask R-CNN) or 'precomputed:FILE.npz'",
    )
    p.add_argument(
        "--maskrcnn-weights",
        metavar="FILE",
        help="torchvision Mask R-CNN weights file (e.g. maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth), "
        "or a torchvision weights name such as COCO_V1 (downloads)",
    )
    p.add_argument("--maskrcnn-version", default="v1", metavar="V", help="v1 (default) or v2")
    p.add_argument(
        "--detector-size",
        type=int,
        default=800,
        metavar="PX",
        help="Mask R-CNN's shorter side (800)",
    )
    p.add_argument(
        "--checkpoint", metavar="PATH", help="original DMM-Net checkpoint dir or trainer.pt"
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="allow random weights for what has none given (smoke runs: meaningless masks)",
    )
    p.add_argument(
        "--backbone",
        default="resnet101",
        metavar="NAME",
        help="resnet101 (default), resnet50, resnet34, resnet18",
    )
    p.add_argument("--input-size", default="255x448", metavar="HxW", help="model input (255x448)")
    p.add_argument(
        "--matching-only", action="store_true", help="no refinement: matched proposal masks"
    )
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu (default) or cuda")
    p.add_argument("--overlay", metavar="FILE", help="overlay as a .png strip or an .mp4 video")
    p.add_argument("--max-frames", type=int, metavar="N", help="only the first N frames")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_segment(args: argparse.Namespace) -> int:
    from dmm_deploy.model.segment_job import options_from_args, run_segment

    try:
        run_segment(options_from_args(args))
    except ImportError as e:  # a video without imageio-ffmpeg
        raise UserError(str(e)) from e
    return 0


# -- registry -------------------------------------------------------------------------------

COMMANDS = {
    "eval": ("score predicted masks against DAVIS ground truth (J&F)", _add_eval, _run_eval),
    "export": (
        "export the matcher to ONNX, check it and compare it with the reference",
        _add_export,
        _run_export,
    ),
    "segment": ("segment a video with DMM-Net (palette PNGs)", _add_segment, _run_segment),
    "trt-build": (
        "build a TensorRT engine from the exported matcher",
        _add_trt_build,
        _run_trt_build,
    ),
    "trt-run": (
        "run a TensorRT engine on random problems, check and time it",
        _add_trt_run,
        _run_trt_run,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmm-deploy", description="Deployment tools for DMM-Net video object segmentation."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (UserError, FileNotFoundError, ValueError) as e:
        print(f"dmm-deploy {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
