"""Model Folding (Wang et al., ICLR 2025) as a baseline: k-means of a group's channels, each cluster merged.

Used through ``prune(..., method="folding", options=FoldingOptions(...))``. For each group, channel c's feature
row is the concatenation of its producer rows and biases, its BatchNorm gamma and beta (not the running
statistics) and its consumer in-columns. k-means splits the n channels into m = int(n (1 - s)) clusters
C_1..C_m (Hartigan's method by default: it moves single points while that lowers the within-cluster sum of
squares, which finds clearly lower minima than Lloyd's on these small groups). With A the (m, n) averaging map
(A_kc = 1 / |C_k| for c in C_k) and S the summing map (S_kc = 1):

- ``plain``: producer rows, biases and every BatchNorm parameter and running statistic <- A; consumer
  columns <- S. BatchNorm is not folded while merging, so every merged channel is still standardised by
  averaged statistics.
- ``ar`` (Fold-AR, data-free REPAIR): BatchNorm is first folded without its affine part (W / sigma,
  (b - mean) / sigma; the BN keeps gamma and beta with mean 0, var 1); producers and beta <- A; the merged
  gamma is mean(gamma over C_k) * sqrt(c / (1 + (c - 1) rho)), with c = |C_k| and rho the mean pairwise cosine
  of the members' feature rows (the std of an average of c channels of correlation rho is
  sqrt((1 + (c - 1) rho) / c) times theirs). Features are robustly scaled per column (median removed,
  divided by the inter-quartile range) before clustering.

After all groups are merged, every BatchNorm is folded (:func:`intrafusion.core.fold.fold_batchnorm`), so a
folded model has the same form as the other methods' results and every repair applies to it. A folding
record is a fusion record: the plan is the cluster assignment (P_ck = 1/n for c in C_k, so mu is uniform and
nu holds the cluster sizes / n), ``map_out`` = A, ``map_in`` = S, and ``kept`` holds each cluster's most
important member (the position its merged channel is written into).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["FOLDING_VARIANTS", "KMEANS", "FoldingOptions", "fold_bn_unscaled", "fold_group", "folding_features",
           "kmeans"]

FOLDING_VARIANTS = ("plain", "ar")
KMEANS = ("hartigan", "lloyd")
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class FoldingOptions:
    """How Model Folding clusters and merges (defaults: the authors' setting).

    Attributes
    ----------
    variant : {'plain', 'ar'}
        Plain folding, or Fold-AR (data-free moment repair of every merged channel).
    kmeans : {'hartigan', 'lloyd'}
    restarts : int
        k-means runs from different k-means++ starts; the lowest within-cluster sum of squares is kept.
    iterations : int
        Passes over the points per run.
    """

    variant: str = "plain"
    kmeans: str = "hartigan"
    restarts: int = 10
    iterations: int = 20

    def __post_init__(self):
        if self.variant not in FOLDING_VARIANTS:
            raise ValueError(f"unknown folding variant {self.variant!r}: choose one of {', '.join(FOLDING_VARIANTS)}")
        if self.kmeans not in KMEANS:
            raise ValueError(f"unknown k-means {self.kmeans!r}: choose one of {', '.join(KMEANS)}")
        if self.restarts < 1 or self.iterations < 1:
            raise ValueError("k-means needs restarts >= 1 and iterations >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


def _plus_plus(x: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ starting centres (each next centre drawn with probability ~ squared distance)."""
    n = len(x)
    idx = [int(rng.integers(n))]
    d = ((x - x[idx[0]]) ** 2).sum(1)
    for _ in range(1, m):
        total = d.sum()
        j = int(rng.choice(n, p=d / total)) if total > 0 else int(rng.integers(n))
        idx.append(j)
        d = np.minimum(d, ((x - x[j]) ** 2).sum(1))
    return x[idx].copy()


def _fill_empty(labels: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    for k in range(m):
        if not (labels == k).any():  # give an empty cluster a point from a cluster that has several
            counts = np.bincount(labels, minlength=m)
            donors = np.flatnonzero(counts[labels] > 1)
            labels[donors[rng.integers(len(donors))]] = k
    return labels


def _lloyd(x: np.ndarray, labels: np.ndarray, m: int, iterations: int, rng) -> np.ndarray:
    for _ in range(iterations):
        cents = np.stack([x[labels == k].mean(0) for k in range(m)])
        new = _fill_empty(((x[:, None] - cents[None]) ** 2).sum(-1).argmin(1), m, rng)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


def _hartigan(x: np.ndarray, labels: np.ndarray, m: int, iterations: int, rng) -> np.ndarray:
    """Move point i from cluster a to b when n_b/(n_b+1) |x_i - c_b|^2 < n_a/(n_a-1) |x_i - c_a|^2
    (the exact change of the within-cluster sum of squares), centres updated after every move."""
    counts = np.bincount(labels, minlength=m).astype(np.float64)
    sums = np.zeros((m, x.shape[1]))
    np.add.at(sums, labels, x)
    for _ in range(iterations):
        moved = 0
        for i in rng.permutation(len(x)):
            a = labels[i]
            if counts[a] <= 1:
                continue
            d = ((sums / counts[:, None] - x[i]) ** 2).sum(1)
            add = counts / (counts + 1) * d
            add[a] = np.inf
            b = int(add.argmin())
            if add[b] < counts[a] / (counts[a] - 1) * d[a] - 1e-12:
                labels[i] = b
                counts[a] -= 1
                counts[b] += 1
                sums[a] -= x[i]
                sums[b] += x[i]
                moved += 1
        if not moved:
            break
    return labels


def kmeans(x: np.ndarray, m: int, restarts: int = 10, iterations: int = 20, seed: int = 0,
           algorithm: str = "hartigan") -> np.ndarray:
    """Cluster labels (n,) in 0..m-1, every cluster non-empty, lowest within-cluster sum of squares of
    ``restarts`` runs (k-means++ starts, then Hartigan's or Lloyd's iterations)."""
    if algorithm not in KMEANS:
        raise ValueError(f"unknown k-means {algorithm!r}: choose one of {', '.join(KMEANS)}")
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if m >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    best, best_sse = None, np.inf
    for _ in range(restarts):
        cents = _plus_plus(x, m, rng)
        labels = _fill_empty(((x[:, None] - cents[None]) ** 2).sum(-1).argmin(1), m, rng)
        step = _hartigan if algorithm == "hartigan" else _lloyd
        labels = step(x, labels, m, iterations, rng)
        sse = sum(((x[labels == k] - x[labels == k].mean(0)) ** 2).sum() for k in range(m))
        if sse < best_sse:
            best, best_sse = labels.copy(), sse
    return best


def folding_features(slices) -> np.ndarray:
    """Model Folding's feature row of every channel: producer rows and biases, BN gamma and beta, consumer
    in-columns, concatenated (not normalised). Shape (n, d)."""
    parts = []
    for s in slices:
        mod, n = s.module, len(s.index)
        if s.side == "out":
            parts.append(mod.weight.detach()[s.index].reshape(n, -1))
            if mod.bias is not None:
                parts.append(mod.bias.detach()[s.index].reshape(n, -1))
        elif s.side == "in":
            parts.append(mod.weight.detach().transpose(0, 1)[s.index].reshape(n, -1))
        elif s.side == "norm" and mod.affine:
            parts.append(mod.weight.detach()[s.index].reshape(n, -1))
            parts.append(mod.bias.detach()[s.index].reshape(n, -1))
    return torch.cat(parts, 1).double().numpy()


@torch.no_grad()
def fold_bn_unscaled(graph) -> None:
    """Fold-AR's folding: W / sigma, (b - mean) / sigma into the layer before each BatchNorm, which keeps its
    gamma and beta with running mean 0 and variance 1 - eps (so it still divides by exactly 1)."""
    for module, node in graph.dg.module2node.items():
        if not isinstance(module, _BN):
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


def _robust(x: np.ndarray) -> np.ndarray:
    q1, med, q3 = np.percentile(x, [25, 50, 75], axis=0)
    iqr = q3 - q1
    return (x - med) / np.where(iqr > 0, iqr, 1.0)


def _ar_gain(x: np.ndarray, labels: np.ndarray, m: int) -> np.ndarray:
    """sqrt(c / (1 + (c - 1) rho)) per cluster, rho = mean pairwise cosine of the members' rows."""
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    gain = np.ones(m)
    for k in range(m):
        mem = np.flatnonzero(labels == k)
        c = len(mem)
        if c > 1:
            cos = xn[mem] @ xn[mem].T
            rho = (cos.sum() - np.trace(cos)) / (c * (c - 1))
            gain[k] = np.sqrt(c / max(1 + (c - 1) * rho, 1e-12))
    return gain


@torch.no_grad()
def fold_group(slices, m: int, importance: np.ndarray, options: FoldingOptions, seed: int = 0) -> dict:
    """Cluster one group's channels into m and merge every cluster into its most important member, in place.

    Returns
    -------
    dict
        kept (m,) ascending slot positions, pruned, labels (n,) (cluster k = the k-th kept slot), map_out (A),
        map_in (S), plan (n, m), mu, nu, features (the clustering rows), gain (Fold-AR's per-cluster factor).
    """
    x = folding_features(slices)
    n = len(x)
    raw = kmeans(_robust(x) if options.variant == "ar" else x, m, options.restarts, options.iterations, seed,
                 options.kmeans)
    # cluster k is written into its most important member; clusters ordered by that slot
    slot_of = np.array([max(np.flatnonzero(raw == k), key=lambda c: (importance[c], -c)) for k in range(m)])
    order = np.argsort(slot_of)
    relabel = np.empty(m, dtype=np.int64)
    relabel[order] = np.arange(m)
    labels = relabel[raw]
    kept = slot_of[order]
    summ = np.zeros((m, n))
    summ[labels, np.arange(n)] = 1.0
    avg = summ / summ.sum(1, keepdims=True)
    gain = _ar_gain(x, labels, m) if options.variant == "ar" else np.ones(m)
    _merge(slices, kept, avg, summ, gain, options.variant)
    return dict(kept=kept, pruned=np.setdiff1d(np.arange(n), kept), labels=labels, map_out=avg, map_in=summ,
                plan=summ.T / n, mu=np.full(n, 1.0 / n), nu=summ.sum(1) / n, features=x, gain=gain)


def _merge(slices, kept: np.ndarray, avg: np.ndarray, summ: np.ndarray, gain: np.ndarray, variant: str) -> None:
    avg_t, summ_t = torch.as_tensor(avg), torch.as_tensor(summ)
    kept_t = torch.as_tensor(kept)
    m = len(kept)

    def put(t, tmap, s, scale=None):
        flat = t[s.index].reshape(len(avg[0]), -1).double()
        new = tmap @ flat
        if scale is not None:
            new = new * torch.as_tensor(scale)[:, None]
        t[s.index[kept_t]] = new.reshape((m, *t[s.index].shape[1:])).to(t.dtype)

    for s in slices:
        mod = s.module
        if s.side == "out":
            put(mod.weight.data, avg_t, s)
            if mod.bias is not None:
                put(mod.bias.data, avg_t, s)
        elif s.side == "in":
            put(mod.weight.data.transpose(0, 1), summ_t, s)
        elif s.side == "norm":
            if mod.affine:
                put(mod.weight.data, avg_t, s, gain if variant == "ar" else None)
                put(mod.bias.data, avg_t, s)
            if variant == "plain":
                put(mod.running_mean, avg_t, s)
                put(mod.running_var, avg_t, s)
