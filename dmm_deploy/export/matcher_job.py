"""The main job: export the matcher to ONNX, check it, compare it with the reference, report.

Shared by ``python export/to_onnx.py`` and ``dmm-deploy export``.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from dmm_deploy.export.engine_job import MAX_N_GRAD, MAX_N_PROJ, _int_in, _positive_float

if TYPE_CHECKING:
    from dmm_deploy.export.onnx_export import ExportOptions

# torch, onnx and the exporter are imported where the export runs: the CLI imports this
# module for ``export --help`` and usage errors, which import no torch (see dmm_deploy.cli)

__all__ = [
    "PARITY_ATOL",
    "add_export_args",
    "check_out",
    "options_from_args",
    "run",
    "run_export",
]

PARITY_ATOL = 1e-5
# float16 inputs are rounded before the reference runs, so these bound arithmetic error only:
# mixed rounds the output (<= 1) to float16 (half an ulp below 1 is 2**-12, 4.9e-4 measured);
# fp16 rounds every intermediate result too (1.1e-2 measured over 1000 problems, see
# bench/results/cpu/precision.md).
PARITY_ATOL_BY_PRECISION = {"fp32": PARITY_ATOL, "mixed": 1e-3, "fp16": 2e-2}
# Full-size (B, n, m) element-wise ops the unrolled graph may hold: the inner Dykstra cycle's
# own ops (listing1: relu, the shift and the corrections, 5; original: one more, the early-exit
# test X' - X) per inner step, plus OUTER_FULL_SIZE_OPS_ALLOWED per outer step (the gradient
# step and the running sum take 2 to 4). At the default 5 cycles per step that is 7 (listing1)
# and 8 (original) per inner step, as measured over the whole graph.
INNER_FULL_SIZE_OPS_BY_VARIANT = {"listing1": 5, "original": 6}
OUTER_FULL_SIZE_OPS_ALLOWED = 10
MAX_FULL_SIZE_OPS_PER_STEP = 7  # listing1 at n_proj = 5: 5 + 10 / 5
MAX_FULL_SIZE_OPS_PER_STEP_BY_VARIANT = {"listing1": MAX_FULL_SIZE_OPS_PER_STEP, "original": 8}
# Upper bounds of the arguments. The graph is unrolled: n_grad x n_proj cycles of about 16
# nodes each (40 x 5 export in about 1 s, 0.4 MB); 10000 cycles take about a minute, 20 MB.
MAX_UNROLLED_CYCLES = 10_000
# --static: the export traces, checks and times the graph on a batch of this shape (float64
# reference included), so it is bounded by the largest batch the project's kernels serve:
# B = 64 problems of the Triton kernels' largest n x m (64 x 1024; kernels/matcher.py).
MAX_STATIC_ELEMENTS = 64 * 64 * 1024
# --plugin: the Triton kernel's tile limits (kernels/matcher.py MAX_N, MAX_M;
# dmm_deploy.export.trt_plugin.make_plugin_model)
PLUGIN_MAX_N, PLUGIN_MAX_M = 64, 1024


def _shape(text: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected BxNxM with positive integers, got {text!r}")
    if math.prod(dims) > MAX_STATIC_ELEMENTS:
        raise argparse.ArgumentTypeError(
            f"expected BxNxM with B*N*M at most {MAX_STATIC_ELEMENTS} (64x64x1024), got {text!r}"
        )
    return dims  # type: ignore[return-value]


def _output_file(text: str) -> Path:
    """An output file name; a folder (existing, or written with a trailing slash) is refused
    instead of silently becoming a file of that name."""
    if not text:
        raise argparse.ArgumentTypeError("expected a file name, got ''")
    if text.endswith(("/", "\\")) or Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"expected a file name, got the folder {text}")
    return Path(text)


def add_export_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The export options, shared by the script and the CLI."""
    p.add_argument(
        "--n-grad",
        type=_int_in(MAX_N_GRAD),
        default=40,
        help=f"outer steps, 1..{MAX_N_GRAD} (default 40)",
    )
    p.add_argument(
        "--n-proj",
        type=_int_in(MAX_N_PROJ),
        default=5,
        help=f"Dykstra cycles per step, 1..{MAX_N_PROJ} (default 5); the unrolled graph takes "
        f"at most {MAX_UNROLLED_CYCLES} cycles (n_grad x n_proj)",
    )
    p.add_argument(
        "--lr",
        type=_positive_float,
        default=0.01,
        help="gradient step, a positive float32 number (default 0.01)",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=17,
        choices=range(13, 21),
        metavar="{13..20}",
        help="ONNX opset (default 17)",
    )
    p.add_argument(
        "--out",
        type=_output_file,
        default=Path("artifacts/dmm_matcher.onnx"),
        help="output file (default artifacts/dmm_matcher.onnx): a new file, or a model this "
        "command wrote (replaced); it is written only when the export and its checks pass",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out that is not a model this command wrote",
    )
    p.add_argument(
        "--static",
        type=_shape,
        default=None,
        metavar="BxNxM",
        help=f"fix batch, n and m, B*N*M at most {MAX_STATIC_ELEMENTS} (default: all three "
        f"dynamic); with --plugin N at most {PLUGIN_MAX_N} and M at most {PLUGIN_MAX_M}",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "mixed"),
        default="fp32",
        help="fp32 (default); fp16: the whole graph in float16; mixed: float16 inputs/output "
        "cast at the boundary, float32 arithmetic",
    )
    p.add_argument(
        "--plugin",
        action="store_true",
        help="export the matcher as one TensorRT plugin node (dmm_deploy::dmm_match, needs "
        "TensorRT >= 10.9 and the plugin registered at build time)",
    )
    p.add_argument(
        "--variant",
        choices=("listing1", "original"),
        default="listing1",
        help="listing1 (default): the specification; original: the original DMM-Net code's "
        "solver (its early exits as per-problem masks), as its released checkpoints expect",
    )
    p.add_argument(
        "--no-verify", action="store_true", help="skip the onnxruntime parity check and timing"
    )
    return p


def options_from_args(args: argparse.Namespace) -> ExportOptions:
    """The export's options; raises ``ValueError`` (naming the arguments) for combinations
    out of range: an unrolled graph over :data:`MAX_UNROLLED_CYCLES` cycles, a ``--plugin``
    ``--static`` shape outside the kernel's tile."""
    plugin = getattr(args, "plugin", False)
    if not plugin and args.n_grad * args.n_proj > MAX_UNROLLED_CYCLES:
        raise ValueError(
            f"--n-grad x --n-proj must be at most {MAX_UNROLLED_CYCLES} (the graph is unrolled), "
            f"got {args.n_grad} x {args.n_proj} = {args.n_grad * args.n_proj}"
        )
    if plugin and args.static is not None:
        _, n, m = args.static
        if n > PLUGIN_MAX_N or m > PLUGIN_MAX_M:
            raise ValueError(
                f"--static with --plugin: N must be in 1..{PLUGIN_MAX_N} and M in "
                f"1..{PLUGIN_MAX_M} (the kernel's tile), got {'x'.join(map(str, args.static))}"
            )
    from dmm_deploy.export.onnx_export import ExportOptions  # torch: after the checks

    return ExportOptions(
        n_grad=args.n_grad,
        n_proj=args.n_proj,
        lr=args.lr,
        opset=args.opset,
        static_shape=args.static,
        precision=getattr(args, "precision", "fp32"),
        plugin=plugin,
        variant=getattr(args, "variant", "listing1"),
    )


def _timing(path: Path, options: ExportOptions) -> tuple[tuple[int, int, int], float, float]:
    """One-thread median time of onnxruntime and the eager reference on one batch."""
    import torch

    from dmm_deploy.export.onnx_export import median_time, ort_session, random_problems
    from dmm_deploy.matching.reference import match_reference

    shape = options.static_shape or (64, 8, 128)
    cost, x_init = random_problems(shape, seed=123)
    if options.precision != "fp32":
        cost, x_init = cost.astype("float16"), x_init.astype("float16")
    sess = ort_session(path, threads=1)
    feeds = {"cost": cost, "x_init": x_init}
    t_ort = median_time(lambda: sess.run(None, feeds), repeat=10)
    c, x = torch.from_numpy(cost), torch.from_numpy(x_init)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            t_torch = median_time(
                lambda: match_reference(
                    c, x, options.n_grad, options.n_proj, options.lr, variant=options.variant
                ),
                repeat=10,
            )
    finally:
        torch.set_num_threads(threads)
    return shape, t_ort, t_torch


def check_out(out: str | Path, overwrite: bool = False) -> None:
    """Refuse an ``--out`` this export must not write, before any work is done.

    A new file in a writable folder is fine, and so is an existing ONNX model this command
    wrote (:func:`~dmm_deploy.export.onnx_export.is_exported_matcher`), which is replaced.
    Any other existing regular file is replaced only with ``overwrite``; a folder, a device,
    a FIFO or a path below a file never.

    Raises:
        ValueError: one line naming ``--out``, the path and what was expected.
    """
    from dmm_deploy.data.output import check_output_path
    from dmm_deploy.export.onnx_export import is_exported_matcher

    out = Path(out)
    check_output_path(out, "--out", "file")
    if not (out.exists() or out.is_symlink()):
        return
    if not out.is_file():
        raise ValueError(f"--out {out} is not a regular file; expected a file name")
    if not overwrite and not is_exported_matcher(out):
        raise ValueError(
            f"--out {out} exists and is not a matcher model written by this command: "
            "pass --overwrite to replace it"
        )


def _temporary_beside(out: Path) -> Path:
    return out.with_name(f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def run_export(
    options: ExportOptions,
    out: str | Path,
    verify: bool = True,
    log=print,
    overwrite: bool = False,
) -> int:
    """Export, check and report; returns the process exit code (0 = everything held).

    The model is written to a temporary file beside ``out`` and moved to ``out`` only when
    the export and every check passed: a failing or interrupted export leaves ``out`` as it
    was. ``out`` is checked first (:func:`check_out`, ``overwrite`` as there).
    """
    out = Path(out)
    check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(out)
    try:
        if options.plugin:
            from dmm_deploy.export.engine_job import run_plugin_export

            def log_out(line: str) -> None:  # the report names --out, not the temporary file
                log(line.replace(str(tmp), str(out)))

            code = run_plugin_export(options, tmp, log=log_out)
        else:
            code = _export_and_check(options, tmp, out, verify, log)
        if code == 0:
            check_out(out, overwrite)  # again: something may have been put there meanwhile
            os.replace(tmp, out)
        else:
            log(f"output    {out} not written: a check failed (an existing file is left as it was)")
        return code
    finally:
        tmp.unlink(missing_ok=True)


def _export_and_check(options: ExportOptions, path: Path, out: Path, verify: bool, log) -> int:
    """Export to ``path`` (reported as ``out``), check, compare, time; returns the exit code."""
    from dmm_deploy.export.onnx_export import export_matcher, graph_stats, verify_onnxruntime
    from dmm_deploy.export.tensorrt_compat import tensorrt_verdicts

    model = export_matcher(path, options)
    stats = graph_stats(model, options.n_grad, options.n_proj)
    size = os.path.getsize(path)
    dims = "x".join(map(str, options.static_shape)) if options.static_shape else "B x n x m dynamic"
    log(
        f"exported  {out}  ({size / 1024:.0f} KiB, opset {options.opset}, {dims}, "
        f"precision {options.precision})"
    )
    log(
        f"matcher   n_grad={options.n_grad} n_proj={options.n_proj} lr={options.lr} "
        f"variant={options.variant}"
    )
    log(
        "checks    onnx.checker OK, shape inference OK, no Loop/Scan/If, Reduce axes are initializers"
    )
    top = ", ".join(f"{k} {v}" for k, v in list(stats.ops.items())[:6])
    log(f"graph     {stats.nodes} nodes ({top})")
    log(
        f"per step  {stats.full_size_ops_per_inner_step:.2f} full-size element-wise ops and "
        f"{stats.reduce_ops_per_inner_step:.0f} reductions per inner Dykstra step "
        f"({stats.full_size_ops} full-size ops in all, outer-step work included)"
    )
    code = 0
    inner = INNER_FULL_SIZE_OPS_BY_VARIANT[options.variant]
    allowed = inner * options.n_grad * options.n_proj + OUTER_FULL_SIZE_OPS_ALLOWED * options.n_grad
    if stats.full_size_ops > allowed:
        log(
            f"FAIL      {stats.full_size_ops} full-size ops, more than {allowed} ({inner} per "
            f"inner step and {OUTER_FULL_SIZE_OPS_ALLOWED} per outer step)"
        )
        code = 1
    code |= tensorrt_verdicts(model, log)
    if not verify:
        return code
    atol = PARITY_ATOL_BY_PRECISION[options.precision]
    runner = "torch float16 (node by node)" if options.precision == "fp16" else "onnxruntime"
    errors = []
    for shape, err in verify_onnxruntime(path, options):
        errors.append(err)
        log(f"parity    {runner} vs float64 reference at {shape}: max abs error {err:.2e}")
    # a NaN first: max() would skip it (NaN compares false)
    worst = next((e for e in errors if not math.isfinite(e)), max(errors, default=0.0))
    if not math.isfinite(worst):
        log(f"FAIL      max abs error {worst:.2e} (the graph's output is not finite)")
        code = 1
    elif worst > atol:
        log(f"FAIL      max abs error {worst:.2e} > {atol:.0e}")
        code = 1
    shape, t_ort, t_torch = _timing(path, options)
    log(
        f"time      {shape}, one thread: onnxruntime {t_ort * 1e3:.2f} ms, torch eager "
        f"{t_torch * 1e3:.2f} ms (ratio {t_ort / t_torch:.2f})"
    )
    log("result    OK" if code == 0 else "result    FAILED")
    return code


def run(args: argparse.Namespace) -> int:
    """``dmm-deploy export`` and ``python export/to_onnx.py``: the arguments' checks, then
    :func:`run_export`."""
    options = options_from_args(args)
    return run_export(
        options,
        args.out,
        verify=not args.no_verify,
        overwrite=getattr(args, "overwrite", False),
    )
