"""Depthwise convs and inverted residuals (MobileNetV2), unprunable groups, torchvision architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nets import duplicate, randomize_bn
from torch import nn

from intrafusion.core.groups import PruningGraph, UnsupportedLayerError, list_groups
from intrafusion.core.prune import TransportOptions, prune
from intrafusion.models.architectures import ArchConfig, build_model, detect_arch, infer_config
from intrafusion.models.checkpoint import load_model, model_to_bytes
from intrafusion.models.mobilenet import MobileNetV2


class TinyInverted(nn.Module):
    """stem -> inverted residual (expand e, depthwise 3x3, project back to c, identity add) -> linear."""

    def __init__(self, c: int = 4, e: int = 6):
        super().__init__()
        self.stem, self.sbn = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.expand, self.ebn = nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e)
        self.dw, self.dbn = nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False), nn.BatchNorm2d(e)
        self.project, self.pbn = nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c)
        self.linear = nn.Linear(c, 3)

    def forward(self, x):
        h = F.relu(self.sbn(self.stem(x)))
        r = F.relu(self.dbn(self.dw(F.relu(self.ebn(self.expand(h))))))
        h = self.pbn(self.project(r)) + h
        return self.linear(F.adaptive_avg_pool2d(h, 1).flatten(1))


def _out(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_depthwise_kernels_are_in_the_expanded_group():
    groups = list_groups(TinyInverted(), torch.randn(1, 3, 8, 8))
    inner = [g for g in groups if g.depthwise]
    assert len(inner) == 1
    g = inner[0]
    assert g.depthwise == ("dw",) and g.producers == ("expand",) and g.consumers == ("project",)
    assert set(g.norms) == {"ebn", "dbn"} and not g.residual and g.prunable and g.n == 6


def test_duplicates_with_depthwise_and_inverted_residual_fuse_exactly():
    torch.manual_seed(0)
    base = randomize_bn(TinyInverted(4, 6), 0)
    # nets.duplicate doubles the depthwise kernels too (dim 0 doubles; their dim 1 has size 1 in both nets)
    wide = duplicate(base, TinyInverted(4, 12))
    assert torch.equal(wide.dw.weight[:6], wide.dw.weight[6:])
    x = torch.randn(4, 3, 8, 8)
    assert (_out(wide, x) - _out(base, x)).abs().max().item() < 1e-5
    group = next(g.index for g in list_groups(wide, x[:1]) if g.depthwise)
    imp = {group: np.r_[np.full(6, 2.0), np.ones(6)]}  # first copies kept: one copy of each pair
    res = prune(wide, x[:1], group, 0.5, method="fusion",
                options=TransportOptions(normalization="function-preserving"), importance=imp)
    assert list(res.records[0].kept) == list(range(6))
    assert res.model.dw.weight.shape == (6, 1, 3, 3) and res.model.dw.groups == 6
    assert (_out(res.model, x) - _out(base, x)).abs().max().item() < 1e-4
    dflt = prune(wide, x[:1], group, 0.5, method="default", importance=imp)
    assert (_out(dflt.model, x) - _out(base, x)).abs().max().item() > 1e-2


class WithGroupedConv(nn.Module):
    """conv -> grouped conv (groups=2, not depthwise) -> conv -> linear: only the grouped conv's groups are stuck."""

    def __init__(self):
        super().__init__()
        self.a, self.abn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.g, self.gbn = nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8)
        self.b, self.bbn = nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        x = F.relu(self.abn(self.a(x)))
        x = F.relu(self.gbn(self.g(x)))
        x = F.relu(self.bbn(self.b(x)))
        return self.fc(x.mean((2, 3)))


def test_a_grouped_conv_makes_only_its_groups_unprunable():
    model = randomize_bn(WithGroupedConv(), 1)
    x = torch.randn(2, 3, 8, 8)
    groups = list_groups(model, x[:1])
    stuck = [g for g in groups if not g.prunable]
    free = [g for g in groups if g.prunable]
    assert stuck and free
    assert all("'g'" in g.reason and "not depthwise" in g.reason for g in stuck)
    assert any(g.producers == ("b",) for g in free)
    res = prune(model, x[:1], [g.index for g in free], 0.5, method="fusion")
    assert _out(res.model, x).shape == (2, 2)
    for method in ("default", "fusion"):
        with pytest.raises(UnsupportedLayerError, match=f"group {stuck[0].index} cannot be pruned"):
            prune(model, x[:1], stuck[0].index, 0.5, method=method)


def test_mobilenet_v2_config_roundtrip_and_pruned_export():
    cfg = ArchConfig("mobilenet_v2", width=0.25, num_classes=10, in_channels=1)
    torch.manual_seed(0)
    model = randomize_bn(build_model(cfg), 0)
    assert detect_arch(model.state_dict()) == "mobilenet_v2" and infer_config(model.state_dict()) == cfg
    assert sum(p.numel() for p in MobileNetV2().parameters()) == 2_296_922  # kuangliu's count
    x = torch.randn(2, 1, 32, 32)
    groups = PruningGraph(model, x[:1]).groups
    assert sum(bool(g.depthwise) for g in groups) == 17 and all(g.prunable for g in groups)
    res = prune(model, x[:1], [0, 2, 3], 0.5)
    loaded, config, _ = load_model(model_to_bytes(res.model, cfg))
    assert config.channels is not None
    assert (_out(loaded, x) - _out(res.model, x)).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_group_prune_and_export_random_weights(name):
    cfg = ArchConfig(f"torchvision:{name}", num_classes=10)
    torch.manual_seed(0)
    model = randomize_bn(build_model(cfg), 0)
    assert detect_arch(model.state_dict()) == cfg.arch and infer_config(model.state_dict()) == cfg
    x = torch.randn(2, 3, 32, 32)
    groups = list_groups(model, x[:1])
    assert all(g.prunable for g in groups)
    res = prune(model, x[:1], [1, 2], 0.5)
    loaded, config, _ = load_model(model_to_bytes(res.model, cfg))
    assert config.arch == cfg.arch and config.channels is not None
    assert (_out(loaded, x) - _out(res.model, x)).abs().max().item() < 1e-5


def test_torchvision_resnet50_groups_numbered_from_the_output():
    model = build_model(ArchConfig("torchvision:resnet50", num_classes=10))
    groups = list_groups(model, torch.randn(1, 3, 32, 32))
    # 16 bottlenecks x 2 inner groups + 4 residual streams + the stem
    assert len(groups) == 37
    assert groups[0].residual and "fc" in groups[0].consumers and groups[0].n == 2048
    assert groups[1].producers == ("layer4.2.conv2",) and groups[2].producers == ("layer4.2.conv1",)
    assert groups[-1].producers == ("conv1",)


def test_unknown_torchvision_name_and_offline_pretrained_are_one_sentence(monkeypatch):
    with pytest.raises(ValueError, match="supported: torchvision:resnet18"):
        ArchConfig("torchvision:alexnet")
    import torchvision

    from intrafusion.models import torchvision_archs

    def offline(self, *a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", offline)
    with pytest.raises(ValueError, match="cannot be downloaded here.*give a weights file"):
        torchvision_archs.pretrained_state_dict("resnet18")
