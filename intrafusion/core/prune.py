"""Policy: default pruning (Algorithm 1), Intra-Fusion (Algorithm 2) and Model Folding of one group, several, or all.

Both methods fold BatchNorm, score the group with the same criterion and keep the same m = int(n (1 - s))
most important channels. Default pruning then drops the others; Intra-Fusion first writes into the kept
positions the channels obtained by transporting ALL n channels onto the m targets, then drops the others.
Model Folding (``method="folding"``, :mod:`intrafusion.core.folding`) clusters each group with k-means
instead and merges every cluster into its most important member; BatchNorm is folded after merging.
The input model is never mutated: every call works on a deep copy.
"""

from __future__ import annotations

import copy
import math
import operator
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from .fold import bn_targets, fold_batchnorm
from .folding import FoldingOptions, fold_bn_unscaled, fold_group
from .groups import Group, PruningGraph
from .importance import CRITERIA, accumulate_gradients, group_importance
from .repair import BiasCorrection, RepairOptions, RepairResult, apply_repair, post_statistics
from .transport import (
    MARGINALS,
    NORMALIZATIONS,
    SOLVERS,
    TARGET_MARGINALS,
    TARGETS,
    apply_map,
    centroids,
    cost_matrix,
    feature_vectors,
    marginal,
    nearest_marginal,
    solve,
    transport_map,
)

__all__ = [
    "METHODS",
    "GroupRecord",
    "PreparedModel",
    "PruneResult",
    "TransportOptions",
    "check_finite",
    "default_pruning",
    "intra_fusion",
    "kept_count",
    "plan_group",
    "prepare",
    "prune",
]

METHODS = ("default", "fusion", "folding")


@dataclass(frozen=True)
class TransportOptions:
    """How Intra-Fusion builds and applies its transport map (defaults: the paper's setting).

    Attributes
    ----------
    normalization : {'paper', 'function-preserving'}
        ``paper``: T = P^T diag(1/mu) on producers and consumers (sums on both sides).
        ``function-preserving``: producers averaged, consumers summed.
    target : {'kept', 'centroids'}
        Targets are the m kept channels, or m k-means centroids of the feature vectors.
    source_marginal : {'uniform', 'importance'}
    target_marginal : {'uniform', 'importance', 'nearest'}
        ``nearest``: each target's share of the channels closest to it (see
        :func:`intrafusion.core.transport.nearest_marginal`).
    solver : {'emd', 'sinkhorn'}
    reg : float
        Sinkhorn regularisation, relative to the largest cost.
    p : float
        Exponent of the cost ``||x - y||_p``.
    """

    normalization: str = "paper"
    target: str = "kept"
    source_marginal: str = "uniform"
    target_marginal: str = "uniform"
    solver: str = "emd"
    reg: float = 0.05
    p: float = 1.0

    def __post_init__(self):
        for name, allowed in (
            ("normalization", NORMALIZATIONS),
            ("target", TARGETS),
            ("source_marginal", MARGINALS),
            ("target_marginal", TARGET_MARGINALS),
            ("solver", SOLVERS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        if not self.p > 0:
            raise ValueError(f"the cost exponent p must be positive, got {self.p}")
        if self.solver == "sinkhorn" and not self.reg > 0:
            raise ValueError(f"the Sinkhorn regularisation must be positive, got {self.reg}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GroupRecord:
    """Everything a picture of one pruned group needs. Arrays are NumPy; indices refer to the unpruned group.

    ``cost``, ``plan``, ``map_out``, ``map_in``, ``mu``, ``nu`` are None for default pruning. For folding,
    ``plan`` is the cluster assignment (1/n per member), ``map_out`` averages and ``map_in`` sums each
    cluster, ``labels`` (n,) gives every channel's cluster (= column of the plan) and ``cost`` is None. ``plan`` is
    (n, m) with rows = sources (all channels, in channel order) and columns = targets (kept channels in
    ascending order, or centroids). ``timings`` holds seconds per step.
    """

    group: Group
    method: str
    sparsity: float
    criterion: str
    importance: np.ndarray
    kept: np.ndarray
    pruned: np.ndarray
    options: TransportOptions | FoldingOptions | None = None
    cost: np.ndarray | None = None
    plan: np.ndarray | None = None
    map_out: np.ndarray | None = None
    map_in: np.ndarray | None = None
    mu: np.ndarray | None = None
    nu: np.ndarray | None = None
    features: np.ndarray | None = None
    target_features: np.ndarray | None = None
    labels: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.importance)

    @property
    def m(self) -> int:
        return len(self.kept)


@dataclass
class PruneResult:
    """A pruned model (a new object) and one record per pruned group, in the order they were pruned."""

    model: nn.Module
    records: list[GroupRecord]
    timings: dict[str, float] = field(default_factory=dict)
    repair: RepairResult | None = None
    #: label-free choices made for this result (:func:`intrafusion.core.select.prune_closest`: ``criterion``,
    #: ``criterion_logit_gaps``); empty for a plain ``prune``
    choices: dict = field(default_factory=dict)


@dataclass
class PreparedModel:
    """A folded deep copy of a model with its pruning graph (read-only use: plans, importance, groups)."""

    model: nn.Module
    graph: PruningGraph
    timings: dict[str, float] = field(default_factory=dict)
    #: ``l1`` of every group taken before BatchNorm folding ({group: (n,)}), the ``l1-raw`` criterion's scores
    raw_l1: dict[int, np.ndarray] | None = None

    @property
    def groups(self) -> list[Group]:
        return self.graph.groups


def kept_count(n: int, sparsity: float) -> int:
    """m = int(n (1 - s)), the paper's rule (n=512: s=.3 keeps 358, .5 keeps 256, .7 keeps 153)."""
    check_sparsity(sparsity)
    # int() of a float product: guard against 512*0.7 = 358.39999 style representation error
    return int(math.floor(n * (1.0 - sparsity) + 1e-9))


def check_sparsity(sparsity: float) -> float:
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not 0.0 <= s < 1.0 or math.isnan(s):
        raise ValueError(
            f"sparsity must be in [0, 1): got {sparsity}; it is the fraction of a group's channels removed "
            "(0.5 removes half, 0 removes none)"
        )
    return s


def check_finite(model: nn.Module) -> None:
    """Raise ValueError naming every parameter or buffer that holds NaN or infinity, or a negative variance."""
    bad = [name for name, t in list(model.named_parameters()) + list(model.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(
            f"the model has NaN or infinite values in {shown}: pruning would spread them; load a healthy "
            "checkpoint (retrain or re-export the model)"
        )
    negative = [name for name, t in model.named_buffers() if name.endswith("running_var") and bool((t < 0).any())]
    if negative:
        raise ValueError(
            f"the model has negative BatchNorm variances in {', '.join(negative[:5])}: a variance cannot be "
            "negative and folding would produce NaN; load a healthy checkpoint"
        )


def prepare(model: nn.Module, example_inputs: torch.Tensor, fold: bool = True) -> PreparedModel:
    """Deep-copy ``model``, build its pruning graph and fold its BatchNorms (the state default pruning and
    Intra-Fusion start from; Model Folding starts unfolded, ``fold=False``)."""
    check_finite(model)
    t0 = time.perf_counter()
    work = copy.deepcopy(model).eval()
    for p in work.parameters():  # cached models are frozen; tracing and Taylor scores need autograd
        p.requires_grad_(True)
    t1 = time.perf_counter()
    graph = PruningGraph(work, example_inputs)
    t2 = time.perf_counter()
    raw = None
    if fold:
        # l1-raw reads the weights as trained, before folding rescales every channel by gamma / sigma
        raw = {i: group_importance(graph.tp_group(i), "l1").numpy() for i in range(len(graph))}
        fold_batchnorm(graph)
    t3 = time.perf_counter()
    return PreparedModel(work, graph, {"copy": t1 - t0, "graph": t2 - t1, "fold": t3 - t2}, raw)


def _group_index(g) -> int:
    # bool is an int subclass: groups=True would silently mean group 1
    if isinstance(g, (bool, np.bool_)):
        raise TypeError(f"a group must be an integer index, got {g!r}; see list_groups for the indices")
    try:
        return operator.index(g)
    except TypeError:
        raise TypeError(f"a group must be an integer index, got {g!r} ({type(g).__name__})") from None


def _resolve_groups(groups, count: int) -> list[int]:
    if count == 0:
        raise ValueError("this model has no prunable groups (no layer whose output channels can be removed), "
                         "so there is nothing to prune")
    if isinstance(groups, str):
        if groups != "all":
            raise ValueError(f"groups must be an index, a list of indices or 'all', got {groups!r}")
        return list(range(count))
    if isinstance(groups, Iterable):
        out = [_group_index(g) for g in groups]
    else:
        out = [_group_index(groups)]
    for g in out:
        if not 0 <= g < count:
            raise IndexError(
                f"group {g} does not exist: this model has {count} groups, numbered 0 (nearest the classifier) "
                f"to {count - 1}"
            )
    if len(set(out)) != len(out):
        raise ValueError(f"group indices repeat in {out}: prune each group once")
    return out


def _select(importance: torch.Tensor, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Kept = the m most important channels (ties broken by lower index), both sets ascending."""
    imp = importance.detach().cpu().double().numpy()
    order = np.lexsort((np.arange(len(imp)), -imp))  # descending importance, then index
    kept = np.sort(order[:m])
    pruned = np.sort(order[m:])
    return kept, pruned


def _plan(graph: PruningGraph, index: int, tp_group, importance: np.ndarray, kept: np.ndarray,
          options: TransportOptions, seed: int, keep_features: bool) -> dict:
    """Cost, plan and maps of one group (no weights changed)."""
    timings = {}
    t0 = time.perf_counter()
    slices = graph.slices(index, tp_group)
    x = feature_vectors(slices)
    if options.target == "kept":
        y = x[torch.as_tensor(kept)]
        target_weights = importance[kept]
    else:
        y, labels = centroids(x, len(kept), seed=seed)
        target_weights = np.bincount(labels, weights=importance, minlength=len(kept))
    kept_idx = torch.as_tensor(kept) if options.target == "kept" else None
    cost = cost_matrix(x, y, options.p, kept=kept_idx).double().numpy()
    timings["cost"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mu = marginal(options.source_marginal, len(importance), importance)
    nu = (nearest_marginal(cost) if options.target_marginal == "nearest"
          else marginal(options.target_marginal, len(kept), target_weights))
    plan = solve(mu, nu, cost, options.solver, options.reg)
    map_out, map_in = transport_map(plan, mu, options.normalization)
    timings["solve"] = time.perf_counter() - t0
    out = dict(slices=slices, cost=cost, plan=plan, map_out=map_out, map_in=map_in, mu=mu, nu=nu, timings=timings)
    if keep_features:
        out["features"] = x.numpy()
        out["target_features"] = y.numpy()
    return out


def _score(graph: PruningGraph, index: int, criterion: str, seed: int, importance, taylor_batches, raw=None):
    tp_group = graph.tp_group(index)
    if criterion == "l1-raw" and importance is None:
        # scores taken before folding (prepare); a model prepared unfolded (folding) is its own raw model
        importance = raw[index] if raw is not None else group_importance(tp_group, "l1")
    if importance is not None:
        imp = torch.as_tensor(np.asarray(importance, dtype=np.float64))
        if imp.shape != (graph.channels(index),):
            raise ValueError(
                f"importance for group {index} must have {graph.channels(index)} entries, got {tuple(imp.shape)}"
            )
        return tp_group, imp
    if criterion not in CRITERIA:
        raise ValueError(f"unknown importance criterion {criterion!r}: choose one of {', '.join(CRITERIA)}")
    if criterion == "taylor":
        if taylor_batches is None:
            raise ValueError(
                "the taylor criterion needs data: pass taylor_batches (a few (inputs, labels) batches)"
            )
        accumulate_gradients(graph.model, taylor_batches)
    imp = group_importance(tp_group, criterion, seed=seed)
    if criterion == "taylor":
        graph.model.zero_grad(set_to_none=True)
    return tp_group, imp


def plan_group(prepared: PreparedModel, group: int, sparsity: float, criterion: str = "l1",
               options: TransportOptions | None = None, *, importance=None, taylor_batches=None,
               seed: int = 0, keep_features: bool = False) -> GroupRecord:
    """Importance, kept set, cost, plan and maps of one group, without pruning anything.

    This is what the transport-plan view draws; ``prune(..., method='fusion')`` computes the same record.
    """
    options = options or TransportOptions()
    index = prepared.graph.check_index(operator.index(group))
    n = prepared.graph.channels(index)
    m = kept_count(n, sparsity)
    if m < 1:
        raise ValueError(f"sparsity {sparsity} would remove all {n} channels of group {index}")
    t0 = time.perf_counter()
    tp_group, imp = _score(prepared.graph, index, criterion, seed, importance, taylor_batches,
                           prepared.raw_l1)
    t_imp = time.perf_counter() - t0
    kept, pruned = _select(imp, m)
    imp_np = imp.numpy()
    pl = _plan(prepared.graph, index, tp_group, imp_np, kept, options, seed, keep_features)
    return GroupRecord(
        group=prepared.graph.groups[index], method="fusion", sparsity=float(sparsity), criterion=criterion,
        importance=imp_np, kept=kept, pruned=pruned, options=options, cost=pl["cost"], plan=pl["plan"],
        map_out=pl["map_out"], map_in=pl["map_in"], mu=pl["mu"], nu=pl["nu"], features=pl.get("features"),
        target_features=pl.get("target_features"), timings={"importance": t_imp, **pl["timings"]},
    )


def prune(model: nn.Module, example_inputs: torch.Tensor, groups: int | Sequence[int] | str, sparsity: float,
          method: str = "fusion", criterion: str = "l1", options: TransportOptions | None = None, *,
          importance: dict | None = None, taylor_batches=None, seed: int = 0,
          keep_features: bool = False, repair: RepairOptions | str | None = None,
          repair_data: torch.Tensor | None = None, prepared: PreparedModel | None = None) -> PruneResult:
    """Prune ``groups`` of a copy of ``model`` at ``sparsity`` with default pruning or Intra-Fusion.

    Parameters
    ----------
    model : nn.Module
        Never mutated.
    example_inputs : torch.Tensor
        A batch of inputs of the right shape (for tracing the graph).
    groups : int, sequence of int, or 'all'
        Paper numbering (0 nearest the classifier). Groups are pruned in the order given, each scored on
        the model as the previous ones left it.
    sparsity : float in [0, 1)
        Fraction of each group's channels removed; m = int(n (1 - s)) are kept.
    method : {'default', 'fusion', 'folding'}
    criterion : {'l1', 'l2', 'taylor', 'lamp', 'random', 'l1-raw'}
        For folding it only chooses which member of a cluster holds the merged channel. ``l1-raw``: l1 of the
        weights before BatchNorm folding, every group scored once on the unpruned model (``prepare`` keeps the
        scores); the others are rescored on the model as the previous groups left it.
    options : TransportOptions or FoldingOptions, optional
        Intra-Fusion settings, or Model Folding settings for ``method='folding'``; options of the other kind
        are ignored (the defaults are used), as default pruning ignores them.
    importance : dict {group: array (n,)}, optional
        Explicit scores that replace the criterion for those groups (oracle tests, custom criteria).
    taylor_batches : iterable of (inputs, labels), optional
        Data for the Taylor criterion (gradients are recomputed before each group).
    seed : int
        Seed for the random criterion, k-means targets and folding's k-means (group g uses seed + g).
    keep_features : bool
        Keep the channels' feature vectors in the records (for projections).
    repair : RepairOptions, str or None
        Repair applied after the method (:mod:`intrafusion.core.repair`); None = 'none'.
    repair_data : torch.Tensor, optional
        Unlabelled inputs (N, C, H, W), needed only by repair 'data'.
    prepared : PreparedModel, optional
        ``prepare(model, example_inputs)`` done already (sweeps clone one per cell); it is pruned in place.
        Ignored by folding, which starts from the unfolded model.

    Returns
    -------
    PruneResult
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose 'default' (drop channels), 'fusion' (Intra-Fusion) "
                         "or 'folding' (Model Folding)")
    sparsity = check_sparsity(sparsity)
    if method == "folding":
        options = options if isinstance(options, FoldingOptions) else FoldingOptions()
        prepared = None
    else:
        options = options if isinstance(options, TransportOptions) else TransportOptions()
    repair_opts = RepairOptions.coerce(repair)
    if repair_opts.uses_data and repair_data is None:
        raise ValueError(f"repair='{repair_opts.kind}' needs repair_data: a tensor of a few hundred unlabelled "
                         "training inputs (N, C, H, W); use repair='synthetic' or 'moments' for a repair without data")
    targets = bn_targets(model) if repair_opts.kind != "none" else {}
    keep_features = keep_features or repair_opts.corrects_bias  # moments and bias take rho from feature cosines
    if taylor_batches is not None and not isinstance(taylor_batches, list | tuple):
        taylor_batches = list(taylor_batches)  # reused for every group
    t_start = time.perf_counter()
    prepared = prepare(model, example_inputs, fold=method != "folding") if prepared is None else prepared
    graph = prepared.graph
    if method == "folding" and options.variant == "ar":
        fold_bn_unscaled(graph)
    indices = _resolve_groups(groups, len(graph))
    importance = importance or {}
    records: list[GroupRecord] = []
    bias_shift = 0.0
    for index in indices:
        n = graph.channels(index)
        m = kept_count(n, sparsity)
        if m < 1:
            raise ValueError(f"sparsity {sparsity} would remove all {n} channels of group {index}")
        t0 = time.perf_counter()
        tp_group, imp = _score(graph, index, criterion, seed, importance.get(index), taylor_batches,
                               prepared.raw_l1)
        timings = {"importance": time.perf_counter() - t0}
        kept, pruned = _select(imp, m)
        imp_np = imp.numpy()
        rec = GroupRecord(group=graph.groups[index], method=method, sparsity=sparsity, criterion=criterion,
                          importance=imp_np, kept=kept, pruned=pruned)
        bias = (BiasCorrection.start(graph, graph.slices(index, tp_group), targets, rec.group.norms)
                if repair_opts.corrects_bias and len(pruned) else None)
        if method == "folding" and len(pruned):
            t0 = time.perf_counter()
            fg = fold_group(graph.slices(index, tp_group), m, imp_np, options, seed + index)
            timings["fold"] = time.perf_counter() - t0
            kept, pruned = fg["kept"], fg["pruned"]
            rec.kept, rec.pruned, rec.options, rec.plan, rec.labels = kept, pruned, options, fg["plan"], fg["labels"]
            rec.map_out, rec.map_in, rec.mu, rec.nu, rec.features = (fg["map_out"], fg["map_in"], fg["mu"], fg["nu"],
                                                                     fg["features"])
        elif method == "fusion" and len(pruned):
            pl = _plan(graph, index, tp_group, imp_np, kept, options, seed, keep_features)
            t0 = time.perf_counter()
            apply_map(pl["slices"], pl["map_out"], pl["map_in"], kept)
            timings.update(pl["timings"], update=time.perf_counter() - t0)
            rec.options, rec.cost, rec.plan = options, pl["cost"], pl["plan"]
            rec.map_out, rec.map_in, rec.mu, rec.nu = pl["map_out"], pl["map_in"], pl["mu"], pl["nu"]
            rec.features, rec.target_features = pl.get("features"), pl.get("target_features")
        if bias is not None:  # consumers absorb the expected contribution the group's change removes or adds
            bias_shift = max(bias_shift, bias.finish(rec.kept, *post_statistics(rec, *targets[rec.group.norms[0]],
                                                                                repair_opts)))
        t0 = time.perf_counter()
        graph.prune(index, rec.pruned.tolist())
        timings["prune"] = time.perf_counter() - t0
        rec.timings = timings
        records.append(rec)
    if method == "folding":  # merged with BatchNorm unfolded; fold now, so every method returns the same form
        fold_batchnorm(graph)
    model_out = graph.model
    rep = apply_repair(model_out, example_inputs, model, targets, records, repair_opts, repair_data,
                       {"largest_bias_shift": bias_shift} if repair_opts.corrects_bias else None)
    timings = dict(prepared.timings, total=time.perf_counter() - t_start)
    return PruneResult(model_out, records, timings, repair=rep)


def default_pruning(model, example_inputs, groups, sparsity, criterion="l1", **kwargs) -> PruneResult:
    """Algorithm 1: drop the n - m least important channels of each group."""
    return prune(model, example_inputs, groups, sparsity, method="default", criterion=criterion, **kwargs)


def intra_fusion(model, example_inputs, groups, sparsity, criterion="l1", options=None, **kwargs) -> PruneResult:
    """Algorithm 2: fuse all n channels of each group into m with an optimal-transport map."""
    return prune(model, example_inputs, groups, sparsity, method="fusion", criterion=criterion,
                 options=options, **kwargs)
