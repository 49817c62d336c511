"""PTX statistics of the fused matcher kernels, compiled ahead of time without a GPU.

    python bench/kernel_ptx.py                     # -> bench/results/ptx/kernel_ptx.{csv,md}
    python bench/kernel_ptx.py --arch 90 --shapes 8x128 --kinds forward --out DIR

For each architecture (sm_80: A100, 108 SMs; sm_90: H100, 132 SMs), shape n x m and kernel kind
(``forward``, ``forward+bits``: the forward that also writes the bit planes for the backward,
``backward``), the kernel is compiled as the JIT compiles it for contiguous tensors of that
shape (:func:`kernels.matcher.compile_forward` / ``compile_backward`` with ``n``, ``m``), with
the layout that would run at B = 1 and B = 4096 (problems per program from
:func:`kernels.matcher.problems_per_program` with the architecture's SM count) and every warp
count the autotuner keeps for that tile (``_prune_warps``; which one wins is measured on a GPU,
not here). Reported per kernel:

* ``registers``, ``spill_stores``/``spill_loads`` (bytes per thread), ``shared_bytes``: from
  ``ptxas -v`` (the ptxas Triton ships) on the PTX, and Triton's shared-memory size;
* ``loop_instr``: PTX instructions in the body of the innermost loop (one inner step: the loop
  from a label to the last backward branch to it that contains no other such loop; the largest
  one when there are several), ``shfl`` and ``bar_sync`` in that body;
* ``per_element``: ``loop_instr`` divided by the tile elements each thread holds
  (``problems * BLOCK_N * BLOCK_M / (32 * num_warps)``).

The PTX counts are static (instructions in the loop text, before ptxas); they are what the
targets of the redesign are stated in. Compiling takes 1-30 s a kernel on a small CPU.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = ((5, 50), (8, 128), (16, 256), (32, 512), (64, 1024))
ARCHS = {80: 108, 90: 132}  # sm_XY -> SMs of the GPU the layout is planned for (A100, H100)
KINDS = ("forward", "forward+bits", "backward")
BATCHES = (1, 4096)
COLUMNS = [
    "arch",
    "variant",
    "kind",
    "n",
    "m",
    "batches",
    "problems",
    "num_warps",
    "elems_per_thread",
    "registers",
    "spill_stores",
    "spill_loads",
    "shared_bytes",
    "loop_instr",
    "per_element",
    "shfl",
    "bar_sync",
    "ptx_lines",
]
# The targets (8 x 128 at the B = 4096 layout; 5 x 50 at B = 1).
TARGETS = [
    "forward, 8x128, B=4096 layout: <= 12 instructions per element per inner step",
    "forward+bits: <= 1.4x the forward's",
    "0 bar.sync per inner step for m <= 512",
    "no spills through 32x512",
    "5x50 at B=1: <= 200 instructions per inner step",
]

_LABEL = re.compile(r"^(\$L__BB\d+_\d+):")
_BRANCH = re.compile(r"\bbra(?:\.uni)?\s+(\$L__BB\d+_\d+);")


def _instruction(line: str) -> str | None:
    """The instruction of a PTX line (comment stripped), or None for labels/directives."""
    text = line.split("//", 1)[0].strip()
    if not text or text[0] in ".${}" or text.endswith(":"):
        return None
    return text


def innermost_loop(ptx: str) -> list[str]:
    """Instructions of the largest innermost loop body of ``ptx`` (empty if it has no loop)."""
    lines = ptx.splitlines()
    labels = {}
    ends = {}  # loop header label -> line of its last backward branch
    for i, line in enumerate(lines):
        match = _LABEL.match(line)
        if match:
            labels[match.group(1)] = i
        match = _BRANCH.search(line)
        if match and match.group(1) in labels:
            ends[match.group(1)] = i
    # a loop spans its header to its last backward branch (a loop with a path that skips an
    # inner loop has several)
    loops = [(labels[label], end) for label, end in ends.items()]
    inner = [
        (a, b) for a, b in loops if not any(a < c and d <= b and (c, d) != (a, b) for c, d in loops)
    ]
    bodies = [[x for x in map(_instruction, lines[a : b + 1]) if x] for a, b in inner]
    return max(bodies, key=len, default=[])


def ptxas_info(ptx: str, arch: int) -> dict[str, int]:
    """Registers and spill bytes per thread as ``ptxas -v`` reports them for ``sm_<arch>``."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path if callable(get_ptxas) else get_ptxas().path
    target = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        proc = subprocess.run(
            [ptxas, "-v", f"-arch={target}", str(src), "-o", str(Path(tmp) / "kernel.cubin")],
            capture_output=True,
            text=True,
            check=True,
        )
    log = proc.stderr + proc.stdout
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return {
        "registers": int(regs.group(1)) if regs else -1,
        "spill_stores": int(spills.group(1)) if spills else 0,
        "spill_loads": int(spills.group(2)) if spills else 0,
    }


def kernel_stats(kernel, arch: int) -> dict:
    """Statistics of one compiled :class:`kernels.matcher.AotKernel`."""
    body = innermost_loop(kernel.ptx)
    stats = ptxas_info(kernel.ptx, arch)
    stats.update(
        shared_bytes=kernel.shared_bytes,
        loop_instr=len(body),
        shfl=sum("shfl.sync" in x for x in body),
        bar_sync=sum(x.startswith(("bar.sync", "barrier.sync")) for x in body),
        ptx_lines=kernel.ptx.count("\n"),
    )
    return stats


def layouts(n: int, m: int, sm_count: int, batches) -> dict[tuple[int, int], list[int]]:
    """``{(problems, num_warps): [batches using it]}`` the launcher and autotuner may pick."""
    import triton

    import kernels.matcher as km

    block_n, block_m = km.block_sizes(n, m)
    configs = [triton.Config({}, num_warps=w) for w in km._WARPS]
    out: dict[tuple[int, int], list[int]] = {}
    for b in batches:
        problems = km.problems_per_program(b, block_n, block_m, sm_count=sm_count)
        meta = {"PROBLEMS": problems, "BLOCK_N": block_n, "BLOCK_M": block_m}
        for config in km._prune_warps(configs, {}, **meta):
            out.setdefault((problems, config.num_warps), []).append(b)
    return out


def collect(archs, shapes, kinds, variants, batches, log=print) -> list[dict]:
    import kernels.matcher as km

    rows = []
    for arch in archs:
        for n, m in shapes:
            block_n, block_m = km.block_sizes(n, m)
            for (problems, warps), used_by in layouts(n, m, ARCHS[arch], batches).items():
                for variant in variants:
                    for kind in kinds:
                        common = dict(problems=problems, num_warps=warps, n=n, m=m)
                        common["variant"] = variant
                        t0 = time.perf_counter()
                        if kind == "backward":
                            kernel = km.compile_backward(arch, block_n, block_m, **common)
                        else:
                            save = kind == "forward+bits"
                            kernel = km.compile_forward(
                                arch, block_n, block_m, save_bits=save, **common
                            )
                        row = {"arch": f"sm_{arch}", "variant": variant, "kind": kind}
                        row.update(n=n, m=m, batches="/".join(f"B={b}" for b in used_by))
                        row.update(problems=problems, num_warps=warps)
                        row["elems_per_thread"] = problems * block_n * block_m // (32 * warps)
                        row.update(kernel_stats(kernel, arch))
                        row["per_element"] = row["loop_instr"] / max(row["elems_per_thread"], 1)
                        rows.append(row)
                        log(
                            f"sm_{arch} {variant} {kind} {n}x{m} P={problems} w={warps}: "
                            f"{row['registers']} regs, {row['spill_stores']} B spilled, "
                            f"{row['loop_instr']} instr/step ({row['per_element']:.1f}/elem), "
                            f"{row['shfl']} shfl, {row['bar_sync']} bar.sync "
                            f"[{time.perf_counter() - t0:.1f} s]"
                        )
    return rows


def write(out_dir: Path, rows: list[dict], command: str) -> None:
    from _common import machine_info, machine_markdown, markdown_table, write_csv

    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "kernel_ptx.csv", rows, COLUMNS)
    info = machine_info()
    info["triton"] = __import__("triton").__version__
    text = [
        "# PTX statistics of the fused matcher kernels (compiled ahead of time, no GPU)",
        "",
        f"Command: `{command}`",
        "",
        machine_markdown({k: info[k] for k in ("cpu", "triton", "torch", "date_utc", "commit")}),
        "",
        "Per inner step = the innermost loop body of the PTX (static count); `per_element` =",
        "that / tile elements a thread holds. Registers and spills: `ptxas -v` (CUDA 12.9, as",
        "shipped with Triton). `batches`: the batch sizes whose launch uses this layout",
        "(problems per program from the launcher's heuristic with the SM count of an A100 /",
        "H100); every warp count the autotuner keeps is listed (the winner is measured on a GPU).",
        "",
        "Targets (issue): " + "; ".join(TARGETS) + ".",
        "",
    ]
    for kind in KINDS:
        sel = [r for r in rows if r["kind"] == kind]
        if sel:
            text += [f"## {kind}", "", markdown_table(sel, COLUMNS), ""]
    (out_dir / "kernel_ptx.md").write_text("\n".join(text))


def _shape(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 8x128, got {text!r}") from None
    if not (1 <= n <= 64 and 1 <= m <= 1024):
        raise argparse.ArgumentTypeError(
            f"shape must have n in 1..64 and m in 1..1024 (the kernels' limits), got {text!r}"
        )
    return n, m


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, nargs="+", default=sorted(ARCHS), choices=sorted(ARCHS))
    p.add_argument("--shapes", type=_shape, nargs="+", default=list(SHAPES))
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--variants", nargs="+", default=["listing1"], choices=["listing1", "original"])
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "ptx")
    args = p.parse_args(argv)
    from _common import check_out_arg

    check_out_arg(p, args.out)
    if min(args.batches) < 1:
        p.error(f"--batches must be positive, got {args.batches}")
    command = "python bench/kernel_ptx.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = collect(args.arch, args.shapes, args.kinds, args.variants, args.batches)
    write(args.out, rows, command.strip())
    print(f"wrote {args.out}/kernel_ptx.csv and kernel_ptx.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
