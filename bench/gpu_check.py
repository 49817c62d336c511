"""The prepared GPU check: the first thing to run on a machine with a CUDA GPU.

    python bench/gpu_check.py                      # -> bench/results/<gpu name>/gpu_check.*
    python bench/gpu_check.py --dry-run --out DIR  # no GPU: the same steps, tiny, interpreted

About 5 minutes on an H100/H200 (budget: 8), in this order, each step timed and recorded:

1. ``tests``: the gpu-marked tests and the kernel tests (``tests/test_triton_kernels.py``, not
   slow), which run compiled on the GPU when one is present, under one wall-clock budget;
2. ``correctness``: the fused kernels against the float64 batched reference on CUDA, forward
   and backward, both variants, at B = 1 (5 x 50), 64 (8 x 128, padded sizes, the packed
   layouts of 1, 2, 4, 8 problems a program forced) and 4096 (8 x 128), 40 x 5 iterations,
   lr 0.1; NaN propagation; tolerances 1e-5 (forward) and 1e-4 (backward) of the largest value;
3. ``benchmarks``: B = 1 5 x 50 forward, launched plainly and replayed from a CUDA graph
   (:class:`dmm_deploy.matching.triton_backend.CudaGraphMatcher`); B = 4096 8 x 128 forward
   and forward + backward; peak memory of one forward + backward against autograd through the
   reference (``triton.testing.do_bench`` medians; the arithmetic floor as in
   ``bench/_matcher_gpu.py``, from the device's peaks measured in the same run);
4. ``compile``: a torch.compile (inductor, fullgraph) smoke run of a loss through the Triton
   backend, value and gradient against the reference;
5. the verdict table against the targets: B = 1 5 x 50 <= 25 us (graph replay); B = 4096
   8 x 128 forward <= 2x the arithmetic floor; forward + backward <= 3x forward; memory <= 1/10
   of autograd's; every correctness check passing.

Results: ``gpu_check.md`` (verdicts first) and ``gpu_check.json`` in ``--out`` (default
``bench/results/<gpu name>/``). Exit status 0 when every verdict passes, 1 otherwise, 2 when
there is no GPU (one line on stderr) or an argument is wrong.

``--dry-run`` runs every step on CPU tensors with the kernels in Triton's interpreter at tiny
sizes (B in {1, 3}, 3 x 5 and 2 x 7, 3 x 2 iterations; torch.compile with the aot_eager backend;
no CUDA graph, no peak memory, no tests): it proves the script works, its numbers say nothing
about a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGETS = {
    "b1_graph_us": 25.0,  # B = 1, 5 x 50, forward, one graph replay
    "fwd_over_floor": 2.0,  # B = 4096, 8 x 128, forward / arithmetic floor
    "fwdbwd_over_fwd": 3.0,  # B = 4096, 8 x 128, forward + backward / forward
    "memory_fraction": 0.1,  # peak memory of forward + backward / autograd's
}
TOLERANCES = {"forward": 1e-5, "backward": 1e-4}  # of the largest reference value, float32


class Config:
    """Sizes of one run: the GPU check or its dry run."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        if dry_run:
            self.n_grad, self.n_proj, self.lr = 3, 2, 0.1
            self.cases = [(1, 3, 5), (3, 2, 7)]  # (B, n, m) of the correctness step
            self.packed_case = (3, 2, 7)
            self.b1_shape = (1, 3, 5)
            self.big_shape = (3, 2, 7)
            self.compile_shape = (2, 3, 5)
        else:
            self.n_grad, self.n_proj, self.lr = 40, 5, 0.1
            self.cases = [(1, 5, 50), (64, 8, 128), (4096, 8, 128)]
            self.packed_case = (64, 8, 128)
            self.b1_shape = (1, 5, 50)
            self.big_shape = (4096, 8, 128)
            self.compile_shape = (64, 8, 128)


def _inputs(b: int, n: int, m: int, device, seed: int, dtype=None):
    import torch

    g = torch.Generator().manual_seed(seed)
    cost = torch.randn(b, n, m, generator=g, dtype=torch.float64)
    x_init = torch.rand(b, n, m, generator=g, dtype=torch.float64) / m
    grad_out = torch.randn(b, n, m, generator=g, dtype=torch.float64)
    return tuple(
        t.to(device=device, dtype=dtype or torch.float64) for t in (cost, x_init, grad_out)
    )


def _rel_err(actual, expected) -> float:
    import torch

    scale = expected.abs().max().item()
    err = (actual.double() - expected.double()).abs().max().item()
    if math.isnan(err) or bool(torch.isnan(actual).any()):
        return math.inf
    return err / max(scale, 1e-12)


def _reference(variant: str):
    """The batched reference of ``variant``, with match_reference's positional arguments."""
    from dmm_deploy.matching import match_reference

    def reference(cost, x_init, n_grad, n_proj, lr, sizes=None):
        return match_reference(cost, x_init, n_grad, n_proj, lr, sizes, variant=variant)

    return reference


def check_correctness(cfg: Config, device, log: Callable[[str], None]) -> list[dict]:
    """Kernels against the float64 reference: forward, both gradients, both variants."""
    import torch

    import kernels.matcher as km

    rows = []

    def compare(name, variant, b, n, m, sizes=None, problems=None):
        reference = _reference(variant)
        cost, x_init, grad_out = _inputs(b, n, m, device, seed=b * 7 + n)
        row = {"check": name, "variant": variant, "B": b, "n": n, "m": m}
        c64, x64 = cost.clone().requires_grad_(), x_init.clone().requires_grad_()
        ref = reference(c64, x64, cfg.n_grad, cfg.n_proj, cfg.lr, sizes)
        ref_grads = torch.autograd.grad(ref, (c64, x64), grad_out)
        f32 = [t.float() for t in (cost, x_init, grad_out)]
        out, r_bits, a_bits = km.matcher_forward(
            f32[0], f32[1], cfg.n_grad, cfg.n_proj, cfg.lr, sizes, save_bits=True,
            problems=problems, variant=variant,
        )  # fmt: skip
        grads = km.matcher_backward(
            f32[2], r_bits, a_bits, cfg.n_grad, cfg.n_proj, cfg.lr, sizes,
            problems=problems, variant=variant,
        )  # fmt: skip
        row["fwd_err"] = _rel_err(out, ref)
        row["bwd_err"] = max(_rel_err(a, e) for a, e in zip(grads, ref_grads, strict=True))
        row["ok"] = row["fwd_err"] <= TOLERANCES["forward"] and (
            row["bwd_err"] <= TOLERANCES["backward"]
        )
        rows.append(row)
        log(f"  {name} {variant} B={b} {n}x{m}: fwd {row['fwd_err']:.2e} bwd {row['bwd_err']:.2e}")
        del ref, ref_grads, out, grads, r_bits, a_bits

    for variant in km.VARIANTS:
        for b, n, m in cfg.cases:
            compare("random", variant, b, n, m)
        b, n, m = cfg.packed_case
        sizes = torch.stack([torch.arange(b) % n + 1, torch.arange(b) * 7 % m + 1], dim=1).to(
            device
        )
        compare("padded", variant, b, n, m, sizes)
        for problems in (1, 2, 4, 8):
            compare(f"packed_{problems}", variant, b, n, m, sizes, problems)

    # NaN inside a problem: the reference's NaN positions, the neighbours untouched
    cost, x_init, _ = _inputs(4, 3, 5, device, seed=99, dtype=torch.float32)
    cost[1, 0, 2] = math.nan
    out, _, _ = km.matcher_forward(cost, x_init, cfg.n_grad, cfg.n_proj, cfg.lr)
    ref = _reference("listing1")(cost, x_init, cfg.n_grad, cfg.n_proj, cfg.lr)
    same = torch.equal(torch.isnan(out), torch.isnan(ref))
    rows.append({"check": "nan", "variant": "listing1", "B": 4, "n": 3, "m": 5, "ok": same})
    log(f"  nan propagation: {'same positions' if same else 'DIFFERENT positions'}")
    return rows


def run_benchmarks(cfg: Config, device, log: Callable[[str], None]) -> dict:
    """Timings (ms, medians) and peak memory (MB); keys as in the verdict table."""
    import torch
    from _matcher_gpu import Timer, _peak_memory_mb, measure_peaks, min_bytes, op_count

    import kernels.matcher as km
    from dmm_deploy.matching import dmm_match, match_reference
    from dmm_deploy.matching.triton_backend import CudaGraphMatcher

    cuda = device.type == "cuda"
    timer = Timer(device, quick=True)
    res: dict = {}
    peaks = measure_peaks(device, timer)
    res["peaks"] = peaks
    it = (cfg.n_grad, cfg.n_proj, cfg.lr)

    b, n, m = cfg.b1_shape
    cost, x_init, _ = _inputs(b, n, m, device, seed=1, dtype=torch.float32)
    with torch.no_grad():
        res["b1_plain_ms"] = timer(lambda: km.matcher_forward(cost, x_init, *it))["median_ms"]
    log(f"  B={b} {n}x{m} forward, plain launch: {res['b1_plain_ms'] * 1e3:.1f} us")
    if cuda:
        runner = CudaGraphMatcher(*it)
        want = match_reference(cost, x_init, *it)
        res["b1_graph_err"] = _rel_err(runner(cost, x_init), want)
        graph = runner._graphs[next(iter(runner._graphs))][0]
        res["b1_graph_ms"] = timer(graph.replay)["median_ms"]
        res["b1_runner_ms"] = timer(lambda: runner(cost, x_init))["median_ms"]
        log(
            f"  B={b} {n}x{m} forward, CUDA graph replay: {res['b1_graph_ms'] * 1e3:.1f} us "
            f"(whole runner call {res['b1_runner_ms'] * 1e3:.1f} us, err {res['b1_graph_err']:.1e})"
        )

    b, n, m = cfg.big_shape
    cost, x_init, grad_out = _inputs(b, n, m, device, seed=2, dtype=torch.float32)
    res["fwd_ms"] = timer(lambda: km.matcher_forward(cost, x_init, *it))["median_ms"]
    floor_s = max(
        op_count(b, n, m, cfg.n_grad, cfg.n_proj, False) / peaks["lane_ops_per_s"],
        min_bytes(b, n, m, 4, False) / peaks["bytes_per_s"],
    )
    res["fwd_floor_ms"] = floor_s * 1e3
    c = cost.clone().requires_grad_()
    x = x_init.clone().requires_grad_()

    def triton_fwd_bwd():
        out = dmm_match(c, x, n_grad=it[0], n_proj=it[1], lr=it[2], backend="triton",
                        check_finite=False)  # fmt: skip
        return torch.autograd.grad(out, (c, x), grad_out)

    def reference_fwd_bwd():
        return torch.autograd.grad(match_reference(c, x, *it), (c, x), grad_out)

    res["fwdbwd_ms"] = timer(triton_fwd_bwd)["median_ms"]
    log(
        f"  B={b} {n}x{m}: forward {res['fwd_ms']:.3f} ms (floor {res['fwd_floor_ms']:.3f} ms), "
        f"forward+backward {res['fwdbwd_ms']:.3f} ms"
    )
    if cuda:
        res["mem_triton_mb"] = _peak_memory_mb(triton_fwd_bwd, device)
        res["mem_autograd_mb"] = _peak_memory_mb(reference_fwd_bwd, device)
        log(
            f"  peak memory of forward+backward: kernels {res['mem_triton_mb']:.1f} MB, "
            f"autograd through the reference {res['mem_autograd_mb']:.1f} MB"
        )
    return res


def compile_smoke(cfg: Config, device, log: Callable[[str], None]) -> dict:
    """torch.compile(fullgraph) of a loss through the Triton backend against the reference."""
    import torch

    from dmm_deploy.matching import dmm_match, match_reference

    it = (cfg.n_grad, cfg.n_proj, cfg.lr)

    def loss(cost, x_init):
        out = dmm_match(cost, x_init, n_grad=it[0], n_proj=it[1], lr=it[2], backend="triton")
        return (out * out).sum()

    backend = "aot_eager" if cfg.dry_run else "inductor"
    torch._dynamo.reset()
    cost, x_init, _ = _inputs(*cfg.compile_shape, device, seed=3, dtype=torch.float32)
    c1 = cost.clone().requires_grad_()
    t0 = time.perf_counter()
    value = torch.compile(loss, fullgraph=True, backend=backend)(c1, x_init)
    value.backward()
    seconds = time.perf_counter() - t0
    c2 = cost.clone().requires_grad_()
    expected = (match_reference(c2, x_init, *it) ** 2).sum()
    expected.backward()
    res = {
        "backend": backend,
        "first_call_s": seconds,
        "value_err": _rel_err(value.detach(), expected.detach()),
        "grad_err": _rel_err(c1.grad, c2.grad),
    }
    res["ok"] = res["value_err"] <= TOLERANCES["forward"] and (
        res["grad_err"] <= TOLERANCES["backward"]
    )
    log(
        f"  torch.compile({backend}): value err {res['value_err']:.1e}, grad err "
        f"{res['grad_err']:.1e}, first call {seconds:.1f} s"
    )
    return res


def run_tests(repo_root: Path, budget_s: float, log: Callable[[str], None]) -> dict:
    """The gpu-marked tests and the (not slow) kernel tests, compiled on the GPU."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
    cmd += ["-m", "gpu or not slow", "tests/test_triton_kernels.py"]
    gpu_marked = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu"]
    results = {}
    for name, command in (("kernel tests", cmd), ("gpu-marked tests", [*gpu_marked, "tests"])):
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                command, cwd=repo_root, capture_output=True, text=True, timeout=budget_s,
                check=False,
            )  # fmt: skip
            tail = (proc.stdout.strip().splitlines() or [""])[-1]
            ok = proc.returncode in (0, 5)  # 5: nothing selected
        except subprocess.TimeoutExpired:
            tail, ok = f"timed out after {budget_s:.0f} s", False
        results[name] = {"ok": ok, "summary": tail, "seconds": time.perf_counter() - t0}
        log(f"  {name}: {tail}")
    return results


def verdicts(cfg: Config, correctness, bench, compiled, tests) -> list[dict]:
    """One row per target: what was measured, the target, PASS / FAIL / n/a."""

    def row(name, target, value, ok, fmt="{:.3g}"):
        shown = "n/a" if value is None else fmt.format(value)
        verdict = "n/a" if ok is None else ("PASS" if ok else "FAIL")
        return {"check": name, "target": target, "measured": shown, "verdict": verdict}

    rows = []
    failed = [f"{r['check']}/{r['variant']}/B={r['B']}" for r in correctness if not r["ok"]]
    rows.append(
        row(
            "kernels vs float64 reference",
            "fwd <= 1e-5, bwd <= 1e-4, NaN as reference",
            len(correctness) - len(failed),
            not failed,
            "{} checks pass" + (f" (failed: {', '.join(failed)})" if failed else ""),
        )
    )
    graph_ms = bench.get("b1_graph_ms")
    rows.append(
        row(
            "B=1 5x50 forward, CUDA graph",
            f"<= {TARGETS['b1_graph_us']:.0f} us",
            None if graph_ms is None else graph_ms * 1e3,
            None if graph_ms is None or cfg.dry_run else graph_ms * 1e3 <= TARGETS["b1_graph_us"],
            "{:.1f} us",
        )
    )
    ratio = bench["fwd_ms"] / bench["fwd_floor_ms"]
    rows.append(
        row(
            "B=4096 8x128 forward / arithmetic floor",
            f"<= {TARGETS['fwd_over_floor']:.0f}x",
            ratio,
            None if cfg.dry_run else ratio <= TARGETS["fwd_over_floor"],
            "{:.2f}x",
        )
    )
    ratio = bench["fwdbwd_ms"] / bench["fwd_ms"]
    rows.append(
        row(
            "B=4096 8x128 forward+backward / forward",
            f"<= {TARGETS['fwdbwd_over_fwd']:.0f}x",
            ratio,
            None if cfg.dry_run else ratio <= TARGETS["fwdbwd_over_fwd"],
            "{:.2f}x",
        )
    )
    mem = bench.get("mem_triton_mb")
    frac = None if mem is None else mem / bench["mem_autograd_mb"]
    rows.append(
        row(
            "peak memory fwd+bwd / autograd",
            f"<= {TARGETS['memory_fraction']:.2f}",
            frac,
            None if frac is None else frac <= TARGETS["memory_fraction"],
            "{:.3f}",
        )
    )
    rows.append(
        row(
            f"torch.compile ({compiled['backend']}) smoke",
            "value 1e-5, grad 1e-4",
            compiled["grad_err"],
            compiled["ok"],
            "grad err {:.1e}",
        )
    )
    for name, res in tests.items():
        rows.append(row(name, "pass", None, res["ok"]) | {"measured": res["summary"]})
    return rows


def _write(out_dir: Path, header: dict, rows: list[dict], details: dict) -> None:
    from _common import machine_markdown, markdown_table

    out_dir.mkdir(parents=True, exist_ok=True)
    text = [
        "# GPU check of the fused matcher kernels",
        "",
        machine_markdown(header),
        "",
        "## Verdicts",
        "",
        markdown_table(rows, ["check", "target", "measured", "verdict"]),
        "",
        "## Correctness (relative to the largest reference value)",
        "",
        markdown_table(
            details["correctness"],
            ["check", "variant", "B", "n", "m", "fwd_err", "bwd_err", "ok"],
        ),
        "",
        "## Benchmarks (medians, ms; memory in MB)",
        "",
        "\n".join(
            f"- {k}: {v:.4g}" for k, v in details["benchmarks"].items() if isinstance(v, float)
        ),
        "",
    ]
    (out_dir / "gpu_check.md").write_text("\n".join(text))
    payload = {"machine": header, "verdicts": rows, **details}
    (out_dir / "gpu_check.json").write_text(json.dumps(payload, indent=1, default=str))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny sizes")
    p.add_argument("--out", type=Path, default=None, help="results folder")
    p.add_argument("--skip-tests", action="store_true", help="skip step 1 (pytest)")
    p.add_argument(
        "--tests-budget", type=float, default=240.0, help="seconds for each pytest run (step 1)"
    )
    args = p.parse_args(argv)
    from _common import check_out_arg

    check_out_arg(p, args.out)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_check: error: no CUDA device (torch.cuda.is_available() is False); "
            "use --dry-run to exercise the script on the CPU",
            file=sys.stderr,
        )
        return 2

    import _common
    from _matcher_gpu import device_slug

    cfg = Config(args.dry_run)
    if args.dry_run:
        device = torch.device("cpu")
        name = f"{_common.cpu_model()} (Triton interpreter, dry run)"
    else:
        device = torch.device("cuda", torch.cuda.current_device())
        name = torch.cuda.get_device_name(device)
    out_dir = args.out or _common.REPO_ROOT / "bench" / "results" / device_slug(name)
    header = _common.machine_info() | {"device": name, "triton": _common._version("triton")}
    header["iterations"] = f"{cfg.n_grad} x {cfg.n_proj}, lr {cfg.lr}"
    log = print
    t_start = time.perf_counter()
    details: dict = {}
    log(f"gpu_check on {name}")
    if args.skip_tests or args.dry_run:
        tests = {}
    else:
        log("[1/4] tests")
        tests = run_tests(_common.REPO_ROOT, args.tests_budget, log)
    details["tests"] = tests
    log("[2/4] kernels against the float64 reference")
    details["correctness"] = check_correctness(cfg, device, log)
    log("[3/4] benchmarks")
    details["benchmarks"] = run_benchmarks(cfg, device, log)
    log("[4/4] torch.compile smoke run")
    details["compile"] = compile_smoke(cfg, device, log)
    rows = verdicts(cfg, details["correctness"], details["benchmarks"], details["compile"], tests)
    details["seconds"] = time.perf_counter() - t_start
    _write(out_dir, header, rows, details)
    log(_common.markdown_table(rows, ["check", "target", "measured", "verdict"]))
    log(f"wrote {out_dir}/gpu_check.md and gpu_check.json ({details['seconds']:.0f} s)")
    return 1 if any(r["verdict"] == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
