"""Computations behind the explorer app's views (plain functions and dataclasses, no Streamlit).

The app's pages only draw; everything they show is computed here or elsewhere in :mod:`intrafusion`:

- models:     :func:`groups_table`, :func:`group_dot` (which layers a group couples)
- importance: :func:`importance_scores`, :func:`select_kept`, :func:`importance_order`, :func:`criteria_agreement`
- transport:  :func:`channel_features`, :func:`pairwise_cost`, :func:`kept_plan` (fast redraws),
  :func:`source_labels`, :func:`target_labels`, :func:`target_order`, :func:`neuron_flows`,
  :func:`projection_2d`, :func:`flow_segments`
- sweeps:     :class:`SweepJob` and :func:`run_job` (resumable, stoppable between rows), :func:`sweep_cell`,
  :func:`sweep_curves`, :func:`rows_to_csv`, :func:`distances_by_label`
- training:   :class:`FineTuneJob`, :func:`catch_up`
- export:     :func:`measure_latency`, :func:`model_report`, :func:`before_after_report`, :func:`export_model`
- teaching:   :class:`ToyNet`, :func:`toy_network`, :func:`toy_prune`, :func:`toy_errors` (the Learn page)
"""

from __future__ import annotations

import copy
import csv
import io
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..core.groups import Group
from ..core.importance import CRITERIA, accumulate_gradients, group_importance
from ..core.prune import GroupRecord, PreparedModel, TransportOptions, kept_count
from ..core.transport import cost_matrix, feature_vectors, marginal, solve, transport_map
from ..evaluate import count_macs_params, evaluate, predict_logits
from ..experiments.sweep import SweepRow, method_label, sweep

__all__ = [
    "Agreement",
    "Flow",
    "FineTuneJob",
    "Projection",
    "SweepJob",
    "ToyNet",
    "ToyResult",
    "before_after_report",
    "catch_up",
    "channel_features",
    "criteria_agreement",
    "distances_by_label",
    "export_model",
    "flow_segments",
    "group_dot",
    "groups_table",
    "importance_order",
    "importance_scores",
    "kept_plan",
    "measure_latency",
    "model_report",
    "neuron_flows",
    "options_key",
    "pairwise_cost",
    "projection_2d",
    "recovery_summary",
    "rows_table",
    "rows_to_csv",
    "run_job",
    "select_kept",
    "source_labels",
    "spearman",
    "sweep_cell",
    "sweep_curves",
    "target_labels",
    "target_order",
    "toy_errors",
    "toy_network",
    "toy_prune",
]


# ------------------------------------------------------------------------------------------------ models


def groups_table(groups: Iterable[Group]) -> list[dict]:
    """One row per group for a table: index, size, producers, consumers, norms, residual.

    Parameters
    ----------
    groups : iterable of Group

    Returns
    -------
    list of dict
        Keys ``group, channels, producers, consumers, batchnorms, residual, layers``; layer lists are
        joined with ", ".
    """
    rows = []
    for g in groups:
        rows.append({
            "group": g.index,
            "channels": g.n,
            "producers": ", ".join(g.producers),
            "consumers": ", ".join(g.consumers),
            "batchnorms": ", ".join(g.norms),
            "residual": bool(g.residual),
            "layers": len(g.producers) + len(g.consumers),
        })
    return rows


def _dot_id(name: str) -> str:
    return '"' + name.replace('"', "'") + '"'


def group_dot(group: Group) -> str:
    """A Graphviz DOT diagram of the layers one group couples.

    Producers (whose output channels are the group's channels) point at a node standing for the n shared
    channels; that node points at the consumers (whose input channels they are). A residual stream says so
    (its producers are added together).

    Parameters
    ----------
    group : Group

    Returns
    -------
    str
        DOT source, e.g. for ``st.graphviz_chart``.
    """
    kind = "residual stream (producers are added)" if group.residual else "channels"
    center = f"group {group.index}\\n{group.n} {kind}"
    lines = [
        "digraph G {",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
        f'  center [label="{center}", shape=ellipse, fillcolor="#ffd58a"];',
    ]
    for p in group.producers:
        lines.append(f'  {_dot_id("out:" + p)} [label="{p}", fillcolor="#cfe3ff"];')
        lines.append(f'  {_dot_id("out:" + p)} -> center [label="out-channels"];')
    for c in group.consumers:
        lines.append(f'  {_dot_id("in:" + c)} [label="{c}", fillcolor="#d7f5d0"];')
        lines.append(f'  center -> {_dot_id("in:" + c)} [label="in-channels"];')
    if group.norms:
        label = "BatchNorm (folded into the producers)\\n" + ", ".join(group.norms)
        lines.append(f'  norms [label="{label}", fillcolor="#eeeeee"];')
        lines.append("  center -> norms [style=dashed, arrowhead=none];")
    lines.append("}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- importance


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
    criterion : {'l1', 'l2', 'taylor', 'lamp', 'random'}
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


# --------------------------------------------------------------------------------------------- transport


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


# ------------------------------------------------------------------------------------------------ sweeps


Cell = tuple[int, float, str, "str | None"]


@dataclass
class SweepJob:
    """A sweep that can be run a row at a time, stopped between rows, and resumed.

    The rows computed so far are kept whatever happens (stop, error, the page being left).

    Attributes
    ----------
    cells : list of (group, sparsity, method, normalization)
        See :func:`intrafusion.experiments.sweep.sweep_cells`.
    criterion : str
    settings : dict
        What was asked for (shown with the results).
    rows : list of SweepRow
    stopped : bool
        Set by :meth:`stop`: no further row is computed.
    error : str or None
        The message of the error that ended the job, if any.
    """

    cells: list[Cell]
    criterion: str
    settings: dict = field(default_factory=dict)
    rows: list[SweepRow] = field(default_factory=list)
    stopped: bool = False
    error: str | None = None

    @property
    def total(self) -> int:
        return len(self.cells)

    @property
    def done(self) -> bool:
        return len(self.rows) >= len(self.cells)

    @property
    def active(self) -> bool:
        """True while rows remain and the job was neither stopped nor failed."""
        return not self.done and not self.stopped and self.error is None

    @property
    def progress(self) -> float:
        return len(self.rows) / len(self.cells) if self.cells else 1.0

    @property
    def next_cell(self) -> Cell | None:
        return self.cells[len(self.rows)] if not self.done else None

    def stop(self) -> None:
        self.stopped = True

    @property
    def status(self) -> str:
        if self.error:
            return f"failed after {len(self.rows)} of {self.total} cells: {self.error}"
        if self.done:
            return f"done: {self.total} cells"
        if self.stopped:
            return f"stopped after {len(self.rows)} of {self.total} cells"
        return f"running: {len(self.rows)} of {self.total} cells"


def run_job(job: SweepJob, compute: Callable[[Cell], SweepRow], on_row: Callable[[SweepRow], None] | None = None,
            max_rows: int | None = None) -> int:
    """Compute the job's remaining cells one by one until done, stopped, failed or ``max_rows`` reached.

    ``job.stopped`` is checked before every cell, so a ``stop()`` from ``on_row`` (or from another thread)
    ends the job between rows. Each row is appended to ``job.rows`` before ``on_row`` sees it, so an
    exception raised by ``on_row`` loses nothing.

    Parameters
    ----------
    job : SweepJob
    compute : callable cell -> SweepRow
        E.g. a cached wrapper of :func:`sweep_cell`.
    on_row : callable, optional
        Called after each new row (draw it).
    max_rows : int, optional
        Compute at most this many rows in this call.

    Returns
    -------
    int
        Rows added by this call.
    """
    added = 0
    while job.active and (max_rows is None or added < max_rows):
        cell = job.next_cell
        try:
            row = compute(cell)
        except (ValueError, IndexError, RuntimeError) as exc:
            job.error = str(exc)
            raise
        job.rows.append(row)
        added += 1
        if on_row is not None:
            on_row(row)
    return added


def sweep_cell(model: nn.Module, example_inputs: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor,
               cell: Cell, criterion: str = "l1", options: TransportOptions | None = None, *,
               taylor_batches=None, reference_logits: torch.Tensor | None = None, seed: int = 0,
               keep_distances: bool = True) -> SweepRow:
    """One cell of :func:`intrafusion.experiments.sweep.sweep`: prune one group at one sparsity with one method,
    evaluate.

    Parameters
    ----------
    model, example_inputs, inputs, labels
        As in :func:`intrafusion.experiments.sweep.sweep` (``model`` is never mutated).
    cell : (group, sparsity, method, normalization)
        ``normalization`` is None for default pruning.
    criterion, options, taylor_batches, reference_logits, seed, keep_distances
        As in :func:`intrafusion.experiments.sweep.sweep`.

    Returns
    -------
    SweepRow
    """
    g, s, method, norm = cell
    rows = sweep(model, example_inputs, inputs, labels, [int(g)], [float(s)], criterion, methods=[method],
                 normalizations=[norm or "paper"], options=options, taylor_batches=taylor_batches, seed=seed,
                 keep_distances=keep_distances, reference_logits=reference_logits)
    return next(iter(rows))


@dataclass
class Curve:
    """Accuracy against sparsity for one (group, method label)."""

    group: int
    label: str
    sparsities: list[float]
    accuracies: list[float]
    logit_distances: list[float]


def sweep_curves(rows: Iterable[SweepRow]) -> list[Curve]:
    """Group rows into curves (one per group and method label), points sorted by sparsity."""
    by: dict[tuple[int, str], list[SweepRow]] = {}
    for r in rows:
        by.setdefault((r.group, r.label), []).append(r)
    curves = []
    for (g, label), rs in by.items():
        rs = sorted(rs, key=lambda r: r.sparsity)
        curves.append(Curve(g, label, [r.sparsity for r in rs], [r.accuracy for r in rs],
                            [r.logit_distance for r in rs]))
    return curves


_CSV_FIELDS = ("group", "n", "sparsity", "kept", "method", "normalization", "label", "criterion", "accuracy",
               "logit_distance", "agreement", "params", "seconds", "eval_seconds")


def rows_table(rows: Iterable[SweepRow]) -> list[dict]:
    """The rows as dicts (column order of the CSV)."""
    out = []
    for r in rows:
        d = r.to_dict()
        out.append({k: d.get(k) for k in _CSV_FIELDS})
    return out


def rows_to_csv(rows: Iterable[SweepRow]) -> str:
    """The rows as CSV text with a header (``normalization`` is empty for default pruning)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(_CSV_FIELDS), lineterminator="\n")
    writer.writeheader()
    for d in rows_table(rows):
        writer.writerow({k: ("" if v is None else v) for k, v in d.items()})
    return buf.getvalue()


def distances_by_label(rows: Iterable[SweepRow], group: int, sparsity: float) -> dict[str, np.ndarray]:
    """Per-sample logit distances of every method at one (group, sparsity) cell (rows need ``distances``)."""
    out = {}
    for r in rows:
        if r.group == group and math.isclose(r.sparsity, sparsity) and r.distances is not None:
            out[r.label] = np.asarray(r.distances)
    return out


# ---------------------------------------------------------------------------------------------- training


@dataclass
class FineTuneJob:
    """Fine-tuning of several pruned models, one after the other, resumable per model and stoppable.

    Attributes
    ----------
    labels : list of str
        The models to fine-tune, in order (e.g. 'default', 'fusion (paper)').
    epochs : int
    histories : dict label -> list of EpochResult
        Epochs recorded so far (epoch 0 = before fine-tuning).
    finished : set of str
        Labels whose fine-tuning ran to its end (or to a stop).
    stopped : bool
    error : str or None
    """

    labels: list[str]
    epochs: int
    settings: dict = field(default_factory=dict)
    histories: dict[str, list] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    stopped: bool = False
    error: str | None = None
    models: dict[str, nn.Module] = field(default_factory=dict, repr=False)

    @property
    def pending(self) -> list[str]:
        return [lb for lb in self.labels if lb not in self.finished]

    @property
    def active(self) -> bool:
        return bool(self.pending) and not self.stopped and self.error is None

    @property
    def progress(self) -> float:
        total = len(self.labels) * (self.epochs + 1)
        done = sum(min(len(self.histories.get(lb, [])), self.epochs + 1) for lb in self.labels)
        return done / total if total else 1.0

    def stop(self) -> None:
        self.stopped = True

    def run(self, fine_tune: Callable, on_epoch: Callable[[str, object], None] | None = None) -> None:
        """Fine-tune every pending model with ``fine_tune(label, on_epoch, should_stop) -> (model, history)``.

        A model whose run was interrupted (an exception out of ``on_epoch``) starts again from epoch 0 the
        next time; stopping keeps the epochs recorded so far.
        """
        for label in self.pending:
            if not self.active:
                return
            self.histories[label] = []

            def record(result, label=label):
                self.histories[label].append(result)
                if on_epoch is not None:
                    on_epoch(label, result)

            try:
                model, _ = fine_tune(label, record, lambda: self.stopped)
            except (ValueError, RuntimeError) as exc:
                self.error = str(exc)
                raise
            self.models[label] = model
            self.finished.add(label)


def catch_up(reference: Sequence[float], other: Sequence[float]) -> list[int | None]:
    """For every epoch e of ``reference``, the first epoch at which ``other`` reaches reference[e].

    Used to say how much fine-tuning fusion saves: with ``reference`` = Intra-Fusion's accuracies per epoch
    and ``other`` = default pruning's, ``catch_up(...)[0]`` is the number of epochs default pruning needs to
    reach what Intra-Fusion has before any fine-tuning (None: not within the epochs run).

    Parameters
    ----------
    reference, other : sequences of accuracy per epoch (index = epoch)

    Returns
    -------
    list of int or None
    """
    out: list[int | None] = []
    for acc in reference:
        hit = next((e for e, a in enumerate(other) if a >= acc), None)
        out.append(hit)
    return out


def recovery_summary(default: Sequence[float], fusion: Sequence[float], label: str = "Intra-Fusion") -> str:
    """One or two sentences on how much fine-tuning fusion saves (or costs) compared with default pruning.

    Parameters
    ----------
    default, fusion : sequences of test accuracy per epoch (index 0 = right after pruning)
    label : str
        How to name the fusion run.

    Returns
    -------
    str
    """
    if not default or not fusion:
        return ""
    d0, f0 = default[0], fusion[0]
    epochs = min(len(default), len(fusion)) - 1
    if f0 > d0:
        k = catch_up([f0], default)[0]
        first = (f"{label} starts at {f0:.2f}%, default pruning at {d0:.2f}%: default pruning needs {k} epoch(s) "
                 "of fine-tuning to reach where fusion starts." if k is not None else
                 f"{label} starts at {f0:.2f}%, default pruning at {d0:.2f}%: default pruning does not reach that "
                 f"within {len(default) - 1} epoch(s) (best {max(default):.2f}%).")
    elif f0 < d0:
        k = catch_up([d0], fusion)[0]
        first = (f"Here default pruning starts higher ({d0:.2f}% vs {f0:.2f}% for {label}); fusion needs {k} "
                 "epoch(s) to catch up." if k is not None else
                 f"Here default pruning starts higher ({d0:.2f}% vs {f0:.2f}% for {label}) and fusion does not "
                 f"catch up within {len(fusion) - 1} epoch(s).")
    else:
        first = f"Both start at {d0:.2f}%."
    if epochs >= 1:
        first += f" After {epochs} epoch(s): default {default[epochs]:.2f}%, {label} {fusion[epochs]:.2f}%."
    return first


# ------------------------------------------------------------------------------------------------ export


@torch.inference_mode()
def measure_latency(model: nn.Module, example_inputs: torch.Tensor, batch_size: int = 1, repeats: int = 30,
                    warmup: int = 3, budget_s: float = 1.0) -> dict:
    """Wall-clock time of one forward pass (CPU, current torch thread count), median over repeats.

    Parameters
    ----------
    model : nn.Module
        Run in eval mode (its mode is restored).
    example_inputs : torch.Tensor
        One input; it is repeated to ``batch_size``.
    batch_size : int
    repeats : int
        At most this many timed passes...
    warmup : int
        ...after this many untimed ones.
    budget_s : float
        ...and no more than about this many seconds in all (at least 3 timed passes).

    Returns
    -------
    dict
        ``batch_size, repeats, median_ms, p10_ms, p90_ms, threads``.
    """
    x = example_inputs[:1].expand(batch_size, *example_inputs.shape[1:]).contiguous()
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            model(x)
        times = []
        start = time.perf_counter()
        while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
            t0 = time.perf_counter()
            model(x)
            times.append(1000.0 * (time.perf_counter() - t0))
    finally:
        model.train(was_training)
    times.sort()
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return {"batch_size": batch_size, "repeats": len(times), "median_ms": statistics.median(times),
            "p10_ms": q[0], "p90_ms": q[-1], "threads": torch.get_num_threads()}


def model_report(model: nn.Module, example_inputs: torch.Tensor, inputs: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None, *, latency: bool = True, batch_sizes: Sequence[int] = (1, 64),
                 reference_logits: torch.Tensor | None = None) -> dict:
    """Accuracy, parameters, MACs and measured latency of one model.

    Parameters
    ----------
    model : nn.Module
        Not changed (MACs are counted on a copy), so a shared cached model can be measured.
    example_inputs : torch.Tensor
    inputs, labels : torch.Tensor, optional
        Test data; without them ``accuracy`` is None.
    latency : bool
        Measure latency at each of ``batch_sizes``.
    reference_logits : torch.Tensor, optional
        The unpruned model's logits on ``inputs``: adds ``logit_distance`` and ``agreement``.

    Returns
    -------
    dict
    """
    macs, params = count_macs_params(copy.deepcopy(model), example_inputs)  # the counter hooks the model: a copy
    out: dict = {"params": params, "macs": macs, "accuracy": None}
    if inputs is not None and labels is not None:
        ev = evaluate(model, inputs, labels, reference_logits)
        out["accuracy"] = ev.accuracy
        out["test_samples"] = len(labels)
        if reference_logits is not None:
            out["logit_distance"] = ev.logit_distance
            out["agreement"] = ev.agreement
    if latency:
        out["latency"] = {f"batch_{b}": measure_latency(model, example_inputs, batch_size=b) for b in batch_sizes}
    return out


def before_after_report(original: nn.Module, pruned: nn.Module, example_inputs: torch.Tensor,
                        inputs: torch.Tensor | None = None, labels: torch.Tensor | None = None, *,
                        settings: Mapping | None = None, latency: bool = True,
                        batch_sizes: Sequence[int] = (1, 64)) -> dict:
    """Before/after report of a pruning: accuracy, parameters, MACs, measured latency and their changes.

    Returns
    -------
    dict
        ``{"settings", "before", "after", "change"}``; ``change`` holds ratios (after / before) for params,
        MACs and median latencies, and the accuracy difference in points.
    """
    ref = predict_logits(original, inputs) if inputs is not None else None
    before = model_report(original, example_inputs, inputs, labels, latency=latency, batch_sizes=batch_sizes)
    after = model_report(pruned, example_inputs, inputs, labels, latency=latency, batch_sizes=batch_sizes,
                         reference_logits=ref)
    change: dict = {
        "params_ratio": after["params"] / before["params"] if before["params"] else None,
        "macs_ratio": after["macs"] / before["macs"] if before["macs"] else None,
        "accuracy_points": (after["accuracy"] - before["accuracy"]) if before["accuracy"] is not None else None,
    }
    if latency:
        for key in before["latency"]:
            b, a = before["latency"][key]["median_ms"], after["latency"][key]["median_ms"]
            change[f"latency_{key}_ratio"] = a / b if b > 0 else None
    return {"settings": dict(settings or {}), "before": before, "after": after, "change": change}


def export_model(model: nn.Module, config, metadata: Mapping | None = None) -> tuple[bytes, dict]:
    """Safetensors bytes of a (pruned) model and the architecture config stored in them.

    The config is the one :func:`intrafusion.models.checkpoint.load_model` rebuilds the model from (explicit
    per-layer channels for a pruned VGG/ResNet, hidden sizes for an MLP).

    Returns
    -------
    data : bytes
    config : dict
    """
    from ..models.checkpoint import model_to_bytes, read_state_dict

    data = model_to_bytes(model, config, metadata)
    _, meta = read_state_dict(data)
    return data, meta["arch_config"]


# -------------------------------------------------------------------------------------------------- toy


@dataclass
class ToyNet:
    """A one-hidden-layer ReLU network on 2-D inputs: f(x) = sum_i v_i relu(w_i . x + b_i).

    Each hidden neuron is a point ``w_i`` in the plane (its incoming weights); ``v_i`` is its outgoing weight.

    Attributes
    ----------
    w : numpy.ndarray (n, 2)
    b : numpy.ndarray (n,)
    v : numpy.ndarray (n,)
    names : list of str
        A name per neuron (twins share a letter: ``A``, ``A'``).
    """

    w: np.ndarray
    b: np.ndarray
    v: np.ndarray
    names: list[str]

    @property
    def n(self) -> int:
        return len(self.b)

    def hidden(self, xs: np.ndarray) -> np.ndarray:
        """Hidden activations, (N, n)."""
        return np.maximum(np.asarray(xs, dtype=np.float64) @ self.w.T + self.b, 0.0)

    def contributions(self, xs: np.ndarray) -> np.ndarray:
        """Each neuron's contribution v_i relu(w_i . x + b_i) to the output, (N, n)."""
        return self.hidden(xs) * self.v

    def __call__(self, xs: np.ndarray) -> np.ndarray:
        return self.contributions(xs).sum(axis=1)

    def features(self) -> np.ndarray:
        """Feature vectors as Intra-Fusion builds them: incoming row and outgoing column, L2-normalised."""
        x = np.concatenate([self.w, self.v[:, None]], axis=1)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def importance(self) -> np.ndarray:
        """l1 importance: mean over the two layers of sum |w|, divided by its mean (as the library does)."""
        score = (np.abs(self.w).sum(axis=1) + np.abs(self.v)) / 2.0
        return score / score.mean()


def toy_network(n_unique: int = 3, copies: int = 2, jitter: float = 0.0, seed: int = 0) -> ToyNet:
    """A toy network whose neurons come in groups of ``copies`` near-identical twins.

    Parameters
    ----------
    n_unique : int
        Distinct neurons (letters A, B, ...).
    copies : int
        How many times each appears (2: every neuron has a twin; 1: no duplicates).
    jitter : float
        Standard deviation of the noise added to the twins' weights (0: exact duplicates).
    seed : int

    Returns
    -------
    ToyNet
        Neurons ordered A, A', B, B', ... (twins adjacent).
    """
    if n_unique < 1 or copies < 1:
        raise ValueError("need at least one neuron and one copy")
    rng = np.random.default_rng(seed)
    angles = rng.uniform(0, 2 * np.pi, n_unique)
    radii = rng.uniform(0.6, 1.6, n_unique)
    w0 = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    b0 = rng.uniform(-0.5, 0.5, n_unique)
    v0 = rng.choice([-1.0, 1.0], n_unique) * rng.uniform(0.5, 1.5, n_unique)
    w, b, v, names = [], [], [], []
    for i in range(n_unique):
        letter = chr(ord("A") + i) if i < 26 else f"N{i}"
        for k in range(copies):
            noise = jitter if k > 0 else 0.0
            w.append(w0[i] + noise * rng.standard_normal(2))
            b.append(b0[i] + noise * rng.standard_normal())
            v.append(v0[i] + noise * rng.standard_normal())
            names.append(letter + "'" * k)
    return ToyNet(np.array(w), np.array(b), np.array(v), names)


@dataclass
class ToyResult:
    """A pruned toy network and how it was obtained.

    Attributes
    ----------
    net : ToyNet
        The pruned network (m neurons, named after the kept ones).
    method : str
        'default', 'fusion (paper)' or 'fusion (function-preserving)'.
    kept, pruned : numpy.ndarray
    plan, cost : numpy.ndarray (n, m) or None
    map_out, map_in : numpy.ndarray (m, n) or None
    """

    net: ToyNet
    method: str
    kept: np.ndarray
    pruned: np.ndarray
    plan: np.ndarray | None = None
    cost: np.ndarray | None = None
    map_out: np.ndarray | None = None
    map_in: np.ndarray | None = None


def toy_prune(net: ToyNet, sparsity: float = 0.5, method: str = "fusion", normalization: str = "paper",
              keep: Sequence[int] | None = None, p: float = 1.0) -> ToyResult:
    """Prune the toy network's hidden layer with default pruning or Intra-Fusion (the library's OT steps).

    Parameters
    ----------
    net : ToyNet
    sparsity : float
        Fraction of hidden neurons removed (m = int(n (1 - s)) kept).
    method : {'default', 'fusion'}
    normalization : {'paper', 'function-preserving'}
        ``paper`` sums the fused neurons' incoming and outgoing weights; ``function-preserving`` averages
        the incoming side and sums the outgoing side.
    keep : sequence of int, optional
        Neurons to keep (default: the m most important by l1). Twins have equal importance, so a teaching
        example keeps one of each pair explicitly.
    p : float
        Cost exponent.

    Returns
    -------
    ToyResult
    """
    if keep is None:
        kept, pruned = select_kept(net.importance(), sparsity)
    else:
        kept = np.sort(np.unique(np.asarray(keep, dtype=int)))
        if len(kept) == 0 or kept.min() < 0 or kept.max() >= net.n:
            raise ValueError(f"keep must name neurons 0..{net.n - 1}")
        pruned = np.setdiff1d(np.arange(net.n), kept)
    names = [net.names[i] for i in kept]
    if method == "default":
        return ToyResult(ToyNet(net.w[kept], net.b[kept], net.v[kept], names), "default", kept, pruned)
    if method != "fusion":
        raise ValueError(f"unknown method {method!r}: choose 'default' or 'fusion'")
    x = torch.from_numpy(net.features())
    cost = cost_matrix(x, x[torch.as_tensor(kept)], p).double().numpy()
    mu, nu = marginal("uniform", net.n), marginal("uniform", len(kept))
    plan = solve(mu, nu, cost, "emd")
    map_out, map_in = transport_map(plan, mu, normalization)
    fused = ToyNet(map_out @ net.w, map_out @ net.b, map_in @ net.v, names)
    return ToyResult(fused, method_label("fusion", normalization), kept, pruned, plan, cost, map_out, map_in)


def toy_grid(extent: float = 2.0, steps: int = 41) -> np.ndarray:
    """Inputs on a square grid [-extent, extent]^2, shape (steps^2, 2)."""
    t = np.linspace(-extent, extent, steps)
    xx, yy = np.meshgrid(t, t)
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def toy_errors(original: ToyNet, results: Iterable[ToyResult], xs: np.ndarray | None = None) -> dict[str, float]:
    """Root-mean-square difference between each pruned network's output and the original's on ``xs``."""
    xs = toy_grid() if xs is None else xs
    ref = original(xs)
    return {r.method: float(np.sqrt(np.mean((r.net(xs) - ref) ** 2))) for r in results}
