"""Model architectures used by Intra-Fusion Explorer.

The CIFAR networks follow the layout popularised by ``kuangliu/pytorch-cifar``
(and used by the Intra-Fusion paper), so their state dicts use exactly the same
key names and shapes: checkpoints trained with that code load unchanged.

* :class:`VGG` -- ``features`` (Conv-BN-ReLU triples and max-pools, ending in a
  1x1 average pool) followed by a single linear ``classifier``.
* :class:`ResNet18` -- ``conv1``, ``bn1``, ``layer1`` .. ``layer4`` of
  :class:`BasicBlock` (``conv1, bn1, conv2, bn2, shortcut``) and ``linear``.
* :class:`MLP` -- a small multilayer perceptron for teaching.
* :class:`~.mobilenet.MobileNetV2` -- CIFAR MobileNetV2 (inverted residuals with depthwise convs).
* ``torchvision:NAME`` -- torchvision's ``resnet18``, ``resnet50``, ``mobilenet_v2`` and ``vgg11_bn``
  (:mod:`.torchvision_archs`), with torchvision's state-dict keys.

All of them take a width multiplier, the number of classes and the number of
input channels (features for the MLP).  The CIFAR networks expect 32x32 inputs.

:class:`ArchConfig` describes a model in a JSON-safe way, :func:`build_model`
turns it into a module and :func:`infer_config` recovers it from the shapes of
a state dict (including pruned models whose layers no longer share one width).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .mobilenet import MobileNetV2, mobilenet_block_plan
from .torchvision_archs import (
    PREFIX,
    TORCHVISION_ARCHS,
    build_torchvision,
    detect_torchvision,
    infer_torchvision_channels,
    torchvision_name,
)

__all__ = [
    "ARCHITECTURES",
    "VGG_CFGS",
    "ArchConfig",
    "BasicBlock",
    "MLP",
    "MobileNetV2",
    "ResNet",
    "ResNet18",
    "VGG",
    "build_model",
    "detect_arch",
    "infer_config",
    "scale_channels",
]

#: Layer plans of the CIFAR VGG family: numbers are conv output channels, ``'M'`` a 2x2 max-pool.
VGG_CFGS: dict[str, list[int | str]] = {
    "VGG11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "VGG13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "VGG16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "VGG19": [
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ],
}

#: Base (width 1.0) channels of ResNet18: the stem, then ``(mid, out)`` for each of the 8 blocks.
_RESNET18_STAGES = (64, 128, 256, 512)
_RESNET18_BLOCKS = (2, 2, 2, 2)


def scale_channels(channels: int, width: float) -> int:
    """Scale a channel count by a width multiplier.

    Parameters
    ----------
    channels : int
        Channel count at width 1.0.
    width : float
        Width multiplier.

    Returns
    -------
    int
        ``max(1, int(round(channels * width)))``.
    """
    return max(1, int(round(channels * width)))


def _check_channels(channels: Sequence[int] | None, expected_len: int, what: str) -> list[int] | None:
    if channels is None:
        return None
    channels = [int(c) for c in channels]
    if len(channels) != expected_len:
        raise ValueError(f"{what} needs {expected_len} channel counts, got {len(channels)}: {channels}")
    if any(c < 1 for c in channels):
        raise ValueError(f"{what}: channel counts must be >= 1, got {channels}")
    return channels


# --------------------------------------------------------------------------------------------------
# VGG
# --------------------------------------------------------------------------------------------------


class VGG(nn.Module):
    """CIFAR VGG with batch normalisation (kuangliu/pytorch-cifar layout).

    Parameters
    ----------
    cfg_name : str, default 'VGG11'
        One of :data:`VGG_CFGS` (``'VGG11'``, ``'VGG13'``, ``'VGG16'``, ``'VGG19'``).
    width : float, default 1.0
        Width multiplier applied to every conv layer
        (``max(1, int(round(c * width)))`` channels).
    num_classes : int, default 10
        Number of outputs of the classifier.
    in_channels : int, default 3
        Channels of the input images (1 for grey-scale data).
    conv_bias : bool, default True
        Whether the conv layers have a bias (kuangliu and the paper use ``True``).
    channels : sequence of int, optional
        Explicit output channels of every conv layer, in order (e.g. of a pruned
        model). Overrides ``width``.

    Notes
    -----
    State-dict keys are ``features.{i}.weight``/``bias`` for convs,
    ``features.{i+1}.weight``/``bias``/``running_mean``/``running_var``/
    ``num_batches_tracked`` for batch norms and ``classifier.weight``/``bias``.
    The input must be 32x32 so that five max-pools leave a 1x1 map.
    """

    def __init__(
        self,
        cfg_name: str = "VGG11",
        width: float = 1.0,
        num_classes: int = 10,
        in_channels: int = 3,
        conv_bias: bool = True,
        channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if cfg_name not in VGG_CFGS:
            raise ValueError(f"unknown VGG configuration {cfg_name!r}; known: {sorted(VGG_CFGS)}")
        cfg = VGG_CFGS[cfg_name]
        n_conv = sum(1 for v in cfg if v != "M")
        explicit = _check_channels(channels, n_conv, f"{cfg_name}")
        if explicit is None:
            explicit = [scale_channels(int(v), width) for v in cfg if v != "M"]
        self.cfg_name = cfg_name
        self.conv_channels = list(explicit)
        layers: list[nn.Module] = []
        c_in = int(in_channels)
        it = iter(explicit)
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                c_out = next(it)
                layers += [
                    nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=conv_bias),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                ]
                c_in = c_out
        layers.append(nn.AvgPool2d(kernel_size=1, stride=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)
        out = out.view(out.size(0), -1)
        return self.classifier(out)


# --------------------------------------------------------------------------------------------------
# ResNet
# --------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Residual block of two 3x3 convs (kuangliu layout).

    Parameters
    ----------
    in_planes : int
        Input channels.
    planes : int
        Output channels of ``conv1`` (and of the block when ``out_planes`` is None).
    stride : int, default 1
        Stride of ``conv1`` and of the projection shortcut.
    out_planes : int, optional
        Output channels of ``conv2`` (differs from ``planes`` only in pruned models).
    bias : bool, default False
        Whether the convs have a bias (kuangliu: ``False``; the Intra-Fusion paper's
        ResNet18: ``True``).

    Notes
    -----
    ``shortcut`` is an empty ``nn.Sequential()`` (identity) when the stride is 1 and
    the channel counts agree, else ``Sequential(Conv2d 1x1, BatchNorm2d)``.
    """

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        out_planes: int | None = None,
        bias: bool = False,
    ) -> None:
        super().__init__()
        out_planes = planes if out_planes is None else out_planes
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, out_planes, kernel_size=3, stride=1, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=bias),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    """CIFAR ResNet of :class:`BasicBlock` stages (kuangliu layout).

    Parameters
    ----------
    num_blocks : sequence of 4 int
        Blocks per stage (``(2, 2, 2, 2)`` for ResNet18).
    width : float, default 1.0
        Width multiplier for the stage widths 64, 128, 256, 512.
    num_classes : int, default 10
        Outputs of ``linear``.
    in_channels : int, default 3
        Channels of the input images.
    conv_bias : bool, default False
        Bias in the convs (``True`` for the Intra-Fusion paper's checkpoints).
    channels : sequence of int, optional
        Explicit channels (e.g. of a pruned model): the stem, then ``mid, out`` of
        every block in order; ``1 + 2 * sum(num_blocks)`` values. Overrides ``width``.
    """

    def __init__(
        self,
        num_blocks: Sequence[int] = _RESNET18_BLOCKS,
        width: float = 1.0,
        num_classes: int = 10,
        in_channels: int = 3,
        conv_bias: bool = False,
        channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        num_blocks = tuple(int(n) for n in num_blocks)
        if len(num_blocks) != 4 or any(n < 1 for n in num_blocks):
            raise ValueError(f"num_blocks must be 4 positive ints, got {num_blocks}")
        n_values = 1 + 2 * sum(num_blocks)
        explicit = _check_channels(channels, n_values, "ResNet")
        if explicit is None:
            explicit = [scale_channels(64, width)]
            for planes, n in zip(_RESNET18_STAGES, num_blocks):
                explicit += [scale_channels(planes, width)] * (2 * n)
        self.num_blocks = num_blocks
        self.conv_channels = list(explicit)
        stem = explicit[0]
        self.conv1 = nn.Conv2d(in_channels, stem, kernel_size=3, stride=1, padding=1, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(stem)
        in_planes = stem
        pos = 1
        for stage, n in enumerate(num_blocks):
            blocks = []
            for b in range(n):
                mid, out = explicit[pos], explicit[pos + 1]
                pos += 2
                stride = 2 if (stage > 0 and b == 0) else 1
                blocks.append(BasicBlock(in_planes, mid, stride, out_planes=out, bias=conv_bias))
                in_planes = out
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        # Same as kuangliu's F.avg_pool2d(out, 4) for 32x32 inputs (4x4 maps here).
        out = F.adaptive_avg_pool2d(out, 1)
        out = out.view(out.size(0), -1)
        return self.linear(out)


class ResNet18(ResNet):
    """ResNet18 for CIFAR (kuangliu layout, 11,173,962 parameters at width 1, 10 classes).

    Parameters
    ----------
    width : float, default 1.0
        Width multiplier for the stage widths 64, 128, 256, 512.
    num_classes : int, default 10
        Outputs of ``linear``.
    in_channels : int, default 3
        Channels of the input images.
    conv_bias : bool, default False
        Bias in the convs (``True`` loads the Intra-Fusion paper's ResNet18 checkpoints).
    channels : sequence of int, optional
        Explicit channels of a pruned model, see :class:`ResNet`.
    """

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 10,
        in_channels: int = 3,
        conv_bias: bool = False,
        channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__(
            _RESNET18_BLOCKS,
            width=width,
            num_classes=num_classes,
            in_channels=in_channels,
            conv_bias=conv_bias,
            channels=channels,
        )


# --------------------------------------------------------------------------------------------------
# MLP
# --------------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Small multilayer perceptron for teaching.

    Parameters
    ----------
    in_features : int, default 64
        Input features (inputs are flattened, so an 8x8 image works directly).
    hidden : sequence of int, default (64, 32)
        Hidden layer sizes.
    num_classes : int, default 10
        Outputs.
    batchnorm : bool, default False
        Insert ``BatchNorm1d`` after every hidden ``Linear``.

    Notes
    -----
    Everything lives in ``self.layers`` (an ``nn.Sequential``): per hidden layer
    ``Linear`` [, ``BatchNorm1d``], ``ReLU``, then the output ``Linear``.
    Keys are therefore ``layers.0.weight``, ``layers.0.bias``, ...
    """

    def __init__(
        self,
        in_features: int = 64,
        hidden: Sequence[int] = (64, 32),
        num_classes: int = 10,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden sizes must be >= 1, got {hidden}")
        self.in_features = int(in_features)
        self.hidden = hidden
        self.batchnorm = bool(batchnorm)
        layers: list[nn.Module] = []
        prev = self.in_features
        for h in hidden:
            layers.append(nn.Linear(prev, h))
            if batchnorm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU(inplace=True))
            prev = h
        layers.append(nn.Linear(prev, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))


# --------------------------------------------------------------------------------------------------
# Registry and configs
# --------------------------------------------------------------------------------------------------

#: Architecture name -> model class.
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "vgg11_bn": VGG,
    "resnet18": ResNet18,
    "mlp": MLP,
    "mobilenet_v2": MobileNetV2,
}
#: torchvision architectures, as ``arch`` names (``'torchvision:resnet18'``, ...).
TORCHVISION_NAMES = tuple(PREFIX + n for n in TORCHVISION_ARCHS)

_MLP_DEFAULT_HIDDEN = (64, 32)
_MLP_DEFAULT_IN = 64


def _unknown_arch(arch: object) -> ValueError:
    return ValueError(f"unknown architecture {arch!r}; known architectures: "
                      f"{', '.join(list(ARCHITECTURES) + list(TORCHVISION_NAMES))}")


def _known_arch(arch: object) -> bool:
    return arch in ARCHITECTURES or (isinstance(arch, str) and arch in TORCHVISION_NAMES)


@dataclass(frozen=True)
class ArchConfig:
    """JSON-safe description of a model that :func:`build_model` can rebuild.

    Parameters
    ----------
    arch : str
        A key of :data:`ARCHITECTURES` (``'vgg11_bn'``, ``'resnet18'``, ``'mlp'``, ``'mobilenet_v2'``) or
        ``'torchvision:NAME'`` (:data:`TORCHVISION_NAMES`).
    width : float, default 1.0
        Width multiplier (conv channels for VGG/ResNet, hidden sizes for the MLP).
    num_classes : int, default 10
        Number of outputs.
    in_channels : int, default 3
        Input image channels (VGG/ResNet).
    hidden : tuple of int, optional
        MLP hidden sizes before the width multiplier (default ``(64, 32)``).
    in_features : int, optional
        MLP input features (default 64).
    channels : tuple of int, optional
        Explicit per-layer conv channels (pruned VGG/ResNet/MobileNetV2; see :class:`VGG`,
        :class:`ResNet`, :class:`MobileNetV2`; for torchvision models every layer's shape,
        see :func:`.torchvision_archs.layer_shapes`). When given, ``width`` must be 1.0.
    conv_bias : bool, optional
        Conv bias; ``None`` means the architecture default (VGG: True, ResNet: False).
    batchnorm : bool, optional
        MLP only: BatchNorm1d after hidden layers; ``None`` means False.
    """

    arch: str
    width: float = 1.0
    num_classes: int = 10
    in_channels: int = 3
    hidden: tuple[int, ...] | None = None
    in_features: int | None = None
    channels: tuple[int, ...] | None = None
    conv_bias: bool | None = None
    batchnorm: bool | None = None

    def __post_init__(self) -> None:
        if not _known_arch(self.arch):
            if isinstance(self.arch, str) and self.arch.startswith(PREFIX):
                torchvision_name(self.arch)  # raises, naming the supported torchvision models
            raise _unknown_arch(self.arch)
        width = float(self.width)
        if not math.isfinite(width) or width <= 0:
            raise ValueError(f"width must be a positive number, got {self.width!r}")
        object.__setattr__(self, "width", width)
        for name in ("num_classes", "in_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.in_features is not None:
            if int(self.in_features) != self.in_features or int(self.in_features) < 1:
                raise ValueError(f"in_features must be a positive integer, got {self.in_features!r}")
            object.__setattr__(self, "in_features", int(self.in_features))
        for name in ("hidden", "channels"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                    raise ValueError(f"{name} must be a sequence of positive integers, got {value!r}")
                value = tuple(int(v) for v in value)
                if any(v < 1 for v in value):
                    raise ValueError(f"{name} must contain positive integers, got {value}")
                object.__setattr__(self, name, value)
        for name in ("conv_bias", "batchnorm"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, bool(value))
        if self.channels is not None and self.width != 1.0:
            raise ValueError("give either width or explicit channels, not both (width must be 1.0)")
        if self.arch == "mlp":
            if self.channels is not None or self.conv_bias is not None:
                raise ValueError("channels/conv_bias do not apply to the MLP; use hidden instead")
        else:
            if self.hidden is not None or self.in_features is not None:
                raise ValueError(f"hidden/in_features apply to the MLP only, not {self.arch}")
            if self.batchnorm is False:
                raise ValueError(f"{self.arch} always has batch normalisation (batchnorm=False is MLP-only)")
        if (self.arch == "mobilenet_v2" or self.arch in TORCHVISION_NAMES) and self.conv_bias is not None:
            raise ValueError(f"conv_bias does not apply to {self.arch} (its convs have no bias)")
        if self.arch in TORCHVISION_NAMES and self.width != 1.0:
            raise ValueError(f"{self.arch} has torchvision's widths: width must be 1.0 (give channels instead)")

    def to_dict(self) -> dict:
        """Return a JSON-serialisable dict (tuples become lists).

        Returns
        -------
        dict
            All fields; ``ArchConfig.from_dict(cfg.to_dict()) == cfg``.
        """
        out = asdict(self)
        for name in ("hidden", "channels"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> ArchConfig:
        """Build a config from :meth:`to_dict` output (e.g. parsed JSON).

        Parameters
        ----------
        data : mapping
            Must contain ``'arch'``; other fields are optional.

        Returns
        -------
        ArchConfig

        Raises
        ------
        ValueError
            If ``data`` is not a mapping, lacks ``arch`` or has unknown fields.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"an architecture config must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown architecture config field(s) {unknown}; known: {sorted(known)}")
        if "arch" not in data:
            raise ValueError("architecture config lacks 'arch'")
        return cls(**dict(data))


def build_model(config: ArchConfig) -> nn.Module:
    """Instantiate the model described by ``config`` (left in training mode).

    Parameters
    ----------
    config : ArchConfig
        The description; a plain dict is accepted too.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    ValueError
        For an unknown architecture (the message lists the known ones).
    """
    if isinstance(config, Mapping):
        config = ArchConfig.from_dict(config)
    if not _known_arch(config.arch):
        raise _unknown_arch(config.arch)
    if config.arch in TORCHVISION_NAMES:
        return build_torchvision(torchvision_name(config.arch), config.num_classes, config.in_channels,
                                 config.channels)
    if config.arch == "mobilenet_v2":
        return MobileNetV2(width=config.width, num_classes=config.num_classes, in_channels=config.in_channels,
                           channels=config.channels)
    if config.arch == "vgg11_bn":
        return VGG(
            "VGG11",
            width=config.width,
            num_classes=config.num_classes,
            in_channels=config.in_channels,
            conv_bias=True if config.conv_bias is None else config.conv_bias,
            channels=config.channels,
        )
    if config.arch == "resnet18":
        return ResNet18(
            width=config.width,
            num_classes=config.num_classes,
            in_channels=config.in_channels,
            conv_bias=False if config.conv_bias is None else config.conv_bias,
            channels=config.channels,
        )
    hidden = _MLP_DEFAULT_HIDDEN if config.hidden is None else config.hidden
    return MLP(
        in_features=_MLP_DEFAULT_IN if config.in_features is None else config.in_features,
        hidden=tuple(scale_channels(h, config.width) for h in hidden),
        num_classes=config.num_classes,
        batchnorm=bool(config.batchnorm),
    )


# --------------------------------------------------------------------------------------------------
# Inferring a config from a state dict
# --------------------------------------------------------------------------------------------------


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
