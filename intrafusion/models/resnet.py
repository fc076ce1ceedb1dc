"""CIFAR ResNet18 (kuangliu/pytorch-cifar layout, as in the Intra-Fusion paper)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .widths import _check_channels, scale_channels

__all__ = ["BasicBlock", "ResNet", "ResNet18"]

#: Base (width 1.0) channels of ResNet18: the stem, then ``(mid, out)`` for each of the 8 blocks.
_RESNET18_STAGES = (64, 128, 256, 512)
_RESNET18_BLOCKS = (2, 2, 2, 2)


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
