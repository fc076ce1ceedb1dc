"""Repair oracles (issue 9): sparsity 0 changes nothing, duplicates stay exact, synthetic batch matches the
BatchNorm statistics, the data repair reads no label, closed-form bias expectation, clear errors."""

import numpy as np
import pytest
import torch
from nets import DUPLICATE_CASES, TinyConv, duplicate_oracle, randomize_bn

from intrafusion.core.folding import FoldingOptions
from intrafusion.core.prune import METHODS, TransportOptions, prune
from intrafusion.core.repair import REPAIRS, RepairOptions, bn_mismatch, expected_relu, synthetic_batch
from intrafusion.core.synthetic import SyntheticOptions, synthetic_batch_info


def _seeded(cls, *args, seed=0):
    torch.manual_seed(seed)
    return randomize_bn(cls(*args), seed)


def _out(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", REPAIRS)
def test_unpruned_model_unchanged_by_every_repair_and_method(kind, method, tmp_path):
    model = _seeded(TinyConv, 6, 5)
    x = torch.randn(8, 3, 8, 8)
    opts = RepairOptions(kind=kind, synthetic_size=8, synthetic_steps=2, cache_dir=str(tmp_path))
    res = prune(model, x[:1], "all", 0.0, method=method, repair=opts,
                repair_data=torch.randn(16, 3, 8, 8) if RepairOptions(kind).uses_data else None)
    assert (_out(res.model, x) - _out(model, x)).abs().max().item() < 1e-5


@pytest.mark.parametrize("case", DUPLICATE_CASES)
def test_duplicates_function_preserving_fusion_with_moments_is_exact(case):
    base, wide, group, x, imp = duplicate_oracle(case)
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
    recipe = SyntheticOptions(class_prior=0.0, tv=0.0, jitter=0)  # the plain BN-matching batch (ZeroQ)
    batch = synthetic_batch(model, x, size=64, steps=300, seed=0, cache_dir=tmp_path, options=recipe)
    after = bn_mismatch(model, batch)
    # stated tolerance: every channel's batch mean and std within 5% of its running std
    assert after < 0.05 and before > 0.3
    again = synthetic_batch(model, x, size=64, steps=300, seed=0, cache_dir=tmp_path, options=recipe)
    assert torch.equal(batch, again) and len(list(tmp_path.glob("*.pt"))) == 1
    other = synthetic_batch(model, x, size=64, steps=300, seed=1, cache_dir=tmp_path, options=recipe)
    assert not torch.equal(batch, other) and len(list(tmp_path.glob("*.pt"))) == 2  # the seed is in the key
    _, info = synthetic_batch_info(model, x, SyntheticOptions(size=64, steps=300, class_prior=0.0, tv=0.0, jitter=0),
                                   cache_dir=tmp_path)
    assert info["cached"] and info["made_seconds"] > 0  # what making it cost is reported on every later read


def test_deepinversion_priors_keep_the_bn_match(tmp_path):
    """With the class and smoothness priors the statistics still match (looser: 15%), and the batch is
    smoother than the plain one."""
    model = _calibrated()
    x = torch.zeros(1, 3, 8, 8)
    plain = synthetic_batch(model, x, size=64, steps=300, cache_dir=tmp_path,
                            options=SyntheticOptions(class_prior=0.0, tv=0.0, jitter=0))
    prior = synthetic_batch(model, x, size=64, steps=300, cache_dir=tmp_path,
                            options=SyntheticOptions(class_prior=0.1, tv=0.05, jitter=1))
    assert bn_mismatch(model, prior) < 0.15

    def tv(b):
        return float((b[..., 1:, :] - b[..., :-1, :]).pow(2).mean() + (b[..., 1:] - b[..., :-1]).pow(2).mean())
    assert tv(prior) < tv(plain)


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


def _toy(n=4):
    """x ~ N(0, I) -> Linear(3, n) -> BN (calibrated in closed form) -> ReLU -> Linear(n, 2): every
    pre-activation a_j is exactly N(beta_j, gamma_j^2)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, n), torch.nn.BatchNorm1d(n), torch.nn.ReLU(), torch.nn.Linear(n, 2))
    with torch.no_grad():
        net[1].running_mean.copy_(net[0].bias)  # z_j = w_j x + b_j: mean b_j, variance |w_j|^2
        net[1].running_var.copy_(net[0].weight.pow(2).sum(1) - net[1].eps)
        net[1].weight.copy_(torch.tensor([0.7, -1.3, 0.4, 1.0]))
        net[1].bias.copy_(torch.tensor([0.3, 0.5, -0.2, 0.1]))
    return net.eval()


def test_bias_correction_closed_form():
    """Dropping channel 1 removes V[:, 1] E[relu(a_1)], a_1 ~ N(0.5, 1.3^2): the bias repair adds exactly
    that to the consumer, so the pruned net's expected output equals the original's (Monte Carlo check)."""
    net = _toy()
    x = torch.randn(200_000, 3, generator=torch.Generator().manual_seed(0))
    imp = {0: np.array([4.0, 1.0, 3.0, 2.0])}
    plain = prune(net, x[:2], "all", 0.25, method="default", importance=imp)
    fixed = prune(net, x[:2], "all", 0.25, method="default", importance=imp, repair="bias")
    lost = net[3].weight[:, 1].detach().double() * expected_relu(0.5, 1.3)
    shift = (fixed.model[3].bias - plain.model[3].bias).detach().double()
    torch.testing.assert_close(shift, lost, atol=1e-6, rtol=1e-6)
    want = _out(net, x).mean(0)
    assert (_out(fixed.model, x).mean(0) - want).abs().max() < 5e-3 < (_out(plain.model, x).mean(0) - want).abs().max()


def test_bias_correction_of_a_merge():
    """Fusing two channels with the function-preserving map: the consumer's expected input changes from
    V_1 E[relu(a_1)] + V_2 E[relu(a_2)] to (V_1 + V_2) E[relu(merged)]; after the bias repair the expected
    output is (nearly) the original's, and moments (std restored) keeps it so."""
    net = _toy()
    x = torch.randn(200_000, 3, generator=torch.Generator().manual_seed(1))
    want = _out(net, x).mean(0)
    errs = {}
    for kind in ("none", "bias", "moments"):
        res = prune(net, x[:2], "all", 0.25, method="fusion", repair=kind,
                    options=TransportOptions(normalization="function-preserving"))
        errs[kind] = float((_out(res.model, x).mean(0) - want).abs().max())
    assert errs["bias"] < 0.5 * errs["none"] and errs["moments"] < 0.5 * errs["none"]


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
    neg = _seeded(TinyConv, 6, 5)
    neg.bn2.running_var[1] = -0.5
    for kind in ("moments", "synthetic"):
        with pytest.raises(ValueError, match="negative BatchNorm variances in bn2.running_var"):
            prune(neg, x[:1], "all", 0.5, repair=kind)
    with pytest.raises(ValueError, match="repair target"):
        RepairOptions("moments", target="magic")
    assert RepairOptions("data").uses_data and not RepairOptions("synthetic").uses_data
    assert not any(RepairOptions(k).uses_data for k in REPAIRS if k not in ("data", "refit-data"))
    with pytest.raises(ValueError, match="running statistics"):
        synthetic_batch(neg, x[:1], size=4, steps=1, cache_dir=None)


def test_every_repair_runs_after_folding(tmp_path):
    model = _seeded(TinyConv, 8, 6)
    x = torch.randn(16, 3, 8, 8)
    for kind in REPAIRS:
        for variant in ("plain", "ar"):
            res = prune(model, x[:1], "all", 0.5, method="folding", options=FoldingOptions(variant=variant),
                        repair=RepairOptions(kind, synthetic_size=8, synthetic_steps=2, cache_dir=str(tmp_path)),
                        repair_data=x if RepairOptions(kind).uses_data else None)
            assert torch.isfinite(_out(res.model, x)).all()
