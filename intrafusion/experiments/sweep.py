"""Sweeps: methods x normalisations x repairs over (group, sparsity) cells, or over sparsities for the whole model.

:func:`sweep` is a generator: each row is yielded as soon as its cell is evaluated (in cell order), so a caller
can draw curves point by point, show progress, or stop early by not asking for more. With ``workers > 1`` the
cells run as Ray tasks (:mod:`intrafusion.parallel`) and the rows are the serial ones, bit for bit (timings
aside).

What does not change between cells is done once per process: the BatchNorm folding and the dependency graph
(a prepared template is cloned for every cell instead of copying, tracing and folding the model again), the
unpruned model's logits, the synthetic repair batch, and for single-group cells without repair the activations
that enter the group (only the layers from the group on are re-run to evaluate a cell).
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn

from ..core import prune as prune_mod
from ..core.prune import PreparedModel, TransportOptions, check_sparsity, kept_count, prepare
from ..core.repair import REPAIRS, RepairOptions
from ..device import compute_on, resolve_device
from ..evaluate import evaluate, evaluate_logits, predict_logits
from ..parallel import map_tasks

__all__ = ["SweepRow", "clone_prepared", "method_label", "sweep", "sweep_cells"]

WHOLE = "all"  # the group of a whole-model row


def method_label(method: str, normalization: str | None) -> str:
    """'default', 'folding', 'fusion (paper)' or 'fusion (function-preserving)'."""
    return f"fusion ({normalization})" if method == "fusion" else method


@dataclass
class SweepRow:
    """One evaluated cell. ``seconds`` is the pruning time (repair included), ``eval_seconds`` the evaluation
    time. ``group`` is ``'all'`` for whole-model rows, whose ``n`` and ``kept`` are summed over the groups.
    ``uses_data`` is True when the repair read real (unlabelled) training images."""

    group: int | str
    n: int
    sparsity: float
    kept: int
    method: str
    normalization: str | None
    criterion: str
    accuracy: float
    logit_distance: float
    agreement: float
    params: int
    seconds: float
    eval_seconds: float
    repair: str = "none"
    uses_data: bool = False
    distances: np.ndarray | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return method_label(self.method, self.normalization)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("distances")
        d["label"] = self.label
        return d


Cell = tuple  # (group or 'all', sparsity, method, normalization or None, repair)


def _methods_available() -> tuple[str, ...]:
    return tuple(prune_mod.METHODS)


def sweep_cells(groups: Sequence[int] | str, sparsities: Sequence[float], methods: Sequence[str],
                normalizations: Sequence[str], repairs: Sequence[str] = ("none",)) -> list[Cell]:
    """The (group, sparsity, method, normalization, repair) cells of a sweep, in run order.

    ``groups == 'all'`` gives whole-model cells (group ``'all'``). Normalisations apply to fusion only (None
    for the other methods). Bad settings raise here, before any work.
    """
    if "fusion" in methods and not normalizations:
        raise ValueError("normalizations is empty, so fusion would be skipped: give 'paper' and/or "
                         "'function-preserving', or leave 'fusion' out of methods")
    if not methods:
        raise ValueError("methods is empty: give at least one of " + ", ".join(_methods_available()))
    for method in methods:
        if method not in _methods_available():
            extra = " (Model Folding is not in this version's core yet)" if method == "folding" else ""
            raise ValueError(f"unknown method {method!r}{extra}: choose from {', '.join(_methods_available())}")
    for r in repairs or ("none",):
        if r not in REPAIRS:
            raise ValueError(f"unknown repair {r!r}: choose from {', '.join(REPAIRS)}")
    cells = []
    for g in ([WHOLE] if isinstance(groups, str) and groups == WHOLE else groups):
        for s in sparsities:
            check_sparsity(s)
            for method in methods:
                for norm in (normalizations if method == "fusion" else [None]):
                    for r in repairs or ("none",):
                        cells.append((g if g == WHOLE else int(g), float(s), method, norm, r))
    return cells


def clone_prepared(template: PreparedModel) -> PreparedModel:
    """An independent copy of a prepared (folded, traced) model, without tracing or folding again.

    The model and its pruning graph are copied together, so the graph refers to the copied layers. Objects that
    cannot (and need not) be copied are shared: Torch-Pruning's stateless pruning functions (sharing keeps
    their identity, which the group description compares), the autograd nodes recorded while tracing (read only
    when the graph is built) and the tracing inputs.
    """
    dg = template.graph.dg
    memo = {id(dg.ops): dg.ops, id(template.graph.example_inputs): template.graph.example_inputs}
    for box in (dg.REGISTERED_PRUNERS, dg.CUSTOMIZED_PRUNERS):
        for pruner in box.values():
            if pruner is not None:
                memo[id(pruner)] = pruner
    for node in dg.module2node.values():
        memo[id(node.grad_fn)] = node.grad_fn
    model, graph = copy.deepcopy((template.model, template.graph), memo)
    return PreparedModel(model, graph, {}, template.raw_l1)


_TEMPLATE: dict = {}  # per process: {sweep token: prepared template}, the latest sweep only


def _template(shared: dict) -> PreparedModel:
    key = shared["token"]
    if key not in _TEMPLATE:
        _TEMPLATE.clear()
        _TEMPLATE[key] = prepare(shared["model"], shared["example_inputs"])
    return _TEMPLATE[key]


def _prune_cell(cell: Cell, shared: dict):
    """Prune a clone of the prepared template as ``cell`` says: (PruneResult, group indices)."""
    g, s, method, norm, repair = cell
    template = _template(shared)  # also gives the groups of a whole-model cell
    groups = [grp.index for grp in template.graph.groups if grp.prunable] if g == WHOLE else [g]
    if method == "folding":  # Model Folding starts from the unfolded model: it prepares its own copy
        options, prepared = shared["folding_options"], None
    else:
        options = replace(shared["options"], normalization=norm) if norm else shared["options"]
        prepared = clone_prepared(template)
    repair_opts = replace(shared["repair_options"], kind=repair)
    with compute_on(shared["device"]):  # the cost on the chosen device; weights stay (and are updated) on the CPU
        res = prune_mod.prune(shared["model"], shared["example_inputs"], groups, s, method=method,
                              criterion=shared["criterion"], options=options, seed=shared["seed"],
                              taylor_batches=shared["taylor_batches"], repair=repair_opts,
                              repair_data=shared["repair_data"], prepared=prepared)
    return res, groups


_EVALUATORS: dict = {}  # per process: {(sweep token, group): GroupEvaluator}, the latest sweep only


def _evaluate_cell(cell: Cell, model: nn.Module, shared: dict):
    """Evaluate a pruned model. A single group pruned with no repair changes only that group's layers: the
    activations entering them are computed once per group (``GroupEvaluator``, identical logits: it checks its
    first model against a full forward pass and falls back to full passes if they differ)."""
    g, repair = cell[0], cell[4]
    if g == WHOLE or repair != "none" or shared["device"] not in (None, "cpu"):
        return evaluate(model, shared["inputs"], shared["labels"], shared["reference_logits"],
                        device=shared["device"])
    from .reproduce.evaluator import GroupEvaluator  # here: the reproduce package imports this module

    key = (shared["token"], g)
    first = key not in _EVALUATORS
    if first:
        if any(k[0] != shared["token"] for k in _EVALUATORS):
            _EVALUATORS.clear()
        template = _template(shared)
        grp = template.graph.groups[g]
        changed = set(grp.producers) | set(grp.consumers) | set(grp.norms) | set(grp.depthwise)
        _EVALUATORS[key] = GroupEvaluator(template.model, changed, shared["inputs"])
    logits = _EVALUATORS[key].logits(model, check=first)
    return evaluate_logits(logits, shared["labels"], shared["reference_logits"])


def _run_cell(cell: Cell, shared: dict) -> SweepRow:
    """Prune and evaluate one cell (a Ray task or a step of the serial loop)."""
    g, s, method, norm, repair = cell
    t0 = time.perf_counter()
    res, _ = _prune_cell(cell, shared)
    t1 = time.perf_counter()
    ev = _evaluate_cell(cell, res.model, shared)
    t2 = time.perf_counter()
    n = sum(r.n for r in res.records)
    kept = sum(kept_count(r.n, s) for r in res.records)
    return SweepRow(
        group=g, n=n, sparsity=s, kept=kept, method=method, normalization=norm, criterion=shared["criterion"],
        accuracy=ev.accuracy, logit_distance=float(ev.logit_distance), agreement=float(ev.agreement),
        params=sum(p.numel() for p in res.model.parameters()), seconds=t1 - t0, eval_seconds=t2 - t1,
        repair=repair, uses_data=RepairOptions.coerce(repair).uses_data,
        distances=ev.distances if shared["keep_distances"] else None,
    )


def sweep(model: nn.Module, example_inputs: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor,
          groups: Sequence[int] | str, sparsities: Sequence[float], criterion: str = "l1",
          methods: Sequence[str] = ("default", "fusion"), normalizations: Sequence[str] = ("paper",),
          options: TransportOptions | None = None, *, folding_options=None, repairs: Sequence[str] = ("none",),
          repair_options: RepairOptions | None = None, repair_data: torch.Tensor | None = None,
          taylor_batches=None, seed: int = 0, keep_distances: bool = False,
          reference_logits: torch.Tensor | None = None, workers: int = 1, address: str | None = None,
          device: str | None = None, progress=None) -> Iterator[SweepRow]:
    """Evaluate every (group, sparsity, method, normalisation, repair) cell.

    Parameters
    ----------
    model : nn.Module
        The unpruned model (never mutated).
    example_inputs : torch.Tensor
        A batch for tracing.
    inputs, labels : torch.Tensor
        The evaluation set (already preprocessed).
    groups : sequence of int, or 'all'
        Group indices, each pruned alone (all other groups untouched, the paper's data-free tables); or
        ``'all'``: whole-model cells, every prunable group pruned at once at each sparsity (group ``'all'``).
    sparsities : sequence of float
    criterion : str
        Importance criterion (the same for every method).
    methods : subset of ``core.prune.METHODS`` ('default', 'fusion', and 'folding' where the core has it)
    normalizations : subset of ('paper', 'function-preserving')
        Fusion is run once per normalisation.
    options : TransportOptions, optional
        Other transport settings; its ``normalization`` is overridden per row.
    folding_options : FoldingOptions, optional
        Model Folding's settings, for ``method='folding'`` (default: the core's defaults).
    repairs : subset of ('none', 'moments', 'synthetic', 'data')
        Every method is run once per repair. ``data`` needs ``repair_data``.
    repair_options : RepairOptions, optional
        Other repair settings; its ``kind`` is overridden per row.
    repair_data : torch.Tensor, optional
        Unlabelled training inputs (N, C, H, W) for the ``data`` repair. Never labels.
    reference_logits : torch.Tensor, optional
        Logits of the unpruned model on ``inputs`` (computed if not given).
    workers : int
        1: cells run here, one after another. More: cells run as Ray tasks on that many local workers
        (or on the cluster at ``address`` / ``$RAY_ADDRESS``); the rows are the same.
    device : {'auto', 'cpu', 'cuda'}, optional
        Where the transport cost and the evaluation run (default: the CPU, where the model is); the pruned
        weights are updated on the CPU. Rows equal the CPU's within float tolerance.
    progress : see :func:`intrafusion.parallel.map_tasks`.

    Yields
    ------
    SweepRow
        In cell order (:func:`sweep_cells`).
    """
    options = options or TransportOptions()
    repairs = tuple(repairs or ("none",))
    cells = sweep_cells(groups, sparsities, methods, normalizations, repairs)  # bad settings fail before any work
    if any(RepairOptions.coerce(r).uses_data for r in repairs) and repair_data is None:
        raise ValueError("the 'data' and 'refit-data' repairs need repair_data: a few hundred unlabelled training "
                         "images (N, C, H, W); leave them out of repairs for a sweep without data")
    repair_options = repair_options or RepairOptions()
    if "synthetic" in repairs:  # made once (and cached on disk) here, not raced by every worker
        from ..core.repair import synthetic_batch

        synthetic_batch(model, example_inputs, repair_options.synthetic_size, repair_options.synthetic_steps,
                        repair_options.seed, repair_options.cache_dir, repair_options.synthetic_lr)
    if taylor_batches is not None and not isinstance(taylor_batches, list | tuple):
        taylor_batches = list(taylor_batches)
    device = None if device is None else str(resolve_device(device))
    if reference_logits is None:
        reference_logits = predict_logits(model, inputs, device=device)
    shared = dict(token=uuid.uuid4().hex, model=model, example_inputs=example_inputs, inputs=inputs, labels=labels,
                  reference_logits=reference_logits, options=options, repair_options=repair_options,
                  repair_data=repair_data, taylor_batches=taylor_batches, criterion=criterion, seed=seed,
                  keep_distances=keep_distances, device=device, folding_options=folding_options)
    gpus = 1.0 / workers if device is not None and device.startswith("cuda") else 0.0  # Ray hides GPUs otherwise
    yield from map_tasks(_run_cell, cells, workers=workers, address=address, shared=shared, progress=progress,
                         gpus_per_task=gpus)
