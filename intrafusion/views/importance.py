"""Importance scores of a group and how criteria agree (the Importance page).

No Streamlit here: the pages in ``pages/`` draw what these functions return.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..core.importance import CRITERIA, accumulate_gradients, group_importance
from ..core.prune import PreparedModel, kept_count


def importance_scores(prepared: PreparedModel, group: int, criterion: str = "l1", *, taylor_batches=None,
                      seed: int = 0) -> np.ndarray:
    """Importance of every channel of one group, exactly as :func:`intrafusion.core.prune.plan_group` scores it.

    Parameters
    ----------
    prepared : PreparedModel
        Folded copy (see :func:`intrafusion.core.prune.prepare`). Only the ``taylor`` criterion writes to it
        (gradients, cleared afterwards): serialise such calls on a shared object.
    group : int
        Paper numbering (0 nearest the classifier).
    criterion : {'l1', 'l2', 'taylor', 'lamp', 'random', 'l1-raw'}
    taylor_batches : list of (inputs, labels), optional
        Required for ``taylor``.
    seed : int
        Seed of the ``random`` criterion.

    Returns
    -------
    numpy.ndarray
        Shape (n,), float64, mean 1, higher = more important.
    """
    graph = prepared.graph
    index = graph.check_index(int(group))
    if criterion not in CRITERIA:
        raise ValueError(f"unknown importance criterion {criterion!r}: choose one of {', '.join(CRITERIA)}")
    tp_group = graph.tp_group(index)
    if criterion == "l1-raw" and prepared.raw_l1 is not None:
        return np.asarray(prepared.raw_l1[index], dtype=np.float64)
    if criterion == "taylor":
        if taylor_batches is None:
            raise ValueError("the taylor criterion needs data: pass taylor_batches (a few (inputs, labels) batches)")
        accumulate_gradients(graph.model, taylor_batches)
        try:
            return group_importance(tp_group, criterion, seed=seed).numpy()
        finally:
            graph.model.zero_grad(set_to_none=True)
    return group_importance(tp_group, criterion, seed=seed).numpy()


def importance_order(importance: np.ndarray) -> np.ndarray:
    """Channel indices from most to least important (ties: lower index first, as pruning breaks them)."""
    imp = np.asarray(importance, dtype=np.float64)
    return np.lexsort((np.arange(len(imp)), -imp))


def select_kept(importance: np.ndarray, sparsity: float) -> tuple[np.ndarray, np.ndarray]:
    """The kept and pruned channels at ``sparsity`` (both ascending), the same sets pruning uses.

    Parameters
    ----------
    importance : array (n,)
    sparsity : float in [0, 1)
        m = int(n (1 - s)) channels are kept.

    Returns
    -------
    kept, pruned : numpy.ndarray of int
    """
    order = importance_order(importance)
    m = kept_count(len(order), sparsity)
    return np.sort(order[:m]), np.sort(order[m:])


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score vectors (NaN when either is constant)."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


@dataclass
class Agreement:
    """How much importance criteria agree on one group.

    Attributes
    ----------
    criteria : list of str
    m : int
        Channels kept at the sparsity compared.
    overlap : numpy.ndarray (k, k)
        Percent of the m kept channels that criteria i and j both keep (100 on the diagonal).
    rank_correlation : numpy.ndarray (k, k)
        Spearman correlation of the full score vectors.
    kept_by_all, kept_by_none, n : int
        Channels every criterion keeps, no criterion keeps, and the group's size.
    kept : dict
        Criterion -> its kept channels.
    """

    criteria: list[str]
    m: int
    n: int
    overlap: np.ndarray
    rank_correlation: np.ndarray
    kept_by_all: int
    kept_by_none: int
    kept: dict[str, np.ndarray]


def criteria_agreement(scores: Mapping[str, np.ndarray], sparsity: float) -> Agreement:
    """Compare the kept sets and rankings of several criteria on the same group.

    Parameters
    ----------
    scores : mapping criterion -> importance array (n,)
    sparsity : float in [0, 1)

    Returns
    -------
    Agreement
    """
    names = list(scores)
    if not names:
        raise ValueError("give at least one criterion to compare")
    sizes = {len(v) for v in scores.values()}
    if len(sizes) != 1:
        raise ValueError(f"importance vectors of different sizes: {sorted(sizes)}")
    n = sizes.pop()
    kept = {c: select_kept(scores[c], sparsity)[0] for c in names}
    m = kept_count(n, sparsity)
    k = len(names)
    overlap = np.zeros((k, k))
    corr = np.zeros((k, k))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            common = len(np.intersect1d(kept[a], kept[b]))
            overlap[i, j] = 100.0 * common / m if m else 100.0
            corr[i, j] = spearman(scores[a], scores[b])
    counts = np.zeros(n, dtype=int)
    for c in names:
        counts[kept[c]] += 1
    return Agreement(names, m, n, overlap, corr, int((counts == k).sum()), int((counts == 0).sum()), kept)
