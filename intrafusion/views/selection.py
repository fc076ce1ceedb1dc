"""Linked views of one group's transport plan: which rows to draw, what merged into a kept neuron, the
largest flows, and the first layer's filters before and after fusion (the Transport plan page's data).

Notation (as in :mod:`intrafusion.core.prune`): the plan P is (n, m), rows = source channels in channel order,
columns = targets (kept channels in ascending order, or centroids). The producer-side map T_out = P^T diag(1/mu)
(normalised per row for the function-preserving map) is (m, n): fused target t = sum_s T_out[t, s] source s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from ..core.prune import GroupRecord, PreparedModel

__all__ = [
    "FilterView",
    "Merge",
    "SankeyData",
    "display_columns",
    "display_rows",
    "first_layer_filters",
    "merged_into",
    "sankey_flows",
    "selectable_cells",
    "target_of",
]

ORDERS = ("importance", "target")
ZOOMS = ("all rows", "pruned rows", "top-k rows")


def target_of(record: GroupRecord, channel: int) -> int | None:
    """The plan column of kept channel ``channel`` (None when it is pruned or targets are centroids)."""
    if record.options is not None and record.options.target == "centroids":
        return None
    pos = np.flatnonzero(record.kept == int(channel))
    return int(pos[0]) if len(pos) else None


def display_rows(record: GroupRecord, importance_order: np.ndarray, order: str = "importance",
                 zoom: str = "all rows", k: int = 32) -> np.ndarray:
    """Source channels to draw as heatmap rows, top to bottom.

    Parameters
    ----------
    importance_order : array (n,)
        Channels from most to least important.
    order : {'importance', 'target'}
        'importance': kept channels first (most important first), the pruned block below. 'target': every
        source next to the target that receives most of its mass (targets in ``importance_order`` of their
        kept channel), so the neurons fused into one target form one band.
    zoom : {'all rows', 'pruned rows', 'top-k rows'}
        Keep only the pruned channels, or the first ``k`` rows of the order.
    """
    if order not in ORDERS:
        raise ValueError(f"unknown row order {order!r}: choose one of {', '.join(ORDERS)}")
    if zoom not in ZOOMS:
        raise ValueError(f"unknown zoom {zoom!r}: choose one of {', '.join(ZOOMS)}")
    rows = np.asarray(importance_order, dtype=int)
    if order == "target" and record.plan is not None:
        main = record.plan.argmax(axis=1)  # the target receiving most of each source's mass
        col_rank = np.empty(record.plan.shape[1], dtype=int)
        kept_first = [target_of(record, c) for c in rows]
        seen = [t for t in kept_first if t is not None]
        rest = [t for t in range(record.plan.shape[1]) if t not in set(seen)]
        col_rank[np.array(seen + rest, dtype=int)] = np.arange(record.plan.shape[1])
        imp_rank = np.empty(len(rows), dtype=int)
        imp_rank[rows] = np.arange(len(rows))
        is_pruned = np.isin(np.arange(record.n), record.pruned)
        rows = np.lexsort((imp_rank, is_pruned, col_rank[main]))
    if zoom == "pruned rows":
        rows = rows[np.isin(rows, record.pruned)]
    elif zoom == "top-k rows":
        rows = rows[: max(1, int(k))]
    return rows


def display_columns(record: GroupRecord, rows: np.ndarray, column_order: np.ndarray, zoom: str) -> np.ndarray:
    """Plan columns to draw: all of them, or (zoomed) only those receiving mass from the drawn rows."""
    if zoom == "all rows" or record.plan is None:
        return np.asarray(column_order, dtype=int)
    used = (record.plan[np.asarray(rows, dtype=int)] > 1e-12).any(axis=0)
    cols = [int(c) for c in column_order if used[c]]
    return np.asarray(cols or list(column_order), dtype=int)


def selectable_cells(z: np.ndarray, limit: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) positions of a drawn matrix that get an invisible clickable marker.

    Heatmaps cannot be selected in Streamlit, so the page overlays markers: every cell of a small matrix; for
    a large one its non-zero cells (a plan has at most n + m - 1) when they are few, plus an evenly strided
    subset of every row's cells, so every row stays clickable and the total stays near ``limit``.
    """
    z = np.asarray(z)
    r, c = z.shape
    if r * c <= limit:
        rr, cc = np.meshgrid(np.arange(r), np.arange(c), indexing="ij")
        return rr.ravel(), cc.ravel()
    nz = np.flatnonzero(z.ravel() != 0)
    keep = set(nz.tolist()) if len(nz) <= limit // 2 else set()
    per_row = max(1, (limit - len(keep)) // r)
    cols = np.unique(np.linspace(0, c - 1, min(c, per_row)).round().astype(int))
    keep |= set((np.arange(r)[:, None] * c + cols[None, :]).ravel().tolist())
    idx = np.array(sorted(keep))
    return idx // c, idx % c


@dataclass
class Merge:
    """One source fused into a target: ``coefficient`` = T_out[t, s], ``mass`` = P[s, t], ``share`` = percent
    of the target's received mass."""

    source: int
    pruned: bool
    coefficient: float
    mass: float
    share: float
    cost: float

    def to_dict(self) -> dict:
        return {"source": f"#{self.source}{' ✂' if self.pruned else ''}", "coefficient": self.coefficient,
                "mass": self.mass, "share of target %": self.share, "cost": self.cost}


def merged_into(record: GroupRecord, target: int, tol: float = 1e-12) -> list[Merge]:
    """Which sources make up fused target ``target`` (a plan column), largest coefficient first.

    The fused producer weights are w*_t = sum_s T_out[t, s] w_s; the coefficients listed are that row of T_out.
    """
    if record.plan is None:
        raise ValueError("this record has no transport plan (default pruning): plan the group with Intra-Fusion")
    if not 0 <= target < record.plan.shape[1]:
        raise IndexError(f"target {target} does not exist: the plan has {record.plan.shape[1]} targets")
    col = record.plan[:, target]
    total = float(col.sum())
    pruned = set(record.pruned.tolist())
    out = [Merge(int(s), int(s) in pruned, float(record.map_out[target, s]), float(col[s]),
                 100.0 * float(col[s]) / total if total > 0 else 0.0, float(record.cost[s, target]))
           for s in np.flatnonzero(col > tol)]
    out.sort(key=lambda m: -m.coefficient)
    return out


@dataclass
class SankeyData:
    """Nodes and links of a Sankey diagram: sources on the left, targets on the right."""

    labels: list[str]
    sources: list[int]
    targets: list[int]
    values: list[float]
    highlighted: list[bool]


def sankey_flows(record: GroupRecord, target_labels: list[str], k: int = 30, focus: int | None = None) -> SankeyData:
    """The ``k`` largest flows out of pruned sources (the mass fusion moves), plus every flow touching ``focus``.

    ``focus`` is a source channel: its outgoing flows, and when it is kept, the flows into its target.
    Values are percents of the total mass (the plan sums to 1).
    """
    if record.plan is None:
        raise ValueError("this record has no transport plan")
    plan = record.plan
    pruned = np.asarray(record.pruned, dtype=int)
    cand = [(float(plan[s, t]), int(s), int(t)) for s in pruned for t in np.flatnonzero(plan[s] > 1e-12)]
    cand.sort(reverse=True)
    chosen = {(s, t) for _, s, t in cand[:k]}
    focus_t = target_of(record, focus) if focus is not None else None
    if focus is not None:
        chosen |= {(int(focus), int(t)) for t in np.flatnonzero(plan[int(focus)] > 1e-12)}
        if focus_t is not None:
            chosen |= {(int(s), focus_t) for s in np.flatnonzero(plan[:, focus_t] > 1e-12)}
    srcs = sorted({s for s, _ in chosen})
    tgts = sorted({t for _, t in chosen})
    s_pos = {s: i for i, s in enumerate(srcs)}
    t_pos = {t: len(srcs) + i for i, t in enumerate(tgts)}
    pr = set(pruned.tolist())
    labels = [f"#{s}{' ✂' if s in pr else ''}" for s in srcs] + [target_labels[t] for t in tgts]
    links = sorted(chosen)
    return SankeyData(labels, [s_pos[s] for s, _ in links], [t_pos[t] for _, t in links],
                      [100.0 * float(plan[s, t]) for s, t in links],
                      [focus is not None and (s == focus or t == focus_t) for s, t in links])


@dataclass
class FilterView:
    """First-layer filters of one fused target: its sources' kernels and the fused kernel.

    Attributes
    ----------
    layer : str
    sources : list of int
        The channel itself first (when kept), then the other contributors by coefficient.
    coefficients : list of float
    before : numpy.ndarray (len(sources), C, kh, kw)
    after : numpy.ndarray (C, kh, kw)
        sum_s T_out[t, s] w_s (BatchNorm folded in, as Intra-Fusion fuses it).
    """

    layer: str
    sources: list[int]
    coefficients: list[float]
    before: np.ndarray
    after: np.ndarray


def first_layer_filters(prepared: PreparedModel, record: GroupRecord, target: int, top: int = 7) -> FilterView | None:
    """The filters of fused target ``target`` when the group's producer is the model's first conv layer.

    Returns None for any other group (filters of deeper layers are not images).
    """
    if record.plan is None:
        return None
    convs = [m for m in prepared.model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return None
    first = convs[0]
    sl = next((s for s in prepared.graph.slices(record.group.index) if s.side == "out" and s.module is first), None)
    if sl is None:
        return None
    rows = sl.index[:, 0].numpy()
    w = first.weight.detach().double().numpy()[rows]  # (n, C, kh, kw) in channel order
    merges = merged_into(record, target)
    own = int(record.kept[target]) if record.options.target == "kept" else None
    order = sorted(merges, key=lambda m: (m.source != own, -m.coefficient))[:top]
    after = np.tensordot(record.map_out[target], w, axes=(0, 0))
    name = next((n for n, m in prepared.model.named_modules() if m is first), "conv")
    return FilterView(name, [m.source for m in order], [m.coefficient for m in order],
                      w[[m.source for m in order]], after)
