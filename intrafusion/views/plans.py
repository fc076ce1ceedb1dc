"""Transport plans for the views: fast kept-target plans, labels, flows, a 2-D projection (Transport plan page).

No Streamlit here: the pages in ``pages/`` draw what these functions return.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ..core.groups import Group
from ..core.prune import GroupRecord, PreparedModel, TransportOptions
from ..core.transport import cost_matrix, feature_vectors, marginal, solve, transport_map
from .importance import importance_order, select_kept


def channel_features(prepared: PreparedModel, group: int) -> np.ndarray:
    """Feature vectors of all n channels of a group, as Intra-Fusion builds them (L2-normalised), (n, d)."""
    graph = prepared.graph
    return feature_vectors(graph.slices(graph.check_index(int(group)))).numpy()


def pairwise_cost(features: np.ndarray, p: float = 1.0) -> np.ndarray:
    """Cost between every pair of channels, (n, n): for kept targets the plan's cost is ``[:, kept]`` of this.

    Computed once per group and exponent, it lets a view change sparsity, criterion and every other transport
    option without recomputing distances (the slow part for p != 2).
    """
    x = torch.tensor(np.asarray(features), dtype=torch.float32)  # a copy: cached features are read-only
    return cost_matrix(x, x, p).double().numpy()


def kept_plan(group: Group, importance: np.ndarray, sparsity: float, criterion: str, options: TransportOptions,
              full_cost: np.ndarray) -> GroupRecord:
    """The record :func:`intrafusion.core.prune.plan_group` computes for kept targets, from a precomputed cost.

    Parameters
    ----------
    group : Group
    importance : array (n,)
        The criterion's scores (see :func:`importance_scores`).
    sparsity : float
    criterion : str
        Recorded only.
    options : TransportOptions
        ``target`` must be 'kept'; ``p`` must be the exponent ``full_cost`` was computed with.
    full_cost : array (n, n)
        From :func:`pairwise_cost`.

    Returns
    -------
    GroupRecord
        Same kept set, cost, marginals, plan and maps as ``plan_group`` (without feature vectors).
    """
    if options.target != "kept":
        raise ValueError("kept_plan needs kept targets; plan centroid targets with intrafusion.core.prune.plan_group")
    importance = np.asarray(importance, dtype=np.float64)
    t0 = time.perf_counter()
    kept, pruned = select_kept(importance, sparsity)
    if len(kept) < 1:
        raise ValueError(f"sparsity {sparsity} would remove all {len(importance)} channels of group {group.index}")
    cost = np.ascontiguousarray(full_cost[:, kept])
    mu = marginal(options.source_marginal, len(importance), importance)
    nu = marginal(options.target_marginal, len(kept), importance[kept])
    plan = solve(mu, nu, cost, options.solver, options.reg)
    map_out, map_in = transport_map(plan, mu, options.normalization)
    return GroupRecord(group=group, method="fusion", sparsity=float(sparsity), criterion=criterion,
                       importance=importance, kept=kept, pruned=pruned, options=options, cost=cost, plan=plan,
                       map_out=map_out, map_in=map_in, mu=mu, nu=nu, timings={"solve": time.perf_counter() - t0})


def source_labels(record: GroupRecord) -> list[str]:
    """A label per source channel, in channel order: ``"#12"`` for kept, ``"#12 ✂"`` for pruned."""
    pruned = set(int(i) for i in record.pruned)
    return [f"#{c} ✂" if c in pruned else f"#{c}" for c in range(record.n)]


def target_labels(record: GroupRecord) -> list[str]:
    """A label per target (plan column): ``"→#12"`` for kept channel 12, ``"centroid 3"`` for a centroid."""
    if record.options is not None and record.options.target == "centroids":
        return [f"centroid {t}" for t in range(record.plan.shape[1])]
    return [f"→#{int(c)}" for c in record.kept]


def target_order(record: GroupRecord) -> np.ndarray:
    """Plan columns in display order: kept targets by their channel's importance (most important first).

    With sources also ordered by importance, the kept channels' own mass then lies on the diagonal of the top
    block. Centroid targets are ordered by the importance-weighted mass they receive.
    """
    if record.options is not None and record.options.target == "centroids":
        received = record.importance @ record.plan
        return np.lexsort((np.arange(len(received)), -received))
    return importance_order(record.importance[record.kept])


@dataclass
class Flow:
    """Where part of one source channel's mass goes.

    Attributes
    ----------
    target : int
        Plan column.
    label : str
        Target label (see :func:`target_labels`).
    mass : float
        Plan entry P[s, t].
    share : float
        Percent of the source's mass (row sum) sent to this target.
    coefficient : float
        Map entry T[t, s] on the producer side (the weight of this source in the fused target).
    cost : float
        C[s, t]: distance between the source's and the target's feature vectors.
    cost_rank : int
        1 when this is the source's nearest target, 2 for the second nearest, ...
    """

    target: int
    label: str
    mass: float
    share: float
    coefficient: float
    cost: float
    cost_rank: int

    def to_dict(self) -> dict:
        return {"target": self.label, "mass": self.mass, "share %": self.share,
                "coefficient": self.coefficient, "cost": self.cost, "nearness rank": self.cost_rank}


def neuron_flows(record: GroupRecord, source: int, tol: float = 1e-12) -> list[Flow]:
    """Where source channel ``source`` sends its mass under the record's plan, largest first.

    Parameters
    ----------
    record : GroupRecord
        From :func:`intrafusion.core.prune.plan_group` (has a plan).
    source : int
        Channel index in the unpruned group.
    tol : float
        Masses at or below this are left out.

    Returns
    -------
    list of Flow
        Their masses sum to the plan row (up to ``tol``-sized omissions).
    """
    if record.plan is None:
        raise ValueError("this record has no transport plan (default pruning): plan the group with Intra-Fusion")
    if not 0 <= source < record.n:
        raise IndexError(f"source {source} does not exist: the group has {record.n} channels")
    row = record.plan[source]
    total = float(row.sum())
    costs = record.cost[source]
    rank = np.empty(len(costs), dtype=int)
    rank[np.argsort(costs, kind="mergesort")] = np.arange(1, len(costs) + 1)
    labels = target_labels(record)
    flows = [
        Flow(int(t), labels[t], float(row[t]), 100.0 * float(row[t]) / total if total > 0 else 0.0,
             float(record.map_out[t, source]), float(costs[t]), int(rank[t]))
        for t in np.flatnonzero(row > tol)
    ]
    flows.sort(key=lambda f: -f.mass)
    return flows


@dataclass
class Projection:
    """2-D coordinates of the sources and targets in the plane of the sources' two main directions.

    Attributes
    ----------
    sources : numpy.ndarray (n, 2)
    targets : numpy.ndarray (m, 2)
    explained : numpy.ndarray (2,)
        Fraction of the sources' variance along each axis.
    """

    sources: np.ndarray
    targets: np.ndarray
    explained: np.ndarray


def projection_2d(features: np.ndarray, target_features: np.ndarray | None = None) -> Projection:
    """Project feature vectors (and targets) on the first two principal components of the features.

    The components are fitted on ``features`` (centred on their mean); targets are projected with the same
    mean and axes, so a kept channel's target lands exactly on the channel. Axis signs are fixed (the largest
    coordinate of each axis is positive) so the picture does not flip between calls.

    Parameters
    ----------
    features : array (n, d)
    target_features : array (m, d), optional

    Returns
    -------
    Projection
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"features must be a non-empty (n, d) array, got shape {x.shape}")
    mean = x.mean(axis=0)
    xc = torch.from_numpy(x - mean)
    # Eigen-decomposition of the smaller of the Gram (n x n) and covariance (d x d) matrices, with torch: one GEMM
    # plus a small eigh (LAPACK's SVD of a 512 x 9216 matrix can take seconds on a busy 2-core machine).
    if xc.shape[0] <= xc.shape[1]:
        vals, vecs = torch.linalg.eigh(xc @ xc.T)
        vals, vecs = vals.flip(0).clamp_min(0), vecs.flip(1)
        k = min(2, int((vals > vals[0] * 1e-12).sum())) if vals[0] > 0 else 0
        axes_t = (xc.T @ vecs[:, :k]) / vals[:k].sqrt()
    else:
        vals, vecs = torch.linalg.eigh(xc.T @ xc)
        vals, vecs = vals.flip(0).clamp_min(0), vecs.flip(1)
        k = min(2, int((vals > vals[0] * 1e-12).sum())) if vals[0] > 0 else 0
        axes_t = vecs[:, :k]
    axes = np.zeros((2, x.shape[1]))
    axes[:k] = axes_t.T.numpy()
    for i in range(k):
        j = int(np.argmax(np.abs(axes[i])))
        if axes[i, j] < 0:
            axes[i] = -axes[i]
    total = float(vals.sum())
    explained = np.zeros(2)
    if total > 0:
        explained[:k] = vals[:k].numpy() / total
    xc = xc.numpy()
    y = np.asarray(target_features, dtype=np.float64) if target_features is not None else np.zeros((0, x.shape[1]))
    return Projection(xc @ axes.T, (y - mean) @ axes.T if len(y) else np.zeros((0, 2)), explained)


def flow_segments(record: GroupRecord, projection: Projection, sources: Iterable[int] | None = None,
                  min_share: float = 1.0) -> tuple[list[float | None], list[float | None], list[float]]:
    """Line segments from sources to the targets they send mass to, for one scatter trace.

    Parameters
    ----------
    record : GroupRecord
    projection : Projection
        From :func:`projection_2d` of ``record.features`` and ``record.target_features``.
    sources : iterable of int, optional
        Channels whose flows to draw (default: the pruned ones).
    min_share : float
        Flows carrying less than this percent of their source's mass are left out.

    Returns
    -------
    xs, ys : list
        Coordinates with None between segments (plotly draws one trace of many lines).
    masses : list of float
        Mass of each segment, in order.
    """
    if record.plan is None:
        raise ValueError("this record has no transport plan")
    chosen = record.pruned if sources is None else sources
    xs: list[float | None] = []
    ys: list[float | None] = []
    masses: list[float] = []
    for s in chosen:
        s = int(s)
        row = record.plan[s]
        total = row.sum()
        for t in np.flatnonzero(row > 0):
            if total <= 0 or 100.0 * row[t] / total < min_share:
                continue
            (x0, y0), (x1, y1) = projection.sources[s], projection.targets[t]
            xs += [float(x0), float(x1), None]
            ys += [float(y0), float(y1), None]
            masses.append(float(row[t]))
    return xs, ys, masses


def options_key(options: TransportOptions) -> tuple:
    """A hashable, ordered tuple of the options (a cache key)."""
    return tuple(sorted(options.to_dict().items()))


def warm_up() -> None:
    """Import and compile what the first transport plan needs (POT, the compiled p = 1 cost kernel).

    POT's import alone takes about 1.2 s of CPU and numba's about as much; the app calls this in a background
    thread after its first page is drawn, so the first visit of the Transport plan page does not pay for them.
    """
    from ..core.transport import cost_matrix, marginal, solve

    x = torch.rand(6, 5, dtype=torch.float32)
    cost = cost_matrix(x, x[:3], 1.0).double().numpy()
    solve(marginal("uniform", 6), marginal("uniform", 3), cost, "emd")
