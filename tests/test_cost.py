"""The p = 1 cost: the compiled kernel (numba) and the torch fallback give cdist's values and the same plans."""

import numpy as np
import pytest
import torch

from intrafusion.core import transport
from intrafusion.core.transport import cost_matrix, marginal, solve


def _features(n, d, seed=0):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


@pytest.fixture(params=["compiled", "fallback"])
def path(request, monkeypatch):
    if request.param == "compiled":
        if transport._l1_kernel() is None:
            pytest.skip("numba is not installed: only the torch fallback exists")
    else:
        monkeypatch.setattr(transport, "_KERNEL", [None])
    return request.param


@pytest.mark.parametrize("n,d", [(37, 1100), (64, 9), (5, 513), (9, 40)])  # tails: n % 4, d % chunk, odd tiles
def test_cost_equals_float64_cdist(path, n, d):
    x = _features(n, d)
    kept = torch.tensor(sorted(np.random.default_rng(1).choice(n, n // 2 + 1, replace=False)))
    ref = torch.cdist(x.double(), x[kept].double(), p=1)
    for k in (None, kept):
        c = cost_matrix(x, x[kept], 1.0, kept=k)
        assert c.shape == ref.shape
        np.testing.assert_allclose(c.double().numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
    assert torch.all(cost_matrix(x, x[kept], 1.0, kept=kept)[kept, torch.arange(len(kept))] == 0)


def test_plans_equal_naive_cdist(path):
    x = _features(96, 700, seed=3)
    kept = torch.arange(0, 96, 2)
    mu, nu = marginal("uniform", 96), marginal("uniform", 48)
    naive = solve(mu, nu, torch.cdist(x, x[kept], p=1).double().numpy())
    ours = solve(mu, nu, cost_matrix(x, x[kept], 1.0, kept=kept).double().numpy())
    np.testing.assert_allclose(ours, naive, atol=1e-12)
    assert np.abs(ours - naive).max() <= 1e-6


def test_bad_exponent_named():
    with pytest.raises(ValueError, match="exponent p must be positive"):
        cost_matrix(_features(4, 3), _features(2, 3), p=0)

