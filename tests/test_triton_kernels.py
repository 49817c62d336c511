"""Fused Triton matcher kernels against the batched reference (and the specification).

With a CUDA device the kernels run on it; without one they run in Triton's interpreter on CPU
tensors (``TRITON_INTERPRET=1``, which must be set when the kernels module is imported, so it
is set here around that import and, per test, around the calls through ``dmm_match``).
Every launch writes into NaN-filled outputs, so an element the kernel forgets stays NaN.
"""

from __future__ import annotations

import importlib
import math
import os
import sys

import pytest
import torch
from spec_listing1 import relax_matching

HAS_CUDA = torch.cuda.is_available()


def _import_kernels():
    """Import (or re-import) kernels.matcher in the mode this machine needs."""
    if HAS_CUDA:
        import kernels.matcher as km

        return km
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        from triton.runtime.interpreter import InterpretedFunction

        km = sys.modules.get("kernels.matcher")
        if km is None:
            km = importlib.import_module("kernels.matcher")
        elif not isinstance(km._dmm_fwd_kernel.fn, InterpretedFunction):
            km = importlib.reload(km)  # imported earlier for the GPU path: rebuild for the CPU
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return km


km = _import_kernels()
from dmm_deploy.matching import dmm_match, match_reference  # noqa: E402
from dmm_deploy.matching import triton_backend as tb  # noqa: E402

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
NAN = float("nan")

# (dtype, forward rtol, backward rtol) against the float64 reference; errors are measured as
# max|a - b| / max|b| (plus a floor of 1e-6 absolute for all-but-zero gradients)
TOLERANCES = {
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-3, 2e-2),
    torch.bfloat16: (1.6e-2, 1e-1),
}


@pytest.fixture(autouse=True)
def _interpreter_env(monkeypatch):
    """dmm_match only sends CPU tensors to the kernels when TRITON_INTERPRET is set."""
    if not HAS_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _problem(b, n, m, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    cost = torch.randn(b, n, m, generator=g, dtype=torch.float64)
    x_init = torch.rand(b, n, m, generator=g, dtype=torch.float64) / m
    grad_out = torch.randn(b, n, m, generator=g, dtype=torch.float64)
    return cost.to(dtype), x_init.to(dtype), grad_out.to(dtype)


def _assert_close(actual, expected, rtol, name, floor=1e-6):
    assert not torch.isnan(actual).any(), f"{name}: NaN left in the output (unwritten element?)"
    err = (actual.double().cpu() - expected.double().cpu()).abs().max().item()
    scale = expected.double().abs().max().item()
    assert err <= rtol * scale + floor * rtol, f"{name}: max error {err:.3g}, scale {scale:.3g}"


def _reference_with_grads(cost, x_init, grad_out, n_grad, n_proj, lr, sizes=None):
    cost = cost.detach().clone().requires_grad_()
    x_init = x_init.detach().clone().requires_grad_()
    out = match_reference(cost, x_init, n_grad, n_proj, lr, sizes)
    grad_cost, grad_x = torch.autograd.grad(out, (cost, x_init), grad_out)
    return out.detach(), grad_cost, grad_x


def _kernels_with_grads(cost, x_init, grad_out, n_grad, n_proj, lr, sizes=None):
    """Forward and backward launches into NaN-poisoned outputs."""
    cost, x_init, grad_out = (t.to(DEVICE) for t in (cost, x_init, grad_out))
    sizes = None if sizes is None else sizes.to(DEVICE)

    def poisoned():
        return torch.full(cost.shape, NAN, dtype=cost.dtype, device=DEVICE)

    out, r_bits, a_bits = km.matcher_forward(
        cost, x_init, n_grad, n_proj, lr, sizes, save_bits=True, out=poisoned()
    )
    grad_cost, grad_x = km.matcher_backward(
        grad_out, r_bits, a_bits, n_grad, n_proj, lr, sizes, poisoned(), poisoned()
    )
    return out, grad_cost, grad_x


# (B, n, m, n_grad, n_proj, lr): odd shapes, n = 1, m = 1, n > m, n = 64 (all 64 bits of a
# relu-pattern word), batches that do not fill the last program, K not a multiple of a word
CASES = {
    "small": (3, 5, 7, 3, 2, 0.1),
    "n1": (2, 1, 9, 4, 3, 0.1),
    "m1": (3, 4, 1, 4, 3, 0.1),
    "n_gt_m": (2, 9, 3, 5, 3, 0.1),
    "n64": (2, 64, 5, 3, 3, 0.05),
    "batch_13": (13, 8, 16, 7, 3, 0.1),  # one program of 16 problems, 3 slots empty
    "programs_4_4_3": (11, 6, 100, 3, 2, 0.1),  # 4 problems a program, the last one short
    "n1_m1": (2, 1, 1, 3, 2, 0.1),
    "largest_tile": (1, 64, 1024, 2, 3, 0.1),  # the supported limits, one step per bit word
    "n33_m1000": (2, 33, 1000, 3, 2, 0.1),  # 64-bit words of 64 rows, 31 of them padding
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_forward_backward_match_float64_reference(case):
    b, n, m, n_grad, n_proj, lr = CASES[case]
    cost, x_init, grad_out = _problem(b, n, m, seed=len(case))
    expected = _reference_with_grads(cost, x_init, grad_out, n_grad, n_proj, lr)
    f32 = (t.float() for t in (cost, x_init, grad_out))
    actual = _kernels_with_grads(*f32, n_grad, n_proj, lr)
    fwd_rtol, bwd_rtol = TOLERANCES[torch.float32]
    for name, a, e, rtol in zip(
        ("out", "grad_cost", "grad_x"),
        actual,
        expected,
        (fwd_rtol, bwd_rtol, bwd_rtol),
        strict=True,
    ):
        _assert_close(a, e, rtol, f"{case} {name}")


def test_paper_video_setting_40x5():
    """40 x 5 iterations (200 inner steps: several words of both bit planes), lr 0.1."""
    cost, x_init, grad_out = _problem(4, 5, 50, seed=3)
    expected = _reference_with_grads(cost, x_init, grad_out, 40, 5, 0.1)
    actual = _kernels_with_grads(cost.float(), x_init.float(), grad_out.float(), 40, 5, 0.1)
    for name, a, e, rtol in zip(
        ("out", "grad_cost", "grad_x"), actual, expected, (1e-5, 1e-4, 1e-4), strict=True
    ):
        _assert_close(a, e, rtol, f"40x5 {name}")


@pytest.mark.slow
def test_paper_video_setting_40x5_larger():
    cost, x_init, grad_out = _problem(3, 16, 100, seed=4)
    expected = _reference_with_grads(cost, x_init, grad_out, 40, 5, 0.1)
    actual = _kernels_with_grads(cost.float(), x_init.float(), grad_out.float(), 40, 5, 0.1)
    for name, a, e, rtol in zip(
        ("out", "grad_cost", "grad_x"), actual, expected, (1e-5, 1e-4, 1e-4), strict=True
    ):
        _assert_close(a, e, rtol, f"40x5 16x100 {name}")


def test_padded_batch_with_mixed_sizes():
    b, n, m = 6, 6, 20
    cost, x_init, grad_out = _problem(b, n, m, seed=5)
    sizes = torch.tensor([[6, 20], [1, 1], [3, 20], [6, 1], [2, 7], [5, 13]])
    # garbage in the padding must not matter
    rows = torch.arange(n)[None, :, None] < sizes[:, 0, None, None]
    cols = torch.arange(m)[None, None, :] < sizes[:, 1, None, None]
    valid = rows & cols
    cost = torch.where(valid, cost, 1e6)
    x_init = torch.where(valid, x_init, -7.0)
    expected = _reference_with_grads(cost, x_init, grad_out, 10, 5, 0.1, sizes)
    actual = _kernels_with_grads(cost.float(), x_init.float(), grad_out.float(), 10, 5, 0.1, sizes)
    for name, a, e, rtol in zip(
        ("out", "grad_cost", "grad_x"), actual, expected, (1e-5, 1e-4, 1e-4), strict=True
    ):
        _assert_close(a, e, rtol, f"padded {name}")
        assert (a.cpu()[~valid.expand_as(a)] == 0).all(), f"padded {name}: nonzero padding"
    # each padded problem equals the same problem alone
    for i, (nb, mb) in enumerate(sizes.tolist()):
        alone = _kernels_with_grads(
            cost[i : i + 1, :nb, :mb].float(),
            x_init[i : i + 1, :nb, :mb].float(),
            grad_out[i : i + 1, :nb, :mb].float(),
            10,
            5,
            0.1,
        )
        for a_pad, a_alone in zip(actual, alone, strict=True):
            _assert_close(a_pad[i : i + 1, :nb, :mb], a_alone, 1e-6, f"padded problem {i}")


# (B, n, m, n_grad, n_proj): a tiny case, and 8 x 128 in the video setting (40 x 5)
HALF_CASES = {"3x5x12_5x3": (3, 5, 12, 5, 3), "2x8x128_40x5": (2, 8, 128, 40, 5)}


@pytest.mark.parametrize("case", list(HALF_CASES), ids=list(HALF_CASES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_inputs(dtype, case):
    """fp16/bf16 storage against the reference on the same rounded inputs (both compute in
    fp32) and against float64."""
    b, n, m, n_grad, n_proj = HALF_CASES[case]
    cost, x_init, grad_out = _problem(b, n, m, seed=6 + n)
    cost, x_init, grad_out = cost.to(dtype), x_init.to(dtype), grad_out.to(dtype)
    actual = _kernels_with_grads(cost, x_init, grad_out, n_grad, n_proj, 0.1)
    assert all(t.dtype == dtype for t in actual)
    same_inputs = _reference_with_grads(cost, x_init, grad_out, n_grad, n_proj, 0.1)
    for name, a, e in zip(("out", "grad_cost", "grad_x"), actual, same_inputs, strict=True):
        _assert_close(a, e, 1e-2 if dtype == torch.bfloat16 else 1e-3, f"{dtype} {name}")
    float64 = _reference_with_grads(
        cost.double(), x_init.double(), grad_out.double(), n_grad, n_proj, 0.1
    )
    fwd_rtol, bwd_rtol = TOLERANCES[dtype]
    for name, a, e, rtol in zip(
        ("out", "grad_cost", "grad_x"), actual, float64, (fwd_rtol, bwd_rtol, bwd_rtol), strict=True
    ):
        _assert_close(a, e, rtol, f"{dtype} vs float64 {name}")


def test_forward_matches_specification_and_is_feasible_where_it_must():
    """One problem against the literal Listing 1; the mean is >= 0 (every iterate is)."""
    cost, _, _ = _problem(1, 4, 6, seed=7)
    x_init = torch.zeros_like(cost)
    spec = relax_matching(cost[0], x_init[0], 20, 5, 0.1)
    out, _, _ = km.matcher_forward(
        cost.float().to(DEVICE),
        x_init.float().to(DEVICE),
        20,
        5,
        0.1,
        out=torch.full(cost.shape, NAN, device=DEVICE),
    )
    _assert_close(out[0], spec, 1e-5, "specification")
    assert (out >= 0).all()


def test_forward_without_bits_equals_forward_with_bits():
    cost, x_init, _ = _problem(5, 7, 11, seed=8, dtype=torch.float32)
    cost, x_init = cost.to(DEVICE), x_init.to(DEVICE)
    plain, r0, a0 = km.matcher_forward(cost, x_init, 4, 3, 0.1)
    with_bits, r1, a1 = km.matcher_forward(cost, x_init, 4, 3, 0.1, save_bits=True)
    assert torch.equal(plain, with_bits)
    assert r0.numel() == a0.numel() == 0
    assert r1.shape == (5, 2, 11) and a1.shape == (5, 1, 11)  # K=12: 8 steps a word (n=7)


def test_non_contiguous_inputs_and_upstream_gradient():
    cost, x_init, grad_out = _problem(3, 6, 5, seed=9)
    expected = _reference_with_grads(cost, x_init, grad_out, 4, 3, 0.1)
    c_t = cost.float().transpose(1, 2).contiguous().transpose(1, 2)  # strides (30, 1, 6)
    x_t = x_init.float().transpose(1, 2).contiguous().transpose(1, 2)
    g_t = grad_out.float()[:, :1].expand(3, 6, 5)  # stride 0 along n
    expected_g = _reference_with_grads(cost, x_init, grad_out[:, :1].expand(3, 6, 5), 4, 3, 0.1)
    out, r_bits, a_bits = km.matcher_forward(
        c_t.to(DEVICE), x_t.to(DEVICE), 4, 3, 0.1, save_bits=True
    )
    _assert_close(out, expected[0], 1e-5, "strided forward")
    grads = km.matcher_backward(g_t.to(DEVICE), r_bits, a_bits, 4, 3, 0.1)
    for name, a, e in zip(("grad_cost", "grad_x"), grads, expected_g[1:], strict=True):
        _assert_close(a, e, 1e-4, f"strided {name}")


def test_scratch_is_far_smaller_than_the_reference_autograd_graph():
    b, n, m, n_grad, n_proj = 2, 8, 128, 40, 5
    cost, x_init, _ = _problem(b, n, m, seed=10, dtype=torch.float32)
    saved = []

    def pack(t):
        saved.append(t.untyped_storage().nbytes())
        return t

    cost.requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        match_reference(cost, x_init, n_grad, n_proj, 0.1)
    per_problem = km.bits_bytes_per_problem(n, m, n_grad, n_proj)
    # relu words: each of the LN lanes along the rows packs its n / LN rows, 64 // (n / LN)
    # steps a word; active columns: 64 steps a word
    lanes_n, _ = km._lanes(n, m)
    k = n_grad * n_proj
    relu_words = lanes_n * math.ceil(k / (64 // (n // lanes_n)))
    assert per_problem == 8 * m * (relu_words + math.ceil(k / 64))
    assert per_problem <= 8 * m * (math.ceil(k * n / 64) + math.ceil(k / 64) + lanes_n)
    r_bits, a_bits = (
        torch.empty(s, dtype=torch.int64) for s in km.bits_shapes(b, n, m, n_grad, n_proj)
    )
    assert r_bits.nbytes + a_bits.nbytes == b * per_problem
    assert b * per_problem * 20 < sum(saved), (b * per_problem, sum(saved))


def test_launch_wrapper_rejects_bad_arguments():
    cost = torch.zeros(2, 3, 4, device=DEVICE)
    with pytest.raises(TypeError, match="cost must be float32"):
        km.matcher_forward(cost.double(), cost.double(), 2, 2, 0.1)
    with pytest.raises(ValueError, match="x_init must match cost"):
        km.matcher_forward(cost, cost[:, :2], 2, 2, 0.1)
    with pytest.raises(ValueError, match="support 1 <= n <= 64"):
        km.matcher_forward(
            torch.zeros(1, 65, 4, device=DEVICE), torch.zeros(1, 65, 4, device=DEVICE), 2, 2, 0.1
        )
    with pytest.raises(ValueError, match="m <= 1024"):
        km.block_sizes(3, 1025)
    with pytest.raises(ValueError, match="out must be"):
        km.matcher_forward(cost, cost, 2, 2, 0.1, out=torch.empty(2, 3, 5, device=DEVICE))
    with pytest.raises(ValueError, match="sizes must be an int64"):
        km.matcher_forward(
            cost, cost, 2, 2, 0.1, sizes=torch.ones(2, 2, dtype=torch.int32, device=DEVICE)
        )
    with pytest.raises(ValueError, match="r_bits must be"):
        km.matcher_backward(
            cost, torch.empty(0, dtype=torch.int64, device=DEVICE), torch.empty(0), 2, 2, 0.1
        )


@pytest.mark.skipif(HAS_CUDA, reason="CPU-only behaviour")
def test_cpu_tensors_without_interpreter_are_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="must be a CUDA tensor"):
        km.matcher_forward(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), 1, 1, 0.1)


def test_problems_per_program_packs_tiny_problems():
    cpu = torch.device("cpu")
    assert km.problems_per_program(4096, 8, 64, cpu) == 8  # 4096 elements a program
    assert km.problems_per_program(3, 2, 4, cpu) == 4  # one program, one empty slot
    assert km.problems_per_program(5, 8, 64, cpu) == 8  # 5 problems, 3 empty slots
    assert km.problems_per_program(4096, 64, 1024, cpu) == 1
    assert km.problems_per_program(1, 1, 1, cpu) == 1


# ------------------------------------------------------------------------------------------
# through dmm_match: custom op, autograd, fallback, torch.compile, export


def test_dmm_match_triton_backend_forward_and_backward():
    cost, x_init, grad_out = _problem(3, 4, 6, seed=11, dtype=torch.float32)
    cost, x_init, grad_out = (t.to(DEVICE) for t in (cost, x_init, grad_out))
    c1, x1 = cost.clone().requires_grad_(), x_init.clone().requires_grad_()
    out = dmm_match(c1, x1, n_grad=6, n_proj=3, lr=0.1, backend="triton")
    c2, x2 = cost.clone().requires_grad_(), x_init.clone().requires_grad_()
    ref = match_reference(c2, x2, 6, 3, 0.1)
    _assert_close(out.detach(), ref.detach(), 1e-5, "dmm_match out")
    # .sum() hands the backward an expanded (stride 0) upstream gradient
    (g_sum,) = torch.autograd.grad(out.sum(), c1, retain_graph=True)
    (r_sum,) = torch.autograd.grad(ref.sum(), c2, retain_graph=True)
    _assert_close(g_sum, r_sum, 1e-4, "dmm_match grad of sum")
    grads = torch.autograd.grad(out, (c1, x1), grad_out)
    ref_grads = torch.autograd.grad(ref, (c2, x2), grad_out)
    for g, r in zip(grads, ref_grads, strict=True):
        _assert_close(g, r, 1e-4, "dmm_match grads")
    # 2-D cost, greedy start, padded batch
    single = dmm_match(cost[0], "greedy", n_grad=3, n_proj=2, backend="triton")
    _assert_close(
        single, dmm_match(cost[0], "greedy", n_grad=3, n_proj=2, backend="torch"), 1e-5, "2-D"
    )
    sizes = torch.tensor([[4, 6], [2, 3], [1, 5]], device=DEVICE)
    padded = dmm_match(cost, x_init, n_grad=3, n_proj=2, sizes=sizes, backend="triton")
    _assert_close(
        padded, match_reference(cost, x_init, 3, 2, 0.01, sizes), 1e-5, "padded dmm_match"
    )


def test_bits_are_saved_only_when_a_gradient_is_needed():
    cost, x_init, _ = _problem(2, 3, 4, seed=12, dtype=torch.float32)
    cost, x_init = cost.to(DEVICE).requires_grad_(), x_init.to(DEVICE)
    out, r_bits, _ = tb.dmm_match_fwd(cost, x_init, None, 2, 2, 0.1, False)
    assert r_bits.numel() == 0
    with pytest.raises(RuntimeError, match="save_bits=False"):
        out.sum().backward()
    with torch.no_grad():
        assert not tb.triton_match(cost, x_init, 2, 2, 0.1).requires_grad


def test_beyond_kernel_limits_falls_back_to_reference():
    assert not tb.triton_supported(65, 4, torch.float32)
    assert not tb.triton_supported(4, 4, torch.float64)
    assert tb.triton_supported(64, 1024, torch.bfloat16)
    cost, x_init, _ = _problem(1, 65, 3, seed=13, dtype=torch.float32)
    out = dmm_match(cost.to(DEVICE), x_init.to(DEVICE), n_grad=2, n_proj=2, backend="triton")
    assert torch.equal(out, match_reference(cost.to(DEVICE), x_init.to(DEVICE), 2, 2, 0.01))
    c64 = torch.randn(2, 3, 4, dtype=torch.float64, device=DEVICE)
    out64 = dmm_match(c64, n_grad=2, n_proj=2, backend="triton")
    assert out64.dtype == torch.float64


def test_fake_implementations_give_shapes_without_running_kernels():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        cost = torch.empty(7, 5, 50, dtype=torch.float16)
        out, r_bits, a_bits = tb.dmm_match_fwd(cost, cost, None, 40, 5, 0.1, True)
        grads = tb.dmm_match_bwd(out, r_bits, a_bits, None, 40, 5, 0.1)
    assert out.shape == (7, 5, 50) and out.dtype == torch.float16
    # 5 x 50: 2 lanes along the rows, 4 rows a thread: 16 steps a word, 13 words a lane
    assert tuple(r_bits.shape) == (7, 26, 50) and tuple(a_bits.shape) == (7, 4, 50)
    assert r_bits.dtype == a_bits.dtype == torch.int64
    assert all(g.shape == (7, 5, 50) and g.dtype == torch.float16 for g in grads)


def test_opcheck_custom_op():
    cost, x_init, _ = _problem(2, 3, 5, seed=14, dtype=torch.float32)
    cost, x_init = cost.to(DEVICE).requires_grad_(), x_init.to(DEVICE).requires_grad_()
    results = torch.library.opcheck(
        torch.ops.dmm_deploy.dmm_match_fwd.default, (cost, x_init, None, 3, 2, 0.1, True)
    )
    assert set(results.values()) == {"SUCCESS"}, results


def _loss(cost, x_init, sizes=None):
    """Default arguments: the value checks of dmm_match must not break the graph either."""
    out = dmm_match(cost, x_init, n_grad=3, n_proj=2, lr=0.1, sizes=sizes, backend="triton")
    return (out * out).sum()


def test_torch_compile_fullgraph_traces_the_custom_op():
    """aot_eager: traces with the fake implementations (no graph break) and runs the kernels."""
    torch._dynamo.reset()
    cost, x_init, _ = _problem(2, 3, 5, seed=15, dtype=torch.float32)
    sizes = torch.tensor([[3, 5], [2, 4]], device=DEVICE)
    compiled = torch.compile(_loss, fullgraph=True, backend="aot_eager")
    for case_sizes in (None, sizes):
        c1, x1 = cost.to(DEVICE).requires_grad_(), x_init.to(DEVICE).requires_grad_()
        value = compiled(c1, x1, case_sizes)
        value.backward()
        c2, x2 = cost.to(DEVICE).requires_grad_(), x_init.to(DEVICE).requires_grad_()
        expected = (match_reference(c2, x2, 3, 2, 0.1, case_sizes) ** 2).sum()
        expected.backward()
        _assert_close(value.detach(), expected.detach(), 1e-5, "compiled loss")
        _assert_close(c1.grad, c2.grad, 1e-4, "compiled grad")
        _assert_close(x1.grad, x2.grad, 1e-4, "compiled grad")


@pytest.mark.gpu
def test_torch_compile_inductor_on_gpu(cuda_device):
    torch._dynamo.reset()
    cost, x_init, _ = _problem(64, 8, 128, seed=16, dtype=torch.float32)
    c1, x1 = cost.to(cuda_device).requires_grad_(), x_init.to(cuda_device).requires_grad_()
    value = torch.compile(_loss, fullgraph=True)(c1, x1)
    value.backward()
    c2, x2 = cost.to(cuda_device).requires_grad_(), x_init.to(cuda_device).requires_grad_()
    match_reference_loss = (match_reference(c2, x2, 3, 2, 0.1) ** 2).sum()
    match_reference_loss.backward()
    _assert_close(value.detach(), match_reference_loss.detach(), 1e-5, "inductor loss")
    _assert_close(c1.grad, c2.grad, 1e-4, "inductor grad")


def test_export_decomposes_to_the_reference():
    class Matcher(torch.nn.Module):
        def forward(self, cost, x_init):
            return dmm_match(cost, x_init, n_grad=3, n_proj=2, backend="triton", check_finite=False)

    cost, x_init, _ = _problem(2, 3, 5, seed=17, dtype=torch.float32)
    cost, x_init = cost.to(DEVICE), x_init.to(DEVICE)
    program = torch.export.export(Matcher(), (cost, x_init))
    targets = [str(node.target) for node in program.graph.nodes]
    assert any("dmm_match_fwd" in t for t in targets)
    lowered = program.run_decompositions(tb.decompositions())
    assert not any("dmm_deploy" in str(node.target) for node in lowered.graph.nodes)
    expected = match_reference(cost, x_init, 3, 2, 0.01)
    _assert_close(lowered.module()(cost, x_init), expected, 1e-6, "decomposed program")


def test_gradcheck_reference_path_float64():
    """The autograd the kernels are held to is itself right (finite differences)."""
    cost, x_init, _ = _problem(2, 3, 4, seed=18)
    sizes = torch.tensor([[3, 4], [2, 3]])

    def fn(c, x):
        return match_reference(c, x, 3, 2, 0.1, sizes)

    assert torch.autograd.gradcheck(fn, (cost.requires_grad_(), x_init.requires_grad_()))


# ------------------------------------------------------------------------------------------
# ahead-of-time compilation: errors the interpreter cannot see (layouts, types, PTX)


@pytest.mark.parametrize("arch", [80, 90])
def test_kernels_compile_to_ptx_without_a_gpu(arch):
    fwd = km.compile_forward(arch, 8, 64, problems=4, has_sizes=True, save_bits=True, dtype="fp16")
    bwd = km.compile_backward(arch, 8, 64, problems=4, has_sizes=True, dtype="fp16")
    for kernel, name in ((fwd, "_dmm_fwd_kernel"), (bwd, "_dmm_bwd_kernel")):
        assert kernel.name == name
        assert f".target sm_{arch}" in kernel.ptx
        assert f".entry {name}(" in kernel.ptx
        assert f".reqntid {32 * kernel.num_warps}" in kernel.ptx
        # 4 problems of 8 x 64 on 4 warps: one warp per problem, so the reductions stay in
        # the warp (shuffles): no shared memory and no barrier at all
        assert kernel.num_warps == 4
        assert ".extern .shared" not in kernel.ptx and kernel.shared_bytes == 0
        assert "bar.sync" not in kernel.ptx and "shfl.sync" in kernel.ptx
        # the documented arguments plus Triton's two scratch pointers
        params = kernel.ptx.split(f".entry {name}(")[1].split(")")[0].count(".param")
        assert params == len(kernel.args) + 2
        assert kernel.args[0] == (
            "cost_ptr: *fp16" if name == "_dmm_fwd_kernel" else "grad_out_ptr: *fp16"
        )


@pytest.mark.slow
@pytest.mark.parametrize("arch", [80, 90])
def test_largest_and_smallest_tiles_compile_to_ptx(arch):
    fwd = km.compile_forward_ptx(arch, 64, 1024, num_warps=16, save_bits=True, dtype="bf16")
    bwd = km.compile_backward_ptx(arch, 64, 1024, num_warps=16, has_sizes=True, dtype="bf16")
    assert ".entry _dmm_fwd_kernel" in fwd and ".entry _dmm_bwd_kernel" in bwd
    plain = km.compile_forward_ptx(arch, 1, 1, problems=8, num_warps=1)
    assert ".entry _dmm_fwd_kernel" in plain


def test_aot_compile_rejects_bad_arguments():
    with pytest.raises(ValueError, match="arch must be"):
        km.compile_forward_ptx(70, 8, 64)
    with pytest.raises(ValueError, match="block_n must be a power of two"):
        km.compile_forward_ptx(80, 6, 64)
    with pytest.raises(ValueError, match="problems must be a power of two"):
        km.compile_forward(80, 8, 64, problems=3)
    with pytest.raises(ValueError, match="dtype must be"):
        km.compile_backward_ptx(80, 8, 64, dtype="fp64")


# ------------------------------------------------------------------------------------------
# hardening: non-finite inputs, untrusted sizes, guard regions, forced packing, half precision

SENTINEL = 0x5A5A_5A5A_5A5A_5A5A  # poison of the int64 bit planes


def _guarded(shape, dtype, fill, guard=37):
    """A contiguous tensor of ``shape`` inside a flat buffer with ``guard`` poisoned elements
    on each side; returns ``(tensor, guards)`` where ``guards()`` gives the two guard zones."""
    numel = math.prod(shape)
    buf = torch.full((numel + 2 * guard,), fill, dtype=dtype, device=DEVICE)
    view = buf[guard : guard + numel].view(shape)
    return view, lambda: torch.cat([buf[:guard], buf[guard + numel :]])


def _same_nonfinite(actual, expected, name):
    for what, fn in (("NaN", torch.isnan), ("+Inf", torch.isposinf), ("-Inf", torch.isneginf)):
        assert torch.equal(fn(actual), fn(expected)), f"{name}: {what} positions differ"


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_and_inf_propagate_as_in_the_reference():
    """NaN/Inf inside a problem reach its outputs exactly where the reference's do (one
    inner step spreads them over the whole problem), never a neighbour in the same program;
    NaN/Inf in the padding are ignored. The backward equals autograd through the reference,
    whose relu gradient passes through NaN."""
    b, n, m = 6, 3, 5
    cost, x_init, grad_out = _problem(b, n, m, seed=19, dtype=torch.float32)
    sizes = torch.tensor([[3, 5], [3, 5], [2, 4], [3, 5], [3, 5], [3, 5]])
    cost[0, 1, 2] = NAN  # NaN in the valid region
    cost[2, 2, :] = NAN  # NaN and Inf only in the padding of problem 2
    cost[2, :, 4] = math.inf
    x_init[2, 2, 0] = NAN
    cost[3, 0, 0] = math.inf
    cost[4, 2, 4] = -math.inf
    x_init[5, 1, 1] = math.inf  # problem 1 stays clean between poisoned neighbours
    rows, cols = (t.to(DEVICE) for t in _valid(sizes, n, m))
    valid = (rows & cols).expand(b, n, m)
    for n_grad, n_proj in ((1, 1), (2, 2)):
        c = cost.clone().requires_grad_()
        x = x_init.clone().requires_grad_()
        ref = match_reference(c, x, n_grad, n_proj, 0.1, sizes)
        ref_grads = torch.autograd.grad(ref, (c, x), grad_out)
        actual = _kernels_with_grads(cost, x_init, grad_out, n_grad, n_proj, 0.1, sizes)
        for name, a, e in zip(
            ("out", "grad_cost", "grad_x"), actual, (ref, *ref_grads), strict=True
        ):
            a, e = a.detach().cpu(), e.detach()
            _same_nonfinite(a[valid], e[valid], f"{n_grad}x{n_proj} {name}")
            finite = valid & torch.isfinite(e)
            assert torch.allclose(a[finite], e[finite], rtol=1e-5, atol=1e-6), name
            assert (a[~valid] == 0).all(), f"{name}: padding not zero"
        assert torch.isfinite(actual[0][1]).all() and torch.isfinite(actual[0][2][:2, :4]).all()


def _valid(sizes, n, m):
    rows = torch.arange(n)[None, :, None] < sizes[:, 0, None, None]
    cols = torch.arange(m)[None, None, :] < sizes[:, 1, None, None]
    return rows, cols


@pytest.mark.parametrize("problems", [1, 4])
def test_untrusted_sizes_stay_inside_their_problem(problems):
    """Whatever ``sizes`` holds, the kernels clamp it to [0, n] x [0, m]: inputs are views
    into NaN-poisoned buffers (a read outside the batch would show as NaN), outputs and bit
    planes live between poisoned guard zones, bit-plane columns past a problem's clamped
    ``m_b`` keep their poison, and an empty problem (n_b = 0 or m_b = 0) gives zeros."""
    b, n, m, n_grad, n_proj, lr = 7, 3, 6, 3, 2, 0.1
    sizes = torch.tensor([[3, 6], [9, 40], [-2, 3], [0, 6], [2, 0], [2, 2**40], [1, 1]])
    clamped = torch.stack([sizes[:, 0].clamp(0, n), sizes[:, 1].clamp(0, m)], dim=1)
    cost, x_init, grad_out = _problem(b, n, m, seed=20, dtype=torch.float32)

    def inside_poison(t):
        view, _ = _guarded(t.shape, t.dtype, NAN, guard=n * m)
        return view.copy_(t)

    c_dev, x_dev, g_dev = (inside_poison(t.to(DEVICE)) for t in (cost, x_init, grad_out))
    out, out_guards = _guarded((b, n, m), torch.float32, NAN)
    r_shape, a_shape = km.bits_shapes(b, n, m, n_grad, n_proj)
    r_bits, r_guards = _guarded(r_shape, torch.int64, SENTINEL)
    a_bits, a_guards = _guarded(a_shape, torch.int64, SENTINEL)
    km.matcher_forward(
        c_dev, x_dev, n_grad, n_proj, lr, sizes.to(DEVICE), save_bits=True, out=out,
        r_bits=r_bits, a_bits=a_bits, problems=problems,
    )  # fmt: skip
    grad_cost, gc_guards = _guarded((b, n, m), torch.float32, NAN)
    grad_x, gx_guards = _guarded((b, n, m), torch.float32, NAN)
    km.matcher_backward(
        g_dev, r_bits, a_bits, n_grad, n_proj, lr, sizes.to(DEVICE), grad_cost, grad_x,
        problems=problems,
    )  # fmt: skip
    for name, guards in (("out", out_guards), ("grad_cost", gc_guards), ("grad_x", gx_guards)):
        assert torch.isnan(guards()).all(), f"{name}: a guard element was written"
    for name, guards in (("r_bits", r_guards), ("a_bits", a_guards)):
        assert (guards() == SENTINEL).all(), f"{name}: a guard word was written"
    for i, m_b in enumerate(clamped[:, 1].tolist()):
        for name, bits in (("r_bits", r_bits), ("a_bits", a_bits)):
            assert (bits[i, :, m_b:].cpu() == SENTINEL).all(), f"{name}: problem {i} wrote past m_b"
            assert (bits[i, :, :m_b].cpu() != SENTINEL).all(), f"{name}: problem {i} left a word"

    nonempty = (clamped > 0).all(dim=1)
    expected = _reference_with_grads(
        cost[nonempty], x_init[nonempty], grad_out[nonempty], n_grad, n_proj, lr,
        clamped[nonempty],
    )  # fmt: skip
    for name, a, e in zip(
        ("out", "grad_cost", "grad_x"), (out, grad_cost, grad_x), expected, strict=True
    ):
        a = a.cpu()
        assert (a[~nonempty] == 0).all(), f"{name}: an empty problem is not zero"
        _assert_close(a[nonempty], e, 1e-4, f"clamped sizes {name}")


@pytest.mark.parametrize("fwd_problems", [1, 2, 4, 8])
def test_forced_packing_gives_the_same_results(fwd_problems):
    """Every packed layout (1, 2, 4, 8 problems a program, the last program part-empty; the
    backward packed differently from the forward) against the float64 reference."""
    b, n, m, n_grad, n_proj, lr = 5, 3, 6, 3, 2, 0.1
    cost, x_init, grad_out = _problem(b, n, m, seed=21)
    sizes = torch.tensor([[3, 6], [2, 5], [3, 1], [1, 6], [3, 4]])
    expected = _reference_with_grads(cost, x_init, grad_out, n_grad, n_proj, lr, sizes)
    c, x, g = (t.float().to(DEVICE) for t in (cost, x_init, grad_out))
    out, r_bits, a_bits = km.matcher_forward(
        c, x, n_grad, n_proj, lr, sizes.to(DEVICE), save_bits=True, problems=fwd_problems
    )
    bwd_problems = 8 // fwd_problems
    grads = km.matcher_backward(
        g, r_bits, a_bits, n_grad, n_proj, lr, sizes.to(DEVICE), problems=bwd_problems
    )
    for name, a, e, rtol in zip(
        ("out", "grad_cost", "grad_x"), (out, *grads), expected, (1e-5, 1e-4, 1e-4), strict=True
    ):
        _assert_close(a, e, rtol, f"{fwd_problems}/{bwd_problems} problems a program: {name}")
    with pytest.raises(ValueError, match="problems must be a power of two"):
        km.matcher_forward(c, x, n_grad, n_proj, lr, problems=3)


# What Triton's JIT compiles for a launch of matcher_forward / matcher_backward on contiguous
# tensors of the given shape, reproduced without a GPU from the JIT's own argument binder, next
# to what the ahead-of-time path compiles; printed as JSON. Runs in a fresh process (no
# interpreter).
_JIT_VS_AOT = """
import json, sys
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature
import kernels.matcher as km

arch, b, n, m, problems, warps = json.loads(sys.argv[1])
block_n, block_m = km.block_sizes(n, m)
backend = make_backend(GPUTarget("cuda", arch, 32))


def jit_ptx(kernel, args, constexprs):
    fn = JITFunction(km._python_fn(kernel), do_not_specialize=["n_grad", "n_proj", "lr"])
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(constexprs, num_warps=warps)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, consts, attrs = fn._pack_args(
        backend, kwargs, bound, specialization, options
    )
    src = ASTSource(fn, signature, consts, attrs)
    return triton.compile(src, target=backend.target, options=options.__dict__).asm["ptx"]


cost = torch.zeros(b, n, m)
sizes = torch.ones(b, 2, dtype=torch.int64)
r_bits, a_bits = (torch.zeros(s, dtype=torch.int64) for s in km.bits_shapes(b, n, m, 40, 5))
fwd_args = (cost, cost, sizes, cost, r_bits, a_bits, b, n, m, 40, 5, 0.1)
fwd_args += (*cost.stride(), *cost.stride())
consts = dict(HAS_SIZES=True, PROBLEMS=problems, BLOCK_N=block_n, BLOCK_M=block_m)
fwd = jit_ptx(km._dmm_fwd_kernel, fwd_args, dict(consts, SAVE_BITS=True))
bwd_args = (cost, sizes, r_bits, a_bits, cost, cost, b, n, m, 40, 5, 0.1, *cost.stride())
bwd = jit_ptx(km._dmm_bwd_kernel, bwd_args, consts)
aot = dict(problems=problems, num_warps=warps, has_sizes=True, n=n, m=m)
out = {
    "jit_fwd": fwd,
    "aot_fwd": km.compile_forward(arch, block_n, block_m, save_bits=True, **aot).ptx,
    "jit_bwd": bwd,
    "aot_bwd": km.compile_backward(arch, block_n, block_m, **aot).ptx,
}
sys.stdout.write(json.dumps(out))
"""


def test_ahead_of_time_kernels_are_the_jit_kernels(repo_root):
    """The AOT path compiles the kernel the JIT compiles for the same launch (same
    specialisation: aligned pointers, unit last stride as a constant, divisibility hints):
    identical PTX, forward with bits and backward, at a shape whose m and strides are
    multiples of 16 and a batch that is not."""
    import json
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    params = json.dumps([90, 13, 5, 48, 4, 4])
    proc = subprocess.run(
        [sys.executable, "-c", _JIT_VS_AOT, params],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ptx = json.loads(proc.stdout)
    for kind in ("fwd", "bwd"):
        jit, aot = ptx[f"jit_{kind}"], ptx[f"aot_{kind}"]
        assert ".entry _dmm_" in jit
        assert jit == aot, f"{kind}: AOT PTX differs from the JIT's"
