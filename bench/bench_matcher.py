"""CPU benchmark of the DMM matcher: the specification looped per problem against batched runs.

Implementations (``--impls``), all at the same ``n_grad x n_proj`` and ``lr``, float32:

* ``spec``: the literal transcription of Listing 1 (``tests/spec_listing1.py``), called once
  per problem in a Python loop (the outputs stacked);
* ``eager``: the batched reference ``dmm_deploy.matching.match_reference``, eager PyTorch;
* ``compile``: the same function under ``torch.compile`` (inductor, C++ on the CPU), compiled
  once per thread count with dynamic shapes (the batch dimension unbacked, so that ``B = 1``
  does not recompile); the compile time is the first call, reported apart, never in timings;
* ``ort``: onnxruntime on the graph exported by ``dmm_deploy.export.onnx_export.export_matcher``
  (dynamic ``B, n, m``), one session per thread count (``intra_op_num_threads``).

Every case is timed after warm-up: the median and the 20th/80th percentiles of repeated calls,
repeated until a time budget per case is spent (at least 3 calls; the number is reported).
Each output is checked against the eager reference's (max abs difference, reported).
Thread counts: 1 and all usable cores (``torch.set_num_threads`` / onnxruntime intra-op).

Outputs (``--out``, default ``bench/results/cpu``): ``matcher.csv`` (one row per case),
``matcher.md`` (machine, medians, same-run ratios, targets) and ``matcher.png``.
``--quick`` runs tiny sizes (for the smoke test).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_OUT,
    load_spec,
    machine_info,
    machine_markdown,
    markdown_table,
    pyplot,
    summarize,
    time_calls,
    usable_cores,
    write_csv,
)
from _matcher_gpu import IMPLS as GPU_IMPLS
from _matcher_gpu import run_gpu_benchmark

from dmm_deploy.export.onnx_export import (
    ExportOptions,
    export_matcher,
    ort_session,
    random_problems,
)
from dmm_deploy.matching import match_reference

IMPLS = ("spec", "eager", "compile", "ort")
LABELS = {
    "spec": "specification, looped per problem",
    "eager": "batched reference (eager)",
    "compile": "batched reference (torch.compile)",
    "ort": "onnxruntime (exported graph)",
}
# Ratios quoted in the markdown: (name, baseline impl, impl); value = median(baseline) /
# median(impl), the speed-up of impl over the baseline (> 1: impl is faster).
RATIOS = (
    ("eager over spec", "spec", "eager"),
    ("compile over eager", "eager", "compile"),
    ("ort over eager", "eager", "ort"),
    ("ort over compile", "compile", "ort"),
)
# The targets: one thread, B = 64, n x m = 8 x 128.
TARGET_CASE = (1, 64, 8, 128)


@dataclass(frozen=True)
class Case:
    """One timed configuration."""

    threads: int
    batch: int
    n: int
    m: int


class Runner:
    """Builds the callables of every implementation; holds compiled functions and sessions."""

    def __init__(
        self,
        n_grad: int,
        n_proj: int,
        lr: float,
        workdir: Path,
        compile_backend: str = "inductor",
    ) -> None:
        self.n_grad, self.n_proj, self.lr = n_grad, n_proj, lr
        self.compile_backend = compile_backend
        self.workdir = workdir
        self.spec = load_spec()
        self.onnx_path: Path | None = None
        self.export_s = float("nan")
        self.sessions: dict[int, object] = {}
        self.compiled: dict[int, Callable] = {}
        self.compile_s: dict[int, float] = {}

    def _reference(self, cost: torch.Tensor, x_init: torch.Tensor) -> torch.Tensor:
        return match_reference(cost, x_init, self.n_grad, self.n_proj, self.lr)

    def _session(self, threads: int):
        if self.onnx_path is None:
            self.onnx_path = self.workdir / "matcher.onnx"
            t0 = time.perf_counter()
            export_matcher(self.onnx_path, ExportOptions(self.n_grad, self.n_proj, self.lr))
            self.export_s = time.perf_counter() - t0
        if threads not in self.sessions:
            self.sessions[threads] = ort_session(self.onnx_path, threads)
        return self.sessions[threads]

    def _compiled(self, threads: int) -> Callable:
        """The reference compiled for ``threads`` (inductor bakes the thread count in)."""
        if threads not in self.compiled:
            torch._dynamo.reset()
            self.compiled = {
                threads: torch.compile(self._reference, backend=self.compile_backend, dynamic=True)
            }
        return self.compiled[threads]

    def build(self, impl: str, case: Case, cost: np.ndarray, x_init: np.ndarray) -> Callable:
        """A no-argument callable running ``impl`` on the batch; returns a numpy array."""
        cost_t, x_t = torch.from_numpy(cost), torch.from_numpy(x_init)
        if impl == "spec":
            relax = self.spec.relax_matching
            args = (self.n_grad, self.n_proj, self.lr)

            def run():
                with torch.inference_mode():
                    outs = [relax(c, x, *args) for c, x in zip(cost_t, x_t, strict=True)]
                    return torch.stack(outs).numpy()

            return run
        if impl == "eager":

            def run():
                with torch.inference_mode():
                    return self._reference(cost_t, x_t).numpy()

            return run
        if impl == "compile":
            fn = self._compiled(case.threads)
            torch._dynamo.decorators.mark_unbacked(cost_t, 0)
            torch._dynamo.decorators.mark_unbacked(x_t, 0)

            def run():
                with torch.inference_mode():
                    return fn(cost_t, x_t).numpy()

            return run
        if impl == "ort":
            sess = self._session(case.threads)
            feeds = {"cost": cost, "x_init": x_init}

            def run():
                return sess.run(None, feeds)[0]

            return run
        raise ValueError(f"unknown implementation {impl!r}; expected one of {IMPLS}")


def run_cases(args, runner: Runner) -> list[dict]:
    """Time every (threads, shape, batch, impl) case; returns one row per case."""
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for n, m in args.shapes:
            for batch in args.batches:
                case = Case(threads, batch, n, m)
                cost, x_init = random_problems((batch, n, m), seed=batch * 1000 + n * 10 + m)
                want = None
                for impl in args.impls:
                    if impl == "spec" and batch > args.spec_max_batch:
                        continue
                    fn = runner.build(impl, case, cost, x_init)
                    t0 = time.perf_counter()
                    out = fn()
                    first = time.perf_counter() - t0
                    if impl == "compile" and threads not in runner.compile_s:
                        runner.compile_s[threads] = first
                    if want is None:
                        want = runner.build("eager", case, cost, x_init)()
                    diff = float(np.abs(out - want).max())
                    slow = first > args.budget / 4 and impl != "compile"
                    times = time_calls(
                        fn,
                        warmup=0 if slow else 2,
                        min_repeats=3 if slow else 5,
                        max_repeats=args.max_repeats,
                        budget_s=args.budget,
                    )
                    stats = summarize(times)
                    row = {
                        "impl": impl,
                        "threads": threads,
                        "B": batch,
                        "n": n,
                        "m": m,
                        "n_grad": args.n_grad,
                        "n_proj": args.n_proj,
                        **stats,
                        "us_per_problem": stats["median_ms"] * 1e3 / batch,
                        "first_call_ms": first * 1e3,
                        "max_abs_diff_vs_eager": diff,
                    }
                    rows.append(row)
                    print(
                        f"threads={threads} B={batch:5d} {n}x{m} {impl:8s} "
                        f"median {stats['median_ms']:10.3f} ms "
                        f"[{stats['p20_ms']:.3f}, {stats['p80_ms']:.3f}] n={stats['repeats']} "
                        f"diff {diff:.1e}",
                        flush=True,
                    )
    return rows


def ratio_rows(rows: list[dict]) -> list[dict]:
    """Same-run ratios of medians per (threads, B, n, m): ``median(slow) / median(fast)``."""
    med = {(r["impl"], r["threads"], r["B"], r["n"], r["m"]): r["median_ms"] for r in rows}
    keys = sorted({(r["threads"], r["n"], r["m"], r["B"]) for r in rows})
    out = []
    for threads, n, m, batch in keys:
        row = {"threads": threads, "n": n, "m": m, "B": batch}
        for name, slow, fast in RATIOS:
            a = med.get((slow, threads, batch, n, m))
            b = med.get((fast, threads, batch, n, m))
            row[name] = a / b if a is not None and b is not None else ""
        out.append(row)
    return out


def timing_table(rows: list[dict], impls) -> list[dict]:
    """One row per (threads, n, m, B): ``median [p20, p80] (repeats)`` of each impl, in ms."""
    cells: dict[tuple, dict] = {}
    for r in rows:
        key = (r["threads"], r["n"], r["m"], r["B"])
        row = cells.setdefault(
            key, {"threads": key[0], "n x m": f"{key[1]} x {key[2]}", "B": key[3]}
        )
        row[r["impl"]] = (
            f"{_ms(r['median_ms'])} [{_ms(r['p20_ms'])}, {_ms(r['p80_ms'])}] ({r['repeats']})"
        )
    return [cells[k] for k in sorted(cells)]


def _ms(value: float) -> str:
    """Milliseconds with 3 significant digits, without exponent notation."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def noisy_lines(rows: list[dict], spread: float = 1.5) -> list[str]:
    """Cases whose p80 exceeds ``spread`` x their p20: load from other processes shows here."""
    return [
        f"- noisy: {r['impl']}, {r['threads']} thread(s), B={r['B']}, {r['n']} x {r['m']}: "
        f"p20 {_ms(r['p20_ms'])} ms, p80 {_ms(r['p80_ms'])} ms"
        for r in rows
        if r["p80_ms"] > spread * r["p20_ms"]
    ]


def target_lines(rows: list[dict]) -> list[str]:
    """The issue's two targets, checked on this run's medians."""
    threads, batch, n, m = TARGET_CASE
    med = {
        r["impl"]: r["median_ms"]
        for r in rows
        if (r["threads"], r["B"], r["n"], r["m"]) == (threads, batch, n, m)
    }
    lines = []
    if "spec" in med and "eager" in med:
        r = med["spec"] / med["eager"]
        verdict = "met" if r >= 25 else "NOT met"
        lines.append(
            f"- batched reference (eager) vs specification loop, {threads} thread, B={batch}, "
            f"{n} x {m}: **{r:.1f}x** faster (target >= 25x: {verdict})"
        )
    if "ort" in med and "eager" in med:
        r = med["ort"] / med["eager"]
        verdict = "met" if r <= 1.5 else "NOT met"
        lines.append(
            f"- onnxruntime vs eager reference, same case: ort time = **{r:.2f}x** eager time "
            f"(target <= 1.5x: {verdict})"
        )
    return lines or ["- the target case (1 thread, B=64, 8 x 128) was not part of this run"]


def plot(rows: list[dict], args, path: Path) -> None:
    """Median time per call against B (p20-p80 error bars), one panel per threads x shape."""
    plt = pyplot()
    nt, ns = len(args.threads), len(args.shapes)
    fig, axes = plt.subplots(nt, ns, figsize=(5.0 * ns, 4.0 * nt), squeeze=False)
    for i, threads in enumerate(args.threads):
        for j, (n, m) in enumerate(args.shapes):
            ax = axes[i, j]
            for impl in args.impls:
                sel = [
                    r
                    for r in rows
                    if r["impl"] == impl and r["threads"] == threads and (r["n"], r["m"]) == (n, m)
                ]
                if not sel:
                    continue
                b = np.array([r["B"] for r in sel])
                med = np.array([r["median_ms"] for r in sel])
                err = np.array(
                    [
                        [r["median_ms"] - r["p20_ms"] for r in sel],
                        [r["p80_ms"] - r["median_ms"] for r in sel],
                    ]
                )
                ax.errorbar(b, med, yerr=err, marker="o", capsize=3, label=LABELS[impl])
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("batch B (problems per call)")
            ax.set_ylabel("ms per call (median, p20-p80)")
            ax.set_xticks(args.batches, [str(b) for b in args.batches])
            ax.minorticks_off()
            ax.set_title(
                f"n x m = {n} x {m}, {args.n_grad} x {args.n_proj} steps, {threads} thread(s)"
            )
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("DMM matcher on the CPU (float32)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(path: Path, rows: list[dict], args, runner: Runner, info: dict) -> None:
    impls = [i for i in args.impls if any(r["impl"] == i for r in rows)]
    ratios = ratio_rows(rows)
    ratio_cols = [name for name, slow, fast in RATIOS if slow in impls and fast in impls]
    timing = timing_table(rows, impls)
    worst = max((r["max_abs_diff_vs_eager"] for r in rows), default=float("nan"))
    compile_lines = [
        f"- torch.compile ({args.compile_backend}, dynamic shapes), {t} thread(s): first call "
        f"(compile) {s:.1f} s, {'warm' if args.warm_cache else 'cold'} cache"
        for t, s in sorted(runner.compile_s.items())
    ]
    if runner.onnx_path is not None:
        compile_lines.append(
            f"- ONNX export (legacy exporter, dynamic B, n, m): {runner.export_s:.1f} s"
        )
    parts = [
        "# DMM matcher, CPU benchmark",
        "",
        f"Machine:\n\n{machine_markdown(info)}",
        "",
        f"Command: `{args.command}`. "
        f"Iterations {args.n_grad} x {args.n_proj}, lr {args.lr}, float32; costs uniform in "
        "[-1, 1), random non-negative starts. Medians with p20/p80 after warm-up, "
        f"(repeats) in brackets; time budget {args.budget} s per case. Ratios are of medians "
        "of this run (speed-up of X over Y = median(Y) / median(X): > 1 means X is faster).",
        "",
        "Implementations: " + "; ".join(f"`{i}` = {LABELS[i]}" for i in impls) + ".",
        "",
        "## Targets (1 thread, B = 64, 8 x 128)",
        "",
        *target_lines(rows),
        "",
        "## Ratios",
        "",
        markdown_table(ratios, ["threads", "n", "m", "B", *ratio_cols]),
        "",
        "## Times per call, ms: median [p20, p80] (repeats)",
        "",
        markdown_table(timing, ["threads", "n x m", "B", *impls]),
        "",
        "## One-off costs",
        "",
        *(compile_lines or ["- none measured"]),
        f"- largest |output - eager output| over all cases: {worst:.2e}",
        "",
        "## Noise",
        "",
        *(noisy_lines(rows) or ["- every case has p80 <= 1.5 x p20"]),
        "",
        "![matcher timings](matcher.png)",
        "",
    ]
    path.write_text("\n".join(parts))


def _shape(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape must look like NxM (e.g. 8x128), got {text!r}"
        ) from None
    if n < 1 or m < 1:
        raise argparse.ArgumentTypeError(f"shape must have n, m >= 1, got {text!r}")
    return n, m


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda", "interpret"),
        default="cpu",
        help="cuda: fused Triton kernels vs eager, torch.compile and onnxruntime-gpu on the GPU "
        "(default output bench/results/<gpu name>); interpret: the same on CPU tensors with the "
        "kernels in Triton's interpreter (use with --quick); see bench/_matcher_gpu.py",
    )
    p.add_argument(
        "--gpu-impls",
        nargs="+",
        choices=GPU_IMPLS,
        default=None,
        help="with --device cuda/interpret",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, no torch.compile (smoke test)")
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=None)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024])
    p.add_argument("--shapes", type=_shape, nargs="+", default=[(5, 50), (8, 128)])
    p.add_argument(
        "--threads", nargs="+", default=["1", "all"], help="thread counts; 'all' = usable cores"
    )
    p.add_argument("--n-grad", type=int, default=40)
    p.add_argument("--n-proj", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--budget", type=float, default=2.0, help="seconds of timed calls per case")
    p.add_argument("--max-repeats", type=int, default=200)
    p.add_argument(
        "--spec-max-batch", type=int, default=1 << 30, help="skip the spec loop above this B"
    )
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend (inductor; 'eager'/'aot_eager' only to test the script)",
    )
    p.add_argument(
        "--warm-cache",
        action="store_true",
        help="use the default inductor cache (default: a fresh one, so compile times are cold)",
    )
    args = p.parse_args(argv)
    from _common import check_out_arg

    check_out_arg(p, args.out)
    argv_used = sys.argv[1:] if argv is None else list(argv)
    args.command = " ".join(["python", f"bench/{Path(__file__).name}", *argv_used])
    if args.quick:
        args.batches, args.shapes = [1, 3], [(3, 7)]
        args.n_grad, args.n_proj, args.budget, args.max_repeats = 3, 2, 0.05, 5
        args.impls = args.impls or ["spec", "eager", "ort"]
    args.impls = args.impls or list(IMPLS)
    threads = []
    for t in args.threads:
        value = usable_cores() if t == "all" else int(t) if t.isdigit() else 0
        if value < 1:
            p.error(f"--threads takes positive integers or 'all', got {t!r}")
        if value not in threads:
            threads.append(value)
    args.threads = threads
    if min(args.batches) < 1 or args.n_grad < 1 or args.n_proj < 1:
        p.error("--batches, --n-grad and --n-proj must be positive integers")
    if args.budget <= 0 or args.max_repeats < 3:
        p.error("--budget must be positive and --max-repeats at least 3")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device != "cpu":
        run_gpu_benchmark(
            args.device,
            None if args.out == DEFAULT_OUT else args.out,
            tiny=args.quick,
            impls=args.gpu_impls or GPU_IMPLS,
            n_grad=args.n_grad,
            n_proj=args.n_proj,
            lr=args.lr,
        )
        return 0
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="dmm-bench-") as tmp:
        if not args.warm_cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")
        runner = Runner(args.n_grad, args.n_proj, args.lr, Path(tmp), args.compile_backend)
        rows = run_cases(args, runner)
        runner.sessions.clear()
    write_csv(out / "matcher.csv", rows)
    plot(rows, args, out / "matcher.png")
    write_markdown(out / "matcher.md", rows, args, runner, info)
    print(f"wrote {out}/matcher.{{csv,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
