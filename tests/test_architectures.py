"""Tests for intrafusion.models.architectures: kuangliu-compatible layouts, configs, shape inference."""

import json

import pytest
import torch
import torch.nn.functional as F

from intrafusion.models.architectures import (
    ARCHITECTURES,
    MLP,
    VGG,
    ArchConfig,
    ResNet18,
    build_model,
    detect_arch,
    infer_config,
)

torch.set_num_threads(2)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def vgg_full():
    torch.manual_seed(0)
    return VGG()


@pytest.fixture(scope="module")
def resnet_full():
    torch.manual_seed(0)
    return ResNet18()


# ----------------------------------------------------------------------------- parameter counts / keys


def test_vgg11_bn_parameter_count_and_keys(vgg_full):
    assert n_params(vgg_full) == 9_231_114
    sd = vgg_full.state_dict()
    # 8 convs x (weight, bias) + 8 BNs x 5 entries + classifier (weight, bias)
    assert len(sd) == 8 * 2 + 8 * 5 + 2 == 58
    assert tuple(sd["features.0.weight"].shape) == (64, 3, 3, 3)
    assert tuple(sd["features.0.bias"].shape) == (64,)
    assert tuple(sd["features.1.running_mean"].shape) == (64,)
    assert "features.1.num_batches_tracked" in sd
    assert tuple(sd["features.4.weight"].shape) == (128, 64, 3, 3)  # after the first max-pool at 3
    assert tuple(sd["features.25.weight"].shape) == (512, 512, 3, 3)  # last conv
    assert tuple(sd["classifier.weight"].shape) == (10, 512)
    assert isinstance(vgg_full.features[-1], torch.nn.AvgPool2d)
    assert len(vgg_full.features) == 8 * 3 + 5 + 1


def test_resnet18_parameter_count_and_keys(resnet_full):
    assert n_params(resnet_full) == 11_173_962
    sd = resnet_full.state_dict()
    assert len(sd) == 122
    for key in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.1.bn2.num_batches_tracked",
        "layer2.0.shortcut.0.weight",
        "layer2.0.shortcut.1.running_mean",
        "layer4.1.conv2.weight",
        "linear.weight",
        "linear.bias",
    ]:
        assert key in sd, key
    assert "conv1.bias" not in sd  # kuangliu convs have no bias
    assert not any(k.startswith("layer1.0.shortcut") for k in sd)  # identity shortcut in layer1
    assert not any(k.startswith("layer2.1.shortcut") for k in sd)
    assert tuple(sd["layer3.0.shortcut.0.weight"].shape) == (256, 128, 1, 1)
    assert tuple(sd["linear.weight"].shape) == (10, 512)


def test_resnet18_paper_variant_has_conv_biases():
    model = ResNet18(conv_bias=True)
    # one bias per conv output channel: stem 64, layer1 4*64, layer2 5*128, layer3 5*256, layer4 5*512
    assert n_params(model) == 11_173_962 + 4800
    assert "layer2.0.shortcut.0.bias" in model.state_dict()


def test_resnet_forward_matches_kuangliu_pooling():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    m = ResNet18(width=0.25).eval()
    with torch.no_grad():
        out = F.relu(m.bn1(m.conv1(x)))
        out = m.layer4(m.layer3(m.layer2(m.layer1(out))))
        ref = m.linear(F.avg_pool2d(out, 4).view(2, -1))
        assert torch.allclose(m(x), ref, atol=1e-5)


# ----------------------------------------------------------------------------- width / classes / channels


@pytest.mark.parametrize(
    "width,num_classes,in_channels", [(0.25, 10, 3), (0.5, 100, 1), (0.3, 7, 3), (1.25, 2, 2)]
)
def test_vgg_shapes_scale(width, num_classes, in_channels):
    model = VGG(width=width, num_classes=num_classes, in_channels=in_channels)
    sd = model.state_dict()
    c0 = max(1, int(round(64 * width)))
    c_last = max(1, int(round(512 * width)))
    assert tuple(sd["features.0.weight"].shape) == (c0, in_channels, 3, 3)
    assert tuple(sd["classifier.weight"].shape) == (num_classes, c_last)
    with torch.no_grad():
        assert tuple(model.eval()(torch.randn(2, in_channels, 32, 32)).shape) == (2, num_classes)


@pytest.mark.parametrize("width,num_classes,in_channels", [(0.25, 10, 3), (0.125, 100, 1), (0.3, 5, 3)])
def test_resnet_shapes_scale(width, num_classes, in_channels):
    model = ResNet18(width=width, num_classes=num_classes, in_channels=in_channels)
    sd = model.state_dict()
    assert tuple(sd["conv1.weight"].shape) == (round(64 * width), in_channels, 3, 3)
    assert tuple(sd["layer3.0.conv1.weight"].shape) == (round(256 * width), round(128 * width), 3, 3)
    assert tuple(sd["linear.weight"].shape) == (num_classes, round(512 * width))
    with torch.no_grad():
        assert tuple(model.eval()(torch.randn(2, in_channels, 32, 32)).shape) == (2, num_classes)


def test_tiny_width_keeps_at_least_one_channel():
    model = VGG(width=0.001)
    assert model.conv_channels == [1] * 8
    assert tuple(model(torch.randn(2, 3, 32, 32)).shape) == (2, 10)


def test_mlp_layout_and_forward():
    mlp = MLP()
    assert [k for k in mlp.state_dict()] == [
        "layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias",
        "layers.4.weight", "layers.4.bias",
    ]
    assert n_params(mlp) == 64 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10
    assert tuple(mlp(torch.randn(5, 1, 8, 8)).shape) == (5, 10)  # flattens images
    bn = MLP(in_features=20, hidden=(16,), num_classes=3, batchnorm=True)
    assert isinstance(bn.layers[1], torch.nn.BatchNorm1d)
    assert "layers.1.running_mean" in bn.state_dict()
    assert tuple(bn(torch.randn(4, 20)).shape) == (4, 3)


# ----------------------------------------------------------------------------- configs


def test_build_model_from_config_and_registry():
    assert set(ARCHITECTURES) == {"vgg11_bn", "resnet18", "mlp", "mobilenet_v2"}
    vgg = build_model(ArchConfig("vgg11_bn", width=0.5, num_classes=100))
    assert isinstance(vgg, VGG) and vgg.training
    assert tuple(vgg.classifier.weight.shape) == (100, 256)
    res = build_model(ArchConfig("resnet18", width=0.25, in_channels=1))
    assert isinstance(res, ResNet18)
    assert tuple(res.conv1.weight.shape) == (16, 1, 3, 3)
    mlp = build_model(ArchConfig("mlp", width=0.5, hidden=(40, 20), in_features=30, num_classes=4))
    assert [m.out_features for m in mlp.layers if isinstance(m, torch.nn.Linear)] == [20, 10, 4]
    assert mlp.layers[0].in_features == 30


def test_unknown_arch_lists_known_ones():
    with pytest.raises(ValueError, match="vgg11_bn.*resnet18.*mlp"):
        ArchConfig("alexnet")
    with pytest.raises(ValueError, match="known"):
        infer_config({}, "alexnet")


@pytest.mark.parametrize(
    "cfg",
    [
        ArchConfig("vgg11_bn", width=0.5, num_classes=100, in_channels=1),
        ArchConfig("resnet18", conv_bias=True),
        ArchConfig("mlp", hidden=(12, 8), in_features=30, batchnorm=True),
        ArchConfig("vgg11_bn", channels=(3, 5, 7, 7, 9, 9, 11, 13)),
    ],
)
def test_config_json_round_trip(cfg):
    text = json.dumps(cfg.to_dict())
    back = ArchConfig.from_dict(json.loads(text))
    assert back == cfg
    assert hash(back) == hash(cfg)


def test_config_validation():
    with pytest.raises(ValueError, match="width"):
        ArchConfig("vgg11_bn", width=0)
    with pytest.raises(ValueError, match="num_classes"):
        ArchConfig("vgg11_bn", num_classes=0)
    with pytest.raises(ValueError, match="unknown architecture config field"):
        ArchConfig.from_dict({"arch": "mlp", "depth": 3})
    with pytest.raises(ValueError, match="lacks 'arch'"):
        ArchConfig.from_dict({"width": 1.0})
    with pytest.raises(ValueError, match="MLP only"):
        ArchConfig("resnet18", hidden=(3,))
    with pytest.raises(ValueError, match="either width or explicit channels"):
        ArchConfig("vgg11_bn", width=0.5, channels=(1,) * 8)
    with pytest.raises(ValueError, match="needs 8 channel counts"):
        build_model(ArchConfig("vgg11_bn", channels=(4, 4)))


# ----------------------------------------------------------------------------- inference


@pytest.mark.parametrize("width", [0.25, 0.3, 0.5, 0.75, 1.0, 2.0])
@pytest.mark.parametrize("arch", ["vgg11_bn", "resnet18"])
def test_infer_config_recovers_width_classes_channels(arch, width):
    cfg = ArchConfig(arch, width=width, num_classes=17, in_channels=1)
    with torch.device("meta"):
        sd = build_model(cfg).state_dict()
    got = infer_config(sd, arch)
    assert got == cfg
    assert infer_config(sd) == cfg  # arch detected from the keys


def test_infer_config_full_width_paper_models(vgg_full, resnet_full):
    assert infer_config(vgg_full.state_dict(), "vgg11_bn") == ArchConfig("vgg11_bn", 1.0, 10, 3)
    assert infer_config(resnet_full.state_dict(), "resnet18") == ArchConfig("resnet18", 1.0, 10, 3)
    with torch.device("meta"):
        paper_resnet = ResNet18(conv_bias=True).state_dict()
    assert infer_config(paper_resnet).conv_bias is True


def test_infer_config_mlp():
    sd = MLP(in_features=30, hidden=(12, 8, 5), num_classes=4, batchnorm=True).state_dict()
    cfg = infer_config(sd, "mlp")
    assert (cfg.in_features, cfg.hidden, cfg.num_classes, cfg.batchnorm) == (30, (12, 8, 5), 4, True)
    assert infer_config(MLP().state_dict()).batchnorm is None
    rebuilt = build_model(cfg).state_dict()
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in sd.items()}


def test_infer_config_irregular_channels_of_pruned_models():
    vgg_channels = (40, 90, 200, 180, 300, 512, 400, 256)
    with torch.device("meta"):
        sd = VGG(channels=vgg_channels, num_classes=10).state_dict()
    cfg = infer_config(sd)
    assert cfg.channels == vgg_channels and cfg.width == 1.0
    res_channels = (48,) + (30, 48, 20, 48) + (100, 96, 60, 96) + (128, 200, 64, 200) + (256, 384, 300, 384)
    with torch.device("meta"):
        res = ResNet18(channels=res_channels).state_dict()
    assert "layer1.0.shortcut.0.weight" not in res  # 48 -> 48, stride 1: identity
    cfg = infer_config(res)
    assert cfg.channels == res_channels
    with torch.device("meta"):
        rebuilt = build_model(cfg).state_dict()
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in res.items()}


def test_infer_config_rejects_other_architectures():
    with torch.device("meta"):
        vgg16 = VGG("VGG16").state_dict()
    with pytest.raises(ValueError, match="13 conv layers"):
        infer_config(vgg16, "vgg11_bn")
    with pytest.raises(ValueError, match="no 'conv1.weight'"):
        infer_config({"features.0.weight": torch.zeros(1)}, "resnet18")
    with pytest.raises(ValueError, match="cannot tell the architecture"):
        detect_arch({"encoder.weight": torch.zeros(1)})


def test_describe_config_names_every_architecture():
    from intrafusion.experiments.train import describe_config

    assert describe_config(ArchConfig("mobilenet_v2", width=0.25, in_channels=1)) == \
        "MobileNetV2, width 0.25 (conv channels 4-320)"
    assert describe_config(ArchConfig("resnet18", width=0.125)).startswith("ResNet18, width 0.125")
    assert describe_config(ArchConfig("vgg11_bn", width=0.125)) == "VGG11-BN, width 0.125 (conv channels 8-64)"
