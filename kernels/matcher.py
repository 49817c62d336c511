"""Fused Triton kernels of the DMM matcher: one launch per batch, forward and backward.

The matcher (Listing 1 of the DMM-Net supplement) runs ``n_grad`` projected-gradient steps
``X <- X - lr * C``, each followed by ``n_proj`` Dykstra cycles over the row, column and
non-negativity sets, and returns the mean of the ``n_grad + 1`` iterates. In the compact
state of the batched reference (``dmm_deploy.matching.reference``) one inner step is::

    a   = (rowsum(X) - 1) / m_b           masked to valid rows            (n,)
    s   = colsum(X) - sum(a) + q1                                         (m,)
    q1' = relu(s - 1)                     masked to valid columns         (m,)
    X3  = X - a + (q1 - q1') / n_b + P2   masked to the valid region      (n, m)
    X   = relu(X3);  P2 = X3 - X

Forward (:func:`matcher_forward`): each program owns ``PROBLEMS`` whole problems. It loads
the cost and ``x_init`` once, keeps ``lr * C``, the pre-relu value ``X3`` of the last inner
step and the running sum of iterates as register tiles and the column correction ``q1`` as a
vector per problem, runs all ``n_grad * n_proj`` inner steps, and writes the mean once. ``P2``
is not held: ``P2 = X3 - relu(X3)``, so ``X + P2 = X3`` and an inner step's update is
``X3' = X3 - a + (q1 - q1') / n_b`` (after a gradient step, ``X3 - lr C``), two operations an
element fewer than forming ``X - a + ... + P2``; NaN and Inf come out where the reference's
order puts them (an infinite ``X3`` makes its row's ``a`` infinite too), finite values differ
from it by rounding only.

Layout. Tiles are ``(RN, R, PROBLEMS, LN, LC)``: ``LN x LC`` lanes of a warp hold a problem's
rows and columns (row ``rn * LN + ln``, column ``r * LC + lc``), each thread ``RN`` rows and
``R`` columns of it in registers. ``LC = 16`` (``LN = 2``) for problems of at most 2048
elements (``BLOCK_N * BLOCK_M``: 5 x 50, 8 x 128, 16 x 128, ...), ``LC = 8`` (``LN = 4``) for
larger ones, fewer when ``BLOCK_M`` or ``BLOCK_N`` is smaller (see :func:`_lanes`). Triton puts
the warps on the problems first: a problem of at most 2048 elements lives in one warp (several
problems per program are several warps), its column sums are in-thread adds plus one lane
exchange, its row sums in-thread adds plus a four-level butterfly (shuffles), and an inner step
has no barrier; the autotuner keeps ``num_warps <= PROBLEMS`` for these problems (a lone
problem, B = 1, may also be split over warps). Warps beyond the problems split a problem's
columns (larger problems): the row sums then cross warps (shared memory and barriers, which
no layout avoids once a problem spans several warps; four ``RN`` rows a thread keep them to
4 to 8 ``bar.sync`` an inner step). The relu bits are packed in the thread that holds them and
the backward loads each bit word once. The column indices are declared non-contiguous
(``tl.max_contiguous(cols, 1)``): otherwise Triton vectorises the loads along the lanes and
spreads a problem over several warps. PTX figures: ``bench/kernel_ptx.py`` and
``bench/results/ptx/``.
 Loads are converted to fp32, all arithmetic is fp32, the store casts to the input
dtype. Offsets are int64. NaN and Inf propagate as in the reference (the relu keeps NaN); values
outside a problem's ``n_b x m_b`` block are never read.

Backward (:func:`matcher_backward`): given the relu pattern ``R = not [X3 <= 0]`` and the
active columns ``A = not [s <= 1]`` of every inner step (written this way round, a NaN counts as
positive, as in ``torch.relu``'s gradient), the step is linear, and its adjoint is::

    G    = mask * (gP2 + R * (gX - gP2))          adjoint of X3
    gd   = colsum(G);  gr = rowsum(G)
    gs   = A * (gQ - gd / n_b)                    adjoint of s (gQ: adjoint of q1')
    ga   = -gr - sum(gs)                          adjoint of a
    gX   = G + rowvalid * ga / m_b + gs           adjoint of the step's input X
    gP2  = G;  gQ = gd / n_b + gs                 adjoints of the input P2 and q1

and across an outer step (``X <- X - lr C``, then its ``n_proj`` inner steps, then
``S += X``): ``gX += g_out / (n_grad + 1)`` before its inner steps are replayed, and the
``gX`` left after them adds ``-lr * gX`` to the cost's gradient; ``x_init`` gets the final
``gX + g_out / (n_grad + 1)``. All of it masked to each problem's ``n_b x m_b`` block.

so the reverse sweep needs no float state of the forward at all: when ``save_bits`` is set
the forward packs ``R`` and ``A`` into int64 words in global scratch, and the backward kernel
replays the steps in reverse from those bits, one launch for the batch.

Bit layout (per problem; ``K = n_grad * n_proj``; ``LN`` lanes along the rows, each thread
holding ``RN = BLOCK_N / LN`` rows: ``SPW = 64 // RN`` steps per relu word). Words are filled
by shifting each step's bits in at the bottom, so the newest step of a word is in its lowest
bits, and the backward, which visits the steps in reverse, loads a word at its newest step and
shifts it right for the older ones:

* ``r_bits (B, LN * ceil(K / SPW), m)``: word ``[b, (k // SPW) * LN + ln, j]`` holds the relu
  pattern of rows ``rn * LN + ln`` (``rn < RN``) of column ``j`` for the steps of group
  ``k // SPW``, step ``k`` at bits ``(f - 1 - k % SPW) * RN + rn``, ``f`` the steps of the
  group (``SPW`` but for the last group);
* ``a_bits (B, ceil(K / 64), m)``: bit ``f - 1 - k % 64`` of word ``[b, k // 64, j]`` is
  ``A[j]`` of step ``k`` (``f`` the steps of the word; variant ``"original"``: ``m + 1``
  columns, column ``m`` holding whether step ``k`` ran).

Variant ``"original"`` (:func:`matcher_forward` with ``variant="original"``; the original
DMM-Net code's solver, which the released checkpoints were evaluated with): every outer step
takes the gradient step and adds that iterate (before its projections) to the mean; each cycle
projects non-negativity, then columns, then rows; a cycle that leaves ``X`` exactly unchanged
skips the remaining cycles of its outer step, and an outer step whose ``||X * C||`` (after the
gradient step) equals the previous one's (0 before the first) is the last. Both exits are
per-problem frozen masks (the loop still runs ``n_grad x n_proj`` times), and the mean divides
by the iterates actually taken. The row correction leaves the row projection's result unchanged
and the column correction is constant along columns, so the state is ``X``, ``P0`` (n x m)
and ``p1`` (m)::

    Z  = X + P0;  Y = relu(Z);  P0' = Z - Y                   non-negativity
    cs = colsum(Y) + n_b p1;  A = not [cs <= 1]
    p1' = A (cs - 1) / n_b;   d = p1 - p1'                     columns
    X' = Y + d - (rowsum(Y) + sum(d) - 1) / m_b                rows, both sums from Y

Its backward replays the same adjoint structure from ``R = not [Z <= 0]``, ``A`` and one more
bit per inner step (applied or frozen), kept as an extra column ``m`` of ``a_bits``. In float
arithmetic an exit fires when an update rounds to nothing, so the step at which it fires can
differ between precisions and summation orders (the original code itself, run in float32 and in
float64, exits at different steps on 109 of 300 random problems of at most 4 x 9 with costs in
[-1, 0], greedy start, 40 x 5, lr 0.1); exits at exact fixed points (a feasible start with a
zero cost, a single proposal) fire at the same step everywhere.

Scratch per problem: ``8 * m * (LN * ceil(K / SPW) + ceil(K / 64))`` bytes (see
:func:`bits_bytes_per_problem`), about ``K * m * (BLOCK_N + 1) / 8``: 12.0 kB for 5 x 50 and
426 kB for 32 x 512 at 40 x 5 iterations. Autograd through the reference saves about one
fp32 ``(n, m)`` tensor per inner step (33 to 38 bits per element and step, measured with
saved-tensor hooks): 240 kB and 13.5 MB for the same two cases, 20 to 32 times more.

Supported sizes: ``1 <= n <= 64`` and ``1 <= m <= 1024`` (``BLOCK_N = next_power_of_2(n)``,
``BLOCK_M = next_power_of_2(m)``); the launch wrappers raise ``ValueError`` beyond them (the
``dmm_deploy.matching`` backend falls back to the reference there). Register use (ptxas,
sm_90, ``bench/results/ptx/``): problems of at most 2048 elements fit without spills on one
warp; 16 x 256 fits at 4 or more warps; 32 x 512 spills a few hundred bytes a thread at 16
warps (its state alone, two fp32 tiles for variant ``"listing1"``, is 64 registers a thread
there, with the row/column vectors, addresses and the step's temporaries on top); 64 x 1024
spills kilobytes a thread to local memory (correct, but slower).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

__all__ = [
    "MAX_M",
    "MAX_N",
    "VARIANTS",
    "AotKernel",
    "bits_bytes_per_problem",
    "bits_shapes",
    "block_sizes",
    "compile_backward",
    "compile_backward_ptx",
    "compile_forward",
    "compile_forward_ptx",
    "matcher_backward",
    "matcher_forward",
    "problems_per_program",
]

MAX_N = 64  # one int64 word holds a column of the relu pattern of one step
MAX_M = 1024
VARIANTS = ("listing1", "original")
_ELEMENTS_PER_PROGRAM = 4096  # tiny problems are packed until a program holds this many
_WARPS = (1, 2, 4, 8, 16)
_W4_MAX = 2048  # problems of at most this many elements: one warp (or fewer lanes) each


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _prune_warps(configs, named_args, **kwargs):
    """The warp counts worth timing for a tile.

    Problems of at most ``_W4_MAX`` elements run one warp per problem (several problems per
    warp when there are more problems than warps): ``num_warps <= PROBLEMS`` (one more warp
    would land inside a problem and bring barriers back), except for a lone problem (B = 1,
    latency-bound), which may also be split over warps; each thread then holds 4 to 32 tile
    elements (more would spill). Larger problems keep the warp counts that give each thread
    4 to 32 elements (64, at 16 x 256 on 2 warps, spills hundreds of bytes); tiles too large
    for 32 a thread at the most warps keep the most warps; tiles too small for 4 a thread at
    one warp keep one warp.
    """
    problems, block_n, block_m = kwargs["PROBLEMS"], kwargs["BLOCK_N"], kwargs["BLOCK_M"]
    elems = problems * block_n * block_m
    most = 32
    if block_n * block_m <= _W4_MAX:
        configs = [c for c in configs if c.num_warps <= problems or problems == 1] or configs[:1]
    keep = [c for c in configs if 4 <= elems // (32 * c.num_warps) <= most]
    by_warps = sorted(configs, key=lambda c: c.num_warps)
    return keep or [by_warps[-1] if elems > most * 32 else by_warps[0]]


def _warp_configs() -> list[triton.Config]:
    if _interpreting():  # the interpreter refuses multi-config autotuning
        return [triton.Config({}, num_warps=4)]
    return [triton.Config({}, num_warps=w) for w in _WARPS]


# tl.sum, tl.zeros and tl.cdiv are themselves @triton.jit functions of triton.language, built
# compiled or interpreted once, when triton.language is first imported. The kernels use only
# builtins instead (tl.reduce(x, axis, _add) is what tl.sum does for fp32 and int64; tl.full;
# integer arithmetic), so that they also run in Triton's interpreter when TRITON_INTERPRET=1 was
# set after triton had been imported (torchvision imports it); the interpreter still recognises
# _add as a plain sum.
_add = tl.standard._sum_combine

# Lanes along a problem's columns (the others along its rows): a split, not all 32 on the
# columns, trades a few shuffles of the row sums for in-thread column sums (PTX per inner step,
# sm_90: 8 x 128 386 -> 368 instructions; 16 x 256 on 4 warps 8 -> 4 bar.sync)
_LANES_SMALL = tl.constexpr(16)  # problems of at most _ONE_WARP elements (one warp each)
_LANES_LARGE = tl.constexpr(8)  # larger problems (split over warps along their columns)
_ONE_WARP = tl.constexpr(_W4_MAX)


def _lanes(block_n: int, block_m: int) -> tuple[int, int]:
    """``(LN, LC)``: lanes along a problem's rows and along its columns (as in the kernels)."""
    lc = _LANES_SMALL.value if block_n * block_m <= _ONE_WARP.value else _LANES_LARGE.value
    lc = min(lc, block_m)
    return min(32 // lc, block_n), lc


_SHAPE_KEY = ["BLOCK_N", "BLOCK_M", "PROBLEMS", "HAS_SIZES"]
_PRUNE = {"early_config_prune": _prune_warps}


@triton.jit
def _relu(x):
    """``max(x, 0)`` that keeps NaN, as ``torch.relu`` does (``tl.maximum``'s default and PTX's
    ``max.f32`` return the other operand)."""
    return tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _push(word, bits, WIDTH: tl.constexpr):
    """``word`` with ``bits`` (``WIDTH`` bits) shifted in at the bottom: a 64-bit word holds
    ``64 // WIDTH`` steps, the newest lowest, and the oldest falls out after that many."""
    return bits if WIDTH == 64 else (word << WIDTH) | bits


@triton.jit
def _pop(word, WIDTH: tl.constexpr):
    """The bits of the step before, when ``word`` was filled by :func:`_push`."""
    if WIDTH != 64:
        word = word >> WIDTH
    return word


@triton.jit
def _store_bits(
    r_ptr,  # (1, R, P, LN, LC) this thread's relu-pattern word of step k's group
    a_ptr,  # (1, R, P, LN, LC) the active-column word of step k's group
    r_word,  # (1, R, P, LN, LC) int64, the relu-pattern word being filled
    a_word,  # (1, R, P, LN, LC) int64, the active-column word being filled
    relu_on,  # (RN, R, P, LN, LC) bool, the relu passes step k's value (not <= 0)
    active,  # (1, R, P, LN, LC) bool, the column's constraint is active at step k
    k,  # inner step index
    last,  # k is the last inner step
    col_ok,  # (1, R, P, LN, LC)
    row_bit,  # (RN, 1, 1, LN, 1) int64, 1 << (the row's register index)
    SPW: tl.constexpr,  # steps per relu-pattern word
):
    """Shift step ``k``'s relu pattern (one bit per row a thread holds) and active columns into
    the words; store each word when it is full (or at the last step)."""
    RN: tl.constexpr = row_bit.shape[0]
    col_bits = tl.reduce(tl.where(relu_on, row_bit, 0), 0, _add, keep_dims=True)  # in-thread
    r_word = _push(r_word, col_bits, RN)
    tl.store(r_ptr, r_word, mask=col_ok & ((k % SPW == SPW - 1) | last))
    a_word = _push(a_word, active.to(tl.int64), 1)
    tl.store(a_ptr, a_word, mask=col_ok & ((k % 64 == 63) | last))
    return r_word, a_word


@triton.jit
def _load_bits(
    r_base,  # (1, R, P, LN, LC) this thread's relu-pattern word of step group 0
    r_stride,  # words between step groups
    a_base,  # (1, R, P, LN, LC) the active-column word of step group 0
    a_stride,
    r_word,  # (1, R, P, LN, LC) int64, the words of step k + 1 (any value at the last step)
    a_word,
    k,
    n_steps,
    col_ok,  # (1, R, P, LN, LC)
    row_bit,  # (RN, 1, 1, LN, 1) int64, 1 << (the row's register index)
):
    """Step ``k``'s words and its relu pattern ``(RN, R, P, LN, LC)`` and active columns, as
    bools, for steps visited backwards: each word is loaded once, at its newest step, and
    shifted for the older ones."""
    RN: tl.constexpr = row_bit.shape[0]
    SPW: tl.constexpr = 64 // RN
    r_word = _pop(r_word, RN)
    if (k % SPW == SPW - 1) | (k == n_steps - 1):
        r_word = tl.load(r_base + (k // SPW) * r_stride, mask=col_ok, other=0)
    a_word = a_word >> 1
    if (k % 64 == 63) | (k == n_steps - 1):
        a_word = tl.load(a_base + (k // 64) * a_stride, mask=col_ok, other=0)
    return r_word, a_word, (r_word & row_bit) != 0, (a_word & 1) != 0


@triton.jit
def _bit_planes(
    r_bits_ptr,  # (B, LN * ceil(K / SPW), m) int64
    a_bits_ptr,  # (B, ceil(K / 64), a_cols) int64
    prob3,
    rows,
    cols,
    m,
    a_cols,  # m, or m + 1 (variant "original": the applied-step flags in column m)
    n_steps,
):
    """Base pointers of this thread's words (step group 0) in both bit planes, the relu
    pattern's stride per step group and ``row_bit`` (``1 <<`` the row's register index)."""
    RN: tl.constexpr = rows.shape[0]
    LN: tl.constexpr = rows.shape[3]
    SPW: tl.constexpr = 64 // RN
    r_stride = LN * m
    lane_n = tl.arange(0, LN)[None, None, None, :, None]
    r_base = r_bits_ptr + prob3 * (((n_steps + SPW - 1) // SPW) * r_stride) + lane_n * m + cols
    a_base = a_bits_ptr + prob3 * (((n_steps + 63) // 64) * a_cols)  # (1, 1, P, 1, 1)
    row_bit = tl.full(rows.shape, 1, tl.int64) << (rows // LN).to(tl.int64)
    return r_base, r_stride, a_base, row_bit


@triton.jit
def _row_sum(x):
    """Sum over a tile's columns, one per row (dimensions kept): registers, then lanes."""
    return tl.reduce(tl.reduce(x, 1, _add, keep_dims=True), 4, _add, keep_dims=True)


@triton.jit
def _col_sum(x):
    """Sum over a tile's rows, one per column (dimensions kept): registers, then lanes."""
    return tl.reduce(tl.reduce(x, 0, _add, keep_dims=True), 3, _add, keep_dims=True)


@triton.jit
def _problem_layout(
    sizes_ptr,  # (B, 2) int64 (n_b, m_b); unused unless HAS_SIZES
    B,
    n,
    m,
    HAS_SIZES: tl.constexpr,
    PROBLEMS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Indices and masks of this program's ``PROBLEMS`` problems, in the tile layout.

    Tiles are ``(RN, R, P, LN, LC)``: row ``rn * LN + ln`` and column ``r * LC + lc`` of
    problem ``p``, with ``LN x LC`` lanes (:func:`_lanes`) and ``RN x R`` elements of a problem
    in each thread's registers; Triton places the warps on ``P`` (a problem per warp), then on
    ``R`` (columns split over warps when there are more warps than problems).
    ``sizes`` is clamped to ``[0, n] x [0, m]`` here, so that no value it holds makes a
    program touch memory outside its own problems; a problem with ``n_b = 0`` or ``m_b = 0``
    has no valid element (its outputs are zero) and divides by 1 instead of 0.
    Returns the int64 problem indices ``prob3``, ``rows``, ``cols``, the masks ``row_ok``,
    ``col_ok``, ``valid`` (their product) and ``in_bounds`` (the whole ``n x m`` block of every
    existing problem), and ``1 / n_b``, ``1 / m_b`` (fp32), all broadcastable to a tile.
    """
    pid = tl.program_id(0)
    prob = pid.to(tl.int64) * PROBLEMS + tl.arange(0, PROBLEMS).to(tl.int64)  # (P,)
    prob_ok = prob < B
    if HAS_SIZES:
        n_b = tl.load(sizes_ptr + 2 * prob, mask=prob_ok, other=0)  # (P,)
        m_b = tl.load(sizes_ptr + 2 * prob + 1, mask=prob_ok, other=0)
        n_b = tl.minimum(tl.maximum(n_b, 0), n)
        m_b = tl.minimum(tl.maximum(m_b, 0), m)
    else:
        n_b = tl.full((PROBLEMS,), 1, tl.int64) * n
        m_b = tl.full((PROBLEMS,), 1, tl.int64) * m
    n_f = tl.maximum(n_b, 1).to(tl.float32)
    m_f = tl.maximum(m_b, 1).to(tl.float32)
    # lanes: LC along the columns, LN along the rows (see _lanes)
    LC0: tl.constexpr = _LANES_SMALL if BLOCK_N * BLOCK_M <= _ONE_WARP else _LANES_LARGE
    LC: tl.constexpr = LC0 if LC0 <= BLOCK_M else BLOCK_M
    LN0: tl.constexpr = 32 // LC
    LN: tl.constexpr = LN0 if LN0 <= BLOCK_N else BLOCK_N
    RN: tl.constexpr = BLOCK_N // LN
    R: tl.constexpr = BLOCK_M // LC
    rows = (
        tl.arange(0, RN)[:, None, None, None, None] * LN
        + tl.arange(0, LN)[None, None, None, :, None]
    )  # (RN, 1, 1, LN, 1)
    cols = (
        tl.arange(0, R)[None, :, None, None, None] * LC
        + tl.arange(0, LN)[None, None, None, :, None] * 0
        + tl.arange(0, LC)[None, None, None, None, :]
    )  # (1, R, 1, LN, LC): a column's lanes along the rows hold it too
    # Declared non-contiguous: otherwise Triton vectorises the loads along the lanes and
    # spreads the warps over a problem's columns (barriers in every step)
    cols = tl.max_contiguous(cols, [1, 1, 1, 1, 1])
    prob3 = prob[None, None, :, None, None]  # (1, 1, P, 1, 1)
    ok = prob_ok[None, None, :, None, None]
    n_b = n_b[None, None, :, None, None]
    m_b = m_b[None, None, :, None, None]
    n_f = n_f[None, None, :, None, None]
    m_f = m_f[None, None, :, None, None]
    row_ok = (rows < n_b) & ok
    col_ok = (cols < m_b) & ok
    valid = row_ok & col_ok  # the problem's own n_b x m_b block
    in_bounds = (rows < n) & (cols < m) & ok  # the whole padded block
    return prob3, rows, cols, row_ok, col_ok, valid, in_bounds, 1.0 / n_f, 1.0 / m_f


@triton.jit
def _listing1_step(
    x,  # (RN, R, P, LN, LC) X
    x_p2,  # (RN, R, P, LN, LC) X + P2
    q1,  # (1, R, P, LN, LC)
    bits,  # (r_base, r_stride, a_base, row_bit, r_word, a_word), see _bit_planes
    k,  # the inner step's index
    n_steps,
    m,
    row_ok,
    col_ok,
    valid,
    inv_n,
    inv_m,
    SAVE_BITS: tl.constexpr,
):
    """One inner step of the listing (module docstring): ``(X3, q1', bits)`` from ``X``,
    ``X + P2`` and ``q1``, both reductions from the same ``X``; with ``SAVE_BITS`` the step's
    relu pattern and active columns are shifted into the words of ``bits`` (stored when full)."""
    row_sum = _row_sum(x)  # one per row
    col_sum = _col_sum(x)  # one per column
    a = tl.where(row_ok, (row_sum - 1.0) * inv_m, 0.0)
    s = col_sum - _col_sum(a) + q1
    q1_new = tl.where(col_ok, _relu(s - 1.0), 0.0)
    x3 = tl.where(valid, x_p2 - a + (q1 - q1_new) * inv_n, 0.0)
    if SAVE_BITS:
        r_base, r_stride, a_base, row_bit, r_word, a_word = bits
        SPW: tl.constexpr = 64 // row_bit.shape[0]
        r_word, a_word = _store_bits(
            r_base + (k // SPW) * r_stride,
            a_base + (k // 64) * m,
            r_word,
            a_word,
            ~(x3 <= 0.0),
            ~(q1_new <= 0.0),
            k,
            k == n_steps - 1,
            col_ok,
            row_bit,
            SPW,
        )
        bits = (r_base, r_stride, a_base, row_bit, r_word, a_word)
    return x3, q1_new, bits


@triton.autotune(_warp_configs(), key=[*_SHAPE_KEY, "SAVE_BITS"], prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=["n_grad", "n_proj", "lr"])
def _dmm_fwd_kernel(
    cost_ptr,  # (B, n, m) fp32 / fp16 / bf16
    x_init_ptr,  # (B, n, m) cost's dtype
    sizes_ptr,  # (B, 2) int64 (n_b, m_b); unused unless HAS_SIZES
    out_ptr,  # (B, n, m) cost's dtype, contiguous
    r_bits_ptr,  # (B, LN * ceil(K / SPW), m) int64, relu pattern; unused unless SAVE_BITS
    a_bits_ptr,  # (B, ceil(K / 64), m) int64, active columns; unused unless SAVE_BITS
    B,
    n,
    m,
    n_grad,
    n_proj,
    lr,  # fp32 scalar
    stride_cb,
    stride_cn,
    stride_cm,
    stride_xb,
    stride_xn,
    stride_xm,
    HAS_SIZES: tl.constexpr,
    SAVE_BITS: tl.constexpr,
    PROBLEMS: tl.constexpr,  # problems per program
    BLOCK_N: tl.constexpr,  # next_power_of_2(n), <= 64
    BLOCK_M: tl.constexpr,  # next_power_of_2(m)
):
    prob3, rows, cols, row_ok, col_ok, valid, in_bounds, inv_n, inv_m = _problem_layout(
        sizes_ptr, B, n, m, HAS_SIZES, PROBLEMS, BLOCK_N, BLOCK_M
    )
    c = tl.load(
        cost_ptr + prob3 * stride_cb + rows * stride_cn + cols * stride_cm, mask=valid, other=0.0
    )
    step = c.to(tl.float32) * lr
    x = tl.load(
        x_init_ptr + prob3 * stride_xb + rows * stride_xn + cols * stride_xm, mask=valid, other=0.0
    ).to(tl.float32)
    total = x
    xp2 = x  # X + P2 (P2 = 0 at the start)
    q1 = tl.full(col_ok.shape, 0.0, tl.float32)

    n_steps = n_grad * n_proj
    if SAVE_BITS:
        r_base, r_stride, a_base, row_bit = _bit_planes(
            r_bits_ptr, a_bits_ptr, prob3, rows, cols, m, m, n_steps
        )
        r_word = tl.full(col_ok.shape, 0, tl.int64)
        bits = (r_base, r_stride, a_base + cols, row_bit, r_word, r_word)
    else:
        bits = (0, 0, 0, 0, 0, 0)  # never read

    for g in range(n_grad):
        # the first inner step takes X - lr C; the others carry only X3: X = relu(X3) and
        # X + P2 = X3 (P2 = X3 - relu(X3)), so X3' = X3 - a + (q1 - q1') / n_b
        k = g * n_proj
        x3, q1, bits = _listing1_step(
            x - step, xp2 - step, q1, bits, k, n_steps, m, row_ok, col_ok, valid, inv_n, inv_m,
            SAVE_BITS,
        )  # fmt: skip
        for j in range(1, n_proj):
            x3, q1, bits = _listing1_step(
                _relu(x3), x3, q1, bits, k + j, n_steps, m, row_ok, col_ok, valid, inv_n, inv_m,
                SAVE_BITS,
            )  # fmt: skip
        x = _relu(x3)
        xp2 = x3
        total += x

    out = total / (n_grad + 1).to(tl.float32)
    out_offs = prob3 * n * m + rows * m + cols
    tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=in_bounds)


@triton.autotune(_warp_configs(), key=[*_SHAPE_KEY, "SAVE_BITS"], prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=["n_grad", "n_proj", "lr"])
def _dmm_fwd_original_kernel(
    cost_ptr,  # (B, n, m) fp32 / fp16 / bf16
    x_init_ptr,  # (B, n, m) cost's dtype
    sizes_ptr,  # (B, 2) int64 (n_b, m_b); unused unless HAS_SIZES
    out_ptr,  # (B, n, m) cost's dtype, contiguous
    r_bits_ptr,  # (B, LN * ceil(K / SPW), m) int64, relu pattern; unused unless SAVE_BITS
    a_bits_ptr,  # (B, ceil(K / 64), m + 1) int64, active columns + applied steps
    B,
    n,
    m,
    n_grad,
    n_proj,
    lr,  # fp32 scalar
    stride_cb,
    stride_cn,
    stride_cm,
    stride_xb,
    stride_xn,
    stride_xm,
    HAS_SIZES: tl.constexpr,
    SAVE_BITS: tl.constexpr,
    PROBLEMS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """The original code's solver (``variant="original"``, see the module docstring)."""
    prob3, rows, cols, row_ok, col_ok, valid, in_bounds, inv_n, inv_m = _problem_layout(
        sizes_ptr, B, n, m, HAS_SIZES, PROBLEMS, BLOCK_N, BLOCK_M
    )
    SPW: tl.constexpr = 64 // rows.shape[0]
    c = tl.load(
        cost_ptr + prob3 * stride_cb + rows * stride_cn + cols * stride_cm, mask=valid, other=0.0
    ).to(tl.float32)
    x = tl.load(
        x_init_ptr + prob3 * stride_xb + rows * stride_xn + cols * stride_xm, mask=valid, other=0.0
    ).to(tl.float32)
    n_f = 1.0 / inv_n  # n_b as fp32 (1 for an empty problem)
    total = x
    count = tl.full(prob3.shape, 1.0, tl.float32)  # iterates in the mean
    p0 = tl.full(valid.shape, 0.0, tl.float32)  # non-negativity correction
    p1 = tl.full(col_ok.shape, 0.0, tl.float32)  # column correction (per element)
    prev_norm = tl.full(prob3.shape, 0.0, tl.float32)  # ||X * C|| of the last step
    stopped = tl.full(prob3.shape, 0, tl.int1)  # an outer step changed nothing

    if SAVE_BITS:
        n_steps = n_grad * n_proj
        a_cols = m + 1  # column m of the active-column plane: the applied-step flags
        r_base, r_stride, a_base, row_bit = _bit_planes(
            r_bits_ptr, a_bits_ptr, prob3, rows, cols, m, a_cols, n_steps
        )
        r_word = tl.full(col_ok.shape, 0, tl.int64)
        a_word = tl.full(col_ok.shape, 0, tl.int64)
        # the flags of a problem, held by every lane of its warp (no layout conversion)
        lanes = tl.full((1, 1, 1, rows.shape[3], cols.shape[4]), 0, tl.int64)
        f_word = tl.full(prob3.shape, 0, tl.int64) + lanes
        exists = (prob3 < B) & (lanes == 0)

    for g in range(n_grad):
        running = ~stopped
        x = tl.where(running, x - c * lr, x)  # gradient step
        xc = x * c
        norm = tl.sqrt_rn(_col_sum(_row_sum(xc * xc)))
        total += tl.where(running, x, 0.0)  # the mean takes the iterate before projections
        count += running.to(tl.float32)
        idle = stopped  # an inner cycle changed nothing: skip the others of this outer step
        for j in range(n_proj):
            z = x + p0
            y = _relu(z)  # non-negativity
            col_sum = _col_sum(y)
            row_sum = _row_sum(y)  # from the same Y
            cs = col_sum + p1 * n_f  # column sums of Y + P1
            active = col_ok & ~(cs <= 1.0)
            p1_new = tl.where(active, (cs - 1.0) * inv_n, 0.0)  # columns
            d = p1 - p1_new  # (P, 1, BM)
            a = tl.where(row_ok, (row_sum + _row_sum(d) - 1.0) * inv_m, 0.0)
            x_new = tl.where(valid, y + d - a, 0.0)  # rows
            diff = x_new - x
            moved = _col_sum(_row_sum(diff * diff))
            applied = ~idle
            x = tl.where(applied, x_new, x)
            p0 = tl.where(applied, z - y, p0)
            p1 = tl.where(applied, p1_new, p1)
            idle = idle | (moved == 0.0)
            if SAVE_BITS:
                k = g * n_proj + j
                last = k == n_steps - 1
                r_word, a_word = _store_bits(
                    r_base + (k // SPW) * r_stride,
                    a_base + (k // 64) * a_cols + cols,
                    r_word,
                    a_word,
                    ~(z <= 0.0),
                    active,
                    k,
                    last,
                    col_ok,
                    row_bit,
                    SPW,
                )
                f_word = _push(f_word, applied.to(tl.int64), 1)
                f_ptr = a_base + (k // 64) * a_cols + m + lanes
                tl.store(f_ptr, f_word, mask=exists & ((k % 64 == 63) | last))
        stopped = stopped | (norm == prev_norm)
        prev_norm = norm

    out = total / count
    out_offs = prob3 * n * m + rows * m + cols
    tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=in_bounds)


@triton.autotune(_warp_configs(), key=_SHAPE_KEY, prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=["n_grad", "n_proj", "lr"])
def _dmm_bwd_kernel(
    grad_out_ptr,  # (B, n, m) cost's dtype
    sizes_ptr,  # (B, 2) int64 (n_b, m_b); unused unless HAS_SIZES
    r_bits_ptr,  # (B, LN * ceil(K / SPW), m) int64, written by the forward
    a_bits_ptr,  # (B, ceil(K / 64), m) int64, written by the forward
    grad_cost_ptr,  # (B, n, m) cost's dtype, contiguous
    grad_x_ptr,  # (B, n, m) cost's dtype, contiguous
    B,
    n,
    m,
    n_grad,
    n_proj,
    lr,  # fp32 scalar
    stride_gb,
    stride_gn,
    stride_gm,
    HAS_SIZES: tl.constexpr,
    PROBLEMS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    prob3, rows, cols, row_ok, col_ok, valid, in_bounds, inv_n, inv_m = _problem_layout(
        sizes_ptr, B, n, m, HAS_SIZES, PROBLEMS, BLOCK_N, BLOCK_M
    )
    g_offs = prob3 * stride_gb + rows * stride_gn + cols * stride_gm
    g_out = tl.load(grad_out_ptr + g_offs, mask=valid, other=0.0).to(tl.float32)
    g_total = g_out / (n_grad + 1).to(tl.float32)  # adjoint of every iterate in the mean
    g_x = tl.full(valid.shape, 0.0, tl.float32)
    g_p2 = tl.full(valid.shape, 0.0, tl.float32)
    g_q = tl.full(col_ok.shape, 0.0, tl.float32)
    g_steps = tl.full(valid.shape, 0.0, tl.float32)  # sum of adjoints of X - lr C

    n_steps = n_grad * n_proj
    r_base, r_stride, a_base, row_bit = _bit_planes(
        r_bits_ptr, a_bits_ptr, prob3, rows, cols, m, m, n_steps
    )
    a_base += cols
    r_word = tl.full(col_ok.shape, 0, tl.int64)
    a_word = tl.full(col_ok.shape, 0, tl.int64)

    for gi in range(n_grad):
        g_x += g_total
        for ji in range(n_proj):
            k = n_steps - 1 - (gi * n_proj + ji)
            r_word, a_word, relu_on, active = _load_bits(
                r_base, r_stride, a_base, m, r_word, a_word, k, n_steps, col_ok, row_bit
            )  # (RN, R, P, LN, LC), (1, R, P, LN, LC)

            g_x3 = tl.where(valid, tl.where(relu_on, g_x, g_p2), 0.0)
            g_d = _col_sum(g_x3)
            g_s = tl.where(active, g_q - g_d * inv_n, 0.0)
            g_r = _row_sum(g_x3)
            g_a = -g_r - _row_sum(g_s)
            g_x = g_x3 + tl.where(row_ok, g_a * inv_m, 0.0) + g_s
            g_p2 = g_x3
            g_q = g_d * inv_n + g_s
        g_steps += g_x

    out_offs = prob3 * n * m + rows * m + cols
    dtype = grad_cost_ptr.dtype.element_ty
    g_cost = tl.where(valid, -lr * g_steps, 0.0)
    tl.store(grad_cost_ptr + out_offs, g_cost.to(dtype), mask=in_bounds)
    g_init = tl.where(valid, g_x + g_total, 0.0)
    tl.store(grad_x_ptr + out_offs, g_init.to(dtype), mask=in_bounds)


@triton.autotune(_warp_configs(), key=_SHAPE_KEY, prune_configs_by=_PRUNE)
@triton.jit(do_not_specialize=["n_grad", "n_proj", "lr"])
def _dmm_bwd_original_kernel(
    grad_out_ptr,  # (B, n, m) cost's dtype
    sizes_ptr,  # (B, 2) int64 (n_b, m_b); unused unless HAS_SIZES
    r_bits_ptr,  # (B, LN * ceil(K / SPW), m) int64, written by the forward
    a_bits_ptr,  # (B, ceil(K / 64), m + 1) int64, written by the forward
    grad_cost_ptr,  # (B, n, m) cost's dtype, contiguous
    grad_x_ptr,  # (B, n, m) cost's dtype, contiguous
    B,
    n,
    m,
    n_grad,
    n_proj,
    lr,  # fp32 scalar
    stride_gb,
    stride_gn,
    stride_gm,
    HAS_SIZES: tl.constexpr,
    PROBLEMS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Reverse sweep of :func:`_dmm_fwd_original_kernel` (see the module docstring)."""
    prob3, rows, cols, row_ok, col_ok, valid, in_bounds, inv_n, inv_m = _problem_layout(
        sizes_ptr, B, n, m, HAS_SIZES, PROBLEMS, BLOCK_N, BLOCK_M
    )
    n_f = 1.0 / inv_n
    n_steps = n_grad * n_proj
    a_cols = m + 1
    r_base, r_stride, a_base, row_bit = _bit_planes(
        r_bits_ptr, a_bits_ptr, prob3, rows, cols, m, a_cols, n_steps
    )
    exists = prob3 < B

    # iterates in the mean: x_init and every outer step that ran (its first cycle is applied);
    # step k's flag is bit (steps in its word - 1 - k % 64) of the word (newest lowest)
    count = tl.full(prob3.shape, 1.0, tl.float32)
    for g in range(n_grad):
        k = g * n_proj
        filled = tl.minimum(n_steps - (k // 64) * 64, 64)
        f_word = tl.load(a_base + (k // 64) * a_cols + m, mask=exists, other=0)
        count += ((f_word >> (filled - 1 - k % 64)) & 1).to(tl.float32)

    g_offs = prob3 * stride_gb + rows * stride_gn + cols * stride_gm
    g_out = tl.load(grad_out_ptr + g_offs, mask=valid, other=0.0).to(tl.float32)
    g_mean = g_out / count  # adjoint of every iterate in the mean
    g_x = tl.full(valid.shape, 0.0, tl.float32)
    g_p0 = tl.full(valid.shape, 0.0, tl.float32)
    g_p1 = tl.full(col_ok.shape, 0.0, tl.float32)
    g_steps = tl.full(valid.shape, 0.0, tl.float32)  # sum of adjoints of X - lr C
    r_word = tl.full(col_ok.shape, 0, tl.int64)
    a_word = tl.full(col_ok.shape, 0, tl.int64)
    f_word = tl.full(prob3.shape, 0, tl.int64)
    applied = tl.full(prob3.shape, 0, tl.int1)

    for gi in range(n_grad):
        g = n_grad - 1 - gi
        for ji in range(n_proj):
            k = g * n_proj + n_proj - 1 - ji
            r_word, a_word, relu_on, active = _load_bits(
                r_base, r_stride, a_base + cols, a_cols, r_word, a_word, k, n_steps, col_ok, row_bit
            )  # (RN, R, P, LN, LC), (1, R, P, LN, LC)
            f_word = f_word >> 1
            if (k % 64 == 63) | (k == n_steps - 1):
                f_word = tl.load(a_base + (k // 64) * a_cols + m, mask=exists, other=0)
            applied = (f_word & 1) != 0  # (1, 1, P, 1, 1)

            gg = tl.where(valid, g_x, 0.0)  # adjoint of X' = Y + d - a
            g_a = -_row_sum(gg)  # adjoint of a
            g_a = tl.where(row_ok, g_a * inv_m, 0.0)
            g_d = _col_sum(gg) + _col_sum(g_a)
            g_d = tl.where(col_ok, g_d, 0.0)  # adjoint of d = p1 - p1'
            g_cs = tl.where(active, (g_p1 - g_d) * inv_n, 0.0)  # adjoint of the column sums
            g_y = gg + g_a + g_cs  # adjoint of Y
            g_z = tl.where(valid, g_p0 + tl.where(relu_on, g_y - g_p0, 0.0), 0.0)
            g_x = tl.where(applied, g_z, g_x)
            g_p0 = tl.where(applied, g_z, g_p0)
            g_p1 = tl.where(applied, g_d + g_cs * n_f, g_p1)
        ran = applied  # the flag of the outer step's first cycle, visited last
        g_x += tl.where(ran, g_mean, 0.0)
        g_steps += tl.where(ran, g_x, 0.0)

    out_offs = prob3 * n * m + rows * m + cols
    dtype = grad_cost_ptr.dtype.element_ty
    g_cost = tl.where(valid, -lr * g_steps, 0.0)
    tl.store(grad_cost_ptr + out_offs, g_cost.to(dtype), mask=in_bounds)
    g_init = tl.where(valid, g_x + g_mean, 0.0)
    tl.store(grad_x_ptr + out_offs, g_init.to(dtype), mask=in_bounds)


# ---------------------------------------------------------------------------------------------
# launch wrappers


def block_sizes(n: int, m: int) -> tuple[int, int]:
    """``(BLOCK_N, BLOCK_M)`` for an ``n x m`` problem; ``ValueError`` beyond the limits."""
    if not (1 <= n <= MAX_N and 1 <= m <= MAX_M):
        raise ValueError(
            f"the fused matcher kernels support 1 <= n <= {MAX_N} and 1 <= m <= {MAX_M}, "
            f"got n={n}, m={m}"
        )
    return triton.next_power_of_2(n), triton.next_power_of_2(m)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def problems_per_program(
    batch: int,
    block_n: int,
    block_m: int,
    device: torch.device | None = None,
    *,
    sm_count: int | None = None,
) -> int:
    """Problems one program solves: tiny problems are packed up to 4096 elements a program.

    On a GPU packing stops while it would leave fewer than two programs per SM (``sm_count``
    SMs when given, e.g. to plan for a GPU that is not here; else ``device``'s); under the
    interpreter (CPU tensors) packing is always as dense as allowed, which cuts Python overhead.
    """
    cap = max(1, _ELEMENTS_PER_PROGRAM // (block_n * block_m))
    if sm_count is None and device is not None and device.type == "cuda":
        sm_count = _sm_count(device.index or 0)
    if sm_count is not None:
        per_sm = batch // (2 * sm_count)
        cap = min(cap, max(1, per_sm))
    cap = min(cap, triton.next_power_of_2(batch))
    return 1 << (cap.bit_length() - 1)  # a power of two


def _check_variant(variant: str) -> bool:
    """True for ``"original"``; ``ValueError`` unless one of :data:`VARIANTS`."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return variant == "original"


def bits_shapes(batch: int, n: int, m: int, n_grad: int, n_proj: int, variant: str = "listing1"):
    """Shapes of the int64 scratch ``(r_bits, a_bits)`` the forward writes for the backward.

    ``variant="original"`` adds one column to ``a_bits``: the applied-step flags.
    """
    block_n, block_m = block_sizes(n, m)
    lanes_n, _ = _lanes(block_n, block_m)
    n_steps = n_grad * n_proj
    spw = 64 // (block_n // lanes_n)
    a_cols = m + _check_variant(variant)
    return (batch, lanes_n * -(-n_steps // spw), m), (batch, -(-n_steps // 64), a_cols)


def bits_bytes_per_problem(
    n: int, m: int, n_grad: int, n_proj: int, variant: str = "listing1"
) -> int:
    """Bytes of backward scratch per problem (both bit planes), for an ``n x m`` problem."""
    r_shape, a_shape = bits_shapes(1, n, m, n_grad, n_proj, variant)
    return 8 * (r_shape[1] * r_shape[2] + a_shape[1] * a_shape[2])


def _check_problem(name: str, t: torch.Tensor, like: torch.Tensor | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if t.ndim != 3:
        raise ValueError(f"{name} must have shape (B, n, m), got {tuple(t.shape)}")
    if t.device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"{name} must be a CUDA tensor (or set TRITON_INTERPRET=1 before importing the "
            f"kernels to run them on the CPU), got device {t.device}"
        )
    if like is not None and (
        t.shape != like.shape or t.dtype != like.dtype or t.device != like.device
    ):
        raise ValueError(
            f"{name} must match cost: shape {tuple(like.shape)}, dtype {like.dtype}, "
            f"device {like.device}; got {tuple(t.shape)}, {t.dtype}, {t.device}"
        )


def _check_sizes(sizes: torch.Tensor | None, batch: int, device: torch.device) -> None:
    if sizes is None:
        return
    if sizes.dtype != torch.int64 or tuple(sizes.shape) != (batch, 2):
        raise ValueError(
            f"sizes must be an int64 tensor of shape ({batch}, 2), "
            f"got {sizes.dtype} {tuple(sizes.shape)}"
        )
    if sizes.device != device or not sizes.is_contiguous():
        raise ValueError(f"sizes must be contiguous and on {device}, got {sizes.device}")


def _check_out(name: str, t: torch.Tensor, shape, dtype, device) -> None:
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != device:
        raise ValueError(
            f"{name} must be a {dtype} tensor of shape {tuple(shape)} on {device}, "
            f"got {t.dtype} {tuple(t.shape)} on {t.device}"
        )
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _check_problems(problems: int | None, block_n: int, block_m: int, batch: int, device):
    """The problems per program: ``problems`` if given (a power of two), else the heuristic."""
    if problems is None:
        return problems_per_program(batch, block_n, block_m, device)
    if isinstance(problems, bool) or not isinstance(problems, int):
        raise TypeError(f"problems must be an int or None, got {type(problems).__name__}")
    if problems < 1 or problems > 1024 or problems & (problems - 1):
        raise ValueError(f"problems must be a power of two in [1, 1024], got {problems}")
    return problems


def _check_iterations(n_grad: int, n_proj: int, lr: float) -> None:
    if n_grad < 1 or n_proj < 1:
        raise ValueError(f"n_grad and n_proj must be >= 1, got {n_grad}, {n_proj}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")


def matcher_forward(
    cost: torch.Tensor,
    x_init: torch.Tensor,
    n_grad: int,
    n_proj: int,
    lr: float,
    sizes: torch.Tensor | None = None,
    save_bits: bool = False,
    out: torch.Tensor | None = None,
    *,
    r_bits: torch.Tensor | None = None,
    a_bits: torch.Tensor | None = None,
    problems: int | None = None,
    variant: str = "listing1",
):
    """Mean of the matcher's iterates for a batch, in one kernel launch.

    Args:
        cost, x_init: ``(B, n, m)`` tensors, float32/float16/bfloat16, same dtype and device
            (CUDA, or CPU under ``TRITON_INTERPRET=1``), any strides; ``1 <= n <= 64``,
            ``1 <= m <= 1024``.
        n_grad, n_proj, lr: outer steps, Dykstra cycles per outer step, gradient step.
        sizes: optional contiguous int64 ``(B, 2)`` per-problem ``(n_b, m_b)``; the output is
            zero outside each ``n_b x m_b`` block. Values are not checked on the host (that
            needs a sync): the kernel clamps them to ``[0, n] x [0, m]``, so no value makes it
            read or write outside the problem's own ``n x m`` block and bit-plane rows, and a
            problem with ``n_b = 0`` or ``m_b = 0`` gives zeros.
        save_bits: also write the relu pattern and active columns of every inner step for
            :func:`matcher_backward` (layout in the module docstring).
        out: optional contiguous ``(B, n, m)`` output of cost's dtype to write into.
        r_bits, a_bits: optional contiguous int64 bit planes of :func:`bits_shapes` to write
            into (with ``save_bits``); columns ``>= m_b`` of a problem are left untouched.
        problems: problems per program, a power of two; overrides
            :func:`problems_per_program` (for tests of the packed layouts and benchmarks).
        variant: ``"listing1"`` (the specification) or ``"original"`` (the original code's
            solver; see the module docstring).

    Returns:
        ``(out, r_bits, a_bits)``: the ``(B, n, m)`` mean in cost's dtype and the int64 bit
        planes (empty ``(0,)`` tensors unless ``save_bits``).
    """
    _check_problem("cost", cost)
    _check_problem("x_init", x_init, cost)
    batch, n, m = cost.shape
    block_n, block_m = block_sizes(n, m)
    _check_iterations(n_grad, n_proj, lr)
    original = _check_variant(variant)
    _check_sizes(sizes, batch, cost.device)
    if out is None:
        out = torch.empty((batch, n, m), dtype=cost.dtype, device=cost.device)
    _check_out("out", out, (batch, n, m), cost.dtype, cost.device)
    if save_bits:
        r_shape, a_shape = bits_shapes(batch, n, m, n_grad, n_proj, variant)
        if r_bits is None:
            r_bits = torch.empty(r_shape, dtype=torch.int64, device=cost.device)
        if a_bits is None:
            a_bits = torch.empty(a_shape, dtype=torch.int64, device=cost.device)
        _check_out("r_bits", r_bits, r_shape, torch.int64, cost.device)
        _check_out("a_bits", a_bits, a_shape, torch.int64, cost.device)
    else:
        if r_bits is not None or a_bits is not None:
            raise ValueError("r_bits and a_bits are only written with save_bits=True")
        r_bits = torch.empty((0,), dtype=torch.int64, device=cost.device)
        a_bits = torch.empty((0,), dtype=torch.int64, device=cost.device)
    if batch == 0:
        return out, r_bits, a_bits

    problems = _check_problems(problems, block_n, block_m, batch, cost.device)
    grid = lambda META: (triton.cdiv(batch, META["PROBLEMS"]),)
    kernel = _dmm_fwd_original_kernel if original else _dmm_fwd_kernel
    kernel[grid](
        cost,
        x_init,
        sizes if sizes is not None else out,  # never read without sizes
        out,
        r_bits,
        a_bits,
        batch,
        n,
        m,
        n_grad,
        n_proj,
        float(lr),
        *cost.stride(),
        *x_init.stride(),
        HAS_SIZES=sizes is not None,
        SAVE_BITS=save_bits,
        PROBLEMS=problems,
        BLOCK_N=block_n,
        BLOCK_M=block_m,
    )
    return out, r_bits, a_bits


def matcher_backward(
    grad_out: torch.Tensor,
    r_bits: torch.Tensor,
    a_bits: torch.Tensor,
    n_grad: int,
    n_proj: int,
    lr: float,
    sizes: torch.Tensor | None = None,
    grad_cost: torch.Tensor | None = None,
    grad_x_init: torch.Tensor | None = None,
    *,
    problems: int | None = None,
    variant: str = "listing1",
):
    """Gradients of the matcher's output with respect to ``cost`` and ``x_init``, one launch.

    Args:
        grad_out: ``(B, n, m)`` upstream gradient in cost's dtype (any strides).
        r_bits, a_bits: the bit planes of :func:`matcher_forward` with ``save_bits=True``
            for the same ``(B, n, m)``, ``n_grad``, ``n_proj`` and ``sizes``.
        n_grad, n_proj, lr, sizes: as given to the forward.
        grad_cost, grad_x_init: optional contiguous outputs of grad_out's shape and dtype.
        problems: problems per program (a power of two), as for :func:`matcher_forward`;
            need not be the forward's (the bit layout does not depend on it).
        variant: the forward's variant.

    Returns:
        ``(grad_cost, grad_x_init)``, ``(B, n, m)`` in grad_out's dtype, zero outside each
        problem's ``n_b x m_b`` block. Equal (up to rounding) to autograd through the reference.
    """
    _check_problem("grad_out", grad_out)
    batch, n, m = grad_out.shape
    block_n, block_m = block_sizes(n, m)
    _check_iterations(n_grad, n_proj, lr)
    original = _check_variant(variant)
    _check_sizes(sizes, batch, grad_out.device)
    r_shape, a_shape = bits_shapes(batch, n, m, n_grad, n_proj, variant)
    _check_out("r_bits", r_bits, r_shape, torch.int64, grad_out.device)
    _check_out("a_bits", a_bits, a_shape, torch.int64, grad_out.device)
    shape, dtype, dev = (batch, n, m), grad_out.dtype, grad_out.device
    if grad_cost is None:
        grad_cost = torch.empty(shape, dtype=dtype, device=dev)
    if grad_x_init is None:
        grad_x_init = torch.empty(shape, dtype=dtype, device=dev)
    _check_out("grad_cost", grad_cost, shape, dtype, dev)
    _check_out("grad_x_init", grad_x_init, shape, dtype, dev)
    if batch == 0:
        return grad_cost, grad_x_init

    problems = _check_problems(problems, block_n, block_m, batch, dev)
    grid = lambda META: (triton.cdiv(batch, META["PROBLEMS"]),)
    kernel = _dmm_bwd_original_kernel if original else _dmm_bwd_kernel
    kernel[grid](
        grad_out,
        sizes if sizes is not None else grad_cost,  # never read without sizes
        r_bits,
        a_bits,
        grad_cost,
        grad_x_init,
        batch,
        n,
        m,
        n_grad,
        n_proj,
        float(lr),
        *grad_out.stride(),
        HAS_SIZES=sizes is not None,
        PROBLEMS=problems,
        BLOCK_N=block_n,
        BLOCK_M=block_m,
    )
    return grad_cost, grad_x_init


# ---------------------------------------------------------------------------------------------
# ahead-of-time compilation (no GPU needed)

_TRITON_DTYPES = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}


@dataclass(frozen=True)
class AotKernel:
    """A kernel compiled ahead of time, with what a launcher outside Triton needs.

    Launch ``name`` from ``ptx`` on a grid of ``ceil(B / problems)`` programs (x dimension),
    ``32 * num_warps`` threads each, with ``shared_bytes`` of dynamic shared memory. The
    entry's parameters are ``args`` (``"name: type"``, Triton's type names: ``*fp32`` is a
    pointer, ``i32`` a 32-bit integer; strides count elements) in that order, followed by two
    64-bit pointers (Triton's global and profile scratch), which these kernels never use:
    pass null.
    """

    name: str
    ptx: str
    arch: int
    num_warps: int
    problems: int
    shared_bytes: int
    args: tuple[str, ...]


def _python_fn(kernel):
    """The plain Python function under autotune/heuristics/jit/interpreter wrappers."""
    fn = kernel
    while not inspect.isfunction(fn):
        fn = fn.fn
    return fn


def _language_is_interpreted() -> bool:
    """True when triton.language was imported under TRITON_INTERPRET=1 (its jit helpers such
    as ``tl.sum`` are then interpreter functions, which the compiler cannot lower)."""
    from triton.runtime.jit import JITFunction

    return not isinstance(tl.standard.sum, JITFunction)


@contextlib.contextmanager
def jit_helpers():
    """Make this module's ``@triton.jit`` helpers compilable while the block lasts.

    Where this module was imported under ``TRITON_INTERPRET=1`` (tests that run the kernels in
    the interpreter first), its helpers (``_relu``, ``_row_sum``, ...) are interpreter
    functions, which the compiler cannot lower, even when ``triton.language`` itself was
    imported without the interpreter. Ahead-of-time compilation (here and the TensorRT
    plugin's) swaps fresh JIT functions in for them, and restores them after.
    """
    from triton.runtime.jit import JITFunction

    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - Triton without an interpreter module
        yield
        return
    module = globals()
    swapped = {k: v for k, v in module.items() if isinstance(v, InterpretedFunction)}
    for name, fn in swapped.items():
        module[name] = JITFunction(_python_fn(fn))
    try:
        yield
    finally:
        module.update(swapped)


def _compile_elsewhere(function: str, kwargs: dict) -> AotKernel:
    """Run ``function(**kwargs)`` of this module in a fresh Python without the interpreter."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import dataclasses, json, sys; import kernels.matcher as k; "
        f"r = k.{function}(**json.loads(sys.argv[1])); "
        "sys.stdout.write(json.dumps(dataclasses.asdict(r)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{function} failed:\n{proc.stderr[-4000:]}")
    fields = json.loads(proc.stdout)
    return AotKernel(**{**fields, "args": tuple(fields["args"])})


def _int_arg(value: int | None) -> tuple[str, bool]:
    """How Triton's JIT passes an integer argument of this value: ``("constexpr", _)`` for 1,
    else its type and whether it carries the divisibility-by-16 hint. ``None``: a runtime i32
    with no hint (the value is not known when compiling)."""
    if value is None:
        return "i32", False
    if value == 1:
        return "constexpr", False
    return ("i32" if -(2**31) <= value < 2**31 else "i64"), value % 16 == 0


def _shape_args(prefix: str, batch: int | None, n: int | None, m: int | None) -> dict:
    """``{name: value}`` of a contiguous ``(B, n, m)`` tensor's strides; unknown ones None."""
    return {
        f"{prefix}b": n * m if n is not None and m is not None else None,
        f"{prefix}n": m,
        f"{prefix}m": 1,
    }


def _compile(
    kernel, pointers: dict, ints: dict, constexprs: dict, arch: int, num_warps: int
) -> AotKernel:
    """Compile ``kernel`` with the specialisation Triton's JIT gives contiguous tensors.

    pointers: ``{name: type}`` (16-byte aligned: divisibility hint 16, as the JIT gives torch
    allocations); ints: ``{name: value or None}``, passed as :func:`_int_arg` says; the other
    arguments (fp32 scalars) are named in ``pointers`` too with their type.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    jit_fn = JITFunction(_python_fn(kernel))
    signature, attrs, constants = {}, {}, dict(constexprs)
    for index, name in enumerate(jit_fn.arg_names):
        if name in pointers:
            signature[name] = pointers[name]
            if pointers[name].startswith("*"):
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in ints:
            kind, divisible = _int_arg(ints[name])
            signature[name] = kind
            if kind == "constexpr":
                constants[name] = ints[name]
            elif divisible:
                attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "constexpr"
    src = ASTSource(fn=jit_fn, signature=signature, constexprs=constants, attrs=attrs)
    with jit_helpers():
        compiled = triton.compile(
            src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps}
        )
    meta = compiled.metadata
    if meta.global_scratch_size or meta.profile_scratch_size:  # the launcher passes null
        raise RuntimeError(f"{meta.name} unexpectedly needs Triton scratch memory")
    return AotKernel(
        name=meta.name,
        ptx=compiled.asm["ptx"],
        arch=arch,
        num_warps=num_warps,
        problems=constexprs["PROBLEMS"],
        shared_bytes=meta.shared,
        args=tuple(f"{k}: {t}" for k, t in signature.items() if t != "constexpr"),
    )


def _check_aot(
    arch: int, block_n: int, block_m: int, dtype: str, problems: int, shape: tuple
) -> None:
    if arch not in (80, 86, 87, 89, 90):
        raise ValueError(f"arch must be one of 80, 86, 87, 89, 90 (sm_XY), got {arch}")
    if dtype not in _TRITON_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_TRITON_DTYPES)}, got {dtype!r}")
    for name, v, hi in (
        ("block_n", block_n, MAX_N),
        ("block_m", block_m, MAX_M),
        ("problems", problems, 1024),
    ):
        if v < 1 or v > hi or v & (v - 1):
            raise ValueError(f"{name} must be a power of two in [1, {hi}], got {v}")
    batch, n, m = shape
    for name, v, lo, hi in (
        ("batch", batch, 0, 2**31 - 1),
        ("n", n, 1, block_n),
        ("m", m, 1, block_m),
    ):
        if v is not None and not lo <= v <= hi:
            raise ValueError(f"{name} must be None or in [{lo}, {hi}], got {v}")


_SPECIALISATION_DOC = """
    Specialisation: the kernel is compiled as Triton's JIT compiles it for contiguous
    ``(B, n, m)`` tensors, so that what ships is what the tests ran: every pointer 16-byte
    aligned (divisibility hint), the last stride 1 (a constant, not an argument); ``batch``,
    ``n``, ``m``, when given, are specialised as the JIT specialises those values (1 becomes a
    constant, multiples of 16 carry the divisibility hint), and the strides derived from them
    too; when None they are runtime i32 arguments without hints (one kernel for every value).
"""


def compile_forward(
    arch: int,
    block_n: int,
    block_m: int,
    *,
    problems: int = 1,
    num_warps: int = 4,
    has_sizes: bool = False,
    save_bits: bool = False,
    dtype: str = "fp32",
    batch: int | None = None,
    n: int | None = None,
    m: int | None = None,
    variant: str = "listing1",
) -> AotKernel:
    """The forward kernel compiled for ``sm_<arch>`` ahead of time, without a GPU.

    Args:
        arch: 80, 86, 87, 89 or 90.
        block_n, block_m: ``next_power_of_2`` of the problems' ``n`` (<= 64) and ``m``
            (<= 1024); the kernel then serves every ``n <= block_n``, ``m <= block_m``.
        problems: problems per program (a power of two; see :func:`problems_per_program`).
        num_warps: warps per program.
        has_sizes: the ``sizes`` pointer is read (padded batches); else it may be null.
        save_bits: also write the bit planes for the backward; else those pointers may be null.
        dtype: "fp32", "fp16" or "bf16", the element type of cost, x_init and out.
        batch, n, m: optional exact shape to specialise for (see below).
        variant: "listing1" or "original" (see the module docstring).
    {spec}
    In a process that imported triton under ``TRITON_INTERPRET=1`` (whose own ``tl.sum`` &
    co. are then interpreter functions) the compilation runs in a fresh Python process.
    """
    _check_aot(arch, block_n, block_m, dtype, problems, (batch, n, m))
    kwargs = dict(problems=problems, num_warps=num_warps, has_sizes=has_sizes)
    kwargs.update(save_bits=save_bits, dtype=dtype, batch=batch, n=n, m=m, variant=variant)
    if _language_is_interpreted():
        return _compile_elsewhere(
            "compile_forward", dict(arch=arch, block_n=block_n, block_m=block_m, **kwargs)
        )
    ptr = _TRITON_DTYPES[dtype]
    pointers = {
        "cost_ptr": ptr,
        "x_init_ptr": ptr,
        "sizes_ptr": "*i64",
        "out_ptr": ptr,
        "r_bits_ptr": "*i64",
        "a_bits_ptr": "*i64",
        "lr": "fp32",
    }
    ints = {"B": batch, "n": n, "m": m, "n_grad": None, "n_proj": None}
    ints.update(_shape_args("stride_c", batch, n, m))
    ints.update(_shape_args("stride_x", batch, n, m))
    constexprs = {
        "HAS_SIZES": has_sizes,
        "SAVE_BITS": save_bits,
        "PROBLEMS": problems,
        "BLOCK_N": block_n,
        "BLOCK_M": block_m,
    }
    kernel = _dmm_fwd_original_kernel if _check_variant(variant) else _dmm_fwd_kernel
    return _compile(kernel, pointers, ints, constexprs, arch, num_warps)


def compile_backward(
    arch: int,
    block_n: int,
    block_m: int,
    *,
    problems: int = 1,
    num_warps: int = 4,
    has_sizes: bool = False,
    dtype: str = "fp32",
    batch: int | None = None,
    n: int | None = None,
    m: int | None = None,
    variant: str = "listing1",
) -> AotKernel:
    """The backward kernel compiled for ``sm_<arch>`` ahead of time, without a GPU.

    Arguments as :func:`compile_forward`; ``dtype`` is that of grad_out and both gradients.
    Its bit planes must come from a forward with the same ``block_n`` (the layout depends on it).
    {spec}"""
    _check_aot(arch, block_n, block_m, dtype, problems, (batch, n, m))
    kwargs = dict(problems=problems, num_warps=num_warps, has_sizes=has_sizes, dtype=dtype)
    kwargs.update(batch=batch, n=n, m=m, variant=variant)
    if _language_is_interpreted():
        return _compile_elsewhere(
            "compile_backward", dict(arch=arch, block_n=block_n, block_m=block_m, **kwargs)
        )
    ptr = _TRITON_DTYPES[dtype]
    pointers = {
        "grad_out_ptr": ptr,
        "sizes_ptr": "*i64",
        "r_bits_ptr": "*i64",
        "a_bits_ptr": "*i64",
        "grad_cost_ptr": ptr,
        "grad_x_ptr": ptr,
        "lr": "fp32",
    }
    ints = {"B": batch, "n": n, "m": m, "n_grad": None, "n_proj": None}
    ints.update(_shape_args("stride_g", batch, n, m))
    constexprs = {
        "HAS_SIZES": has_sizes,
        "PROBLEMS": problems,
        "BLOCK_N": block_n,
        "BLOCK_M": block_m,
    }
    kernel = _dmm_bwd_original_kernel if _check_variant(variant) else _dmm_bwd_kernel
    return _compile(kernel, pointers, ints, constexprs, arch, num_warps)


compile_forward.__doc__ = compile_forward.__doc__.replace("{spec}", _SPECIALISATION_DOC)
compile_backward.__doc__ = compile_backward.__doc__.replace("{spec}", _SPECIALISATION_DOC)


def compile_forward_ptx(arch: int, block_n: int, block_m: int, **kwargs) -> str:
    """PTX text of :func:`compile_forward` (same arguments). A launcher also needs its
    ``shared_bytes`` of dynamic shared memory and the two trailing null pointers: see
    :class:`AotKernel`."""
    return compile_forward(arch, block_n, block_m, **kwargs).ptx


def compile_backward_ptx(arch: int, block_n: int, block_m: int, **kwargs) -> str:
    """PTX text of :func:`compile_backward` (same arguments); see :class:`AotKernel`."""
    return compile_backward(arch, block_n, block_m, **kwargs).ptx
