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


# -- registry -------------------------------------------------------------------------------

COMMANDS = {
    "export": (
        "export the matcher to ONNX, check it and compare it with the reference",
        _add_export,
        _run_export,
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
