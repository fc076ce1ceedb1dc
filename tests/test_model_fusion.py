"""Model fusion (OTFusion): oracles on permuted copies, self-fusion, plan marginals, residual streams."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from intrafusion.core.groups import PruningGraph
from intrafusion.core.model_fusion import align_to, average_models, fuse_models
from intrafusion.models.architectures import MLP, VGG, ResNet18


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so a wrong alignment of them shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


@torch.no_grad()
def _permuted(model: nn.Module, x: torch.Tensor, seed: int) -> tuple[nn.Module, dict[int, np.ndarray]]:
    """A copy whose every group's channels are permuted consistently (written independently of the library's
    map code: plain index selection on every layer of the group)."""
    m = copy.deepcopy(model).eval()
    graph = PruningGraph(m, x[:2])
    rng = np.random.default_rng(seed)
    perms = {}
    for group in graph.groups:
        perm = rng.permutation(group.n)
        while group.n > 1 and (perm == np.arange(group.n)).all():
            perm = rng.permutation(group.n)
        perms[group.index] = perm
        done = set()
        for s in graph.slices(group.index):
            if (id(s.module), s.side) in done:
                continue
            done.add((id(s.module), s.side))
            idx = s.index[:, 0]
            new = idx[torch.as_tensor(perm)]
            names = ("weight", "bias", "running_mean", "running_var") if s.side != "in" else ("weight",)
            for name in names:
                t = getattr(s.module, name, None)
                if t is None:
                    continue
                t = t.data if isinstance(t, nn.Parameter) else t
                if s.side == "in":
                    t[:, idx] = t[:, new].clone()
                else:
                    t[idx] = t[new].clone()
    return m, perms


CASES = {
    "vgg": (lambda: VGG(width=1 / 16, in_channels=1), (1, 32, 32)),
    "resnet": (lambda: ResNet18(width=1 / 16, in_channels=1), (1, 32, 32)),
    "mlp": (lambda: MLP(batchnorm=True), (64,)),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    build, shape = CASES[request.param]
    torch.manual_seed(0)
    model = _randomise_bn(build())
    x = torch.randn(64, *shape, generator=torch.Generator().manual_seed(1))
    return request.param, model, x


@pytest.mark.parametrize("mode", ["weight", "activation"])
def test_fusing_a_permuted_copy_gives_back_the_original_function(case, mode):
    name, model, x = case
    permuted, perms = _permuted(model, x, seed=3)
    with torch.no_grad():
        ref = model(x)
        assert (permuted(x) - ref).abs().max() < 1e-4  # the copy computes the same function ...
        assert (average_models([model, permuted])(x) - ref).abs().max() > 1e-2  # ... but naive averaging breaks it
        result = fuse_models([model, permuted], x[:2], mode=mode, data=x)
        assert (result.model(x) - ref).abs().max() < 1e-5
        for a, b in zip(result.model.state_dict().values(), model.state_dict().values()):
            assert torch.allclose(a.float(), b.float(), atol=1e-6)
    # the alignment undid every group's permutation: model 0's channel t came from the copy's inverse perm
    for rec in result.records:
        inverse = np.argsort(perms[rec.group])
        assert (rec.permutation == inverse).all(), (name, rec.group)
        assert rec.moved > 0 and rec.cost_after <= rec.cost_before
    if name == "resnet":
        assert any(g.residual for g in PruningGraph(copy.deepcopy(model), x[:2]).groups)


def test_fusing_three_models_two_of_them_permuted(case):
    _, model, x = case
    p1, _ = _permuted(model, x, seed=5)
    p2, _ = _permuted(model, x, seed=6)
    with torch.no_grad():
        fused = fuse_models([model, p1, p2], x[:2], mode="weight").model
        assert (fused(x) - model(x)).abs().max() < 1e-5


def test_fusing_a_model_with_itself_is_the_identity_and_the_plan_holds_its_marginals(case):
    _, model, x = case
    result = fuse_models([model, model], x[:2], mode="activation", data=x)
    for key, value in model.state_dict().items():
        assert torch.equal(result.model.state_dict()[key], value), key
    for rec in result.records:
        n = rec.n
        assert np.allclose(rec.plan.sum(axis=1), 1.0 / n, atol=1e-12)
        assert np.allclose(rec.plan.sum(axis=0), 1.0 / n, atol=1e-12)
        assert np.allclose(rec.plan * n, np.eye(n))  # a permutation plan: here the identity
        assert rec.moved == 0 and rec.cost_after == pytest.approx(0.0, abs=1e-6)


def test_two_different_models_fuse_to_their_aligned_average():
    torch.manual_seed(0)
    a, b = VGG(width=1 / 16, in_channels=1).eval(), VGG(width=1 / 16, in_channels=1).eval()
    x = torch.randn(32, 1, 32, 32)
    aligned, records = align_to(a, b, x[:2], mode="weight")
    with torch.no_grad():
        assert (aligned(x) - b(x)).abs().max() < 1e-4  # alignment only relabels b's channels
    fused = fuse_models([a, b], x[:2], mode="weight").model
    for key, value in fused.state_dict().items():
        if value.is_floating_point():
            expected = (a.state_dict()[key].double() + aligned.state_dict()[key].double()) / 2
            assert torch.allclose(value.double(), expected, atol=1e-6), key
    # with different random weights OT does move channels, and never raises the matched cost
    assert sum(r.moved for r in records) > 0
    assert all(r.cost_after <= r.cost_before + 1e-9 for r in records)


def test_reset_bn_reestimates_the_fused_statistics():
    torch.manual_seed(0)
    a, b = _randomise_bn(VGG(width=1 / 16, in_channels=1), 1), _randomise_bn(VGG(width=1 / 16, in_channels=1), 2)
    x = torch.randn(128, 1, 32, 32)
    plain = fuse_models([a, b], x[:2], mode="activation", data=x).model
    reset = fuse_models([a, b], x[:2], mode="activation", data=x, reset_bn=True).model
    bn = reset.features[1]
    with torch.no_grad():
        z = reset.features[0](x)
    assert torch.allclose(bn.running_mean, z.mean(dim=(0, 2, 3)), atol=1e-4)  # the data's statistics now
    assert not torch.allclose(plain.features[1].running_mean, bn.running_mean, atol=1e-3)
    assert torch.equal(plain.features[0].weight, reset.features[0].weight)  # parameters untouched


def test_bad_inputs_name_the_problem():
    x = torch.randn(2, 1, 32, 32)
    with pytest.raises(ValueError, match="architecture"):
        fuse_models([VGG(width=1 / 16, in_channels=1), VGG(width=1 / 8, in_channels=1)], x, mode="weight")
    with pytest.raises(ValueError, match="needs data"):
        fuse_models([VGG(width=1 / 16, in_channels=1)] * 2, x, mode="activation")
    with pytest.raises(ValueError, match="unknown fusion mode"):
        fuse_models([VGG(width=1 / 16, in_channels=1)] * 2, x, mode="nope")
    with pytest.raises(ValueError, match="at least one"):
        fuse_models([], x)
