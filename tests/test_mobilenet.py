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
    for rec in res.records:  # the transport plans hold their marginals (uniform: 1/n per source, 1/m per target)
        assert rec.plan.shape == (rec.n, rec.m)
        assert np.allclose(rec.plan.sum(1), 1 / rec.n) and np.allclose(rec.plan.sum(0), 1 / rec.m)
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


def test_resnet50_groups_follow_the_papers_imagenet_numbering():
    from intrafusion.models.paper_numbering import paper_indices, paper_table_groups

    model = build_model(ArchConfig("torchvision:resnet50", num_classes=10))
    groups = list_groups(model, torch.randn(1, 3, 32, 32))
    # the authors' enumeration (reverse module walk) gives every group the number we give it
    assert paper_indices(model, groups) == list(range(37))
    table = [groups[i] for i in paper_table_groups("torchvision:resnet50")]
    assert [g.index for g in table] == list(range(18))  # Tables 19-21: groups 0-17
    streams = {g.index: g.n for g in table if g.residual}
    assert streams == {0: 2048, 7: 1024}
    inner = [(g.n, g.producers[0]) for g in table if not g.residual]
    assert inner[:6] == [(512, f"layer4.{b}.conv{c}") for b in (2, 1, 0) for c in (2, 1)]
    assert inner[6:] == [(256, f"layer3.{b}.conv{c}") for b in (5, 4, 3, 2, 1) for c in (2, 1)]
    assert groups[18].producers == ("layer3.0.conv2",) and groups[36].producers == ("conv1",)
    assert paper_table_groups("resnet18") is None


def test_paper_numbering_follows_module_order_not_only_execution_order():
    class Swapped(nn.Module):  # declares b before a but runs a first
        def __init__(self):
            super().__init__()
            self.b, self.a, self.fc = nn.Conv2d(4, 5, 1), nn.Conv2d(3, 4, 1), nn.Linear(5, 2)

        def forward(self, x):
            return self.fc(self.b(F.relu(self.a(x))).mean((2, 3)))

    from intrafusion.models.paper_numbering import paper_indices

    model = Swapped()
    groups = list_groups(model, torch.randn(1, 3, 4, 4))
    assert [g.producers for g in groups] == [("b",), ("a",)]  # ours: by execution, output backwards
    assert paper_indices(model, groups) == [1, 0]  # the authors' walk meets a (declared last) first
    for arch, n in (("resnet18", 12), ("vgg11_bn", 8)):  # the paper's CIFAR numbering (reference, section 1)
        m = build_model(ArchConfig(arch, width=0.125))
        assert paper_indices(m, list_groups(m, torch.randn(1, 3, 32, 32))) == list(range(n))
    with pytest.raises(ValueError, match="no producer"):
        paper_indices(Swapped(), list_groups(TinyInverted(), torch.randn(1, 3, 8, 8)))


def _no_download_cache(monkeypatch, tmp_path):
    """torch.hub looks in an empty cache, and any download fails at once (as on this offline machine)."""
    import urllib.error

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))

    def unreachable(*a, **k):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)


def test_pretrained_torchvision_model_offline_is_one_clear_sentence(monkeypatch, tmp_path, capsys):
    from intrafusion.models import zoo

    _no_download_cache(monkeypatch, tmp_path)
    with pytest.raises(ValueError) as err:
        zoo.resolve_model("torchvision:resnet18")
    text = str(err.value)
    assert "pretrained weights for resnet18 cannot be downloaded here" in text and "give a weights file" in text
    assert "\n" not in text and text.replace("e.g. ", "").count(". ") == 0  # one sentence
    assert capsys.readouterr() == ("", "")  # torch.hub's "Downloading: URL" line is held back
    with pytest.raises(ValueError, match="supported: torchvision:resnet18"):
        zoo.resolve_model("torchvision:alexnet")


def test_pretrained_torchvision_model_online_gets_torchvisions_weights(monkeypatch):
    from intrafusion.models import zoo

    torch.manual_seed(3)
    reference = build_model(ArchConfig("torchvision:resnet18", num_classes=1000))
    served = []

    def fake_download(name):  # what torchvision would give when online
        served.append(name)
        return reference.state_dict()

    monkeypatch.setattr(zoo, "pretrained_state_dict", fake_download)
    loaded = zoo.resolve_model("torchvision:resnet18")
    assert served == ["resnet18"]
    assert loaded.dataset == zoo.IMAGENET and loaded.preprocessing.size == 224 and loaded.config.num_classes == 1000
    assert loaded.name == "torchvision:resnet18" and not loaded.model.training
    for k, v in reference.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(_out(loaded.model, x), _out(reference, x))
    # ImageNet's 1000 logits cannot be scored on a 10-class dataset: said before any download
    with pytest.raises(ValueError, match="1000 classes, but MNIST 5k .* has 10: give weights trained on it"):
        zoo.resolve_model("torchvision:resnet18", dataset="mnist5k")
    assert served == ["resnet18"]


def test_groups_command_names_the_papers_resnet50_tables(tmp_path):
    import contextlib
    import io

    from intrafusion.cli import main
    from intrafusion.models.checkpoint import save_model

    cfg = ArchConfig("torchvision:resnet50", num_classes=10)
    save_model(build_model(cfg), cfg, tmp_path / "r50.safetensors", metadata={})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["groups", str(tmp_path / "r50.safetensors"), "--dataset", "cifar10"]) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == "r50.safetensors: 37 groups (0 = nearest the classifier)"
    assert lines[1] == ("group numbers are the paper's; its Tables 19-21 (ImageNet) report groups 0-17 of this "
                        "architecture")
    assert lines[3].split()[:3] == ["0", "2048", "yes"] and lines[4].split()[:4] == ["1", "512", "no", "layer4.2.conv2"]
