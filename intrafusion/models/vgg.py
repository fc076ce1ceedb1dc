"""CIFAR VGG with batch normalisation (kuangliu/pytorch-cifar layout, as in the Intra-Fusion paper)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .widths import _check_channels, scale_channels

__all__ = ["VGG", "VGG_CFGS"]


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
