"""Model Folding (Wang et al., ICLR 2025) as a baseline: k-means of a group's channels, clusters merged.

DRAFT (issue 9, engineer H3b): a standalone function, not yet wired into :func:`intrafusion.core.prune.prune`.

For each group, channel c's feature row is the concatenation of the producer rows and biases, the BatchNorm
gamma and beta, and the consumer in-columns. k-means (Lloyd, k-means++ starts, ``restarts`` x ``iterations``,
lowest inertia kept) splits the n channels into m = int(n (1 - s)) clusters. With A the (m, n) averaging map
(A_kc = 1/|C_k| for c in C_k) and S the summing map (S_kc = 1):

- ``plain``: producer rows, biases and every BatchNorm parameter and running statistic <- A; consumer
  columns <- S. BatchNorm is not folded.
- ``ar`` (Fold-AR): BatchNorm folded first (W / sigma, (b - mean) / sigma, running mean 0, var 1, gamma and
  beta kept); producers and beta <- A; gamma_k = mean(gamma) sqrt(c / (1 + (c - 1) rho)) with rho the mean
  pairwise cosine of the members' feature rows. Features are robustly scaled per column before clustering.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .groups import PruningGraph
from .prune import check_finite, kept_count

__all__ = ["FOLDING_VARIANTS", "FoldingOptions", "fold_model", "kmeans"]

FOLDING_VARIANTS = ("plain", "ar")


@dataclass(frozen=True)
class FoldingOptions:
    variant: str = "plain"
    restarts: int = 10
    iterations: int = 20
    seed: int = 0

    def __post_init__(self):
        if self.variant not in FOLDING_VARIANTS:
            raise ValueError(f"unknown folding variant {self.variant!r}: choose one of {', '.join(FOLDING_VARIANTS)}")


def kmeans(x: np.ndarray, m: int, restarts: int = 10, iterations: int = 20, seed: int = 0) -> np.ndarray:
    """Labels (n,) in 0..m-1, every cluster non-empty: Lloyd from k-means++ starts, best inertia of restarts."""
    rng = np.random.default_rng(seed)
    n = len(x)
    if m >= n:
        return np.arange(n)
    best, best_inertia = None, np.inf
    for _ in range(restarts):
        cents = x[[rng.integers(n)]]
        for _ in range(1, m):  # k-means++
            d = ((x[:, None] - cents[None]) ** 2).sum(-1).min(1)
            p = d / d.sum() if d.sum() > 0 else np.full(n, 1.0 / n)
            cents = np.vstack([cents, x[rng.choice(n, p=p)]])
        for _ in range(iterations):
            d = ((x[:, None] - cents[None]) ** 2).sum(-1)
            labels = d.argmin(1)
            for k in range(m):
                if not (labels == k).any():  # empty cluster: take the worst-served point of a shared cluster
                    shared = np.bincount(labels, minlength=m)[labels] > 1
                    far = np.where(shared, d[np.arange(n), labels], -1.0).argmax()
                    labels[far] = k
                    d[far] = 0
            cents = np.stack([x[labels == k].mean(0) for k in range(m)])
        inertia = ((x - cents[labels]) ** 2).sum()
        if inertia < best_inertia:
            best, best_inertia = labels.copy(), inertia
    return best


def _features(slices) -> np.ndarray:
    parts = []
    for s in slices:
        mod = s.module
        if s.side == "out":
            parts.append(mod.weight.detach()[s.index].reshape(len(s.index), -1))
            if mod.bias is not None:
                parts.append(mod.bias.detach()[s.index].reshape(len(s.index), -1))
        elif s.side == "in":
            parts.append(mod.weight.detach().transpose(0, 1)[s.index].reshape(len(s.index), -1))
        elif s.side == "norm" and mod.affine:
            parts.append(mod.weight.detach()[s.index].reshape(len(s.index), -1))
            parts.append(mod.bias.detach()[s.index].reshape(len(s.index), -1))
    return torch.cat(parts, 1).double().numpy()


@torch.no_grad()
def _fold_bn_unscaled(graph: PruningGraph) -> None:
    """Fold-AR's folding: W / sigma, (b - mean) / sigma into the conv; the BN keeps gamma, beta (mean 0, var 1)."""
    for module, node in graph.dg.module2node.items():
        if not isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            continue
        prev = [i for i in node.inputs if isinstance(i.module, nn.Module)][0].module
        sigma = torch.sqrt(module.running_var + module.eps)
        shape = (-1,) + (1,) * (prev.weight.dim() - 1)
        prev.weight.div_(sigma.view(shape))
        if prev.bias is None:
            prev.bias = nn.Parameter(torch.zeros_like(sigma))
        prev.bias.sub_(module.running_mean).div_(sigma)
        module.running_mean.zero_()
        module.running_var.fill_(1.0 - module.eps)


@torch.no_grad()
def _merge(slices, labels: np.ndarray, m: int, variant: str, x: np.ndarray) -> np.ndarray:
    n = len(labels)
    avg = np.zeros((m, n))
    avg[labels, np.arange(n)] = 1.0
    summ = torch.as_tensor(avg.copy())
    counts = avg.sum(1, keepdims=True)
    avg = torch.as_tensor(avg / counts)
    slots = np.array([np.flatnonzero(labels == k)[0] for k in range(m)])
    gain = np.ones(m)
    if variant == "ar":
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        for k in range(m):
            mem = np.flatnonzero(labels == k)
            c = len(mem)
            if c > 1:
                cos = xn[mem] @ xn[mem].T
                rho = (cos.sum() - np.trace(cos)) / (c * (c - 1))
                gain[k] = np.sqrt(c / max(1 + (c - 1) * rho, 1e-12))

    def put(t, tmap, s, scale=None):
        flat = t[s.index].reshape(n, -1).double()
        new = tmap @ flat
        if scale is not None:
            new = new * torch.as_tensor(scale)[:, None]
        t[s.index[torch.as_tensor(slots)]] = new.reshape((m, *t[s.index].shape[1:])).to(t.dtype)

    for s in slices:
        mod = s.module
        if s.side == "out":
            put(mod.weight.data, avg, s)
            if mod.bias is not None:
                put(mod.bias.data, avg, s)
        elif s.side == "in":
            put(mod.weight.data.transpose(0, 1), summ, s)
        elif s.side == "norm":
            if mod.affine:
                put(mod.weight.data, avg, s, gain if variant == "ar" else None)
                put(mod.bias.data, avg, s)
            if variant == "plain":
                put(mod.running_mean, avg, s)
                put(mod.running_var, avg, s)
    return np.setdiff1d(np.arange(n), slots)


def _robust(x: np.ndarray) -> np.ndarray:
    q1, med, q3 = np.percentile(x, [25, 50, 75], axis=0)
    iqr = q3 - q1
    return (x - med) / np.where(iqr > 0, iqr, 1.0)


def fold_model(model: nn.Module, example_inputs: torch.Tensor, groups, sparsity: float,
               options: FoldingOptions | None = None) -> tuple[nn.Module, list[np.ndarray]]:
    """Fold ``groups`` ('all' or indices) of a copy of ``model``: (folded model, cluster labels per group)."""
    options = options or FoldingOptions()
    check_finite(model)
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(True)
    graph = PruningGraph(work, example_inputs)
    if options.variant == "ar":
        _fold_bn_unscaled(graph)
    indices = list(range(len(graph))) if groups == "all" else [int(g) for g in np.atleast_1d(groups)]
    all_labels = []
    for index in indices:
        if not graph.groups[index].prunable:
            continue
        n = graph.channels(index)
        m = kept_count(n, sparsity)
        if m < 1:
            raise ValueError(f"sparsity {sparsity} would remove all {n} channels of group {index}")
        slices = graph.slices(index)
        x = _features(slices)
        data = _robust(x) if options.variant == "ar" else x
        labels = kmeans(data, m, options.restarts, options.iterations, options.seed + index)
        all_labels.append(labels)
        if m < n:
            pruned = _merge(slices, labels, m, options.variant, x)
            graph.prune(index, pruned.tolist())
    return graph.model, all_labels
