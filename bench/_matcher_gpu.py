"""GPU mode of ``bench_matcher.py``: the fused Triton kernels against the other GPU paths.

    python bench/bench_matcher.py --device cuda          # -> bench/results/<gpu name>/
    python bench/bench_matcher.py --device interpret --tiny --out DIR   # CPU smoke run

Compared, in one run, on the same inputs (random costs, zero start, 40 x 5 iterations):

* ``triton``: ``dmm_match(..., backend="triton")``, one fused kernel launch per batch (plus
  one for the backward);
* ``eager``: the batched reference (:func:`match_reference`) on CUDA tensors;
* ``compile``: the same reference under ``torch.compile(dynamic=True)`` (compiled once per
  mode; the first call, compilation included, is reported as ``first_call_s``);
* ``ort``: the exported matcher on onnxruntime-gpu's CUDA provider with inputs and
  output bound on the device (forward only; skipped where the provider is missing).

Modes: ``forward`` (no autograd) and ``forward+backward`` (gradients of cost and x_init for a
fixed upstream gradient). Batches 1, 64, 4096; shapes 5 x 50, 8 x 128, 16 x 256, 32 x 512.
Times are ``triton.testing.do_bench`` medians with 20th/80th percentiles (ms); ``speedup`` is
the eager median over this row's median, from the same run.

Arithmetic floor: the algorithm's element-wise operations on the ``(B, n, m)`` state, counted
once per element: 7 per inner step (two reduction adds, subtract the row shift, add the
column shift, add P2, relu, P2 = X3 - X) and 2 per outer step (gradient step, running sum);
the backward 6 per inner step and 2 per outer step. The device's peak is measured in the same
run: lane operations per second = fp32 matmul flop/s (TF32 off) / 2, and the bandwidth of a
large device-to-device copy. ``floor_ms = max(ops / peak ops, minimal bytes / bandwidth)``
(minimal bytes: read cost and x_init, write the output, plus the upstream gradient and two
gradients for the backward); ``achieved`` is ``floor_ms / median_ms``. ``peak_mem_mb``: peak
CUDA memory of one forward+backward beyond its inputs.

``--device interpret`` runs the same code on CPU tensors with the kernels in Triton's
interpreter at a tiny size (``--tiny``), timed with repeated wall-clock calls, so that the
whole pipeline is exercised without a GPU; its numbers say nothing about GPU speed.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import _common
import numpy as np
import torch

BATCHES = (1, 64, 4096)
SHAPES = ((5, 50), (8, 128), (16, 256), (32, 512))
TINY_BATCHES = (1, 3)
TINY_SHAPES = ((3, 5), (2, 7))
IMPLS = ("triton", "eager", "compile", "ort")
MODES = ("forward", "forward+backward")
COLUMNS = [
    "mode",
    "impl",
    "B",
    "n",
    "m",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "speedup",
    "floor_ms",
    "achieved",
    "peak_mem_mb",
    "first_call_s",
    "max_abs_diff_vs_eager",
    "note",
]


def device_slug(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"`` (a results folder name)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def op_count(b: int, n: int, m: int, n_grad: int, n_proj: int, backward: bool) -> float:
    """Element-wise operations of one matching (see the module docstring)."""
    per_element = 7 * n_grad * n_proj + 2 * n_grad
    if backward:
        per_element += 6 * n_grad * n_proj + 2 * n_grad
    return float(b * n * m * per_element)


def min_bytes(b: int, n: int, m: int, itemsize: int, backward: bool) -> float:
    """Bytes any implementation must move: inputs read, outputs written, once."""
    tensors = 6 if backward else 3
    return float(tensors * b * n * m * itemsize)


class Timer:
    """Times callables on the benchmark's device: do_bench on CUDA, wall clock on the CPU."""

    def __init__(self, device: torch.device, quick: bool) -> None:
        self.device = device
        self.quick = quick

    def __call__(self, fn: Callable[[], object]) -> dict[str, float]:
        if self.device.type == "cuda":
            import triton.testing

            rep = 20 if self.quick else 200
            med, p20, p80 = triton.testing.do_bench(
                fn, warmup=10, rep=rep, quantiles=[0.5, 0.2, 0.8]
            )
            return {"median_ms": med, "p20_ms": p20, "p80_ms": p80}
        stats = _common.summarize(
            _common.time_calls(fn, warmup=1, min_repeats=3, max_repeats=5, budget_s=0.5)
        )
        return {k: stats[k] for k in ("median_ms", "p20_ms", "p80_ms")}


def measure_peaks(device: torch.device, timer: Timer) -> dict[str, float]:
    """Lane operations per second (fp32 matmul flop/s / 2) and copy bandwidth of ``device``."""
    size = 4096 if device.type == "cuda" else 256
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        t_mm = timer(lambda: torch.mm(a, b))["median_ms"] / 1e3
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    numel = (1 << 28) if device.type == "cuda" else (1 << 22)
    src = torch.empty(numel, device=device)
    dst = torch.empty_like(src)
    t_copy = timer(lambda: dst.copy_(src))["median_ms"] / 1e3
    return {
        "lane_ops_per_s": 2 * size**3 / t_mm / 2,
        "bytes_per_s": 2 * numel * 4 / t_copy,
    }


def _match_fn(impl: str, n_grad: int, n_proj: int, lr: float, cache: dict):
    from dmm_deploy.matching import dmm_match, match_reference

    if impl == "triton":
        return lambda c, x: dmm_match(
            c, x, n_grad=n_grad, n_proj=n_proj, lr=lr, backend="triton", check_finite=False
        )
    if impl == "eager":
        return lambda c, x: match_reference(c, x, n_grad, n_proj, lr)
    if impl == "compile":
        if "compile" not in cache:

            def reference(c, x):
                return match_reference(c, x, n_grad, n_proj, lr)

            cache["compile"] = torch.compile(reference, dynamic=True)
        return cache["compile"]
    raise ValueError(impl)


def _onnxruntime_fn(device: torch.device, n_grad: int, n_proj: int, lr: float, cache: dict):
    """A forward on onnxruntime with device-bound inputs, or ``(None, why not)``."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime not installed"
    provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        return None, f"{provider} not available (install onnxruntime-gpu)"
    if "ort" not in cache:
        from dmm_deploy.export.onnx_export import ExportOptions, export_matcher

        path = Path(tempfile.mkdtemp(prefix="dmm_bench_")) / "matcher.onnx"
        export_matcher(path, ExportOptions(n_grad=n_grad, n_proj=n_proj, lr=lr))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        cache["ort"] = ort.InferenceSession(str(path), options, providers=[provider])
    session = cache["ort"]
    kind = "cuda" if device.type == "cuda" else "cpu"
    index = (device.index or 0) if device.type == "cuda" else 0

    def run(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(c)
        binding = session.io_binding()
        for name, t in (("cost", c), ("x_init", x), ("assignment", out)):
            bind = binding.bind_output if name == "assignment" else binding.bind_input
            bind(name, kind, index, np.float32, list(t.shape), t.data_ptr())
        session.run_with_iobinding(binding)
        return out

    return run, ""


def _inputs(b: int, n: int, m: int, device: torch.device, seed: int):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(b, n, m, generator=g).neg_().to(device)
    x_init = torch.zeros(b, n, m, device=device)
    grad_out = torch.randn(b, n, m, generator=g).to(device)
    return cost, x_init, grad_out


def _step(match, mode: str, cost, x_init, grad_out) -> Callable[[], object]:
    if mode == "forward":

        def forward():
            with torch.no_grad():
                return match(cost, x_init)

        return forward
    c = cost.clone().requires_grad_()
    x = x_init.clone().requires_grad_()

    def forward_backward():
        return torch.autograd.grad(match(c, x), (c, x), grad_out)

    return forward_backward


def _as_tuple(result) -> tuple[torch.Tensor, ...]:
    return result if isinstance(result, tuple) else (result,)


def _peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def run_gpu_benchmark(
    device: str,
    out_dir: Path | None = None,
    *,
    tiny: bool = False,
    impls: Sequence[str] = IMPLS,
    n_grad: int = 40,
    n_proj: int = 5,
    lr: float = 0.1,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run the GPU comparison; write ``matcher_gpu.{csv,md,png}`` into ``out_dir``.

    device: ``"cuda"`` (results default to ``bench/results/<gpu name>/``) or ``"interpret"``
        (CPU tensors, kernels in Triton's interpreter; sets ``TRITON_INTERPRET=1``, which must
        happen before the kernels are first imported in this process).
    tiny: batches 1, 3 and shapes 3 x 5, 2 x 7 instead of the full grid (with
        ``n_grad``, ``n_proj`` as given: pass small ones for a smoke run).
    impls: a subset of ``("triton", "eager", "compile", "ort")``.
    Returns the rows written.
    """
    unknown = set(impls) - set(IMPLS)
    if unknown:
        raise ValueError(f"impls must be among {IMPLS}, got {sorted(unknown)}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda needs a CUDA device; use --device interpret on CPU")
        dev = torch.device("cuda", torch.cuda.current_device())
        dev_name = torch.cuda.get_device_name(dev)
    elif device == "interpret":
        os.environ["TRITON_INTERPRET"] = "1"
        dev = torch.device("cpu")
        dev_name = f"{_common.cpu_model()} (Triton interpreter)"
    else:
        raise ValueError(f"device must be 'cuda' or 'interpret', got {device!r}")
    out_dir = (
        Path(out_dir)
        if out_dir is not None
        else _common.REPO_ROOT / "bench" / "results" / device_slug(dev_name)
    )
    batches, shapes = (TINY_BATCHES, TINY_SHAPES) if tiny else (BATCHES, SHAPES)
    timer = Timer(dev, quick=tiny)
    peaks = measure_peaks(dev, timer)
    log(
        f"{dev_name}: {peaks['lane_ops_per_s'] / 1e12:.2f} T lane-ops/s, "
        f"{peaks['bytes_per_s'] / 1e9:.0f} GB/s"
    )
    cache: dict = {}
    rows: list[dict] = []
    for mode in MODES:
        for n, m in shapes:
            for b in batches:
                cost, x_init, grad_out = _inputs(b, n, m, dev, seed=b * 1000 + n)
                backward = mode != "forward"
                ops = op_count(b, n, m, n_grad, n_proj, backward)
                floor_s = max(
                    ops / peaks["lane_ops_per_s"],
                    min_bytes(b, n, m, cost.element_size(), backward) / peaks["bytes_per_s"],
                )
                case_rows = []
                want = None  # the eager result (output or gradients), run first
                for impl in sorted(impls, key=lambda i: i != "eager"):
                    row = {"mode": mode, "impl": impl, "B": b, "n": n, "m": m, "note": ""}
                    row["floor_ms"] = floor_s * 1e3
                    case_rows.append(row)
                    if impl == "ort":
                        if backward:
                            row["note"] = "no backward in onnxruntime"
                            continue
                        match, why = _onnxruntime_fn(dev, n_grad, n_proj, lr, cache)
                        if match is None:
                            row["note"] = why
                            continue
                    else:
                        match = _match_fn(impl, n_grad, n_proj, lr, cache)
                    fn = _step(match, mode, cost, x_init, grad_out)
                    try:
                        t0 = time.perf_counter()
                        got = fn()
                        if dev.type == "cuda":
                            torch.cuda.synchronize(dev)
                        row["first_call_s"] = time.perf_counter() - t0
                        got = torch.cat([t.detach().flatten() for t in _as_tuple(got)])
                        want = got if impl == "eager" else want
                        if want is not None:
                            row["max_abs_diff_vs_eager"] = (got - want).abs().max().item()
                        del got
                        row.update(timer(fn))
                        if backward and dev.type == "cuda":
                            row["peak_mem_mb"] = _peak_memory_mb(fn, dev)
                    except torch.cuda.OutOfMemoryError:
                        row["note"] = "out of memory"
                    if row["note"]:  # the failed graph is released with the exception
                        torch.cuda.empty_cache()
                        continue
                    row["achieved"] = row["floor_ms"] / row["median_ms"]
                eager = next(
                    (r for r in case_rows if r["impl"] == "eager" and "median_ms" in r), None
                )
                for row in case_rows:
                    if eager is not None and "median_ms" in row:
                        row["speedup"] = eager["median_ms"] / row["median_ms"]
                    log(_common.markdown_table([row], COLUMNS).splitlines()[-1])
                rows.extend(sorted(case_rows, key=lambda r: IMPLS.index(r["impl"])))
                del cost, x_init, grad_out, want

    info = _common.machine_info()
    info["device"] = dev_name
    info["triton"] = _common._version("triton")
    info["iterations"] = f"{n_grad} x {n_proj}, lr {lr}"
    info["measured_peak"] = (
        f"{peaks['lane_ops_per_s'] / 1e12:.3f} T fp32 lane-ops/s (matmul flop/s / 2), "
        f"{peaks['bytes_per_s'] / 1e9:.1f} GB/s copy bandwidth"
    )
    _write(out_dir, rows, info)
    log(f"wrote {out_dir}/matcher_gpu.csv, .md, .png")
    return rows


def _write(out_dir: Path, rows: list[dict], info: dict[str, str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    _common.write_csv(out_dir / "matcher_gpu.csv", rows, COLUMNS)
    text = [
        "# DMM matcher on the GPU: fused Triton kernels vs eager, torch.compile, onnxruntime",
        "",
        _common.machine_markdown(info),
        "",
        "Times in ms (median, p20, p80 of `triton.testing.do_bench` on CUDA). `speedup`: eager",
        "median / this median, same run. `floor_ms`: arithmetic/bandwidth floor from the",
        "operation count and the measured peaks; `achieved` = floor / median.",
        "",
    ]
    for mode in MODES:
        text += [
            f"## {mode}",
            "",
            _common.markdown_table([r for r in rows if r["mode"] == mode], COLUMNS),
            "",
        ]
    (out_dir / "matcher_gpu.md").write_text("\n".join(text))
    _plot(out_dir / "matcher_gpu.png", rows, info["device"])


def _plot(path: Path, rows: list[dict], device_name: str) -> None:
    plt = _common.pyplot()
    fig, axes = plt.subplots(1, len(MODES), figsize=(13, 4.5), sharey=True)
    for ax, mode in zip(axes, MODES, strict=True):
        mode_rows = [r for r in rows if r["mode"] == mode]
        cases = sorted({(r["n"], r["m"], r["B"]) for r in mode_rows})
        labels = [f"{n}x{m}\nB={b}" for n, m, b in cases]
        for impl in IMPLS:
            ys = []
            for case in cases:
                match = [
                    r for r in mode_rows if r["impl"] == impl and (r["n"], r["m"], r["B"]) == case
                ]
                ys.append(match[0].get("median_ms", np.nan) if match else np.nan)
            if not np.all(np.isnan(ys)):
                ax.plot(range(len(cases)), ys, marker="o", label=impl)
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_title(mode)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("median time (ms)")
    axes[0].legend()
    fig.suptitle(f"DMM matcher, {device_name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
