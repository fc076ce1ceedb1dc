"""Recovering an :class:`~.architectures.ArchConfig` from the shapes of a state dict.

Works for pruned models too, whose layers no longer share one width: the config then lists every layer's
channels explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

from .architectures import ArchConfig, _unknown_arch
from .mobilenet import MobileNetV2, mobilenet_block_plan
from .resnet import _RESNET18_BLOCKS, _RESNET18_STAGES
from .torchvision_archs import PREFIX, detect_torchvision, infer_torchvision_channels, torchvision_name
from .vgg import VGG_CFGS
from .widths import scale_channels

__all__ = ["detect_arch", "infer_config"]


def _shape(state_dict: Mapping, key: str, arch: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(f"this state dict does not look like {arch}: it has no {key!r}")
    return tuple(state_dict[key].shape)


def _infer_width(base: Sequence[int], observed: Sequence[int]) -> float | None:
    """Return a width w with ``scale_channels(b, w) == o`` for all pairs, else None."""
    pairs = sorted(zip(base, observed), key=lambda p: -p[0])
    tried: set[float] = set()
    for b, o in pairs:
        r = o / b
        for cand in (round(r, 2), round(r, 3), round(r, 4), r):
            if cand <= 0 or cand in tried:
                continue
            tried.add(cand)
            if all(scale_channels(bb, cand) == oo for bb, oo in pairs):
                return float(cand)
    return None


def detect_arch(state_dict: Mapping) -> str:
    """Guess the architecture name from a state dict's keys.

    Parameters
    ----------
    state_dict : mapping of str to tensor

    Returns
    -------
    str
        ``'vgg11_bn'``, ``'resnet18'``, ``'mlp'``, ``'mobilenet_v2'`` or ``'torchvision:NAME'``.

    Raises
    ------
    ValueError
        If the keys match none of them.
    """
    keys = set(state_dict)
    tv = detect_torchvision(keys)
    if tv is not None:
        return tv
    if {"conv1.weight", "layers.0.conv2.weight", "conv2.weight", "linear.weight"} <= keys:
        return "mobilenet_v2"
    if {"features.0.weight", "classifier.weight"} <= keys:
        return "vgg11_bn"
    if {"conv1.weight", "layer1.0.conv1.weight", "linear.weight"} <= keys:
        return "resnet18"
    if "layers.0.weight" in keys:
        return "mlp"
    sample = sorted(keys)[:6]
    raise ValueError(
        "cannot tell the architecture from the state dict keys (expected kuangliu-style VGG "
        f"'features.*'/'classifier.*', ResNet 'conv1.*'/'layer1.*'/'linear.*' or MLP 'layers.*'); "
        f"first keys: {sample}"
    )


def _infer_vgg(sd: Mapping) -> ArchConfig:
    arch = "vgg11_bn"
    convs = []
    for key, value in sd.items():
        m = re.fullmatch(r"features\.(\d+)\.weight", key)
        if m and len(value.shape) == 4:
            convs.append((int(m.group(1)), tuple(value.shape)))
    convs.sort()
    if not convs:
        raise ValueError("this state dict does not look like vgg11_bn: no conv weights under 'features.'")
    base = [int(v) for v in VGG_CFGS["VGG11"] if v != "M"]
    if len(convs) != len(base):
        raise ValueError(
            f"this VGG has {len(convs)} conv layers but VGG11 has {len(base)}; only vgg11_bn is supported"
        )
    first_idx = convs[0][0]
    if f"features.{first_idx + 1}.running_mean" not in sd:
        raise ValueError("this VGG has no batch normalisation; only vgg11_bn (with BatchNorm) is supported")
    observed = [shape[0] for _, shape in convs]
    in_channels = convs[0][1][1]
    num_classes = _shape(sd, "classifier.weight", arch)[0]
    conv_bias = f"features.{first_idx}.bias" in sd
    width = _infer_width(base, observed)
    return ArchConfig(
        arch=arch,
        width=1.0 if width is None else width,
        num_classes=num_classes,
        in_channels=in_channels,
        channels=tuple(observed) if width is None else None,
        conv_bias=None if conv_bias else False,
    )


def _infer_resnet(sd: Mapping) -> ArchConfig:
    arch = "resnet18"
    stem_shape = _shape(sd, "conv1.weight", arch)
    observed = [stem_shape[0]]
    base = [64]
    for stage, n in enumerate(_RESNET18_BLOCKS):
        present = sorted(
            {int(m.group(1)) for k in sd if (m := re.match(rf"layer{stage + 1}\.(\d+)\.", k))}
        )
        if present != list(range(n)):
            raise ValueError(
                f"this ResNet has {len(present)} block(s) in layer{stage + 1} but ResNet18 has {n}; "
                "only resnet18 is supported"
            )
        for b in range(n):
            mid = _shape(sd, f"layer{stage + 1}.{b}.conv1.weight", arch)[0]
            out = _shape(sd, f"layer{stage + 1}.{b}.conv2.weight", arch)[0]
            observed += [mid, out]
            base += [_RESNET18_STAGES[stage]] * 2
    num_classes = _shape(sd, "linear.weight", arch)[0]
    width = _infer_width(base, observed)
    return ArchConfig(
        arch=arch,
        width=1.0 if width is None else width,
        num_classes=num_classes,
        in_channels=stem_shape[1],
        channels=tuple(observed) if width is None else None,
        conv_bias=True if "conv1.bias" in sd else None,
    )


def _infer_mlp(sd: Mapping) -> ArchConfig:
    linears = []
    has_bn = False
    for key, value in sd.items():
        m = re.fullmatch(r"layers\.(\d+)\.weight", key)
        if m and len(value.shape) == 2:
            linears.append((int(m.group(1)), tuple(value.shape)))
        if re.fullmatch(r"layers\.\d+\.running_mean", key):
            has_bn = True
    linears.sort()
    if not linears:
        raise ValueError("this state dict does not look like an MLP: no 'layers.<i>.weight' matrices")
    return ArchConfig(
        arch="mlp",
        num_classes=linears[-1][1][0],
        in_features=linears[0][1][1],
        hidden=tuple(shape[0] for _, shape in linears[:-1]),
        batchnorm=True if has_bn else None,
    )


def _infer_mobilenet(sd: Mapping) -> ArchConfig:
    arch = "mobilenet_v2"
    stem = _shape(sd, "conv1.weight", arch)
    plan = mobilenet_block_plan()
    observed = [stem[0]]
    for i in range(len(plan)):
        observed += [_shape(sd, f"layers.{i}.conv1.weight", arch)[0], _shape(sd, f"layers.{i}.conv3.weight", arch)[0]]
    if f"layers.{len(plan)}.conv1.weight" in sd:
        raise ValueError(f"this MobileNetV2 has more than the {len(plan)} blocks of the CIFAR MobileNetV2")
    observed.append(_shape(sd, "conv2.weight", arch)[0])
    # A width-w model has expanded layers of expansion x the SCALED input: compare with what w builds.
    width = None
    for cand in sorted({round(observed[0] / 32, 4), round(observed[-1] / 1280, 4), observed[0] / 32}):
        with torch.device("meta"):
            built = MobileNetV2(width=cand).conv_channels if cand > 0 else None
        if built == observed:
            width = float(cand)
            break
    return ArchConfig(arch=arch, width=1.0 if width is None else width,
                      num_classes=_shape(sd, "linear.weight", arch)[0], in_channels=stem[1],
                      channels=None if width is not None else tuple(observed))


def infer_config(state_dict: Mapping, arch: str | None = None) -> ArchConfig:
    """Recover an :class:`ArchConfig` from the tensor shapes of a state dict.

    Parameters
    ----------
    state_dict : mapping of str to tensor
        Weights in the layout of this module (``module.`` prefixes already removed).
    arch : str, optional
        Architecture name; guessed with :func:`detect_arch` when omitted.

    Returns
    -------
    ArchConfig
        Width (or explicit per-layer ``channels`` when the layers do not follow one
        width multiplier, e.g. after pruning), number of classes, input channels,
        conv bias; for the MLP the hidden sizes, input features and batch norm.
        Options equal to the architecture default are left as ``None``, so a
        default model gives back the default config.

    Raises
    ------
    ValueError
        If the state dict does not match the architecture.

    Examples
    --------
    >>> infer_config(VGG(width=0.5, num_classes=100).state_dict()) == ArchConfig("vgg11_bn", 0.5, 100)
    True
    """
    if arch is None:
        arch = detect_arch(state_dict)
    if arch == "vgg11_bn":
        return _infer_vgg(state_dict)
    if arch == "resnet18":
        return _infer_resnet(state_dict)
    if arch == "mlp":
        return _infer_mlp(state_dict)
    if arch == "mobilenet_v2":
        return _infer_mobilenet(state_dict)
    if isinstance(arch, str) and arch.startswith(PREFIX):
        num_classes, channels, in_channels = infer_torchvision_channels(state_dict, torchvision_name(arch))
        return ArchConfig(arch=arch, num_classes=num_classes, in_channels=in_channels, channels=channels)
    raise _unknown_arch(arch)
