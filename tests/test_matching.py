"""The public matcher API and the batched reference, held to the specification (Listing 1)."""

import itertools

import pytest
import torch
from spec_listing1 import relax_matching

from dmm_deploy import DMMMatcher, dmm_match, exact_assign, greedy_init, hard_assign
from dmm_deploy.matching import triton_available

SHAPES = [(1, 1), (1, 9), (6, 1), (7, 3), (3, 7), (5, 50), (9, 4), (8, 13)]


def _problem(n, m, seed, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    cost = (torch.rand(n, m, generator=g, dtype=dtype) * 2 - 1) * scale
    x_init = torch.rand(n, m, generator=g, dtype=dtype) / m
    return cost, x_init


@pytest.mark.parametrize(("n", "m"), SHAPES)
@pytest.mark.parametrize("init", ["random", "zeros", "greedy"])
def test_matches_specification_per_problem(n, m, init):
    cost, x_init = _problem(n, m, seed=n * 100 + m)
    if init == "zeros":
        x_init = torch.zeros_like(cost)
    elif init == "greedy":
        x_init = greedy_init(cost[None])[0]
    want = relax_matching(cost, x_init, 12, 4, 0.3)
    got = dmm_match(cost, None if init == "zeros" else x_init, n_grad=12, n_proj=4, lr=0.3)
    assert got.shape == cost.shape and got.dtype == cost.dtype
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_matches_specification_paper_settings():
    """The video setting (40 x 5) and a long run of the paper's random-cost setting."""
    g = torch.Generator().manual_seed(3)
    cost = torch.rand(5, 100, generator=g, dtype=torch.float64)
    x_init = torch.softmax(torch.randn(5, 100, generator=g, dtype=torch.float64), dim=1)
    for n_grad, n_proj, lr in [(40, 5, 0.1), (100, 20, 0.01)]:
        want = relax_matching(cost, x_init, n_grad, n_proj, lr)
        got = dmm_match(cost, x_init, n_grad=n_grad, n_proj=n_proj, lr=lr)
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_batched_equals_each_problem_alone():
    b, n, m = 6, 5, 11
    g = torch.Generator().manual_seed(0)
    cost = torch.randn(b, n, m, generator=g, dtype=torch.float64)
    x_init = torch.rand(b, n, m, generator=g, dtype=torch.float64) / m
    got = dmm_match(cost, x_init, n_grad=10, n_proj=3, lr=0.2)
    for i in range(b):
        want = relax_matching(cost[i], x_init[i], 10, 3, 0.2)
        torch.testing.assert_close(got[i], want, atol=1e-10, rtol=0)


def test_padded_batch_equals_each_problem_alone():
    sizes = torch.tensor([[1, 1], [3, 7], [6, 2], [6, 9], [2, 9], [4, 4]])
    b, n, m = sizes.shape[0], 6, 9
    g = torch.Generator().manual_seed(1)
    cost = torch.randn(b, n, m, generator=g, dtype=torch.float64)
    x_init = torch.rand(b, n, m, generator=g, dtype=torch.float64) / 5
    # the padding holds garbage, NaN included: it must be ignored
    for i, (nb, mb) in enumerate(sizes.tolist()):
        cost[i, nb:, :] = float("nan")
        cost[i, :, mb:] = 1e6
        x_init[i, nb:, :] = 7.0
        x_init[i, :, mb:] = float("nan")
    cost_before, x_before = cost.clone(), x_init.clone()
    got = dmm_match(cost, x_init, n_grad=9, n_proj=4, lr=0.25, sizes=sizes)
    for i, (nb, mb) in enumerate(sizes.tolist()):
        want = relax_matching(cost[i, :nb, :mb], x_init[i, :nb, :mb], 9, 4, 0.25)
        torch.testing.assert_close(got[i, :nb, :mb], want, atol=1e-10, rtol=0)
        assert torch.count_nonzero(got[i, nb:, :]) == 0
        assert torch.count_nonzero(got[i, :, mb:]) == 0
    torch.testing.assert_close(cost, cost_before, equal_nan=True, atol=0, rtol=0)
    torch.testing.assert_close(x_init, x_before, equal_nan=True, atol=0, rtol=0)


def test_padded_greedy_start_equals_each_problem_alone():
    sizes = torch.tensor([[2, 5], [4, 3], [1, 6]])
    cost = torch.randn(3, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    got = dmm_match(cost, "greedy", n_grad=6, n_proj=3, lr=0.1, sizes=sizes)
    for i, (nb, mb) in enumerate(sizes.tolist()):
        c = cost[i, :nb, :mb]
        want = relax_matching(c, greedy_init(c[None])[0], 6, 3, 0.1)
        torch.testing.assert_close(got[i, :nb, :mb], want, atol=1e-10, rtol=0)


def _greedy_literal(c):
    """The original DMM-Net start, written as the original's loops."""
    n, m = c.shape
    masked = c.clone()
    for j in range(m):
        best = int(torch.argmin(c[:, j]))
        for i in range(n):
            if i != best:
                masked[i, j] = c.max()
    x = torch.zeros_like(c)
    x[torch.arange(n), masked.argmin(dim=1)] = 1.0
    return x


def test_greedy_init_definition():
    c = torch.tensor([[0.1, 0.5, 0.9], [0.2, 0.4, 0.3], [0.3, 0.6, 0.8]])
    # column winners: col0 -> row0, col1 -> row1, col2 -> row1; row2 wins nothing and lands
    # on the first column whose remaining value equals max(C) = 0.9 (column 0).
    x = greedy_init(c[None])[0]
    assert x.tolist() == [[1, 0, 0], [0, 0, 1], [1, 0, 0]]
    for seed, (n, m) in enumerate(SHAPES):
        c, _ = _problem(n, m, seed)
        torch.testing.assert_close(greedy_init(c[None])[0], _greedy_literal(c), atol=0, rtol=0)


def test_greedy_init_padded():
    sizes = torch.tensor([[2, 3], [3, 2]])
    cost = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2))
    cost[0, 2, :] = -100.0  # padded row must not win any column
    cost[1, :, 2:] = -100.0  # padded columns must not be picked
    x = greedy_init(cost, sizes)
    for i, (nb, mb) in enumerate(sizes.tolist()):
        torch.testing.assert_close(x[i, :nb, :mb], _greedy_literal(cost[i, :nb, :mb]))
        assert x[i].sum() == nb


def test_return_info_tracks_iterates():
    cost, x_init = _problem(4, 6, seed=11)
    n_grad, n_proj, lr = 5, 3, 0.3
    out, info = dmm_match(cost, x_init, n_grad=n_grad, n_proj=n_proj, lr=lr, return_info=True)
    torch.testing.assert_close(
        out, relax_matching(cost, x_init, n_grad, n_proj, lr), atol=1e-10, rtol=0
    )
    assert info.objective.shape == (n_grad,) and info.feasibility.shape == (n_grad,)
    assert info.inner_feasibility.shape == (n_grad, n_proj)
    prev_mean = x_init
    for k in range(1, n_grad + 1):
        mean_k = relax_matching(cost, x_init, k, n_proj, lr)
        x_k = (k + 1) * mean_k - k * prev_mean  # the k-th iterate
        prev_mean = mean_k
        torch.testing.assert_close(info.objective[k - 1], (cost * x_k).sum(), atol=1e-9, rtol=0)
        viol = max(
            (x_k.sum(1) - 1).abs().max().item(),
            (x_k.sum(0) - 1).clamp(min=0).max().item(),
            (-x_k).clamp(min=0).max().item(),
        )
        assert info.feasibility[k - 1].item() == pytest.approx(viol, abs=1e-9)
        assert info.inner_feasibility[k - 1, -1].item() == pytest.approx(viol, abs=1e-9)


def test_converges_to_exact_optimum_on_easy_problem():
    g = torch.Generator().manual_seed(4)
    cost = torch.rand(4, 12, generator=g, dtype=torch.float64)
    out = dmm_match(cost, n_grad=400, n_proj=50, lr=0.01)
    assert torch.equal(hard_assign(out), exact_assign(cost))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtype_preserved_and_close_to_float64(dtype):
    cost, x_init = _problem(5, 8, seed=9)
    want = dmm_match(cost, x_init, n_grad=10, n_proj=3, lr=0.1)
    got = dmm_match(cost.to(dtype), x_init.to(dtype), n_grad=10, n_proj=3, lr=0.1)
    assert got.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=0)


def test_gradcheck_cost_and_x_init():
    cost, x_init = _problem(3, 4, seed=21)
    cost.requires_grad_(True)
    x_init.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda c, x: dmm_match(c, x, n_grad=4, n_proj=3, lr=0.2), (cost, x_init)
    )


def test_gradcheck_padded():
    sizes = torch.tensor([[2, 3], [3, 2]])
    g = torch.Generator().manual_seed(8)
    cost = torch.randn(2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    x_init = (torch.rand(2, 3, 3, generator=g, dtype=torch.float64) / 3).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda c, x: dmm_match(c, x, n_grad=3, n_proj=2, lr=0.3, sizes=sizes), (cost, x_init)
    )


def test_gradients_equal_autograd_through_specification():
    cost, x_init = _problem(4, 7, seed=13)
    upstream = torch.randn(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = []
    for fn in (
        lambda c, x: dmm_match(c, x, n_grad=8, n_proj=3, lr=0.2),
        lambda c, x: relax_matching(c, x, 8, 3, 0.2),
    ):
        c, x = cost.clone().requires_grad_(True), x_init.clone().requires_grad_(True)
        (fn(c, x) * upstream).sum().backward()
        grads.append((c.grad, x.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-10, rtol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-10, rtol=0)


def test_module_and_auto_backend_on_cpu():
    cost, _ = _problem(3, 5, seed=2)
    layer = DMMMatcher(n_grad=6, n_proj=2, lr=0.1, init="greedy")
    assert "init='greedy'" in repr(layer)
    want = relax_matching(cost, greedy_init(cost[None])[0], 6, 2, 0.1)
    torch.testing.assert_close(layer(cost), want, atol=1e-10, rtol=0)
    torch.testing.assert_close(
        dmm_match(cost, backend="auto", n_grad=6, n_proj=2),
        dmm_match(cost, backend="torch", n_grad=6, n_proj=2),
    )


def test_hard_assign():
    x = torch.tensor([[[0.1, 0.7, 0.2], [0.0, 0.0, 0.0], [0.5, 0.5, 0.0]]])
    assert hard_assign(x).tolist() == [[1, -1, 0]]
    assert hard_assign(x[0]).tolist() == [1, -1, 0]
    # padded: row 2 is outside n_b, column 1 outside m_b
    assert hard_assign(x, torch.tensor([[2, 1]])).tolist() == [[0, -1, -1]]


def test_exact_assign_against_brute_force():
    g = torch.Generator().manual_seed(6)
    for n, m in [(1, 1), (2, 5), (3, 3), (3, 6)]:
        cost = torch.rand(n, m, generator=g)
        best = min(
            itertools.permutations(range(m), n),
            key=lambda cols: sum(cost[i, j].item() for i, j in enumerate(cols)),
        )
        assert exact_assign(cost).tolist() == list(best)
    sizes = torch.tensor([[2, 3], [1, 1]])
    out = exact_assign(torch.rand(2, 3, 4, generator=g), sizes)
    assert out[1].tolist() == [0, -1, -1] and out[0, 2] == -1
    with pytest.raises(ValueError, match="n <= m"):
        exact_assign(torch.rand(4, 2))


# -- validation ------------------------------------------------------------------------------

GOOD = torch.rand(2, 3, 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cost": [[1.0]]}, TypeError, "cost must be a torch.Tensor"),
        ({"cost": torch.ones(3, 4, dtype=torch.int64)}, TypeError, "cost must be a floating"),
        ({"cost": torch.rand(4)}, ValueError, r"cost must have shape \(n, m\) or \(B, n, m\)"),
        ({"cost": torch.rand(1, 2, 3, 4)}, ValueError, "cost must have shape"),
        ({"cost": torch.rand(2, 0, 4)}, ValueError, "n >= 1 and m >= 1"),
        ({"cost": torch.tensor([[1.0, float("nan")]])}, ValueError, "cost contains NaN or Inf"),
        ({"cost": torch.tensor([[1.0, float("inf")]])}, ValueError, "cost contains NaN or Inf"),
        ({"x_init": torch.rand(2, 3, 5)}, ValueError, "x_init must have cost's shape"),
        (
            {"x_init": torch.rand(2, 3, 4, dtype=torch.float64)},
            TypeError,
            "x_init must have cost's dtype",
        ),
        ({"x_init": torch.full((2, 3, 4), float("nan"))}, ValueError, "x_init contains NaN or Inf"),
        ({"x_init": "ones"}, ValueError, "x_init must be a tensor, None or 'greedy'"),
        ({"x_init": 1.0}, TypeError, "x_init must be a tensor, None or 'greedy'"),
        ({"n_grad": 0}, ValueError, "n_grad must be a positive integer"),
        ({"n_grad": 2.5}, ValueError, "n_grad must be a positive integer"),
        ({"n_grad": True}, ValueError, "n_grad must be a positive integer"),
        ({"n_proj": -1}, ValueError, "n_proj must be a positive integer"),
        ({"n_proj": "5"}, ValueError, "n_proj must be a positive integer"),
        ({"lr": 0.0}, ValueError, "lr must be a positive finite number"),
        ({"lr": -0.1}, ValueError, "lr must be a positive finite number"),
        ({"lr": float("inf")}, ValueError, "lr must be a positive finite number"),
        ({"lr": float("nan")}, ValueError, "lr must be a positive finite number"),
        ({"lr": "0.1"}, ValueError, "lr must be a positive finite number"),
        ({"sizes": torch.tensor([[3, 4]])}, ValueError, r"sizes must have shape \(2, 2\)"),
        (
            {"sizes": torch.tensor([[3.0, 4.0], [1, 1]])},
            TypeError,
            "sizes must be an integer tensor",
        ),
        ({"sizes": [[3, 4], [1, 1]]}, TypeError, "sizes must be an integer tensor"),
        ({"sizes": torch.tensor([[3, 4], [0, 1]])}, ValueError, "sizes must satisfy"),
        ({"sizes": torch.tensor([[3, 5], [1, 1]])}, ValueError, "sizes must satisfy"),
        ({"sizes": torch.tensor([[4, 4], [1, 1]])}, ValueError, "sizes must satisfy"),
        ({"cost": torch.rand(3, 4), "sizes": torch.tensor([[3, 4]])}, ValueError, "sizes is only"),
        ({"backend": "cuda"}, ValueError, "backend must be one of"),
    ],
)
def test_validation_errors(kwargs, error, match):
    args = {"cost": GOOD, **kwargs}
    cost = args.pop("cost")
    x_init = args.pop("x_init", None)
    with pytest.raises(error, match=match):
        dmm_match(cost, x_init, **args)


def test_nan_in_padding_is_accepted_but_not_in_problem():
    cost = torch.rand(2, 3, 4)
    cost[0, 2, :] = float("nan")
    dmm_match(cost, sizes=torch.tensor([[2, 4], [3, 4]]), n_grad=2, n_proj=1)
    with pytest.raises(ValueError, match="cost contains NaN"):
        dmm_match(cost, sizes=torch.tensor([[3, 4], [3, 4]]), n_grad=2, n_proj=1)


def test_module_validation():
    with pytest.raises(ValueError, match="init must be"):
        DMMMatcher(init="ones")
    with pytest.raises(ValueError, match="backend must be one of"):
        DMMMatcher(backend="numpy")
    with pytest.raises(ValueError, match="lr must be"):
        DMMMatcher(lr=0)


def test_triton_backend_on_cpu_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if triton_available():
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            dmm_match(GOOD, backend="triton")
    else:
        with pytest.raises(RuntimeError, match="fused Triton kernels"):
            dmm_match(GOOD, backend="triton")


def test_inputs_not_modified():
    cost, x_init = _problem(3, 4, seed=1)
    c0, x0 = cost.clone(), x_init.clone()
    dmm_match(cost, x_init, n_grad=3, n_proj=2)
    dmm_match(cost, "greedy", n_grad=3, n_proj=2)
    assert torch.equal(cost, c0) and torch.equal(x_init, x0)
