"""Oracle tests of the transport-and-fuse core (numbers, not 'it ran')."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import DUPLICATE_CASES, TinyConv, TinyMLP, duplicate, duplicate_oracle, outputs, randomize_bn, seeded
from torch import nn

from intrafusion.core.fold import fold_batchnorm
from intrafusion.core.groups import PruningGraph, UnsupportedLayerError
from intrafusion.core.prune import TransportOptions, kept_count, plan_group, prepare, prune
from intrafusion.core.transport import cost_matrix
from intrafusion.models.architectures import VGG, ResNet18


# ---------------------------------------------------------------- BatchNorm folding
@pytest.mark.parametrize("make", [lambda: VGG(width=0.25), lambda: ResNet18(width=0.25)], ids=["vgg", "resnet"])
def test_folding_preserves_outputs(make):
    torch.manual_seed(1)
    model = randomize_bn(make(), seed=1)
    x = torch.randn(8, 3, 32, 32)
    ref = outputs(model, x)
    graph = PruningGraph(model, x[:1])
    assert fold_batchnorm(graph) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    diff = (outputs(model, x) - ref).abs().max().item()
    assert diff < 1e-4
    for m in model.modules():  # every BN is now a pure shift
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.running_mean == 0)


# ---------------------------------------------------------------- group numbering (reference, section 1)
def test_vgg11_groups_match_reference():
    model = VGG(width=0.25)
    groups = PruningGraph(model, torch.randn(1, 3, 32, 32)).groups
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    assert len(groups) == 8
    for g in groups:  # group 0 = conv8 ... group 7 = conv1
        conv = convs[7 - g.index]
        assert g.producers == (f"features.{conv}",)
        assert g.norms == (f"features.{conv + 1}",)
        expected_consumer = "classifier" if g.index == 0 else f"features.{convs[8 - g.index]}"
        assert g.consumers == (expected_consumer,)
        assert not g.residual
    assert [g.n for g in groups] == [128, 128, 128, 128, 64, 64, 32, 16]


def test_resnet18_groups_match_reference():
    groups = PruningGraph(ResNet18(width=0.25), torch.randn(1, 3, 32, 32)).groups
    assert len(groups) == 12
    inner = {1: "layer4.1", 2: "layer4.0", 4: "layer3.1", 5: "layer3.0", 7: "layer2.1", 8: "layer2.0",
             10: "layer1.1", 11: "layer1.0"}
    for i, block in inner.items():
        assert groups[i].producers == (f"{block}.conv1",) and groups[i].consumers == (f"{block}.conv2",)
        assert not groups[i].residual
    streams = {0: (4, "linear"), 3: (3, "layer4.0.conv1"), 6: (2, "layer3.0.conv1"), 9: (1, "layer2.0.conv1")}
    for i, (stage, reader) in streams.items():
        g = groups[i]
        assert g.residual
        assert {f"layer{stage}.0.conv2", f"layer{stage}.1.conv2"} <= set(g.producers)
        assert reader in g.consumers and f"layer{stage}.1.conv1" in g.consumers
    assert "conv1" in groups[9].producers and "layer1.0.conv1" in groups[9].consumers
    assert "layer2.0.shortcut.0" in groups[6].producers and "layer3.0.shortcut.0" in groups[6].consumers
    assert [g.n for g in groups] == [128, 128, 128, 64, 64, 64, 32, 32, 32, 16, 16, 16]


@pytest.mark.parametrize("n,s,m", [(512, .3, 358), (512, .5, 256), (512, .7, 153), (64, .3, 44), (64, .5, 32),
                                   (64, .7, 19), (10, 0.0, 10)])
def test_kept_count_is_int_n_times_one_minus_s(n, s, m):
    assert kept_count(n, s) == m


def test_pruned_model_has_kept_count_channels():
    model = seeded(VGG, width=0.25)
    x = torch.randn(1, 3, 32, 32)
    res = prune(model, x, [0, 5], 0.7, method="fusion")
    assert [r.m for r in res.records] == [kept_count(128, .7), kept_count(64, .7)]
    assert res.model.classifier.in_features == kept_count(128, .7)
    assert res.model.features[8].out_channels == kept_count(64, .7)
    assert outputs(res.model, x).shape == (1, 10)


# ---------------------------------------------------------------- sparsity 0 and no mutation
@pytest.mark.parametrize("method", ["default", "fusion"])
def test_sparsity_zero_changes_nothing(method):
    model = seeded(ResNet18, width=0.125)
    x = torch.randn(4, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = prune(model, x[:1], "all", 0.0, method=method)
    assert all(len(r.pruned) == 0 for r in res.records)
    assert sum(p.numel() for p in res.model.parameters()) == sum(p.numel() for p in model.parameters())
    assert (outputs(res.model, x) - outputs(model, x)).abs().max().item() < 1e-5
    # the input model is never mutated
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_input_model_not_mutated_by_real_pruning():
    model = seeded(VGG, width=0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prune(model, torch.randn(1, 3, 32, 32), "all", 0.5, method="fusion")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- duplicate-neuron oracle
def _oracle(case):
    return duplicate_oracle(case)


@pytest.mark.parametrize("case", list(DUPLICATE_CASES))
def test_duplicates_function_preserving_fusion_is_exact(case):
    base, wide, group, x, imp = _oracle(case)
    assert (outputs(wide, x) - outputs(base, x)).abs().max().item() < 1e-5  # the construction itself
    opts = TransportOptions(normalization="function-preserving")
    res = prune(wide, x[:1], group, 0.5, method="fusion", options=opts, importance=imp)
    rec = res.records[0]
    assert rec.m == rec.n // 2 and list(rec.kept) == list(range(rec.n // 2))
    assert (outputs(res.model, x) - outputs(base, x)).abs().max().item() < 1e-4
    # default pruning drops the second copies and loses half of each consumer's input
    dflt = prune(wide, x[:1], group, 0.5, method="default", importance=imp)
    assert (outputs(dflt.model, x) - outputs(base, x)).abs().max().item() > 1e-2


@pytest.mark.parametrize("case", ["mlp", "conv"])
def test_duplicates_paper_fusion_scales_pre_classifier_signal(case):
    """Paper map: fused channels are sums (n/m = 2 here), so the signal reaching the classifier doubles."""
    base, wide, group, x, imp = _oracle(case)
    if case == "conv":  # prune the group right before the classifier: duplicate conv2 instead
        base = seeded(TinyConv, 6, 5)
        wide = duplicate(base, TinyConv(6, 10))
        group, n = 0, 10
        imp = {0: np.r_[np.full(n // 2, 2.0), np.ones(n // 2)]}
    res = prune(wide, x[:1], group, 0.5, method="fusion", options=TransportOptions(normalization="paper"),
                importance=imp)
    head = res.model.fc2 if case == "mlp" else res.model.linear
    ref_head = base.fc2 if case == "mlp" else base.linear
    got = outputs(res.model, x) - head.bias
    want = 2.0 * (outputs(base, x) - ref_head.bias)
    assert (got - want).abs().max().item() < 1e-4


# ---------------------------------------------------------------- the plan and the map
@pytest.mark.parametrize("marg", ["uniform", "importance"])
def test_plan_marginals_and_paper_map_columns(marg):
    model = seeded(VGG, width=0.25)
    prep = prepare(model, torch.randn(1, 3, 32, 32))
    opts = TransportOptions(source_marginal=marg, target_marginal=marg)
    rec = plan_group(prep, 2, 0.6, "l1", opts)
    assert rec.plan.shape == (128, kept_count(128, 0.6)) == rec.cost.shape
    np.testing.assert_allclose(rec.plan.sum(1), rec.mu, atol=1e-12)
    np.testing.assert_allclose(rec.plan.sum(0), rec.nu, atol=1e-12)
    np.testing.assert_allclose(rec.map_out.sum(0), 1.0, atol=1e-9)  # every source column sums to 1
    if marg == "uniform":
        np.testing.assert_allclose(rec.mu, 1 / 128)
        np.testing.assert_allclose(rec.map_out.sum(1), 128 / rec.m, atol=1e-9)  # coefficients total n/m
    else:
        np.testing.assert_allclose(rec.mu, rec.importance / rec.importance.sum(), rtol=1e-6)
    fp = plan_group(prep, 2, 0.6, "l1", TransportOptions(normalization="function-preserving"))
    np.testing.assert_allclose(fp.map_out.sum(1), 1.0, atol=1e-9)  # producers: average
    np.testing.assert_allclose(fp.map_in.sum(0), 1.0, atol=1e-9)  # consumers: sum


def test_cost_matrix_matches_definition():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 300, generator=g), torch.randn(4, 300, generator=g)
    for p in (1.0, 2.0, 3.0):
        want = torch.stack([torch.stack([(a - b).abs().pow(p).sum().pow(1 / p) for b in y]) for a in x])
        torch.testing.assert_close(cost_matrix(x, y, p), want, rtol=1e-4, atol=1e-4)


def test_kept_channels_cost_nothing_to_themselves():
    prep = prepare(seeded(VGG, width=0.25), torch.randn(1, 3, 32, 32))
    rec = plan_group(prep, 3, 0.5)
    assert np.allclose(rec.cost[rec.kept, np.arange(rec.m)], 0, atol=1e-5)
    # with uniform marginals every kept source stays (fully) on itself
    np.testing.assert_allclose(rec.plan[rec.kept, np.arange(rec.m)], 1 / rec.n, atol=1e-12)


def test_nearest_target_marginal_gives_the_nearest_assignment():
    """nu = each kept channel's Voronoi share: the optimal plan is the nearest-target assignment itself."""
    prep = prepare(seeded(VGG, width=0.25), torch.randn(1, 3, 32, 32))
    rec = plan_group(prep, 2, 0.6, options=TransportOptions(target_marginal="nearest"))
    nearest = rec.cost.argmin(1)
    np.testing.assert_allclose(rec.nu, np.bincount(nearest, minlength=rec.m) / rec.n, atol=1e-8)
    np.testing.assert_allclose(rec.plan.sum(1), rec.mu, atol=1e-12)
    np.testing.assert_allclose(rec.plan.sum(0), rec.nu, atol=1e-12)
    # every source's whole mass goes to one target, at its smallest cost
    assert ((rec.plan > 1e-12).sum(1) == 1).all()
    np.testing.assert_allclose((rec.plan * rec.cost).sum(1) * rec.n, rec.cost.min(1), atol=1e-6)
    assert rec.nu.max() > 1.5 / rec.m  # unequal clusters: what the uniform marginal cannot give
    with pytest.raises(ValueError, match="unknown source_marginal"):
        TransportOptions(source_marginal="nearest")


def test_sinkhorn_marginals_approximately_hold():
    prep = prepare(seeded(VGG, width=0.25), torch.randn(1, 3, 32, 32))
    rec = plan_group(prep, 1, 0.5, options=TransportOptions(solver="sinkhorn", reg=0.01))
    np.testing.assert_allclose(rec.plan.sum(1), rec.mu, rtol=1e-3)
    np.testing.assert_allclose(rec.plan.sum(0), rec.nu, rtol=1e-3)
    assert (rec.plan > 1e-12).sum() > rec.n  # entropic plans spread mass


# ---------------------------------------------------------------- determinism
@pytest.mark.parametrize("opts,criterion", [
    (TransportOptions(), "l1"),
    (TransportOptions(target="centroids"), "random"),
    (TransportOptions(solver="sinkhorn", reg=0.05, normalization="function-preserving"), "lamp"),
])
def test_same_inputs_and_seed_give_same_plan_and_weights(opts, criterion):
    model = seeded(ResNet18, width=0.125)
    x = torch.randn(1, 3, 32, 32)
    a = prune(model, x, [0, 6], 0.5, "fusion", criterion, opts, seed=3)
    b = prune(model, x, [0, 6], 0.5, "fusion", criterion, opts, seed=3)
    for ra, rb in zip(a.records, b.records):
        assert np.array_equal(ra.plan, rb.plan) and np.array_equal(ra.kept, rb.kept)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_taylor_needs_data_and_uses_it():
    model = seeded(VGG, width=0.25)
    x = torch.randn(8, 3, 32, 32)
    with pytest.raises(ValueError, match="taylor"):
        prune(model, x[:1], 0, 0.5, criterion="taylor")
    batches = [(x, torch.randint(0, 10, (8,)))]
    res = prune(model, x[:1], 0, 0.5, criterion="taylor", taylor_batches=batches)
    imp = res.records[0].importance
    assert imp.shape == (128,) and abs(imp.mean() - 1) < 1e-6 and imp.std() > 0


def test_criteria_are_normalised_by_their_mean():
    prep = prepare(seeded(VGG, width=0.25), torch.randn(1, 3, 32, 32))
    for crit in ("l1", "l2", "random"):
        imp = plan_group(prep, 4, 0.5, crit).importance
        assert abs(imp.mean() - 1.0) < 1e-6
    # l1 by hand: mean over the producer rows and consumer columns of |w|, then / mean
    g = prep.graph
    prod = dict(prep.model.named_modules())[g.groups[4].producers[0]].weight.detach()
    cons = dict(prep.model.named_modules())[g.groups[4].consumers[0]].weight.detach()
    per = (prod.abs().flatten(1).sum(1) + cons.abs().transpose(0, 1).flatten(1).sum(1)) / 2
    np.testing.assert_allclose(plan_group(prep, 4, 0.5, "l1").importance, (per / per.mean()).double(), rtol=1e-5)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("s", [1.0, -0.1, 1.5, float("nan"), "half"])
def test_bad_sparsity_is_named(s):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        prune(seeded(TinyMLP), torch.randn(2, 8), 0, s)


def test_group_index_out_of_range_is_named():
    with pytest.raises(IndexError, match="group 5 does not exist.*1 groups"):
        prune(seeded(TinyMLP), torch.randn(2, 8), 5, 0.5)


def test_unsupported_layer_is_named():
    class WithGroupNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.gn = nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8)
            self.conv2, self.fc = nn.Conv2d(8, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            x = self.conv2(torch.relu(self.gn(self.conv1(x))))
            return self.fc(x.mean((2, 3)))

    with pytest.raises(UnsupportedLayerError, match="'gn' \\(GroupNorm\\)"):
        prune(WithGroupNorm(), torch.randn(1, 3, 8, 8), "all", 0.5)


def test_nan_weights_are_named():
    model = seeded(TinyMLP)
    model.fc1.weight.data[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite values in fc1.weight"):
        prune(model, torch.randn(2, 8), 0, 0.5)


def test_unknown_options_are_named():
    with pytest.raises(ValueError, match="normalization"):
        TransportOptions(normalization="average")
    with pytest.raises(ValueError, match="criterion"):
        prune(seeded(TinyMLP), torch.randn(2, 8), 0, 0.5, criterion="magic")
    with pytest.raises(ValueError, match="method"):
        prune(seeded(TinyMLP), torch.randn(2, 8), 0, 0.5, method="drop")


def test_cost_to_kept_targets_uses_symmetry_correctly():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 700, generator=g)
    kept = torch.tensor([1, 3, 4, 10, 22, 39])
    for p in (1.0, 3.0):
        torch.testing.assert_close(cost_matrix(x, x[kept], p, kept=kept), cost_matrix(x, x[kept], p),
                                   rtol=1e-5, atol=1e-5)


def test_duplicates_two_groups_pruned_together_stay_exact():
    """Whole-model oracle: both groups of a conv net duplicated and fused in one call (each scored and
    transported on the model as the previous group left it) still reproduce the original outputs."""
    base = seeded(TinyConv, 6, 5)
    wide = duplicate(base, TinyConv(12, 10))
    x = torch.randn(4, 3, 8, 8)
    imp = {g: np.r_[np.full(n, 2.0), np.ones(n)] for g, n in ((0, 5), (1, 6))}
    for order in ([0, 1], [1, 0]):
        res = prune(wide, x[:1], order, 0.5, method="fusion",
                    options=TransportOptions(normalization="function-preserving"), importance=imp)
        assert (outputs(res.model, x) - outputs(base, x)).abs().max().item() < 1e-4
