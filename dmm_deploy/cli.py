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


# -- registry -------------------------------------------------------------------------------

COMMANDS = {
    "eval": ("score predicted masks against DAVIS ground truth (J&F)", _add_eval, _run_eval),
    "export": (
        "export the matcher to ONNX, check it and compare it with the reference",
        _add_export,
        _run_export,
    ),
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
