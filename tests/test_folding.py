"""Model Folding baseline (draft): oracles."""

import torch
from torch import nn

from intrafusion.core.folding import FoldingOptions, fold_model


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
        net[3].weight.copy_(torch.randn(3, n)[:, idx])
    return net


def test_exact_copies_fold_exactly():
    net, x = _copies(), torch.randn(16, 5)
    for variant in ("plain", "ar"):
        out, labels = fold_model(net, x[:2], "all", 0.5, FoldingOptions(variant=variant))
        assert out[0].out_features == 4
        if variant == "plain":
            torch.testing.assert_close(out(x), net(x), atol=1e-5, rtol=1e-5)


def test_sparsity_zero_changes_nothing():
    net, x = _copies(), torch.randn(16, 5)
    out, _ = fold_model(net, x[:2], "all", 0.0)
    torch.testing.assert_close(out(x), net(x), atol=1e-6, rtol=1e-6)


def test_deterministic_per_seed():
    net, x = _copies(k=1, n=8), torch.randn(16, 5)
    a, la = fold_model(net, x[:2], "all", 0.5, FoldingOptions(seed=3))
    b, lb = fold_model(net, x[:2], "all", 0.5, FoldingOptions(seed=3))
    assert (la[0] == lb[0]).all()
    torch.testing.assert_close(a(x), b(x))
