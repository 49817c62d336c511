"""Accuracy of the fp32, mixed and fp16 matcher exports against the float64 reference.

    python bench/precision.py [--problems 1000] [--shapes 100] [--n-grad 40] [--n-proj 5]
                              [--lr 0.01] [--out bench/results/cpu]

Random problems like the model's: n in 1..10 templates, m in 1..100 proposals, costs uniform
in [-1, 0], the greedy one-hot start of the original code (``greedy_init``). Problems are
drawn in groups of one shape (``--shapes`` shapes, the same number of problems each) because
the exported graph has no padding masks.

How each precision runs on this CPU:

* fp32 and mixed: onnxruntime (CPU provider) on the exported graphs. mixed computes in float32
  between its float16 boundary casts, which onnxruntime executes faithfully.
* fp16: onnxruntime's CPU provider wraps float16 nodes in casts to float32 and fuses them away,
  so it would compute in float32. The fp16 graph is instead executed node by node in torch
  float16 (``dmm_deploy.export.precision.run_graph_torch``): every node's result is rounded to
  float16; torch's CPU reductions accumulate in float32 before rounding their result. A GPU
  build may fuse element-wise chains and keep intermediates in registers, so this is an
  emulation of per-operator float16 rounding, not of a particular TensorRT engine.

Reported per precision: max and 99th-percentile absolute error of the assignment against the
float64 reference from the float32 inputs (end to end, input rounding included) and from the
inputs as the graph saw them (arithmetic only); the share of rows (and of whole problems)
whose argmax column (``hard_assign``) equals the fp32 export's, and equals float64's.
Writes ``precision.csv`` and ``precision.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from dmm_deploy.export.onnx_export import ExportOptions, export_matcher, ort_session
from dmm_deploy.export.precision import PRECISIONS, run_graph_torch
from dmm_deploy.matching import greedy_init, hard_assign, match_reference

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_common

RUNNERS = {
    "fp32": "onnxruntime CPU",
    "mixed": "onnxruntime CPU (fp32 between fp16 casts)",
    "fp16": "torch float16, node by node (emulated)",
}


def draw_shapes(count: int, seed: int) -> list[tuple[int, int]]:
    g = np.random.default_rng(seed)
    return [(int(g.integers(1, 11)), int(g.integers(1, 101))) for _ in range(count)]


def problems(batch: int, n: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Costs uniform in [-1, 0] (float32) and the greedy one-hot start."""
    g = np.random.default_rng(seed)
    cost = g.uniform(-1.0, 0.0, size=(batch, n, m)).astype(np.float32)
    x_init = greedy_init(torch.from_numpy(cost)).numpy()
    return cost, x_init


def export_all(folder: Path, n_grad: int, n_proj: int, lr: float) -> dict:
    """Export the three precisions; returns a callable per precision: feeds -> float64 output."""
    runs = {}
    for precision in PRECISIONS:
        path = folder / f"dmm_matcher_{precision}.onnx"
        export_matcher(
            path, ExportOptions(n_grad=n_grad, n_proj=n_proj, lr=lr, precision=precision)
        )
        if precision == "fp16":
            model = onnx.load(str(path))
            runs[precision] = lambda f, model=model: run_graph_torch(model, f)["assignment"]
        else:
            sess = ort_session(path, threads=1)
            runs[precision] = lambda f, sess=sess: sess.run(["assignment"], f)[0]
    return runs


def measure(args) -> list[dict]:
    shapes = draw_shapes(args.shapes, args.seed)
    per_shape = max(1, args.problems // args.shapes)
    with tempfile.TemporaryDirectory() as tmp:
        runs = export_all(Path(tmp), args.n_grad, args.n_proj, args.lr)
        acc = {
            p: {
                "e2e": [],
                "arith": [],
                "rows_fp32": 0,
                "rows_f64": 0,
                "probs_fp32": 0,
                "probs_f64": 0,
            }
            for p in PRECISIONS
        }
        rows = n_problems = 0
        t0 = time.perf_counter()
        for k, (n, m) in enumerate(shapes):
            cost, x_init = problems(per_shape, n, m, args.seed + 1 + k)

            def ref(c, x):
                return match_reference(
                    torch.from_numpy(c).double(),
                    torch.from_numpy(x).double(),
                    args.n_grad,
                    args.n_proj,
                    args.lr,
                )

            want = ref(cost, x_init)
            want_half = ref(cost.astype(np.float16), x_init.astype(np.float16))
            outs = {}
            for p in PRECISIONS:
                feeds = {"cost": cost, "x_init": x_init}
                if p != "fp32":
                    feeds = {k2: v.astype(np.float16) for k2, v in feeds.items()}
                outs[p] = torch.from_numpy(runs[p](feeds).astype(np.float64))
            arg64 = hard_assign(want)
            arg32 = hard_assign(outs["fp32"])
            for p in PRECISIONS:
                out = outs[p]
                a = acc[p]
                a["e2e"].append((out - want).abs().amax(dim=(-2, -1)))
                a["arith"].append(
                    (out - (want if p == "fp32" else want_half)).abs().amax(dim=(-2, -1))
                )
                argp = hard_assign(out)
                a["rows_fp32"] += int((argp == arg32).sum())
                a["rows_f64"] += int((argp == arg64).sum())
                a["probs_fp32"] += int((argp == arg32).all(dim=-1).sum())
                a["probs_f64"] += int((argp == arg64).all(dim=-1).sum())
            rows += per_shape * n
            n_problems += per_shape
        elapsed = time.perf_counter() - t0
    results = []
    for p in PRECISIONS:
        a = acc[p]
        e2e, arith = torch.cat(a["e2e"]).numpy(), torch.cat(a["arith"]).numpy()
        results.append(
            {
                "precision": p,
                "runner": RUNNERS[p],
                "problems": n_problems,
                "rows": rows,
                "max_abs_err": float(e2e.max()),
                "p99_abs_err": float(np.quantile(e2e, 0.99)),
                "max_abs_err_arith": float(arith.max()),
                "p99_abs_err_arith": float(np.quantile(arith, 0.99)),
                "argmax_rows_eq_fp32": a["rows_fp32"] / rows,
                "argmax_problems_eq_fp32": a["probs_fp32"] / n_problems,
                "argmax_rows_eq_f64": a["rows_f64"] / rows,
            }
        )
    print(f"{n_problems} problems in {len(shapes)} shapes, {elapsed:.1f} s", file=sys.stderr)
    return results


def write(results: list[dict], args, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "precision.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(results[0]))
        w.writeheader()
        w.writerows(results)
    machine = f"{os.cpu_count()}-core {platform.machine()} CPU (one thread used), no GPU"
    lines = [
        "# Matcher export precisions vs the float64 reference",
        "",
        f"Machine: {machine}; torch {torch.__version__}. Settings: n_grad={args.n_grad}, "
        f"n_proj={args.n_proj}, lr={args.lr}; {results[0]['problems']} problems "
        f"({results[0]['rows']} rows), n in 1..10, m in 1..100, costs uniform in [-1, 0], "
        "greedy one-hot start. Command: `python bench/precision.py`.",
        "",
        "Errors are max/p99 over problems of the per-problem max absolute error of the relaxed "
        "assignment. 'end to end': against float64 from the float32 inputs (fp16 input rounding "
        "included). 'arithmetic': against float64 from the inputs the graph received. "
        "Argmax: rows whose `hard_assign` column equals the fp32 export's (or float64's).",
        "",
        "| precision | executed by | max err (end to end) | p99 err (end to end) "
        "| max err (arithmetic) | argmax rows = fp32 | argmax problems = fp32 "
        "| argmax rows = float64 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['precision']} | {r['runner']} | {r['max_abs_err']:.2e} | {r['p99_abs_err']:.2e} "
            f"| {r['max_abs_err_arith']:.2e} | {100 * r['argmax_rows_eq_fp32']:.2f}% "
            f"| {100 * r['argmax_problems_eq_fp32']:.2f}% | {100 * r['argmax_rows_eq_f64']:.2f}% |"
        )
    lines += [
        "",
        "fp16 is emulated: onnxruntime's CPU provider computes float16 graphs in float32, so the "
        "fp16 graph runs node by node in torch float16 (each node's result rounded to float16, "
        "reductions accumulated in float32). No TensorRT engine was run for these numbers.",
        "",
    ]
    (out / "precision.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", type=int, default=1000)
    p.add_argument("--shapes", type=int, default=100)
    p.add_argument("--n-grad", type=int, default=40)
    p.add_argument("--n-proj", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "cpu")
    args = p.parse_args(argv)
    from _common import check_out_arg

    check_out_arg(p, args.out)
    if args.problems < 1 or args.shapes < 1:
        p.error("--problems and --shapes must be positive")
    if args.n_grad < 1 or args.n_proj < 1:
        p.error("--n-grad and --n-proj must be positive")
    if not 0 < args.lr < float("inf"):
        p.error(f"--lr must be a positive finite number, got {args.lr}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    torch.set_num_threads(1)
    results = measure(args)
    write(results, args, args.out)
    for r in results:
        print(
            f"{r['precision']:6s} max err {r['max_abs_err']:.2e} (arith {r['max_abs_err_arith']:.2e})"
            f"  argmax rows = fp32 {100 * r['argmax_rows_eq_fp32']:.2f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
