"""Model Folding (``prune(..., method="folding")``): oracles.

Exact k-fold channel copies fold exactly (both variants, MLP, conv, residual stream); sparsity 0 changes
nothing; a folding record is a transport record (marginals, averaging and summing maps); Hartigan's k-means
ends in a point where no single move lowers the within-cluster sum of squares.
"""

import numpy as np
import pytest
import torch
from nets import TinyConv, TinyResNet, duplicate, randomize_bn
from torch import nn

from intrafusion.core.folding import FoldingOptions, kmeans
from intrafusion.core.prune import METHODS, prune


def _copies(k=2, n=4):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, n * k), nn.BatchNorm1d(n * k), nn.ReLU(), nn.Linear(n * k, 3)).eval()
    with torch.no_grad():
        idx = torch.arange(n).repeat_interleave(k)
        net[0].weight.copy_(torch.randn(n, 5)[idx])
        net[0].bias.copy_(torch.randn(n)[idx])
        for name in ("weight", "bias", "running_mean"):
            getattr(net[1], name).copy_(torch.randn(n)[idx])
        net[1].running_var.copy_((torch.rand(n) + 0.5)[idx])
        net[3].weight.copy_(torch.randn(3, n)[:, idx] / k)
    return net


def _out(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("variant", ["plain", "ar"])
@pytest.mark.parametrize("k", [2, 3])
def test_exact_k_fold_copies_fold_exactly(variant, k):
    net, x = _copies(k=k), torch.randn(64, 5)
    res = prune(net, x[:2], "all", 1 - 1 / k, method="folding", options=FoldingOptions(variant=variant))
    assert res.model[0].out_features == 4 and "folding" in METHODS
    torch.testing.assert_close(_out(res.model, x), _out(net, x), atol=1e-5, rtol=1e-5)
    assert sorted(np.bincount(res.records[0].labels).tolist()) == [k] * 4


@pytest.mark.parametrize("case", ["conv", "residual"])
def test_duplicated_conv_and_residual_channels_fold_exactly(case):
    torch.manual_seed(0)
    if case == "conv":
        base, wide, group = randomize_bn(TinyConv(6, 5)), TinyConv(12, 5), 1
    else:
        base, wide, group = randomize_bn(TinyResNet(6, 4)), TinyResNet(12, 4), 0
    wide = duplicate(base, wide)
    x = torch.randn(4, 3, 8, 8)
    res = prune(wide, x[:1], group, 0.5, method="folding")
    assert (_out(res.model, x) - _out(base, x)).abs().max().item() < 1e-4


def test_folding_record_is_a_transport_record():
    torch.manual_seed(1)
    model = randomize_bn(TinyConv(8, 6))
    x = torch.randn(2, 3, 8, 8)
    rec = prune(model, x[:1], [1], 0.5, method="folding").records[0]
    n, m = rec.n, rec.m
    assert rec.plan.shape == (n, m) and rec.map_out.shape == (m, n) and rec.map_in.shape == (m, n)
    np.testing.assert_allclose(rec.plan.sum(1), rec.mu, atol=1e-12)
    np.testing.assert_allclose(rec.plan.sum(0), rec.nu, atol=1e-12)
    np.testing.assert_allclose(rec.map_out.sum(1), 1.0, atol=1e-12)  # producers averaged
    np.testing.assert_allclose(rec.map_in.sum(0), 1.0, atol=1e-12)  # every channel summed into one target
    assert list(rec.kept) == sorted(rec.kept) and set(rec.kept) | set(rec.pruned) == set(range(n))
    for t, slot in enumerate(rec.kept):  # the merged channel is written into its cluster's most important member
        members = np.flatnonzero(rec.labels == t)
        assert slot in members and rec.importance[slot] == rec.importance[members].max()


def test_sparsity_zero_changes_nothing():
    net, x = _copies(), torch.randn(16, 5)
    for variant in ("plain", "ar"):
        res = prune(net, x[:2], "all", 0.0, method="folding", options=FoldingOptions(variant=variant))
        torch.testing.assert_close(_out(res.model, x), _out(net, x), atol=1e-5, rtol=1e-5)


def test_deterministic_per_seed_and_seed_matters():
    torch.manual_seed(2)
    model = randomize_bn(TinyConv(16, 6))
    x = torch.randn(8, 3, 8, 8)
    a = prune(model, x[:1], "all", 0.5, method="folding", seed=3)
    b = prune(model, x[:1], "all", 0.5, method="folding", seed=3)
    assert all((ra.labels == rb.labels).all() for ra, rb in zip(a.records, b.records, strict=True))
    torch.testing.assert_close(_out(a.model, x), _out(b.model, x))


def _sse(x, labels):
    return sum(((x[labels == k] - x[labels == k].mean(0)) ** 2).sum() for k in np.unique(labels))


def test_hartigan_is_a_local_optimum_and_not_worse_than_lloyd():
    x = np.random.default_rng(0).normal(size=(60, 5))
    lab = kmeans(x, 7, restarts=3, iterations=50, seed=0)
    assert len(np.unique(lab)) == 7
    base = _sse(x, lab)
    for i in range(len(x)):  # no single move lowers the within-cluster sum of squares
        if (lab == lab[i]).sum() == 1:
            continue
        for k in range(7):
            if k != lab[i]:
                moved = lab.copy()
                moved[i] = k
                assert _sse(x, moved) >= base - 1e-9
    lloyd = kmeans(x, 7, restarts=3, iterations=50, seed=0, algorithm="lloyd")
    assert base <= _sse(x, lloyd) + 1e-9


def test_bad_options():
    with pytest.raises(ValueError, match="folding variant"):
        FoldingOptions(variant="magic")
    with pytest.raises(ValueError, match="k-means"):
        FoldingOptions(kmeans="magic")
