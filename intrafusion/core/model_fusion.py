"""Fusing k models of one architecture into one of the same width (OTFusion, Singh & Jaggi 2020).

Intra-Fusion (:mod:`.prune`) fuses the neurons of ONE model into fewer; split-data training needs the other
fusion: k models trained on different data have the same layers, but their neurons are in an arbitrary order
(any consistent permutation of a layer's channels leaves a network's function unchanged), so averaging their
weights directly mixes unrelated neurons. OTFusion first *aligns* every model to a reference (model 0), then
averages.

The channel sets that must be aligned together are exactly Torch-Pruning's dependency groups
(:class:`.groups.PruningGraph`): a group's producers (out-rows), consumers (in-columns) and BatchNorms share
one channel order, and a residual stream (several producers adding into the same channels) is one group, so
it gets ONE alignment applied to every layer that writes or reads it.

For each group with n channels and each model k >= 1:

1. **Cost** ``C[s, t]`` between channel s of model k and channel t of model 0 (Euclidean distance):

   - ``weight``: the channel's incoming weights, i.e. the out-rows of the group's producers (with their
     biases and BatchNorm affine parameters). Groups are aligned from the input to the output and each map is
     applied at once, so the in-columns of a producer are already in model 0's order when its rows are
     compared. Producers whose inputs are not aligned yet (in a residual stream, the convs of the blocks
     that also READ the stream) are left out of the cost.
   - ``activation``: the channel's activations on the same ~200 inputs, wherever the channel appears (every
     producer's output and every consumer's input). Activations do not depend on how other layers are
     ordered, so every group is solved independently.

2. **Plan**: exact OT (POT's ``ot.emd``) between uniform marginals ``mu = nu = 1/n``:
   ``P = argmin_{P 1 = mu, P^T 1 = nu, P >= 0} <P, C>``. With equal widths an optimal vertex is a
   permutation matrix divided by n.

3. **Map**, normalised by the target marginal: ``A = P diag(1/nu)`` (every target column sums to 1), so the
   aligned channel t of model k is ``sum_s A[s, t] * channel_s``: ``A^T`` is applied along the group's axis
   of every producer row, consumer column, bias and BatchNorm parameter and running statistic. For a
   permutation plan this is an exact relabelling, so the aligned model computes the same function.

Finally every parameter and buffer is averaged: ``theta_fused = (1/k) sum_k theta_k(aligned)``
(``num_batches_tracked`` is taken from model 0). Fusing a model with a permuted copy of itself therefore
gives back the original function exactly, and fusing a model with itself is the identity.

Averaging two DIFFERENT aligned models shrinks the variance of their activations (the aligned neurons are
not perfectly correlated), so averaged BatchNorm running statistics no longer match the fused model's
activations, and accuracy can collapse to chance (Jordan et al., REPAIR, 2023). ``reset_bn=True``
re-estimates every BatchNorm's running mean and variance on ``data`` after averaging (forward passes in
train mode, cumulative average; parameters untouched).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .groups import LayerSlice, PruningGraph, _execution_order
from .repair import reestimate_bn
from .transport import solve

__all__ = ["MODES", "AlignmentRecord", "ModelFusionResult", "align_to", "fuse_models", "average_models"]

#: How the cost between two models' channels is measured.
MODES = ("weight", "activation")


@dataclass
class AlignmentRecord:
    """The alignment of one group of model ``model`` onto model 0.

    Attributes
    ----------
    group : int
        Group index (paper numbering: 0 is nearest the classifier).
    model : int
        Which model was aligned (1 .. k-1).
    n : int
        Channels of the group.
    cost : np.ndarray
        (n, n) cost, rows = model ``model``'s channels, columns = model 0's.
    plan : np.ndarray
        (n, n) transport plan; rows sum to 1/n, columns to 1/n.
    permutation : np.ndarray
        ``permutation[t]`` = the channel of model ``model`` sent to model 0's channel t (argmax of the plan's
        column t; exact when the plan is a permutation).
    moved : int
        Channels whose position changed (t != permutation[t]).
    cost_before, cost_after : float
        Mean cost of the identity matching and of the plan's matching (the plan never does worse).
    """

    group: int
    model: int
    n: int
    cost: np.ndarray
    plan: np.ndarray
    permutation: np.ndarray
    moved: int
    cost_before: float
    cost_after: float

    def to_dict(self, arrays: bool = False) -> dict:
        out = {"group": self.group, "model": self.model, "n": self.n, "moved": self.moved,
               "cost_before": self.cost_before, "cost_after": self.cost_after,
               "permutation": self.permutation.tolist()}
        if arrays:
            out.update(cost=self.cost.tolist(), plan=self.plan.tolist())
        return out


@dataclass
class ModelFusionResult:
    """The fused model (a new object), the k aligned copies and one record per (group, model >= 1)."""

    model: nn.Module
    aligned: list[nn.Module]
    records: list[AlignmentRecord]
    mode: str
    timings: dict[str, float] = field(default_factory=dict)


def _check_same_architecture(models: Sequence[nn.Module]) -> None:
    ref = {k: tuple(v.shape) for k, v in models[0].state_dict().items()}
    for i, m in enumerate(models[1:], start=1):
        other = {k: tuple(v.shape) for k, v in m.state_dict().items()}
        if other != ref:
            diff = sorted(set(ref.items()) ^ set(other.items()))[:3]
            raise ValueError(f"model {i} does not have model 0's architecture (first differences: {diff}): "
                             "fusion needs k models with the same layers and widths (prune them alike first)")


def _unique(slices: list[LayerSlice]) -> list[LayerSlice]:
    """One slice per (layer, side): a map must be applied once to each axis."""
    seen, out = set(), []
    for s in slices:
        key = (id(s.module), s.side)
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def _tensors_of(s: LayerSlice) -> list[tuple[torch.Tensor, bool]]:
    """(tensor, transposed) pairs holding the group's axis in slice ``s``: out-rows, in-columns or BN entries."""
    m = s.module
    if s.side == "in":
        return [(m.weight.data, True)]
    names = ("weight", "bias", "running_mean", "running_var") if s.side == "norm" else ("weight", "bias")
    return [(t.data if isinstance(t, nn.Parameter) else t, False)
            for t in (getattr(m, n, None) for n in names) if t is not None]


@torch.no_grad()
def _apply_alignment(slices: list[LayerSlice], amap: torch.Tensor) -> None:
    """Replace channel t of every tensor of the group by ``sum_s amap[t, s] * channel_s``, in place.

    ``amap`` is (n, n) = A^T with A = P diag(1/nu); ``index`` (n, k) addresses the k entries of each channel.
    """
    for s in slices:
        for tensor, transposed in _tensors_of(s):
            view = tensor.transpose(0, 1) if transposed else tensor
            idx = s.index
            values = view[idx]  # (n, k, ...)
            flat = values.reshape(values.shape[0], -1)
            view[idx] = (amap.to(flat.dtype) @ flat).reshape(values.shape)


def _weight_features(slices: list[LayerSlice], ready: set[str], names: dict[nn.Module, str]) -> torch.Tensor:
    """Incoming weights of each channel (producers whose inputs are aligned; all if none is), shape (n, d)."""
    producers = [s for s in slices if s.side == "out"]
    usable = [s for s in producers if names[s.module] in ready] or producers
    parts = []
    for s in usable + [s for s in slices if s.side == "norm"]:
        m = s.module
        for t in (m.weight, m.bias):
            if t is not None:
                parts.append(t.detach()[s.index].reshape(s.index.shape[0], -1).double())
    return torch.cat(parts, dim=1)


class _ActivationRecorder:
    """Forward hooks that keep every group's channel activations on a fixed batch of inputs."""

    def __init__(self, graph: PruningGraph, indices: list[int]):
        self.graph = graph
        self.store: dict[int, list[torch.Tensor]] = {i: [] for i in indices}
        self.hooks = []
        for i in indices:
            for s in _unique(graph.slices(i)):
                if s.side == "out":
                    self.hooks.append(s.module.register_forward_hook(self._out_hook(i, s.index)))
                elif s.side == "in":
                    self.hooks.append(s.module.register_forward_pre_hook(self._in_hook(i, s.index)))

    @staticmethod
    def _channels(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # (N, C, ...) -> (n, N * k * spatial): each row holds one channel's values over the batch
        t = t.detach().double()
        sel = t.transpose(0, 1)[index]  # (n, k, N, ...)
        return sel.reshape(index.shape[0], -1).clone()

    def _out_hook(self, group: int, index: torch.Tensor):
        def hook(module, inputs, output):
            self.store[group].append(self._channels(output, index))
        return hook

    def _in_hook(self, group: int, index: torch.Tensor):
        def hook(module, inputs):
            self.store[group].append(self._channels(inputs[0], index))
        return hook

    def features(self) -> dict[int, torch.Tensor]:
        return {g: torch.cat(v, dim=1) for g, v in self.store.items()}

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


@torch.no_grad()
def _activation_features(graph: PruningGraph, indices: list[int], data: torch.Tensor) -> dict[int, torch.Tensor]:
    rec = _ActivationRecorder(graph, indices)
    try:
        graph.model.eval()
        graph.model(data)
    finally:
        rec.remove()
    return rec.features()


def _cost(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Euclidean distances ``||x_s - y_t||_2`` (float64), by the Gram form: activations are long vectors."""
    sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return sq.clamp_min(0).sqrt().numpy()


def _group_order(graph: PruningGraph, order: dict[nn.Module, int]) -> list[int]:
    """Group indices from the input to the output (by the first producer that runs)."""
    names = {name: m for name, m in graph.model.named_modules()}
    first = {g.index: min(order.get(names[p], 1 << 30) for p in g.producers) for g in graph.groups}
    return sorted(first, key=lambda i: (first[i], -i))


def align_to(reference: nn.Module, model: nn.Module, example_inputs: torch.Tensor, *, mode: str = "weight",
             data: torch.Tensor | None = None, model_index: int = 1) -> tuple[nn.Module, list[AlignmentRecord]]:
    """A copy of ``model`` with every group's channels transported into ``reference``'s order.

    Parameters
    ----------
    reference, model : nn.Module
        Same architecture and widths; neither is changed.
    example_inputs : torch.Tensor
        A batch of inputs for tracing the dependency graph.
    mode : {'weight', 'activation'}
        The cost (see the module docstring).
    data : torch.Tensor, optional
        Inputs for ``activation`` (about 200 samples); required there.
    model_index : int
        Stored in the records.

    Returns
    -------
    aligned : nn.Module
        For permutation plans, the same function as ``model`` (a relabelling of its channels).
    records : list of AlignmentRecord
    """
    if mode not in MODES:
        raise ValueError(f"unknown fusion mode {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "activation" and (data is None or len(data) == 0):
        raise ValueError("activation-based fusion needs data: pass about 200 training inputs (data=...), "
                         "or use mode='weight'")
    _check_same_architecture([reference, model])
    ref = copy.deepcopy(reference).eval()
    work = copy.deepcopy(model).eval()
    g_ref, g_work = PruningGraph(ref, example_inputs), PruningGraph(work, example_inputs)
    if [(g.n, g.producers) for g in g_ref.groups] != [(g.n, g.producers) for g in g_work.groups]:
        raise ValueError("the two models' dependency groups differ: fusion needs the same architecture")
    blocked = [g for g in g_ref.groups if not g.prunable]
    if blocked:
        raise ValueError(f"group {blocked[0].index} cannot be aligned: {blocked[0].reason}")
    indices = _group_order(g_ref, _execution_order(ref, example_inputs))
    if mode == "activation":
        feats_ref = _activation_features(g_ref, indices, data)
        feats_work = _activation_features(g_work, indices, data)
    names = {m: name for name, m in work.named_modules()}
    names_ref = {m: name for name, m in ref.named_modules()}
    consumers_of = {g.index: set(g.consumers) for g in g_ref.groups}
    done: set[int] = set()
    records = []
    for i in indices:
        sl_work, sl_ref = _unique(g_work.slices(i)), _unique(g_ref.slices(i))
        n = g_ref.channels(i)
        if mode == "weight":
            # a producer is ready when every group it reads from is aligned already (or it reads the input)
            ready = {p for p in g_ref.groups[i].producers
                     if all(p not in consumers_of[j] for j in consumers_of if j not in done)}
            x = _weight_features(sl_work, ready, names)
            y = _weight_features(sl_ref, ready, names_ref)
        else:
            x, y = feats_work[i], feats_ref[i]
        cost = _cost(x, y)
        mu = nu = np.full(n, 1.0 / n)
        plan = solve(mu, nu, cost, "emd")
        amap = torch.from_numpy((plan / nu[None, :]).T.copy())  # A^T, A = P diag(1/nu)
        _apply_alignment(sl_work, amap)
        perm = plan.argmax(axis=0)
        records.append(AlignmentRecord(
            group=i, model=model_index, n=n, cost=cost, plan=plan, permutation=perm,
            moved=int((perm != np.arange(n)).sum()), cost_before=float(np.diag(cost).mean()),
            cost_after=float((plan * cost).sum()),
        ))
        done.add(i)
    return work, records


@torch.no_grad()
def average_models(models: Sequence[nn.Module], weights: Sequence[float] | None = None) -> nn.Module:
    """``theta = sum_k w_k theta_k`` over every floating parameter and buffer (uniform w_k = 1/k by default);
    integer buffers (``num_batches_tracked``) come from model 0. No alignment: the naive baseline."""
    _check_same_architecture(models)
    k = len(models)
    w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(w) != k or not np.isclose(w.sum(), 1.0) or (w < 0).any():
        raise ValueError(f"weights must be {k} non-negative numbers summing to 1, got {list(w)}")
    out = copy.deepcopy(models[0]).eval()
    states = [m.state_dict() for m in models]
    fused = {}
    for key, value in states[0].items():
        if value.is_floating_point():
            fused[key] = sum(float(w[j]) * states[j][key].double() for j in range(k)).to(value.dtype)
        else:
            fused[key] = value.clone()
    out.load_state_dict(fused)
    return out


def fuse_models(models: Sequence[nn.Module], example_inputs: torch.Tensor, *, mode: str = "activation",
                data: torch.Tensor | None = None, weights: Sequence[float] | None = None,
                reset_bn: bool = False) -> ModelFusionResult:
    """OT-fuse k models of the same architecture into one of the same width.

    Parameters
    ----------
    models : sequence of nn.Module
        k >= 1 models with identical layer shapes (e.g. trained on different parts of the data, or pruned
        alike). None is changed. Model 0 is the reference order.
    example_inputs : torch.Tensor
        A batch of inputs for tracing the dependency graph.
    mode : {'activation', 'weight'}
        Cost between channels; ``activation`` needs ``data``.
    data : torch.Tensor, optional
        The inputs activations are measured on (about 200).
    weights : sequence of float, optional
        Averaging weights (default uniform 1/k).
    reset_bn : bool
        Re-estimate the fused model's BatchNorm running statistics on ``data`` (see the module docstring);
        needs ``data``.

    Returns
    -------
    ModelFusionResult
        ``model``: ``sum_k w_k theta_k(aligned)``; ``aligned``: the aligned copies (model 0 unchanged);
        ``records``: one per (group, model k >= 1); ``timings``: seconds for alignment and averaging.
    """
    models = list(models)
    if not models:
        raise ValueError("fuse_models needs at least one model")
    if reset_bn and (data is None or len(data) < 2):
        raise ValueError("reset_bn=True re-estimates BatchNorm statistics on data: pass data= (a few hundred inputs)")
    t0 = time.perf_counter()
    aligned, records = [copy.deepcopy(models[0]).eval()], []
    for j, m in enumerate(models[1:], start=1):
        a, rec = align_to(models[0], m, example_inputs, mode=mode, data=data, model_index=j)
        aligned.append(a)
        records += rec
    t1 = time.perf_counter()
    fused = average_models(aligned, weights)
    t2 = time.perf_counter()
    if reset_bn:
        reestimate_bn(fused, data, {})
    t3 = time.perf_counter()
    return ModelFusionResult(fused, aligned, records, mode, {"align": t1 - t0, "average": t2 - t1,
                                                             "reset_bn": t3 - t2, "total": t3 - t0})
