"""The fused kernels in ``variant="original"`` (the original DMM-Net code's solver) against the
batched reference and the literal transcription ``tests/spec_relax_match.py``.

Kernels run compiled on a GPU when there is one, else in Triton's interpreter (see
``test_triton_kernels.py``, whose helpers these tests share). Tolerances: 1e-5 (forward) and
1e-4 (backward) of the largest float64 reference value.
"""

from __future__ import annotations

import pytest
import torch
from spec_relax_match import relax_matching as spec_original
from test_triton_kernels import (
    DEVICE,
    NAN,
    _assert_close,
    _interpreter_env,  # noqa: F401  (autouse fixture)
    _problem,
    km,
)

from dmm_deploy.matching import match_reference
from dmm_deploy.matching import triton_backend as tb

ORIGINAL = "original"


def _reference(cost, x_init, grad_out, n_grad, n_proj, lr, sizes=None):
    cost = cost.detach().clone().requires_grad_()
    x_init = x_init.detach().clone().requires_grad_()
    out = match_reference(cost, x_init, n_grad, n_proj, lr, sizes, variant=ORIGINAL)
    return (out.detach(), *torch.autograd.grad(out, (cost, x_init), grad_out))


def _kernels(cost, x_init, grad_out, n_grad, n_proj, lr, sizes=None, problems=None):
    """Forward and backward launches into NaN-poisoned outputs (float32)."""
    cost, x_init, grad_out = (t.float().to(DEVICE) for t in (cost, x_init, grad_out))
    sizes = None if sizes is None else sizes.to(DEVICE)
    poisoned = lambda: torch.full(cost.shape, NAN, device=DEVICE)  # noqa: E731
    out, r_bits, a_bits = km.matcher_forward(
        cost, x_init, n_grad, n_proj, lr, sizes, save_bits=True, out=poisoned(),
        problems=problems, variant=ORIGINAL,
    )  # fmt: skip
    grads = km.matcher_backward(
        grad_out, r_bits, a_bits, n_grad, n_proj, lr, sizes, poisoned(), poisoned(),
        problems=problems, variant=ORIGINAL,
    )  # fmt: skip
    return out, *grads


def _check(actual, expected, name):
    for what, a, e, rtol in zip(
        ("out", "grad_cost", "grad_x"), actual, expected, (1e-5, 1e-4, 1e-4), strict=True
    ):
        _assert_close(a, e, rtol, f"{name} {what}")


# (B, n, m, n_grad, n_proj, lr): odd shapes, n = 1, m = 1, n > m, n = 64, a partly empty program
CASES = {
    "small": (3, 5, 7, 4, 3, 0.1),
    "n1": (2, 1, 9, 4, 3, 0.1),
    "n_gt_m": (2, 9, 3, 5, 3, 0.1),
    "n64": (2, 64, 5, 3, 2, 0.05),
    "batch_13": (13, 3, 6, 3, 2, 0.1),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_original_matches_the_float64_reference(case):
    b, n, m, n_grad, n_proj, lr = CASES[case]
    cost, x_init, grad_out = _problem(b, n, m, seed=30 + len(case))
    expected = _reference(cost, x_init, grad_out, n_grad, n_proj, lr)
    _check(_kernels(cost, x_init, grad_out, n_grad, n_proj, lr), expected, case)


@pytest.mark.slow
def test_original_video_setting_40x5_against_the_transcription():
    """40 x 5, lr 0.1, a one-hot start, against the literal transcription problem by problem.

    No exit fires in these problems (asserted): a rounding-triggered exit can fire at another
    step in float32 than in float64 (see kernels.matcher), the exit tests below use exact ones.
    """
    cost, _, grad_out = _problem(2, 4, 20, seed=31)
    x_init = torch.zeros_like(cost)
    x_init[:, torch.arange(4), cost.argmin(-1)[0]] = 1.0
    runs = [spec_original(cost[i], x_init[i], 40, 5, 0.1) for i in range(2)]
    assert all(not r["outer_exit"] and min(r["inner_cycles"]) == 5 for _, r in runs)
    spec = torch.stack([mean for mean, _ in runs])
    expected = _reference(cost, x_init, grad_out, 40, 5, 0.1)
    _assert_close(expected[0], spec, 1e-10, "reference vs transcription")
    _check(_kernels(cost, x_init, grad_out, 40, 5, 0.1), expected, "40x5")


@pytest.mark.parametrize("problems", [1, 2, 4, 8])
def test_original_padded_batch_and_forced_packing(problems):
    b, n, m, n_grad, n_proj, lr = 5, 4, 9, 4, 3, 0.1
    cost, x_init, grad_out = _problem(b, n, m, seed=32)
    sizes = torch.tensor([[4, 9], [1, 1], [3, 9], [4, 1], [2, 5]])
    rows = torch.arange(n)[None, :, None] < sizes[:, 0, None, None]
    cols = torch.arange(m)[None, None, :] < sizes[:, 1, None, None]
    valid = rows & cols
    cost = torch.where(valid, cost, 1e6)  # garbage in the padding must not matter
    x_init = torch.where(valid, x_init, -7.0)
    expected = _reference(cost, x_init, grad_out, n_grad, n_proj, lr, sizes)
    actual = _kernels(cost, x_init, grad_out, n_grad, n_proj, lr, sizes, problems)
    _check(actual, expected, f"padded, {problems} a program")
    for a in actual:
        assert (a.cpu()[~valid.expand_as(a)] == 0).all()


def _exit_problems():
    """Problems whose early exits fire at exact fixed points (the same step in any precision):
    a zero cost (the first outer step is the last), a single proposal (an unchanged cycle in
    the second outer step), and a 1 x 2 problem whose one-hot start is a fixed point."""
    b, n, m = 3, 3, 4
    cost = torch.zeros(b, n, m, dtype=torch.float64)
    x_init = torch.zeros(b, n, m, dtype=torch.float64)
    sizes = torch.tensor([[3, 4], [3, 1], [1, 2]])
    x_init[0, torch.arange(3), torch.tensor([0, 1, 3])] = 1.0  # feasible one-hot, zero cost
    cost[1, :, 0] = -torch.tensor([0.3, 0.9, 0.5], dtype=torch.float64)
    x_init[1, :, 0] = 1.0
    cost[2, 0, :2] = torch.tensor([-1.0, 0.0], dtype=torch.float64)
    x_init[2, 0, 0] = 1.0
    return cost, x_init, sizes


def test_original_early_exits_match_the_transcription():
    cost, x_init, sizes = _exit_problems()
    grad_out = torch.randn(
        cost.shape, generator=torch.Generator().manual_seed(33), dtype=torch.float64
    )
    n_grad, n_proj, lr = 6, 3, 0.1
    for i, (nb, mb) in enumerate(sizes.tolist()):
        mean, record = spec_original(cost[i, :nb, :mb], x_init[i, :nb, :mb], n_grad, n_proj, lr)
        assert record["outer_exit"] or min(record["inner_cycles"]) < n_proj, (i, record)
    expected = _reference(cost, x_init, grad_out, n_grad, n_proj, lr, sizes)
    for i, (nb, mb) in enumerate(sizes.tolist()):
        mean, _ = spec_original(cost[i, :nb, :mb], x_init[i, :nb, :mb], n_grad, n_proj, lr)
        _assert_close(expected[0][i, :nb, :mb], mean, 1e-10, f"reference problem {i}")
    _check(_kernels(cost, x_init, grad_out, n_grad, n_proj, lr, sizes), expected, "exits")
    # the same problems in float32 storage exit at the same steps
    _check(
        _kernels(cost.float(), x_init.float(), grad_out.float(), n_grad, n_proj, lr, sizes),
        expected,
        "exits float32",
    )


def test_original_through_the_custom_op_with_autograd():
    cost, x_init, grad_out = _problem(3, 4, 6, seed=34, dtype=torch.float32)
    cost, x_init, grad_out = (t.to(DEVICE) for t in (cost, x_init, grad_out))
    c1, x1 = cost.clone().requires_grad_(), x_init.clone().requires_grad_()
    out = tb.triton_match(c1, x1, 5, 3, 0.1, variant=ORIGINAL)
    grads = torch.autograd.grad(out, (c1, x1), grad_out)
    expected = _reference(cost.double(), x_init.double(), grad_out.double(), 5, 3, 0.1)
    _check((out.detach(), *grads), expected, "custom op")
    listing1 = tb.triton_match(cost, x_init, 5, 3, 0.1)
    assert (listing1 - out).abs().max() > 1e-3  # the variants differ
    with pytest.raises(ValueError, match="variant must be one of"):
        tb.triton_match(cost, x_init, 5, 3, 0.1, variant="paper")


def test_original_bits_carry_one_column_of_step_flags():
    from torch._subclasses.fake_tensor import FakeTensorMode

    # 5 x 50: 2 lanes along the rows, 4 rows a thread: 16 steps a word, 13 words a lane
    assert km.bits_shapes(2, 5, 50, 40, 5, ORIGINAL) == ((2, 26, 50), (2, 4, 51))
    assert km.bits_bytes_per_problem(5, 50, 40, 5, ORIGINAL) == 8 * (26 * 50 + 4 * 51)
    with FakeTensorMode():
        cost = torch.empty(7, 5, 50)
        _, r_bits, a_bits = tb.dmm_match_fwd(cost, cost, None, 40, 5, 0.1, True, ORIGINAL)
    assert tuple(r_bits.shape) == (7, 26, 50) and tuple(a_bits.shape) == (7, 4, 51)
