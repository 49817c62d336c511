"""``dmm-deploy``: one console script, thin subcommands (also ``python -m dmm_deploy``).

Every subcommand lives in its own module, which defines two functions:

- ``add_args(parser: argparse.ArgumentParser) -> None`` declares its arguments;
- ``run(args: argparse.Namespace) -> int`` does the work and returns the exit code.

:data:`COMMANDS` maps a command name to its one-line help and that module: adding a command is
one line there. Only the chosen command's module is imported (after the command name is known,
before its arguments are parsed), and those modules import nothing heavy at module level, so a
usage error, ``--help`` or ``--version`` never imports torch. ``-q``/``-v`` (before or after the
command name) set ``args.verbosity`` (-1 quiet, 0 normal, 1+ verbose) and the ``logging`` level.

Errors: bad input raises ``ValueError`` / ``FileNotFoundError`` (or :class:`UserError`) with one
line naming the argument or file and what was expected; :func:`main` prints it as
``dmm-deploy CMD: error: <message>`` and returns 2 (``-v`` adds the traceback). Other
``OSError`` (permissions, a full disk) end the same way, naming the file, and so does a
missing optional dependency (naming the extra that installs it, :data:`EXTRA_OF_MODULE`).
Running out of host
or GPU memory is one line with exit code 1; any other exception is a bug and keeps its
traceback. Ctrl-C returns 130
with ``dmm-deploy CMD: interrupted ...`` (commands may put their progress into the
``KeyboardInterrupt``'s message, e.g. "interrupted after 12 of 16 frames").
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
import warnings
from dataclasses import dataclass

from dmm_deploy import __version__

__all__ = ["COMMANDS", "EXTRA_OF_MODULE", "Command", "UserError", "build_parser", "main"]


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (no usage block): ``PROG: error: MSG``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class Command:
    """A subcommand: its one-line help and the module holding ``add_args`` and ``run``.

    Attributes:
        help: one line, shown by ``dmm-deploy --help`` and as the command's description.
        module: dotted module path, imported only when this command is chosen.
        add: name of the function declaring the arguments in ``module``.
        run: name of the function running the command in ``module``.
    """

    help: str
    module: str
    add: str = "add_args"
    run: str = "run"

    def load(self) -> tuple:
        mod = importlib.import_module(self.module)
        return getattr(mod, self.add), getattr(mod, self.run)


# -- adapters for jobs whose modules use other function names -------------------------------


def _add_export(p: argparse.ArgumentParser) -> None:
    from dmm_deploy.export.matcher_job import add_export_args

    add_export_args(p)


def _run_export(args: argparse.Namespace) -> int:
    from dmm_deploy.export.matcher_job import run

    return run(args)  # checks --out (and the other arguments) before the export


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


# -- registry: one line per command ---------------------------------------------------------

COMMANDS: dict[str, Command] = {
    "client": Command("segment a video through a running dmm-deploy server", "dmm_deploy.serve.commands", "add_client_args", "run_client"),
    "eval": Command("score predicted masks against DAVIS ground truth (J&F)", "dmm_deploy.eval.eval_job"),
    "export": Command("export the matcher to ONNX, check it and compare it with the reference", __name__, "_add_export", "_run_export"),
    "export-model": Command("export the DMM-Net pipeline as a bundle for the torch-free runtime", "dmm_deploy.export.bundle_job"),
    "segment": Command("segment a video with DMM-Net (palette PNGs)", "dmm_deploy.segment_job"),
    "serve": Command("serve many video streams from Triton Inference Server", "dmm_deploy.serve.commands", "add_serve_args", "run_serve"),
    "trt-build": Command("build a TensorRT engine from the exported matcher", __name__, "_add_trt_build", "_run_trt_build"),
    "trt-run": Command("run a TensorRT engine on random problems, check and time it", __name__, "_add_trt_run", "_run_trt_run"),
    "triton-repo": Command("write a Triton Inference Server model repository for a bundle", "dmm_deploy.serve.commands", "add_triton_repo_args", "run_triton_repo"),
}  # fmt: skip


def _verbosity_args(p: argparse.ArgumentParser, suffix: str) -> None:
    g = p.add_argument_group("output")
    g.add_argument(
        "-q",
        "--quiet",
        dest=f"quiet{suffix}",
        action="count",
        default=0,
        help="only warnings and errors (no progress, no summary)",
    )
    g.add_argument(
        "-v",
        "--verbose",
        dest=f"verbose{suffix}",
        action="count",
        default=0,
        help="more detail (timings of each setup step; tracebacks of errors)",
    )


def _chosen_command(argv: list[str]) -> str | None:
    """The command name in ``argv`` (the first word that is not an option), if known."""
    for token in argv:
        if token == "--":
            return None
        if not token.startswith("-"):
            return token if token in COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; the arguments of ``command`` only (None: of every command, which
    imports every command's module)."""
    parser = _Parser(
        prog="dmm-deploy", description="Deployment tools for DMM-Net video object segmentation."
    )
    parser.add_argument("--version", action="version", version=f"dmm-deploy {__version__}")
    _verbosity_args(parser, "_top")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        if command is None or name == command:
            add, _ = cmd.load()
            add(p)
            _verbosity_args(p, "_sub")
    return parser


def _configure_verbosity(args: argparse.Namespace) -> int:
    verbosity = (
        args.verbose_top + getattr(args, "verbose_sub", 0)
        - args.quiet_top - getattr(args, "quiet_sub", 0)
    )  # fmt: skip
    verbosity = max(-1, verbosity)
    for name in ("verbose_top", "verbose_sub", "quiet_top", "quiet_sub"):
        if hasattr(args, name):
            delattr(args, name)
    args.verbosity = verbosity
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(format="%(name)s: %(message)s")  # other libraries: warnings only
    logging.getLogger("dmm_deploy").setLevel(level)
    return verbosity


# Optional dependencies -> the extra that installs them: a command that needs one which is not
# installed ends with one line naming the extra (commands with a more specific hint, TensorRT's
# or the server's, say theirs first).
EXTRA_OF_MODULE = {
    "torch": "cpu",
    "torchvision": "cpu",
    "onnx": "cpu",
    "onnxruntime": "runtime",
    "pytriton": "serve",
    "tritonclient": "serve",
    "imageio_ffmpeg": "video",
    "tensorrt": "trt",
    "polygraphy": "trt",
    "scipy": "bench",
    "matplotlib": "bench",
}


def _missing_extra(e: ModuleNotFoundError) -> str | None:
    """One line for an optional dependency that is not installed, or None (then it is a bug)."""
    top = (e.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    return f"this needs {top}, which is not installed: pip install 'dmm-deploy[{extra}]'"


def _one_line(e: BaseException) -> str:
    """The message of an error as one line (an ``OSError`` from the system names its file)."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        return f"{e.strerror}: {e.filename}"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return "; ".join(lines) if lines else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the console script; returns the exit code (0 ok, 2 bad input, 130 Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _chosen_command(argv)
    try:
        args = build_parser(command if command is not None else "").parse_args(argv)
        _, run = COMMANDS[args.command].load()
    except ModuleNotFoundError as e:  # a command module that imports an extra's package
        if (line := _missing_extra(e)) is None:
            raise
        print(f"dmm-deploy {command}: error: {line}", file=sys.stderr)
        return 2
    verbosity = _configure_verbosity(args)
    prog = f"dmm-deploy {args.command}"
    try:
        with warnings.catch_warnings():
            if verbosity < 1:  # the libraries' own warnings (several lines each) only with -v
                for module in ("torch", "torchvision", "onnxruntime", "onnx"):
                    warnings.filterwarnings("ignore", module=module)
            return int(run(args) or 0)
    except KeyboardInterrupt as e:
        detail = str(e).strip()
        print(f"{prog}: {detail or 'interrupted'}", file=sys.stderr)
        return 130
    except (UserError, ValueError, OSError) as e:
        if verbosity > 0:
            traceback.print_exc()
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if (line := _missing_extra(e)) is None:
            raise
        if verbosity > 0:
            traceback.print_exc()
        print(f"{prog}: error: {line}", file=sys.stderr)
        return 2
    except Exception as e:  # out of memory (host or device) is one line too; other bugs are not
        if not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"):
            raise
        if verbosity > 0:
            traceback.print_exc()
        first = _one_line(e).split("; ")[0]
        print(f"{prog}: error: out of memory ({first})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
