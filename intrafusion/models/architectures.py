"""Model architectures used by Intra-Fusion Explorer.

The CIFAR networks follow the layout popularised by ``kuangliu/pytorch-cifar``
(and used by the Intra-Fusion paper), so their state dicts use exactly the same
key names and shapes: checkpoints trained with that code load unchanged.

* :class:`VGG` (:mod:`.vgg`) -- ``features`` (Conv-BN-ReLU triples and max-pools, ending in a
  1x1 average pool) followed by a single linear ``classifier``.
* :class:`ResNet18` (:mod:`.resnet`) -- ``conv1``, ``bn1``, ``layer1`` .. ``layer4`` of
  :class:`BasicBlock` (``conv1, bn1, conv2, bn2, shortcut``) and ``linear``.
* :class:`MLP` (:mod:`.mlp`) -- a small multilayer perceptron for teaching.
* :class:`~.mobilenet.MobileNetV2` -- CIFAR MobileNetV2 (inverted residuals with depthwise convs).
* ``torchvision:NAME`` -- torchvision's ``resnet18``, ``resnet50``, ``mobilenet_v2`` and ``vgg11_bn``
  (:mod:`.torchvision_archs`), with torchvision's state-dict keys.

All of them take a width multiplier, the number of classes and the number of
input channels (features for the MLP).  The CIFAR networks expect 32x32 inputs.

:class:`ArchConfig` describes a model in a JSON-safe way, :func:`build_model`
turns it into a module and :func:`infer_config` recovers it from the shapes of
a state dict (including pruned models whose layers no longer share one width; :mod:`.infer`).

A new architecture: its module next to these, one entry in :data:`ARCHITECTURES`, one branch in
:func:`build_model`, and one in :func:`.infer.infer_config` if checkpoints without a stored config must load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

from torch import nn

from .mlp import MLP
from .mobilenet import MobileNetV2
from .resnet import BasicBlock, ResNet, ResNet18
from .torchvision_archs import PREFIX, TORCHVISION_ARCHS, build_torchvision, torchvision_name
from .vgg import VGG, VGG_CFGS
from .widths import scale_channels

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



# Re-exported here, the module callers know; imported last because inferring builds ArchConfig objects.
from .infer import detect_arch, infer_config  # noqa: E402
