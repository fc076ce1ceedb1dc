"""torchvision architectures (``torchvision:resnet18``, ``torchvision:resnet50``, ``torchvision:mobilenet_v2``,
``torchvision:vgg11_bn``): built with torchvision's own constructors, so their state dicts are torchvision's.

Weights come from a file of the user's, or from torchvision's pretrained ImageNet weights when the machine is
online (:func:`pretrained_state_dict`; nothing is downloaded otherwise, and tests use random weights).

A pruned torchvision model no longer has torchvision's shapes. Its :class:`~.architectures.ArchConfig` then
lists them in ``channels``: for every Conv/Linear layer (in ``named_modules`` order) its output and input
channels, and for every BatchNorm its size, flattened into one tuple (:func:`layer_shapes`);
:func:`build_torchvision` rebuilds the default model and replaces each layer by one of those shapes (a
depthwise conv stays depthwise: ``groups`` = its channels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PREFIX",
    "TORCHVISION_ARCHS",
    "build_torchvision",
    "detect_torchvision",
    "infer_torchvision_channels",
    "layer_shapes",
    "pretrained_state_dict",
    "torchvision_name",
]

PREFIX = "torchvision:"
#: Supported torchvision constructors (``torchvision.models.<name>``).
TORCHVISION_ARCHS = ("resnet18", "resnet50", "mobilenet_v2", "vgg11_bn")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LAYERS = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def torchvision_name(arch: str) -> str | None:
    """``'resnet18'`` for ``'torchvision:resnet18'``; None for a non-torchvision name; ValueError if unknown."""
    if not isinstance(arch, str) or not arch.startswith(PREFIX):
        return None
    name = arch[len(PREFIX):]
    if name not in TORCHVISION_ARCHS:
        raise ValueError(f"unknown torchvision architecture {name!r}; supported: "
                         + ", ".join(PREFIX + n for n in TORCHVISION_ARCHS))
    return name


def _default(name: str, num_classes: int) -> nn.Module:
    import torchvision

    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


def layer_shapes(model: nn.Module) -> tuple[int, ...]:
    """Conv/Linear ``(out, in)`` and BatchNorm ``(size,)`` of every layer in ``named_modules`` order, flattened."""
    out: list[int] = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            out += [m.out_channels, m.in_channels]
        elif isinstance(m, nn.Linear):
            out += [m.out_features, m.in_features]
        elif isinstance(m, nn.BatchNorm2d):
            out.append(m.num_features)
    return tuple(out)


def _resized(m: nn.Module, shape: Sequence[int]) -> nn.Module:
    if isinstance(m, nn.BatchNorm2d):
        return m if shape[0] == m.num_features else nn.BatchNorm2d(shape[0], m.eps, m.momentum)
    out, inp = shape
    if isinstance(m, nn.Linear):
        if (out, inp) == (m.out_features, m.in_features):
            return m
        return nn.Linear(inp, out, bias=m.bias is not None)
    if (out, inp) == (m.out_channels, m.in_channels):
        return m
    depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
    if m.groups > 1 and not depthwise:
        raise ValueError(f"cannot resize the grouped conv {m} (groups={m.groups}) to {out} x {inp}")
    return nn.Conv2d(inp, out, m.kernel_size, m.stride, m.padding, m.dilation, groups=out if depthwise else 1,
                     bias=m.bias is not None, padding_mode=m.padding_mode)


def build_torchvision(name: str, num_classes: int = 1000, in_channels: int = 3,
                      channels: Sequence[int] | None = None) -> nn.Module:
    """torchvision's ``name`` (random weights), with ``in_channels`` inputs or the explicit :func:`layer_shapes`.

    Parameters
    ----------
    name : str
        One of :data:`TORCHVISION_ARCHS`.
    num_classes : int
    in_channels : int
        Input channels (torchvision's models take 3; another value replaces the first conv).
    channels : sequence of int, optional
        :func:`layer_shapes` of a pruned model (overrides ``in_channels``).
    """
    model = _default(name, num_classes)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _LAYERS)]
    if channels is None:
        shapes = list(layer_shapes(model))
        shapes[1] = int(in_channels)  # first layer is a conv: (out, in)
    else:
        shapes = [int(c) for c in channels]
    expected = sum(1 if isinstance(m, nn.BatchNorm2d) else 2 for _, m in layers)
    if len(shapes) != expected:
        raise ValueError(f"torchvision {name} needs {expected} layer sizes in channels, got {len(shapes)}")
    pos = 0
    for lname, m in layers:
        k = 1 if isinstance(m, nn.BatchNorm2d) else 2
        new = _resized(m, shapes[pos:pos + k])
        pos += k
        if new is not m:
            parent_name, _, attr = lname.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    return model


def infer_torchvision_channels(state_dict: Mapping[str, torch.Tensor], name: str) -> tuple[int, tuple | None, int]:
    """``(num_classes, channels or None, in_channels)`` of a torchvision state dict (None: torchvision's shapes)."""
    with torch.device("meta"):
        ref = _default(name, 1000)
    shapes: list[int] = []
    for lname, m in ref.named_modules():
        if not isinstance(m, _LAYERS):
            continue
        key = f"{lname}.weight"
        if key not in state_dict:
            raise ValueError(f"this state dict does not look like torchvision's {name}: it has no {key!r}")
        shape = tuple(state_dict[key].shape)
        if isinstance(m, nn.BatchNorm2d):
            shapes.append(shape[0])
        elif isinstance(m, nn.Linear):
            shapes += [shape[0], shape[1]]
        else:
            depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            shapes += [shape[0], shape[0] if depthwise else shape[1] * m.groups]
    num_classes = shapes[-2]
    with torch.device("meta"):
        default = list(layer_shapes(_default(name, num_classes)))
    if shapes[2:] == default[2:] and shapes[0] == default[0]:
        return num_classes, None, shapes[1]
    return num_classes, tuple(shapes), shapes[1]


def detect_torchvision(keys: set[str]) -> str | None:
    """``'torchvision:NAME'`` when the keys are torchvision's layout of a supported model, else None."""
    if {"conv1.weight", "layer1.0.conv1.weight", "fc.weight"} <= keys:
        return PREFIX + ("resnet50" if "layer1.0.conv3.weight" in keys else "resnet18")
    if {"features.0.0.weight", "features.1.conv.0.0.weight", "classifier.1.weight"} <= keys:
        return PREFIX + "mobilenet_v2"
    if {"features.0.weight", "classifier.0.weight", "classifier.6.weight"} <= keys:
        return PREFIX + "vgg11_bn"
    return None


def pretrained_state_dict(name: str) -> dict[str, torch.Tensor]:
    """torchvision's default ImageNet weights for ``name`` (downloaded once into torch's cache when online).

    Raises
    ------
    ValueError
        One sentence when they cannot be had (offline), naming the way out: a weights file.
    """
    import contextlib
    import io
    import sys

    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    note = io.StringIO()
    try:
        # torch.hub prints "Downloading: URL" to stdout even without progress: held back, so the offline case
        # stays one sentence (and stdout stays clean for --json); shown on stderr once the download worked
        with contextlib.redirect_stdout(note), contextlib.redirect_stderr(note):
            state_dict = weights.get_state_dict(progress=False, check_hash=True)
        sys.stderr.write(note.getvalue())
        return state_dict
    except Exception as exc:  # URLError, socket errors, HTTP errors: all mean "not reachable from here"
        raise ValueError(
            f"torchvision's pretrained weights for {name} cannot be downloaded here ({type(exc).__name__}: the "
            f"machine looks offline); give a weights file instead, e.g. `python -m intrafusion groups FILE "
            f"--arch {PREFIX}{name} --dataset DATASET`"
        ) from None
