"""Sweeps: default pruning vs Intra-Fusion over (group, sparsity) cells, one fresh copy per cell.

:func:`sweep` is a generator: each row is yielded as soon as its cell is evaluated, so a caller can draw
curves point by point, show progress, or stop early by not asking for more.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn

from ..core.prune import TransportOptions, check_sparsity, kept_count, prune
from ..evaluate import evaluate, predict_logits

__all__ = ["SweepRow", "method_label", "sweep", "sweep_cells"]


def method_label(method: str, normalization: str | None) -> str:
    """'default', 'fusion (paper)' or 'fusion (function-preserving)'."""
    return "default" if method == "default" else f"fusion ({normalization})"


@dataclass
class SweepRow:
    """One evaluated cell. ``seconds`` is the pruning time, ``eval_seconds`` the evaluation time."""

    group: int
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
    distances: np.ndarray | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return method_label(self.method, self.normalization)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("distances")
        d["label"] = self.label
        return d


def sweep_cells(groups: Sequence[int], sparsities: Sequence[float], methods: Sequence[str],
                normalizations: Sequence[str]) -> list[tuple[int, float, str, str | None]]:
    """The (group, sparsity, method, normalization) cells of a sweep, in run order."""
    if "fusion" in methods and not normalizations:
        raise ValueError("normalizations is empty, so fusion would be skipped: give 'paper' and/or "
                         "'function-preserving', or leave 'fusion' out of methods")
    cells = []
    for g in groups:
        for s in sparsities:
            check_sparsity(s)
            for method in methods:
                for norm in (normalizations if method == "fusion" else [None]):
                    cells.append((int(g), float(s), method, norm))
    return cells


def sweep(model: nn.Module, example_inputs: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor,
          groups: Sequence[int], sparsities: Sequence[float], criterion: str = "l1",
          methods: Sequence[str] = ("default", "fusion"), normalizations: Sequence[str] = ("paper",),
          options: TransportOptions | None = None, *, taylor_batches=None, seed: int = 0,
          keep_distances: bool = False, reference_logits: torch.Tensor | None = None) -> Iterator[SweepRow]:
    """Evaluate default pruning and Intra-Fusion on every (group, sparsity) cell.

    Parameters
    ----------
    model : nn.Module
        The unpruned model (never mutated).
    example_inputs : torch.Tensor
        A batch for tracing.
    inputs, labels : torch.Tensor
        The evaluation set (already preprocessed).
    groups, sparsities : sequences
        Cells; each group is pruned alone (all other groups untouched), as in the paper's data-free tables.
    criterion : str
        Importance criterion (the same for both methods).
    methods : subset of ('default', 'fusion')
    normalizations : subset of ('paper', 'function-preserving')
        Fusion is run once per normalisation.
    options : TransportOptions, optional
        Other transport settings; its ``normalization`` is overridden per row.
    reference_logits : torch.Tensor, optional
        Logits of the unpruned model on ``inputs`` (computed if not given).

    Yields
    ------
    SweepRow
    """
    options = options or TransportOptions()
    cells = sweep_cells(groups, sparsities, methods, normalizations)  # bad settings fail before any work
    if reference_logits is None:
        reference_logits = predict_logits(model, inputs)
    for g, s, method, norm in cells:
        opts = replace(options, normalization=norm) if norm else options
        t0 = time.perf_counter()
        res = prune(model, example_inputs, g, s, method=method, criterion=criterion, options=opts,
                    taylor_batches=taylor_batches, seed=seed)
        t1 = time.perf_counter()
        ev = evaluate(res.model, inputs, labels, reference_logits)
        t2 = time.perf_counter()
        rec = res.records[0]
        yield SweepRow(
            group=g, n=rec.n, sparsity=s, kept=kept_count(rec.n, s), method=method, normalization=norm,
            criterion=criterion, accuracy=ev.accuracy, logit_distance=float(ev.logit_distance),
            agreement=float(ev.agreement), params=sum(p.numel() for p in res.model.parameters()),
            seconds=t1 - t0, eval_seconds=t2 - t1, distances=ev.distances if keep_distances else None,
        )
