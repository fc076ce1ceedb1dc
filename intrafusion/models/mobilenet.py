"""MobileNetV2 in its CIFAR form (kuangliu/pytorch-cifar layout): inverted residuals with depthwise convs.

Every :class:`InvertedResidual` block expands its input with a 1x1 conv (``conv1``, ``expansion`` times the
input channels), filters every expanded channel on its own with a 3x3 *depthwise* conv (``conv2``,
``groups`` = channels: one 3x3 kernel per channel) and projects back with a 1x1 conv (``conv3``, no
ReLU after it). Stride-1 blocks add their input (identity when the channels agree, else a 1x1 conv + BN
shortcut); stride-2 blocks have no shortcut. The CIFAR form keeps 32x32 inputs at full resolution in the
stem and the second stage (stride 1 where ImageNet's MobileNetV2 has stride 2) and ends in a 4x4 average pool.

For pruning, one channel of an expanded layer is one row of ``conv1``, its depthwise kernel ``conv2[c]``
and one column of ``conv3``: the three move together (see :mod:`intrafusion.core.groups`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MOBILENET_V2_CFG", "InvertedResidual", "MobileNetV2", "mobilenet_block_plan"]

#: (expansion, out channels, blocks, stride of the first block) per stage, at width 1 (CIFAR strides).
MOBILENET_V2_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_STEM = 32
_LAST = 1280


def _scale(channels: int, width: float) -> int:
    # Same rule as architectures.scale_channels (kept here so that module can import this one).
    return max(1, int(round(channels * width)))


def mobilenet_block_plan() -> list[tuple[int, int, int, int]]:
    """``(base in, expansion, base out, stride)`` of every block at width 1, in order (17 blocks).

    The shortcut of a block is decided by this base plan, not by (possibly pruned) channel counts:
    a projection when the stride is 1 and the base in/out channels differ, identity when they agree,
    none at stride 2.
    """
    plan, c_in = [], _STEM
    for expansion, out, n, stride in MOBILENET_V2_CFG:
        for b in range(n):
            plan.append((c_in, expansion, out, stride if b == 0 else 1))
            c_in = out
    return plan


class InvertedResidual(nn.Module):
    """Expand (1x1) - depthwise (3x3) - project (1x1) block.

    Parameters
    ----------
    in_planes : int
        Input channels.
    planes : int
        Expanded channels (``expansion * in_planes`` unless pruned).
    out_planes : int
        Output channels.
    stride : int
        Stride of the depthwise conv.
    shortcut : {'identity', 'projection', 'none'}
        How the input is added back (see :func:`mobilenet_block_plan`).
    """

    def __init__(self, in_planes: int, planes: int, out_planes: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.stride = int(stride)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.has_shortcut = shortcut != "none"
        self.shortcut = nn.Sequential()
        if shortcut == "projection":
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.has_shortcut else out


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2 (kuangliu layout; 2,296,922 parameters at width 1, 10 classes, 3 input channels).

    Parameters
    ----------
    width : float, default 1.0
        Width multiplier for every layer: stem 32, stage outputs 16 ... 320, the last 1x1 conv 1280
        (``max(1, round(c * width))``); expanded layers have ``expansion`` x the scaled input channels.
    num_classes : int, default 10
    in_channels : int, default 3
    channels : sequence of int, optional
        Explicit channels of a pruned model: the stem, ``(expanded, out)`` of each of the 17 blocks, then the
        last conv: 36 values. Overrides ``width``.

    Notes
    -----
    Keys: ``conv1``/``bn1`` (stem), ``layers.{i}.conv1/bn1/conv2/bn2/conv3/bn3[/shortcut.0/shortcut.1]``,
    ``conv2``/``bn2`` (last 1x1 conv), ``linear``.
    """

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 10,
        in_channels: int = 3,
        channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        plan = mobilenet_block_plan()
        n_values = 2 + 2 * len(plan)
        if channels is None:
            channels = [_scale(_STEM, width)]
            c_in = channels[0]
            for _, expansion, out, _ in plan:
                c_out = _scale(out, width)
                channels += [expansion * c_in, c_out]
                c_in = c_out
            channels.append(_scale(_LAST, width))
        channels = [int(c) for c in channels]
        if len(channels) != n_values or any(c < 1 for c in channels):
            raise ValueError(f"MobileNetV2 needs {n_values} positive channel counts, got {channels}")
        self.conv_channels = list(channels)
        self.conv1 = nn.Conv2d(in_channels, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        blocks, c_in = [], channels[0]
        for i, (base_in, _, base_out, stride) in enumerate(plan):
            planes, c_out = channels[1 + 2 * i], channels[2 + 2 * i]
            shortcut = "none" if stride != 1 else ("identity" if base_in == base_out else "projection")
            blocks.append(InvertedResidual(c_in, planes, c_out, stride, shortcut))
            c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(c_in, channels[-1], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels[-1])
        self.linear = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)))
        # kuangliu: F.avg_pool2d(out, 4) on the 4x4 map of a 32x32 input
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(out.flatten(1))
