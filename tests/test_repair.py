"""Repair oracles (issue 9): sparsity 0 changes nothing, duplicates stay exact, synthetic batch matches the
BatchNorm statistics, the data repair reads no label, closed-form bias expectation, clear errors."""

import numpy as np
import pytest
import torch
from nets import TinyConv, TinyMLP, TinyResNet, duplicate, randomize_bn

from intrafusion.core.prune import TransportOptions, prune
from intrafusion.core.repair import REPAIRS, RepairOptions, bn_mismatch, expected_relu, synthetic_batch


def _seeded(cls, *args, seed=0):
    torch.manual_seed(seed)
    return randomize_bn(cls(*args), seed)


def _out(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("kind", REPAIRS)
def test_unpruned_model_unchanged_by_every_repair(kind, tmp_path):
    model = _seeded(TinyConv, 6, 5)
    x = torch.randn(8, 3, 8, 8)
    opts = RepairOptions(kind=kind, synthetic_size=8, synthetic_steps=2, cache_dir=str(tmp_path))
    res = prune(model, x[:1], "all", 0.0, method="fusion", repair=opts,
                repair_data=torch.randn(16, 3, 8, 8) if kind == "data" else None)
    assert (_out(res.model, x) - _out(model, x)).abs().max().item() < 1e-5


@pytest.mark.parametrize("case", ["mlp", "conv", "residual"])
def test_duplicates_function_preserving_fusion_with_moments_is_exact(case):
    make_base, make_wide, group, x = {
        "mlp": (lambda: _seeded(TinyMLP, 6), lambda: TinyMLP(12), 0, torch.randn(16, 8)),
        "conv": (lambda: _seeded(TinyConv, 6, 5), lambda: TinyConv(12, 5), 1, torch.randn(4, 3, 8, 8)),
        "residual": (lambda: _seeded(TinyResNet, 6, 4), lambda: TinyResNet(12, 4), 0, torch.randn(4, 3, 8, 8)),
    }[case]
    base = make_base()
    wide = duplicate(base, make_wide())
    imp = {group: np.r_[np.full(6, 2.0), np.ones(6)]}
    res = prune(wide, x[:1], group, 0.5, method="fusion", options=TransportOptions(normalization="function-preserving"),
                importance=imp, repair="moments")
    assert res.repair.kind == "moments" and res.repair.details["channels"] > 0
    assert (_out(res.model, x) - _out(base, x)).abs().max().item() < 1e-4


def test_moments_changes_an_inexact_fusion():
    """Not a no-op: on a random (non-duplicate) net the fused channels are rescaled."""
    model = _seeded(TinyConv, 6, 5)
    x = torch.randn(4, 3, 8, 8)
    a = prune(model, x[:1], "all", 0.5, method="fusion", options=TransportOptions(normalization="function-preserving"))
    b = prune(model, x[:1], "all", 0.5, method="fusion", options=TransportOptions(normalization="function-preserving"),
              repair="moments")
    assert (_out(a.model, x) - _out(b.model, x)).abs().max().item() > 1e-4


def _calibrated():
    """Running statistics that some input distribution really has (inputs 0.5 + 2 N(0, 1), not noise's)."""
    model = _seeded(TinyConv, 6, 5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.train()(0.5 + 2 * torch.randn(512, 3, 8, 8, generator=torch.Generator().manual_seed(1)))
    return model.eval()


def test_synthetic_batch_matches_bn_statistics_and_is_cached(tmp_path):
    model = _calibrated()
    x = torch.zeros(1, 3, 8, 8)
    before = bn_mismatch(model, torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    batch = synthetic_batch(model, x, size=64, steps=300, seed=0, cache_dir=tmp_path)
    after = bn_mismatch(model, batch)
    # stated tolerance: every channel's batch mean and std within 5% of its running std
    assert after < 0.05 and before > 0.3
    again = synthetic_batch(model, x, size=64, steps=300, seed=0, cache_dir=tmp_path)
    assert torch.equal(batch, again) and len(list(tmp_path.iterdir())) == 1


class _LabelsRaise(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise AssertionError("a label was read")


def test_data_repair_takes_only_a_tensor_and_never_reads_labels():
    model = _seeded(TinyConv, 6, 5)
    x = torch.randn(4, 3, 8, 8)
    res = prune(model, x[:1], "all", 0.5, method="default", repair="data", repair_data=torch.randn(32, 3, 8, 8))
    assert res.repair.uses_data and res.repair.details["inputs"] == 32
    with pytest.raises(TypeError, match="tensor of unlabelled inputs"):
        prune(model, x[:1], "all", 0.5, method="default", repair="data", repair_data=_LabelsRaise())


def test_expected_relu_closed_form():
    # a ~ N(0, s^2): E[relu(a)] = s / sqrt(2 pi); sigma 0: relu(mu); large mu: mu
    assert float(expected_relu(0.0, 2.0)) == pytest.approx(2.0 / np.sqrt(2 * np.pi), rel=1e-9)
    assert float(expected_relu(-1.0, 0.0)) == 0.0 and float(expected_relu(1.5, 0.0)) == 1.5
    assert float(expected_relu(10.0, 1.0)) == pytest.approx(10.0, abs=1e-6)
    torch.manual_seed(0)
    a = torch.randn(400_000, dtype=torch.float64) * 0.7 + 0.3
    assert float(expected_relu(0.3, 0.7)) == pytest.approx(float(a.clamp_min(0).mean()), abs=3e-3)


def test_bad_input_messages():
    model = _seeded(TinyConv, 6, 5)
    x = torch.randn(4, 3, 8, 8)
    with pytest.raises(ValueError, match="unknown repair"):
        prune(model, x[:1], "all", 0.5, repair="magic")
    with pytest.raises(ValueError, match="needs repair_data"):
        prune(model, x[:1], "all", 0.5, repair="data")
    with pytest.raises(ValueError, match="non-negative"):
        expected_relu(0.0, -1.0)
    with pytest.raises(ValueError, match="NaN"):
        expected_relu(float("nan"), 1.0)
    bad = _seeded(TinyConv, 6, 5)
    bad.bn1.weight.data[0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        prune(bad, x[:1], "all", 0.5, repair="moments")
    assert RepairOptions("data").uses_data and not RepairOptions("synthetic").uses_data
