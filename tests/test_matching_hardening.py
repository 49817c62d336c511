"""The reference under sizes the API would refuse (its range check is skipped inside
torch.compile) and the CUDA-graph option of DMMMatcher off the GPU."""

import pytest
import torch

from dmm_deploy.matching import DMMMatcher, dmm_match, match_reference


@pytest.mark.parametrize("variant", ["listing1", "original"])
def test_reference_clamps_sizes_like_the_kernels(variant):
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(4, 3, 7, generator=g, dtype=torch.float64)
    x0 = torch.rand(4, 3, 7, generator=g, dtype=torch.float64)
    sizes = torch.tensor([[0, 5], [3, 0], [-2, 4], [9, 99]])  # empty, empty, empty, too large
    out = match_reference(cost, x0, 5, 3, 0.1, sizes, variant=variant)
    assert torch.isfinite(out).all()
    assert (out[:3] == 0).all()  # empty problems give zeros (no 0/0)
    whole = match_reference(cost[3:], x0[3:], 5, 3, 0.1, variant=variant)
    torch.testing.assert_close(out[3:], whole, rtol=0, atol=1e-12)  # clamped to (n, m)


def test_matcher_cuda_graph_option_off_gpu_is_the_plain_call():
    cost = torch.rand(2, 3, 5)
    graphed = DMMMatcher(n_grad=4, n_proj=2, lr=0.1, init="greedy", cuda_graph=True)
    with torch.no_grad():
        out = graphed(cost)
    ref = dmm_match(cost, "greedy", n_grad=4, n_proj=2, lr=0.1, backend="torch")
    torch.testing.assert_close(out, ref)
    assert "cuda_graph=True" in repr(graphed)
    with pytest.raises(TypeError, match="cuda_graph"):
        DMMMatcher(cuda_graph="yes")


@pytest.mark.gpu
def test_matcher_cuda_graph_matches_the_kernel(cuda_device):
    pytest.importorskip("triton")
    cost = torch.rand(3, 5, 50, device=cuda_device)
    graphed = DMMMatcher(n_grad=40, n_proj=5, lr=0.1, init="greedy", cuda_graph=True)
    with torch.no_grad():
        first, second = graphed(cost).clone(), graphed(cost)
    ref = dmm_match(cost, "greedy", n_grad=40, n_proj=5, lr=0.1, backend="torch")
    torch.testing.assert_close(first, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, first)
