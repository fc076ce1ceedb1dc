"""Small networks for oracle tests, and the duplicate-neuron construction."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyMLP(nn.Module):
    """x -> Linear(8, h) -> BN -> ReLU -> Linear(h, 5): group 0 is the hidden layer."""

    def __init__(self, h: int = 6, bn: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(8, h)
        self.bn = nn.BatchNorm1d(h) if bn else nn.Identity()
        self.fc2 = nn.Linear(h, 5)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


class TinyConv(nn.Module):
    """conv(3->c1)+BN+ReLU -> conv(c1->c2)+BN+ReLU -> pool -> linear: group 1 = conv1, group 0 = conv2."""

    def __init__(self, c1: int = 6, c2: int = 5):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, c1, 3, padding=1), nn.BatchNorm2d(c1)
        self.conv2, self.bn2 = nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2)
        self.linear = nn.Linear(c2, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


class TinyResNet(nn.Module):
    """stem -> two residual blocks on one stream of width c -> linear: the stream is one group."""

    def __init__(self, c: int = 6, mid: int = 4):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.a1, self.abn1 = nn.Conv2d(c, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid)
        self.a2, self.abn2 = nn.Conv2d(mid, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.b1, self.bbn1 = nn.Conv2d(c, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid)
        self.b2, self.bbn2 = nn.Conv2d(mid, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.linear = nn.Linear(c, 3)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.abn2(self.a2(F.relu(self.abn1(self.a1(h))))) + h)
        h = F.relu(self.bbn2(self.b2(F.relu(self.bbn1(self.b1(h))))) + h)
        return self.linear(F.adaptive_avg_pool2d(h, 1).flatten(1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (so folding is really tested)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


@torch.no_grad()
def duplicate(base: nn.Module, wide: nn.Module) -> nn.Module:
    """Load into ``wide`` (same class, some groups twice as wide) a copy of ``base`` whose group channels come
    in exact duplicate pairs: channel c and c + n have identical producer rows (and BN entries), and the
    consumers read each copy with half the original column. ``wide`` then computes exactly what ``base`` does.
    """
    sd = {}
    wide_sd = wide.state_dict()
    for k, v in base.state_dict().items():
        w, out = wide_sd[k], v.clone()
        if out.dim() >= 1 and w.shape[0] == 2 * out.shape[0]:
            out = torch.cat([out, out], 0)  # producer rows / BN entries: duplicated
        if out.dim() >= 2 and w.shape[1] == 2 * out.shape[1]:
            out = torch.cat([out / 2, out / 2], 1)  # consumer columns: halved, so the sum is unchanged
        if out.shape != w.shape:
            raise AssertionError(f"cannot duplicate {k}: {tuple(v.shape)} -> {tuple(w.shape)}")
        sd[k] = out
    wide.load_state_dict(sd)
    return wide.eval()


DUPLICATE_CASES = ("mlp", "conv", "residual")


def duplicate_oracle(case: str, inputs: int = 16):
    """(base, wide, group, x, importance): ``wide`` is ``base`` with the channels of ``group`` in exact duplicate
    pairs, and the importance makes the kept set hold exactly one copy of each pair (first copies first)."""
    import numpy as np

    make_base, make_wide, group, shape = {
        "mlp": (lambda: TinyMLP(6), lambda: TinyMLP(12), 0, (8,)),
        "conv": (lambda: TinyConv(6, 5), lambda: TinyConv(12, 5), 1, (3, 8, 8)),
        "residual": (lambda: TinyResNet(6, 4), lambda: TinyResNet(12, 4), 0, (3, 8, 8)),
    }[case]
    torch.manual_seed(0)
    base = randomize_bn(make_base(), 0)
    wide = duplicate(base, make_wide())
    x = torch.randn(inputs, *shape)
    return base, wide, group, x, {group: np.r_[np.full(6, 2.0), np.ones(6)]}


def seeded(cls, *args, seed: int = 0, **kw) -> nn.Module:
    """``cls(*args, **kw)`` with seeded weights and randomised BatchNorm statistics (:func:`randomize_bn`)."""
    torch.manual_seed(seed)
    return randomize_bn(cls(*args, **kw), seed)


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model``'s outputs on ``x`` in eval mode, without gradients."""
    with torch.no_grad():
        return model.eval()(x)
