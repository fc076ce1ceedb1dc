"""Sweeps a row at a time: resumable jobs, one cell, curves, tables and CSV (the Fusion vs pruning page).

No Streamlit here: the pages in ``pages/`` draw what these functions return.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..core.prune import TransportOptions
from ..experiments.sweep import SweepRow, sweep

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
