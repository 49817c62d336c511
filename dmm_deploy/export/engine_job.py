"""Build and run TensorRT engines from the command line.

Shared by ``python export/build_engine.py`` and ``dmm-deploy trt-build`` / ``trt-run``; the
logic is in :mod:`dmm_deploy.export.tensorrt`. Also the plugin path of the export job
(:func:`run_plugin_export`, called by ``dmm-deploy export --plugin``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from dmm_deploy.export.tensorrt import BuilderOptions, ShapeProfile, parse_shape
from dmm_deploy.export.tensorrt_compat import tensorrt_verdicts

__all__ = [
    "INT32_MAX",
    "MAX_N_GRAD",
    "MAX_N_PROJ",
    "PLUGIN_ARCHS",
    "PLUGIN_TENSORRT_VERSIONS",
    "add_build_args",
    "add_run_args",
    "check_build_paths",
    "options_from_args",
    "run_build",
    "run_engine",
    "run_plugin_export",
]

PLUGIN_ARCHS = (80, 87, 90)  # A100, Jetson Orin, H100
# the plugin's targets: the first TensorRT with AOT plugins and the current major (10.3, on
# JetPack 6, has no AOT plugins: the unrolled export is the one for it)
PLUGIN_TENSORRT_VERSIONS = ("10.9", "11.0")
INT32_MAX = 2**31 - 1  # the plugin's n_grad and n_proj reach TensorRT as int32 (trtp.SymInt32)


# The ranges and messages of n_grad, n_proj and lr, for ``dmm-deploy export`` (matcher_job
# imports them from here) and ``trt-run`` alike: an engine runs with what it was exported with.
MAX_N_GRAD = 1000
MAX_N_PROJ = 100
_F32_TINY, _F32_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)


def _int_in(high: int | None = None):
    """An argparse type: an integer in ``1..high`` (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = 0
        if v < 1:
            raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
        if high is not None and v > high:
            raise argparse.ArgumentTypeError(f"expected an integer in 1..{high}, got {text!r}")
        return v

    return parse


_positive_int = _int_in()


def _positive_float(text: str) -> float:
    """A positive number float32 holds as a normal number (the graph computes in float32)."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    if not _F32_TINY <= v <= _F32_MAX:
        raise argparse.ArgumentTypeError(
            f"expected a positive finite number in float32's range "
            f"({_F32_TINY:.2g} to {_F32_MAX:.2g}), got {text!r}"
        )
    return v


def _file_path(text: str) -> Path:
    if not text or text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"expected a file name, got {text!r}")
    return Path(text)


def _folder_path(text: str) -> Path:
    if not text:
        raise argparse.ArgumentTypeError(f"expected a folder, got {text!r}")
    return Path(text)


def add_build_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of an engine build."""
    p.add_argument("onnx", type=Path, help="exported matcher (python export/to_onnx.py)")
    p.add_argument(
        "--engine", type=_file_path, default=None, help="output plan (default: ONNX path .engine)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --engine file (a regular file only; without it an existing "
        "--engine is refused)",
    )
    p.add_argument(
        "--min", default="1x1x1", metavar="BxNxM", help="profile minimum (default 1x1x1)"
    )
    p.add_argument(
        "--opt", default="8x8x128", metavar="BxNxM", help="profile optimum (default 8x8x128)"
    )
    p.add_argument(
        "--max", default="64x16x512", metavar="BxNxM", help="profile maximum (default 64x16x512)"
    )
    p.add_argument(
        "--workspace-mib", type=_positive_int, default=1024, help="workspace pool limit (MiB)"
    )
    p.add_argument(
        "--opt-level",
        type=int,
        default=3,
        choices=range(6),
        metavar="0..5",
        help="builder optimization level 0..5 (default 3)",
    )
    p.add_argument(
        "--weak-fp16",
        action="store_true",
        help="TensorRT 10.x only: weakly typed network with BuilderFlag.FP16 (removed in 11)",
    )
    p.add_argument("--plugin", action="store_true", help="register the dmm_match plugin first")
    p.add_argument(
        "--cache-dir",
        type=_folder_path,
        default=Path("artifacts/engine_cache"),
        help="engine cache folder",
    )
    p.add_argument(
        "--timing-cache",
        type=_file_path,
        default=Path("artifacts/engine_cache/timing.cache"),
        help="timing cache file (read and updated)",
    )
    return p


def options_from_args(args: argparse.Namespace) -> BuilderOptions:
    """:class:`BuilderOptions` from parsed build arguments (``ValueError`` on bad values)."""
    return BuilderOptions(
        profile=ShapeProfile.parse(args.min, args.opt, args.max),
        workspace_mib=args.workspace_mib,
        optimization_level=args.opt_level,
        weak_fp16=args.weak_fp16,
        plugin=args.plugin,
    )


def check_build_paths(args: argparse.Namespace) -> Path:
    """Refuse, before TensorRT is imported, output paths that the build could not write or
    would destroy; return the engine path (``--engine``, default the ONNX path with ``.engine``).

    ``--engine``: not the ONNX file, not a folder, not below a file; an existing file only with
    ``--overwrite`` (and then a regular file). ``--cache-dir``: a folder (new or existing).
    ``--timing-cache``: a file, neither the ONNX file nor the engine (it is read and updated).
    ``ValueError`` (one line naming the argument) or ``FileNotFoundError`` (no ONNX file).
    """
    from dmm_deploy.data.output import (
        check_not_an_input,
        check_output_path,
        check_replaceable_file,
    )

    onnx = Path(args.onnx)
    if not onnx.is_file():
        raise FileNotFoundError(f"no ONNX file at {onnx}")
    engine = Path(args.engine) if args.engine is not None else onnx.with_suffix(".engine")
    if args.engine is None and engine.resolve() == onnx.resolve():
        raise ValueError(
            f"--engine defaults to the ONNX path with .engine, {engine}, which is the ONNX file "
            "itself; pass --engine with another file"
        )
    check_not_an_input("--engine", engine, [("ONNX", onnx)])
    check_output_path(engine, "--engine", "file")
    check_replaceable_file(engine, "--engine", getattr(args, "overwrite", False))
    if args.cache_dir is not None:
        if Path(args.cache_dir).exists() and not Path(args.cache_dir).is_dir():
            raise ValueError(f"--cache-dir {args.cache_dir} is a file; expected a folder")
        check_output_path(args.cache_dir, "--cache-dir", "folder")
    if args.timing_cache is not None:
        check_not_an_input(
            "--timing-cache", args.timing_cache, [("ONNX", onnx), ("--engine", engine)]
        )
        check_output_path(args.timing_cache, "--timing-cache", "file")
    return engine


def run_build(args: argparse.Namespace, log=print) -> int:
    """Check the paths (:func:`check_build_paths`), build (or fetch from the cache) the engine;
    returns the exit code."""
    from dmm_deploy.export.tensorrt import build_engine

    options = options_from_args(args)
    engine = check_build_paths(args)
    path = build_engine(
        args.onnx,
        engine,
        options,
        cache_dir=args.cache_dir,
        timing_cache=args.timing_cache,
        log=log,
    )
    log(f"engine    {path}")
    return 0


def add_run_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of an engine run."""
    p.add_argument("engine", type=Path, help="serialized engine (dmm-deploy trt-build)")
    p.add_argument(
        "--shape", default="8x8x128", metavar="BxNxM", help="problem batch (default 8x8x128)"
    )
    p.add_argument(
        "--n-grad",
        type=_int_in(MAX_N_GRAD),
        default=40,
        help=f"outer steps the engine was exported with, 1..{MAX_N_GRAD} (default 40)",
    )
    p.add_argument(
        "--n-proj",
        type=_int_in(MAX_N_PROJ),
        default=5,
        help=f"Dykstra cycles it was exported with, 1..{MAX_N_PROJ} (default 5)",
    )
    p.add_argument("--lr", type=_positive_float, default=0.01, help="step it was exported with")
    p.add_argument("--repeat", type=_positive_int, default=20, help="timed runs (default 20)")
    p.add_argument("--plugin", action="store_true", help="register the dmm_match plugin first")
    return p


def run_engine(args: argparse.Namespace, log=print) -> int:
    """Run the engine on random problems, compare with the float64 reference, time it."""
    import torch

    from dmm_deploy.export.onnx_export import random_problems
    from dmm_deploy.export.tensorrt import EngineRunner
    from dmm_deploy.matching.reference import match_reference

    shape = parse_shape(args.shape, "--shape")
    if args.repeat < 1:
        raise ValueError(f"--repeat must be a positive integer, got {args.repeat}")
    runner = EngineRunner(args.engine, plugin=args.plugin)
    cost, x_init = random_problems(shape, seed=0)
    c = torch.from_numpy(cost).cuda()
    x = torch.from_numpy(x_init).cuda()
    feeds = {"cost": c, "x_init": x}
    (out,) = runner.run(feeds).values()
    torch.cuda.synchronize()
    dt = runner.dtypes["cost"]
    want = match_reference(
        torch.from_numpy(cost).to(dt).double(),
        torch.from_numpy(x_init).to(dt).double(),
        args.n_grad,
        args.n_proj,
        args.lr,
    )
    err = float((out.double().cpu() - want).abs().max())
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(args.repeat + 3):
        start.record()
        runner.run(feeds)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    ms = float(np.median(times[3:]))
    log(
        f"engine    {args.engine}  inputs {runner.input_names} ({dt}), outputs {runner.output_names}"
    )
    log(f"parity    vs float64 reference at {shape}: max abs error {err:.2e}")
    log(
        f"time      {shape}: median {ms:.3f} ms over {args.repeat} runs ({torch.cuda.get_device_name()})"
    )
    return 0


def run_plugin_export(options, out: str | Path, log=print, archs: tuple[int, ...] = PLUGIN_ARCHS):
    """Export the plugin graph, check it, compile its kernel for ``archs``; return the exit code.

    ``options`` is the export's :class:`~dmm_deploy.export.onnx_export.ExportOptions`
    (``precision`` fp16 or mixed give float16 I/O). The checks are TensorRT's operator tables
    for :data:`PLUGIN_TENSORRT_VERSIONS` and the kernel's compilation to TensorRT's calling
    convention; any failing check gives exit code 1 (the line ``result    FAILED``).
    Compilation needs Triton, not a GPU.
    """
    from dmm_deploy.export.onnx_export import export_matcher
    from dmm_deploy.export.trt_plugin import PLUGIN_ID, _plugin_attrs, plugin_kernel

    if not options.plugin:
        raise ValueError("run_plugin_export needs ExportOptions(plugin=True)")
    for flag, value in (("--n-grad", options.n_grad), ("--n-proj", options.n_proj)):
        if value > INT32_MAX:
            raise ValueError(
                f"{flag} {value} is too large for --plugin: TensorRT passes it to the kernel as "
                f"int32; expected at most {INT32_MAX}"
            )
    out = Path(out)
    model = export_matcher(out, options)
    attrs = _plugin_attrs(model)
    half = options.precision != "fp32"
    log(
        f"exported  {out}  ({os.path.getsize(out)} bytes, one {PLUGIN_ID} node, "
        f"{'float16' if half else 'float32'} I/O)"
    )
    log(
        f"plugin    n_grad={attrs['n_grad']} n_proj={attrs['n_proj']} lr={attrs['lr']:.6g}, "
        f"tile {attrs['block_n']}x{attrs['block_m']} (serves n <= {attrs['block_n']}, "
        f"m <= {attrs['block_m']}), aot={attrs['aot']}"
    )
    log("tensorrt  10.3: not a target (no AOT plugins before 10.9; export without --plugin)")
    code = tensorrt_verdicts(model, log, versions=PLUGIN_TENSORRT_VERSIONS)
    for arch in archs:
        try:
            k = plugin_kernel(
                arch,
                attrs["block_n"],
                attrs["block_m"],
                float(attrs["lr"]),
                "fp16" if half else "fp32",
            )
        except (RuntimeError, ValueError) as e:
            log(f"FAIL      ptx sm_{arch}: {e}")
            code = 1
            continue
        log(
            f"ptx       sm_{arch}: {k.name}, {len(k.ptx) // 1024} KiB, .version "
            f"{k.ptx_version // 10}.{k.ptx_version % 10}, {len(k.params)} entry parameters "
            f"(TensorRT's; {k.stripped} Triton scratch pointer(s) removed), {k.problems} "
            f"problem(s) x {k.num_warps} warp(s) per program"
        )
    log("note      build with: dmm-deploy trt-build --plugin (TensorRT >= 10.9, GPU); not run here")
    log("result    OK" if code == 0 else "result    FAILED")
    return code
