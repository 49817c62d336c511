"""The main job: export the matcher to ONNX, check it, compare it with the reference, report.

Shared by ``python export/to_onnx.py`` and ``dmm-deploy export``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from dmm_deploy.export.onnx_export import (
    ExportOptions,
    export_matcher,
    graph_stats,
    median_time,
    ort_session,
    random_problems,
    verify_onnxruntime,
)
from dmm_deploy.export.tensorrt_compat import tensorrt_verdicts
from dmm_deploy.matching.reference import match_reference

__all__ = ["PARITY_ATOL", "add_export_args", "options_from_args", "run_export", "tensorrt_verdicts"]

PARITY_ATOL = 1e-5
# float16 inputs are rounded before the reference runs, so these bound arithmetic error only:
# mixed rounds the output (<= 1) to float16 (half an ulp below 1 is 2**-12, 4.9e-4 measured);
# fp16 rounds every intermediate result too (1.1e-2 measured over 1000 problems, see
# bench/results/cpu/precision.md).
PARITY_ATOL_BY_PRECISION = {"fp32": PARITY_ATOL, "mixed": 1e-3, "fp16": 2e-2}
MAX_FULL_SIZE_OPS_PER_STEP = 7
# variant original: one more full-size op per inner step (the early-exit test X' - X)
MAX_FULL_SIZE_OPS_PER_STEP_BY_VARIANT = {"listing1": MAX_FULL_SIZE_OPS_PER_STEP, "original": 8}


def _shape(text: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected BxNxM with positive integers, got {text!r}")
    return dims  # type: ignore[return-value]


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return v


def add_export_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The export options, shared by the script and the CLI."""
    p.add_argument("--n-grad", type=_positive_int, default=40, help="outer steps (default 40)")
    p.add_argument(
        "--n-proj", type=_positive_int, default=5, help="Dykstra cycles per step (default 5)"
    )
    p.add_argument("--lr", type=_positive_float, default=0.01, help="gradient step (default 0.01)")
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
        type=Path,
        default=Path("artifacts/dmm_matcher.onnx"),
        help="output file (default artifacts/dmm_matcher.onnx)",
    )
    p.add_argument(
        "--static",
        type=_shape,
        default=None,
        metavar="BxNxM",
        help="fix batch, n and m (default: all three dynamic)",
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
    return ExportOptions(
        n_grad=args.n_grad,
        n_proj=args.n_proj,
        lr=args.lr,
        opset=args.opset,
        static_shape=args.static,
        precision=getattr(args, "precision", "fp32"),
        plugin=getattr(args, "plugin", False),
        variant=getattr(args, "variant", "listing1"),
    )


def _timing(path: Path, options: ExportOptions) -> tuple[tuple[int, int, int], float, float]:
    """One-thread median time of onnxruntime and the eager reference on one batch."""
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


def run_export(options: ExportOptions, out: Path, verify: bool = True, log=print) -> int:
    """Export, check and report; returns the process exit code (0 = everything held)."""
    if options.plugin:
        from dmm_deploy.export.engine_job import run_plugin_export

        return run_plugin_export(options, out, log=log)
    model = export_matcher(out, options)
    stats = graph_stats(model, options.n_grad, options.n_proj)
    size = os.path.getsize(out)
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
    max_ops = MAX_FULL_SIZE_OPS_PER_STEP_BY_VARIANT[options.variant]
    if stats.full_size_ops_per_inner_step > max_ops:
        log(f"FAIL      more than {max_ops} full-size ops per inner step")
        code = 1
    code |= tensorrt_verdicts(model, log)
    if not verify:
        return code
    atol = PARITY_ATOL_BY_PRECISION[options.precision]
    runner = "torch float16 (node by node)" if options.precision == "fp16" else "onnxruntime"
    worst = 0.0
    for shape, err in verify_onnxruntime(out, options):
        worst = max(worst, err)
        log(f"parity    {runner} vs float64 reference at {shape}: max abs error {err:.2e}")
    if worst > atol:
        log(f"FAIL      max abs error {worst:.2e} > {atol:.0e}")
        code = 1
    shape, t_ort, t_torch = _timing(out, options)
    log(
        f"time      {shape}, one thread: onnxruntime {t_ort * 1e3:.2f} ms, torch eager "
        f"{t_torch * 1e3:.2f} ms (ratio {t_ort / t_torch:.2f})"
    )
    log("result    OK" if code == 0 else "result    FAILED")
    return code
