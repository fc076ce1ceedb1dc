"""Pruning variants for the explorer's sweeps and trade-off curves: one method with all its settings.

A :class:`Variant` names everything that decides how a group is pruned: the method (default pruning,
Intra-Fusion, Model Folding when the library has it), the map normalisation, the other transport options
(solver, marginals, targets, order p of the norm), and the repair applied afterwards (when the library has
it). :func:`evaluate_cell` prunes one group (or every group) of a fresh copy with a variant and measures it;
the rows it returns (:class:`CellRow`) feed the curves, the side-by-side comparison of two settings and the
group x sparsity grid.

Capabilities are read from the library at call time (:func:`available_methods`, :func:`available_repairs`),
so the pages offer repair and folding exactly when :mod:`intrafusion.core` provides them.
"""

from __future__ import annotations

import copy
import csv
import inspect
import io
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn

from ..core import prune as prune_module
from ..core.prune import TransportOptions, kept_count, prune
from ..evaluate import count_macs_params, evaluate

__all__ = [
    "AUTO_CANDIDATES",
    "AUTO_CRITERION",
    "CellRow",
    "Variant",
    "VariantCurve",
    "accuracy_grid",
    "available_methods",
    "available_repairs",
    "cell_tasks",
    "evaluate_cell",
    "prune_variant",
    "rows_to_csv",
    "rows_table",
    "setting_differences",
    "uses_data",
    "variant_curves",
    "with_setting",
]


def available_methods() -> tuple[str, ...]:
    """Pruning methods the library offers now (('default', 'fusion') and 'folding' once it exists)."""
    return tuple(getattr(prune_module, "METHODS", ("default", "fusion")))


def available_repairs() -> tuple[str, ...]:
    """Repair kinds the library offers now (('none',) until :mod:`intrafusion.core.repair` exists)."""
    try:
        from ..core import repair as repair_module
    except ImportError:
        return ("none",)
    if "repair" not in inspect.signature(prune).parameters:
        return ("none",)
    return tuple(getattr(repair_module, "REPAIRS", ("none",)))


@dataclass(frozen=True)
class Variant:
    """One way of pruning: method, normalisation, transport options, repair, and which setting it belongs to.

    Attributes
    ----------
    method : str
        'default', 'fusion' or 'folding'.
    normalization : str or None
        Intra-Fusion's map normalisation ('paper' or 'function-preserving'); None for the other methods.
    options : tuple
        Sorted (name, value) pairs of :class:`~intrafusion.core.prune.TransportOptions` (normalisation aside).
    repair : str
        Repair kind applied after pruning ('none': no repair).
    setting : str
        '' for a single setting, 'A' or 'B' when two settings are compared side by side.
    refit_target : str
        The refit repairs' target ('mapped', 'kept' or 'closest', :class:`~intrafusion.core.repair.RepairOptions`);
        ignored by the other repairs.
    """

    method: str
    normalization: str | None = None
    options: tuple = ()
    repair: str = "none"
    setting: str = ""
    refit_target: str = "mapped"

    @property
    def refits(self) -> bool:
        return str(self.repair).startswith("refit-")

    @property
    def base_label(self) -> str:
        """The label without the setting: 'default', 'fusion (paper)', 'folding', '... + moments repair',
        '... + refit-synthetic (closest) repair'."""
        name = f"fusion ({self.normalization})" if self.method == "fusion" else self.method
        if self.repair in ("none", None):
            return name
        target = f" ({self.refit_target})" if self.refits and self.refit_target != "mapped" else ""
        return f"{name} + {self.repair}{target} repair"

    @property
    def label(self) -> str:
        return f"{self.base_label} [{self.setting}]" if self.setting else self.base_label

    @property
    def uses_data(self) -> bool:
        """True when the repair reads unlabelled training images (``data``, ``refit-data``): the caller must
        fetch them and pass ``repair_data``."""
        return uses_data(self.repair)

    def transport_options(self) -> TransportOptions:
        opts = dict(self.options)
        opts["normalization"] = self.normalization or "paper"
        return TransportOptions(**opts)


def cell_tasks(groups: Sequence, sparsities: Sequence[float], variants: Sequence[Variant]) -> list[tuple]:
    """(group, sparsity, variant) tasks in run order: by sparsity first, so every curve grows from the left
    while the job runs (a stopped job then still shows whole curves over the sparsities it reached)."""
    tasks = []
    for s in sparsities:
        prune_module.check_sparsity(s)
        for g in groups:
            for v in variants:
                tasks.append((g, float(s), v))
    return tasks


@dataclass
class CellRow:
    """One pruned and evaluated model.

    ``group`` is the group index, or 'all' when every group was pruned at ``sparsity``. ``macs`` and
    ``latency_ms`` are filled when asked for (None otherwise). ``seconds`` is the pruning (and repair) time.
    """

    group: int | str
    n: int
    sparsity: float
    kept: int
    label: str
    base_label: str
    setting: str
    method: str
    normalization: str | None
    repair: str
    criterion: str
    accuracy: float
    logit_distance: float
    agreement: float
    params: int
    macs: int | None
    latency_ms: float | None
    seconds: float
    eval_seconds: float
    distances: np.ndarray | None = field(default=None, repr=False)

    @property
    def uses_data(self) -> bool:
        """True when the repair read training images (``data``, ``refit-data``; never their labels)."""
        return uses_data(self.repair)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("distances")
        d["uses_data"] = self.uses_data
        return d


def uses_data(repair: str | None) -> bool:
    """Whether a repair kind reads real training images (``data`` and ``refit-data``: the upper bounds the others
    are measured against). Read from :class:`intrafusion.core.repair.RepairOptions` when the library has it."""
    if repair in (None, "none"):
        return False
    try:
        from ..core.repair import RepairOptions

        return bool(RepairOptions(repair).uses_data)
    except (ImportError, TypeError, ValueError):
        return repair in ("data", "refit-data")


#: The criterion that is chosen per cell without a label: l1 or l1-raw, whichever pruned model stays closest to the
#: original's logits on the repair's inputs (:func:`intrafusion.core.select.prune_closest`).
AUTO_CRITERION = "auto"
AUTO_CANDIDATES = ("l1", "l1-raw")


def prune_variant(model: nn.Module, example_inputs: torch.Tensor, groups, sparsity: float, variant: Variant,
                  criterion: str = "l1", *, taylor_batches=None, repair_data: torch.Tensor | None = None,
                  seed: int = 0):
    """:func:`intrafusion.core.prune.prune` with a variant's settings (repair passed only when asked for);
    ``criterion='auto'`` (:data:`AUTO_CRITERION`) runs :func:`intrafusion.core.select.prune_closest`."""
    kwargs = {}
    if variant.repair not in ("none", None):
        if variant.repair not in available_repairs():
            raise ValueError(f"repair {variant.repair!r} is not available: choose one of "
                             f"{', '.join(available_repairs())}")
        kwargs["repair"] = variant.repair
        if variant.refits and variant.refit_target != "mapped":
            from ..core.repair import RepairOptions

            kwargs["repair"] = RepairOptions(variant.repair, target=variant.refit_target)
        if uses_data(variant.repair):
            if repair_data is None:
                raise ValueError(f"the '{variant.repair}' repair needs unlabelled training images: pass repair_data")
            kwargs["repair_data"] = repair_data
    if variant.method not in available_methods():
        raise ValueError(f"method {variant.method!r} is not available: choose one of "
                         f"{', '.join(available_methods())}")
    if criterion == AUTO_CRITERION:
        from ..core.select import prune_closest

        return prune_closest(model, example_inputs, groups, sparsity, AUTO_CANDIDATES, method=variant.method,
                             options=variant.transport_options(), seed=seed,
                             **{"repair": "none", **kwargs})
    return prune(model, example_inputs, groups, sparsity, method=variant.method, criterion=criterion,
                 options=variant.transport_options(), taylor_batches=taylor_batches, seed=seed, **kwargs)


def _latency_ms(model: nn.Module, example_inputs: torch.Tensor, repeats: int = 15, budget_s: float = 0.3) -> float:
    """Median wall-clock milliseconds of a batch-1 forward pass (a short, noisy measurement)."""
    x = example_inputs[:1]
    times = []
    with torch.inference_mode():
        model(x)
        start = time.perf_counter()
        while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
            t0 = time.perf_counter()
            model(x)
            times.append(1000.0 * (time.perf_counter() - t0))
    return float(np.median(times))


def evaluate_cell(model: nn.Module, example_inputs: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor,
                  group, sparsity: float, variant: Variant, criterion: str = "l1", *,
                  reference_logits: torch.Tensor | None = None, taylor_batches=None,
                  repair_data: torch.Tensor | None = None, keep_distances: bool = False, cost: bool = False,
                  latency: bool = False, seed: int = 0) -> CellRow:
    """Prune ``group`` (an index, or 'all') of a copy of ``model`` at ``sparsity`` with ``variant``; evaluate.

    Parameters
    ----------
    model : nn.Module
        Never mutated.
    inputs, labels : torch.Tensor
        Evaluation set; accuracy is the percent of ``labels`` predicted.
    reference_logits : torch.Tensor, optional
        The unpruned model's logits on ``inputs``: the logit distance ||f(x) - f_pruned(x)||_2 per image.
    cost : bool
        Also count MACs (on a copy) of the pruned model.
    latency : bool
        Also measure the median batch-1 forward time (ms) of the pruned model.

    Returns
    -------
    CellRow
    """
    t0 = time.perf_counter()
    groups = "all" if group == "all" else int(group)
    res = prune_variant(model, example_inputs, groups, sparsity, variant, criterion,
                        taylor_batches=taylor_batches, repair_data=repair_data, seed=seed)
    t1 = time.perf_counter()
    ev = evaluate(res.model, inputs, labels, reference_logits)
    t2 = time.perf_counter()
    n = sum(r.n for r in res.records)
    macs = count_macs_params(copy.deepcopy(res.model), example_inputs)[0] if cost else None
    lat = _latency_ms(res.model, example_inputs) if latency else None
    return CellRow(
        group=group if group == "all" else int(group), n=n, sparsity=float(sparsity),
        kept=sum(kept_count(r.n, sparsity) for r in res.records), label=variant.label,
        base_label=variant.base_label, setting=variant.setting, method=variant.method,
        normalization=variant.normalization, repair=variant.repair,
        criterion=f"{res.choices['criterion']} (auto)" if "criterion" in res.choices else criterion,
        accuracy=ev.accuracy,
        logit_distance=float(ev.logit_distance) if ev.logit_distance is not None else float("nan"),
        agreement=float(ev.agreement) if ev.agreement is not None else float("nan"),
        params=sum(p.numel() for p in res.model.parameters()), macs=macs, latency_ms=lat, seconds=t1 - t0,
        eval_seconds=t2 - t1, distances=ev.distances if keep_distances else None,
    )


@dataclass
class VariantCurve:
    """Accuracy against sparsity for one (group, variant label); points sorted by sparsity."""

    group: int | str
    label: str
    base_label: str
    setting: str
    sparsities: list[float]
    accuracies: list[float]
    logit_distances: list[float]


def variant_curves(rows: Iterable[CellRow]) -> list[VariantCurve]:
    """Rows grouped into curves, one per (group, label), in first-seen order."""
    by: dict[tuple, list[CellRow]] = {}
    for r in rows:
        by.setdefault((r.group, r.label), []).append(r)
    out = []
    for (g, label), rs in by.items():
        rs = sorted(rs, key=lambda r: r.sparsity)
        out.append(VariantCurve(g, label, rs[0].base_label, rs[0].setting, [r.sparsity for r in rs],
                                [r.accuracy for r in rs], [r.logit_distance for r in rs]))
    return out


def setting_differences(rows: Iterable[CellRow]) -> list[dict]:
    """Accuracy of setting B minus setting A for every (group, sparsity, method) both have computed.

    Returns
    -------
    list of dict
        Keys ``group, sparsity, method, A, B, B - A`` (accuracies in percent, difference in points).
    """
    a: dict[tuple, float] = {}
    b: dict[tuple, float] = {}
    for r in rows:
        key = (r.group, r.sparsity, r.base_label)
        if r.setting == "A":
            a[key] = r.accuracy
        elif r.setting == "B":
            b[key] = r.accuracy
    out = []
    for key in a:
        if key in b:
            g, s, label = key
            out.append({"group": g, "sparsity": s, "method": label, "A": a[key], "B": b[key],
                        "B - A": b[key] - a[key]})
    return out


def accuracy_grid(rows: Iterable[CellRow], groups: Sequence, sparsities: Sequence[float], label: str,
                  reference: str = "default") -> np.ndarray:
    """Accuracy of ``label`` minus that of ``reference`` per (group, sparsity): NaN where either is missing.

    Returns
    -------
    numpy.ndarray
        Shape (len(groups), len(sparsities)), in points.
    """
    acc: dict[tuple, float] = {}
    for r in rows:
        acc[(r.group, round(r.sparsity, 6), r.label)] = r.accuracy
    grid = np.full((len(groups), len(sparsities)), np.nan)
    for i, g in enumerate(groups):
        for j, s in enumerate(sparsities):
            x, y = acc.get((g, round(s, 6), label)), acc.get((g, round(s, 6), reference))
            if x is not None and y is not None:
                grid[i, j] = x - y
    return grid


_FIELDS = ("group", "n", "sparsity", "kept", "label", "setting", "method", "normalization", "repair", "uses_data",
           "criterion", "accuracy", "logit_distance", "agreement", "params", "macs", "latency_ms", "seconds",
           "eval_seconds")


def rows_table(rows: Iterable[CellRow]) -> list[dict]:
    """The rows as dicts in CSV column order (``setting``, ``macs``, ``latency_ms`` may be empty)."""
    return [{k: getattr(r, k) for k in _FIELDS} for r in rows]


def rows_to_csv(rows: Iterable[CellRow]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(_FIELDS), lineterminator="\n")
    w.writeheader()
    for d in rows_table(rows):
        w.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in d.items()})
    return buf.getvalue()


def with_setting(variants: Iterable[Variant], setting: str, options: tuple) -> list[Variant]:
    """The variants with transport options ``options`` and setting name ``setting`` (default pruning keeps
    none: its result does not depend on them)."""
    return [replace(v, setting=setting, options=options if v.method == "fusion" else ()) for v in variants]
