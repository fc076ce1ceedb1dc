"""A small multilayer perceptron for teaching."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP"]

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
