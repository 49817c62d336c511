"""Convergence of the matcher on random costs: the supplement's Fig. 5, and an accuracy table.

Part 1 (Fig. 5 of the DMM-Net supplement). Three random 5 x 100 costs, entries uniform in
[0, 1); ten random initial assignments for each; ``N_proj = 50`` and ``lr`` in {0.005, 0.01}.
All 30 runs of one ``lr`` are one batched call of the reference
(``dmm_match(..., return_info=True)``, float64). Recorded per outer step ``k``:

* ``objective``: ``Tr(C X_k^T)`` of the iterate after outer step ``k`` (``k = 0``: the start);
* ``mean_objective``: ``Tr(C Xbar_k^T)`` of the mean of iterates ``0..k``, i.e. what the layer
  returns when run for ``k`` outer steps (the objective is linear, so it is the running mean
  of ``objective``);
* the exact optimum of the LP (``exact_assign``), the reference line.

The projection error of inner step ``j`` of outer step ``k`` is the largest constraint
violation of the iterate after the ``j``-th Dykstra cycle:
``max(max_i |sum_j X_ij - 1|, max_j max(sum_i X_ij - 1, 0), max_ij max(-X_ij, 0))``
(``MatchInfo.inner_feasibility``).

Initial assignments (``--init``): ``onehot`` (default) draws a random feasible 0/1
assignment (each row one column, columns distinct); ``dense`` draws uniform [0, 1) entries
and normalises every row to sum 1.

Part 2 (table). 1000 random problems, ``n`` uniform in 1..10, ``m`` uniform in n..100, costs
uniform in [0, 1), padded to one ``(1000, 10, 100)`` float32 batch with ``sizes``, solved by
one batched call per setting, start and matcher variant (``--variants``, default both:
``listing1``, the specification, and ``original``, the original code's ``relax_match``), from
zeros and from the greedy start; every variant sees the same problems and the same starts.
Reported: relative objective gap ``(Tr(C Xhat^T) - opt) / |opt|`` of the returned ``Xhat``,
its constraint violation, the agreement of ``hard_assign(Xhat)`` (row argmax) with
``exact_assign`` and with ``listing1``'s row argmax in the same cell, and the outer steps
taken (``MatchInfo.steps``: fewer than ``N_grad`` where ``original``'s early exit fired). The ``original`` variant returns the mean
of pre-projection iterates, infeasible by construction, so its gap and violation describe
that mean, not a feasible assignment; its row argmax is what the original code uses.

Part 1 runs the ``listing1`` variant only (the supplement's figure is of Listing 1).

Outputs (``--out``, default ``bench/results/cpu``): ``convergence.png``,
``convergence_curves.csv``, ``convergence_inner.csv``, ``convergence_table.csv``,
``convergence.md``. ``--table-only`` runs Part 2 alone and writes ``convergence_table.csv``
and ``convergence_table.md`` (``convergence.md`` and the curves are left as they are).
``--quick`` runs a tiny version (for the smoke test).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_OUT,
    machine_info,
    machine_markdown,
    markdown_table,
    pyplot,
    write_csv,
)

from dmm_deploy.matching import VARIANTS, dmm_match, exact_assign, greedy_init, hard_assign

# (n_grad, n_proj, lr) of the accuracy table: the video setting of the original code, the
# video iteration counts at the paper's lr, and the paper's random-cost setting.
TABLE_SETTINGS = ((40, 5, 0.1), (40, 5, 0.01), (400, 50, 0.01))
QUICK_TABLE_SETTINGS = ((4, 2, 0.1), (8, 3, 0.01))
INNER_STEPS_SAVED = (1, 2, 5, 10, 20, 50, 100, 200, 300, 400, 500)


def random_inits(
    g: torch.Generator, count: int, n: int, m: int, kind: str, dtype: torch.dtype
) -> torch.Tensor:
    """``count`` random starts ``(count, n, m)``: random one-hot assignments or dense rows."""
    if kind == "onehot":
        cols = torch.stack([torch.randperm(m, generator=g)[:n] for _ in range(count)])
        x = torch.zeros(count, n, m, dtype=dtype)
        return x.scatter_(-1, cols[..., None], 1.0)
    if kind == "dense":
        x = torch.rand(count, n, m, generator=g, dtype=dtype)
        return x / x.sum(-1, keepdim=True)
    raise ValueError(f"init must be 'onehot' or 'dense', got {kind!r}")


def optimum(cost: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """Exact optimum ``min Tr(C X^T)`` of every problem of ``cost (B, n, m)``, float64."""
    cols = exact_assign(cost, sizes)
    rows = cols >= 0
    picked = cost.double().gather(-1, cols.clamp(min=0)[..., None])[..., 0]
    return (picked * rows).sum(-1)


def run_curves(args) -> tuple[list[dict], list[dict], dict]:
    """Part 1: the objective/projection-error curves; returns CSV rows and arrays to plot."""
    n, m = 5, 100
    g = torch.Generator().manual_seed(args.seed)
    costs = torch.rand(args.matrices, n, m, generator=g, dtype=torch.float64)
    inits = torch.stack(
        [random_inits(g, args.inits, n, m, args.init, torch.float64) for _ in costs]
    )  # (matrices, inits, n, m)
    opt = optimum(costs)  # (matrices,)
    batch_cost = costs[:, None].expand(-1, args.inits, -1, -1).reshape(-1, n, m)
    batch_init = inits.reshape(-1, n, m)
    start_obj = (batch_cost * batch_init).sum((-2, -1))  # (B,)

    curve_rows, inner_rows, plot = [], [], {"opt": opt.numpy(), "lrs": {}}
    for lr in args.lrs:
        t0 = time.perf_counter()
        _, info = dmm_match(
            batch_cost,
            batch_init.clone(),
            n_grad=args.n_grad,
            n_proj=args.n_proj,
            lr=lr,
            backend="torch",
            return_info=True,
        )
        elapsed = time.perf_counter() - t0
        print(f"curves lr={lr}: {batch_cost.shape[0]} runs in {elapsed:.1f} s", flush=True)
        obj = torch.cat([start_obj[:, None], info.objective], dim=1)  # (B, n_grad + 1)
        steps = torch.arange(obj.shape[1], dtype=torch.float64)
        mean_obj = obj.cumsum(1) / (steps + 1)
        feas = info.feasibility
        shape = (args.matrices, args.inits, -1)
        obj, mean_obj, feas = (t.reshape(shape).numpy() for t in (obj, mean_obj, feas))
        inner = info.inner_feasibility.reshape(args.matrices, args.inits, args.n_grad, -1)
        inner = inner.numpy()
        plot["lrs"][lr] = {"obj": obj, "mean_obj": mean_obj, "inner": inner}
        for i in range(args.matrices):
            for k in range(obj.shape[-1]):
                curve_rows.append(
                    {
                        "matrix": i + 1,
                        "lr": lr,
                        "n_proj": args.n_proj,
                        "outer_step": k,
                        "objective_mean": obj[i, :, k].mean(),
                        "objective_std": obj[i, :, k].std(),
                        "mean_objective_mean": mean_obj[i, :, k].mean(),
                        "mean_objective_std": mean_obj[i, :, k].std(),
                        "feasibility_mean": feas[i, :, k - 1].mean() if k else float("nan"),
                        "exact_optimum": float(opt[i]),
                    }
                )
            for k in INNER_STEPS_SAVED:
                if k > args.n_grad:
                    continue
                for j in range(inner.shape[-1]):
                    vals = inner[i, :, k - 1, j]
                    inner_rows.append(
                        {
                            "matrix": i + 1,
                            "lr": lr,
                            "outer_step": k,
                            "inner_step": j + 1,
                            "projection_error_mean": vals.mean(),
                            "projection_error_std": vals.std(),
                            "projection_error_max": vals.max(),
                        }
                    )
    return curve_rows, inner_rows, plot


def plot_curves(plot: dict, args, path: Path) -> None:
    """Fig. 5 layout: per cost matrix, the objective (top) and the projection error (bottom)."""
    plt = pyplot()
    mats = args.matrices
    fig, axes = plt.subplots(2, mats, figsize=(5.2 * mats, 8.0), squeeze=False)
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    shown = [k for k in (1, 10, args.n_grad) if k <= args.n_grad]
    shown = sorted(set(shown))
    styles = dict(zip(shown, ("-", "--", ":"), strict=False))
    for i in range(mats):
        ax_o, ax_p = axes[0, i], axes[1, i]
        for c, (lr, d) in zip(colors, plot["lrs"].items(), strict=False):
            obj = d["obj"][i]
            k = np.arange(obj.shape[-1])
            mu, sd = obj.mean(0), obj.std(0)
            ax_o.plot(k, mu, color=c, label=f"iterate, lr={lr}")
            ax_o.fill_between(k, mu - sd, mu + sd, color=c, alpha=0.25, linewidth=0)
            ax_o.plot(
                k,
                d["mean_obj"][i].mean(0),
                color=c,
                ls="--",
                lw=1,
                label=f"mean of iterates 0..k, lr={lr}",
            )
            inner = d["inner"][i]  # (inits, n_grad, n_proj)
            j = np.arange(1, inner.shape[-1] + 1)
            for step in shown:
                vals = inner[:, step - 1, :]
                mu = vals.mean(0)
                ax_p.plot(j, mu, color=c, ls=styles[step], label=f"lr={lr}, outer step {step}")
                ax_p.fill_between(j, vals.min(0), vals.max(0), color=c, alpha=0.12, linewidth=0)
        ax_o.axhline(plot["opt"][i], color="k", ls=":", lw=1.2, label="exact optimum")
        ax_o.set_title(f"cost matrix {i + 1} (5 x 100, U[0, 1))")
        ax_o.set_xlabel("outer step k")
        ax_o.set_ylabel("Tr(C X^T)")
        ax_p.set_yscale("log")
        ax_p.set_xlabel(f"inner (Dykstra) step j, N_proj={args.n_proj}")
        ax_p.set_ylabel("projection error (max violation)")
        if i == 0:
            ax_o.legend(fontsize=8)
            ax_p.legend(fontsize=7)
    fig.suptitle(
        f"DMM matcher on random costs: {args.inits} random starts ({args.init}) per matrix, "
        "mean ± std (objective), mean and min-max (projection error)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def random_table_problems(count: int, n_max: int, m_max: int, seed: int):
    """``count`` padded random problems: costs ``(count, n_max, m_max)`` and sizes."""
    g = torch.Generator().manual_seed(seed)
    n = torch.randint(1, n_max + 1, (count,), generator=g)
    m = n + (torch.rand(count, generator=g) * (m_max - n + 1)).long()
    cost = torch.rand(count, n_max, m_max, generator=g)
    return cost, torch.stack([n, m], dim=1)


def accuracy(x: torch.Tensor, cost, sizes, exact, opt) -> dict[str, float]:
    """Objective gap, constraint violation and argmax agreement of assignments ``x``."""
    valid_rows = exact >= 0
    obj = (cost.double() * x.double()).sum((-2, -1))
    gap = ((obj - opt) / opt.abs()).numpy()
    row_gap = ((obj - opt) / sizes[:, 0]).numpy()
    hard = hard_assign(x, sizes)
    same = (hard == exact) | ~valid_rows
    hard_cols = [h[: int(nb)].tolist() for h, nb in zip(hard, sizes[:, 0], strict=True)]
    distinct = [len(set(h)) == len(h) and min(h) >= 0 for h in hard_cols]
    row_err = ((x.double().sum(-1) - 1).abs() * valid_rows).amax(-1)
    col_err = torch.relu(x.double().sum(-2) - 1).amax(-1)
    viol = torch.maximum(torch.maximum(row_err, col_err), torch.relu(-x.double()).amax((-2, -1)))
    return {
        "gap_median": float(np.median(gap)),
        "gap_mean": float(np.mean(gap)),
        "gap_p90": float(np.percentile(gap, 90)),
        "row_gap_median": float(np.median(row_gap)),
        "violation_median": float(np.median(viol.numpy())),
        "row_agreement": float(same[valid_rows].float().mean()),
        "problem_agreement": float(same.all(-1).float().mean()),
        "argmax_is_matching": float(np.mean(distinct)),
    }


def solve_table(
    cost: torch.Tensor,
    sizes: torch.Tensor,
    init: str,
    n_grad: int,
    n_proj: int,
    lr: float,
    variant: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One table cell: the layer's output and the outer steps taken per problem ``(B,)``.

    ``init`` is ``"zeros"`` or ``"greedy"``. Only ``original`` can stop early, so only its call
    records ``MatchInfo`` (``steps``); ``listing1`` always takes ``n_grad`` steps.
    """
    kwargs = dict(n_grad=n_grad, n_proj=n_proj, lr=lr, sizes=sizes, backend="torch")
    start = None if init == "zeros" else "greedy"
    with torch.inference_mode():
        if variant == "original":
            x, info = dmm_match(cost, start, variant=variant, return_info=True, **kwargs)
            return x, info.steps
        x = dmm_match(cost, start, variant=variant, **kwargs)
    return x, torch.full((cost.shape[0],), n_grad, dtype=torch.int64)


def run_table(args) -> list[dict]:
    """Part 2: accuracy against the exact optimum over random padded problems.

    The first row is the greedy start alone (no iteration), the baseline of the ``greedy`` rows.
    Then, per setting and start, one row per variant of ``args.variants``: the same problems
    and the same starts for every variant (a variant's rows do not depend on which others run).
    """
    cost, sizes = random_table_problems(args.table_problems, 10, 100, args.seed + 1)
    exact = exact_assign(cost, sizes)
    valid_rows = exact >= 0
    opt = optimum(cost, sizes)
    settings = QUICK_TABLE_SETTINGS if args.quick else TABLE_SETTINGS
    start = {"n_grad": 0, "n_proj": 0, "lr": "", "init": "greedy (start only)", "variant": ""}
    start.update(accuracy(greedy_init(cost, sizes), cost, sizes, exact, opt))
    start.update(
        same_as_listing1="", steps_mean=0.0, early_exit="", problems=int(cost.shape[0]), seconds=0.0
    )
    rows = [start]
    for n_grad, n_proj, lr in settings:
        for init in ("zeros", "greedy"):
            spec_hard = None  # listing1's row argmax in this cell, when listing1 runs
            for variant in sorted(args.variants, key=VARIANTS.index):
                t0 = time.perf_counter()
                x, steps = solve_table(cost, sizes, init, n_grad, n_proj, lr, variant)
                elapsed = time.perf_counter() - t0
                hard = hard_assign(x, sizes)
                if variant == "listing1":
                    spec_hard = hard
                row = {"n_grad": n_grad, "n_proj": n_proj, "lr": lr, "init": init}
                row["variant"] = variant
                row.update(accuracy(x, cost, sizes, exact, opt))
                row.update(
                    same_as_listing1=""
                    if spec_hard is None
                    else float((hard == spec_hard)[valid_rows].double().mean()),
                    steps_mean=float(steps.double().mean()),
                    early_exit=float((steps < n_grad).double().mean()),
                    problems=int(cost.shape[0]),
                    seconds=elapsed,
                )
                rows.append(row)
                print(
                    f"table {n_grad}x{n_proj} lr={lr} {init} {variant}: gap median "
                    f"{row['gap_median']:.3g}, rows {row['row_agreement']:.3f}, problems "
                    f"{row['problem_agreement']:.3f} ({elapsed:.1f} s)",
                    flush=True,
                )
    return rows


def curve_summary(curve_rows: list[dict], n_grad: int) -> tuple[list[dict], list[str]]:
    """One row per (matrix, lr): mean objective of the iterate at a few outer steps."""
    steps = sorted({k for k in (10, 40, 100, 200, 400, n_grad) if k <= n_grad})
    table: dict[tuple, dict] = {}
    for r in curve_rows:
        key = (r["matrix"], r["lr"])
        row = table.setdefault(
            key, {"matrix": r["matrix"], "lr": r["lr"], "optimum": r["exact_optimum"]}
        )
        k = r["outer_step"]
        if k == 0:
            row["k=0"] = r["objective_mean"]
        if k in steps:
            row[f"k={k}"] = r["objective_mean"]
        if k == n_grad:
            row["mean of iterates"] = r["mean_objective_mean"]
            row["rel. gap"] = (r["objective_mean"] - r["exact_optimum"]) / abs(r["exact_optimum"])
    return list(table.values()), ["k=0", *(f"k={k}" for k in steps)]


def _header(info: dict, args) -> list[str]:
    return [f"Machine:\n\n{machine_markdown(info)}", "", f"Command: `{args.command}`", ""]


def table_markdown(args, table_rows: list[dict]) -> list[str]:
    """The accuracy table's section (Part 2), as markdown lines."""
    variants = " and ".join(f"`{v}`" for v in args.variants)
    return [
        f"## Accuracy over {args.table_problems} random problems "
        "(n <= 10, m in n..100, U[0, 1), float32, one padded batch)",
        "",
        f"Matcher variants {variants} (`dmm_match(..., variant=...)`): `listing1` is the "
        "specification (Listing 1: the mean of the start and the projected iterates, "
        "projections rows -> columns -> non-negativity, fixed counts); `original` is the "
        "original code's `relax_match` (the mean of the start and the iterates right after "
        "each gradient step, before that step's projections; non-negativity -> columns -> "
        "rows; early exits). Both variants solve the same problems from the same starts, "
        "side by side. `original` at 40 x 5, lr 0.1, greedy start is the original code's "
        "test-time setting.",
        "",
        "gap = (Tr(C Xhat^T) - opt) / |opt| of the returned mean of iterates Xhat; gap per row: "
        "(Tr(C Xhat^T) - opt) / n, absolute; violation: "
        "max constraint violation of Xhat; rows / problems: fraction of rows (problems) whose "
        "row argmax equals the exact assignment; matching: fraction of problems whose row "
        "argmax picks distinct columns; rows = listing1: fraction of rows whose row argmax "
        "equals `listing1`'s in the same setting and start (needs `listing1` in the run); "
        "steps: mean outer steps taken; early exit: fraction "
        "of problems whose early exit fired before N_grad (`original` only; `listing1` always "
        "takes N_grad). `greedy (start only)`: the greedy start itself, "
        "before any iteration. zeros / greedy: the start of the iteration. The `original` "
        "mean averages pre-projection iterates X - lr C, so it is infeasible by construction "
        "(rows off by about lr * sum_j C_ij) and its objective can fall below the optimum "
        "(negative gap): for `original`, gap and violation describe that mean, not a "
        "feasible assignment, and the comparable columns are rows, problems and matching "
        "(the original code reads the row argmax).",
        "",
        markdown_table(
            table_rows,
            [
                "n_grad",
                "n_proj",
                "lr",
                "init",
                "variant",
                "gap_median",
                "gap_mean",
                "gap_p90",
                "row_gap_median",
                "violation_median",
                "row_agreement",
                "problem_agreement",
                "argmax_is_matching",
                "same_as_listing1",
                "steps_mean",
                "early_exit",
            ],
            [
                "N_grad",
                "N_proj",
                "lr",
                "init",
                "variant",
                "gap median",
                "gap mean",
                "gap p90",
                "gap per row median",
                "violation median",
                "rows",
                "problems",
                "matching",
                "rows = listing1",
                "steps",
                "early exit",
            ],
        ),
        "",
        "Wall times per call are in the CSV (`seconds`) for reference only: the machine was a "
        "shared, loaded 2-core CPU, and the `original` calls also record `MatchInfo` (for "
        "`steps`); they are not a speed comparison.",
        "",
    ]


def write_markdown(path: Path, args, curve_rows, table_rows, info) -> None:
    """The summary: final objectives against the optimum, and the accuracy table."""
    summary, step_cols = curve_summary(curve_rows, args.n_grad)
    parts = [
        "# Matcher convergence on random costs (supplement Fig. 5)",
        "",
        *_header(info, args),
        "## Curves: 3 random 5 x 100 costs, U[0, 1), "
        f"{args.inits} random starts ({args.init}), N_proj = {args.n_proj}",
        "",
        "Variant `listing1` (the specification; the supplement's figure is of Listing 1). "
        "Tr(C X_k^T) of the iterate after outer step k, mean over the starts; the exact "
        f"optimum; the layer's output (mean of iterates 0..{args.n_grad}); and the iterate's "
        f"relative gap (Tr(C X_k^T) - opt) / opt at k = {args.n_grad}.",
        "",
        markdown_table(
            summary,
            ["matrix", "lr", *step_cols, "optimum", "mean of iterates", "rel. gap"],
            [
                "matrix",
                "lr",
                *step_cols,
                "optimum",
                f"mean of iterates (k={args.n_grad})",
                f"rel. gap (k={args.n_grad})",
            ],
        ),
        "",
        "![convergence](convergence.png)",
        "",
        *table_markdown(args, table_rows),
    ]
    path.write_text("\n".join(parts))


def write_table_markdown(path: Path, args, table_rows, info) -> None:
    """The accuracy table alone (``--table-only``)."""
    parts = [
        "# Matcher accuracy on random costs, both variants",
        "",
        *_header(info, args),
        *table_markdown(args, table_rows),
    ]
    path.write_text("\n".join(parts))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-grad", type=int, default=500, help="outer steps of the curves")
    p.add_argument("--n-proj", type=int, default=50, help="inner steps of the curves")
    p.add_argument("--lrs", type=float, nargs="+", default=[0.005, 0.01])
    p.add_argument("--matrices", type=int, default=3)
    p.add_argument("--inits", type=int, default=10)
    p.add_argument("--init", choices=("onehot", "dense"), default="onehot")
    p.add_argument("--table-problems", type=int, default=1000)
    p.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="matcher variants of the accuracy table (default: all)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own choice); float32 rounding may depend on it",
    )
    p.add_argument(
        "--table-only",
        action="store_true",
        help="run only the accuracy table; writes convergence_table.{csv,md}",
    )
    args = p.parse_args(argv)
    from _common import check_out_arg

    check_out_arg(p, args.out)
    argv_used = sys.argv[1:] if argv is None else list(argv)
    args.command = " ".join(["python", f"bench/{Path(__file__).name}", *argv_used])
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be a positive integer")
    for name in ("n_grad", "n_proj", "matrices", "inits", "table_problems"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer")
    if not all(0 < lr < float("inf") for lr in args.lrs):
        p.error(f"--lrs must be positive finite numbers, got {args.lrs}")
    if args.quick:
        sizes = ("--n-grad", "--n-proj", "--inits", "--table-problems")
        sized = [a for a in sizes if any(x == a or x.startswith(f"{a}=") for x in argv_used)]
        if sized:
            p.error(f"--quick sets its own sizes; it does not go with {', '.join(sized)}")
        args.n_grad, args.n_proj, args.inits, args.table_problems = 12, 4, 3, 16
    args.variants = list(dict.fromkeys(args.variants))  # keep order, drop repeats
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    if args.table_only:
        table_rows = run_table(args)
        write_csv(out / "convergence_table.csv", table_rows)
        write_table_markdown(out / "convergence_table.md", args, table_rows, info)
        print(f"wrote {out}/convergence_table.{{csv,md}}")
        return 0
    curve_rows, inner_rows, plot = run_curves(args)
    write_csv(out / "convergence_curves.csv", curve_rows, digits=7)
    write_csv(out / "convergence_inner.csv", inner_rows, digits=7)
    plot_curves(plot, args, out / "convergence.png")
    table_rows = run_table(args)
    write_csv(out / "convergence_table.csv", table_rows)
    write_markdown(out / "convergence.md", args, curve_rows, table_rows, info)
    print(f"wrote {out}/convergence.{{png,md}} and convergence_*.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
