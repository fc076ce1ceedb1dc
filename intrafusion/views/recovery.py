"""Fine-tuning jobs and recovery summaries (the Whole model & fine-tuning page).

No Streamlit here: the pages in ``pages/`` draw what these functions return.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn


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


@dataclass
class WholeModelRow:
    """Every group of a model pruned with one variant, measured: a table row, the per-layer std profile and the
    pruned model (kept for fine-tuning).

    Attributes
    ----------
    label : str
    table : dict
        method, uses data, accuracy %, parameters, MACs, logit distance, prune seconds (pruning and repair),
        repair seconds (the repair alone; 0 without one).
    profile : dict
        BatchNorm layer -> (mean, min, max) over its channels of std after pruning / std before.
    result : PruneResult
    """

    label: str
    table: dict
    profile: dict
    result: object = field(repr=False)


def whole_model_row(model: nn.Module, example_inputs, inputs, labels, variant, sparsity: float,
                    criterion: str = "l1", *, reference_logits=None, taylor_batches=None, repair_data=None,
                    profile_images: int = 128) -> WholeModelRow:
    """Prune every group of ``model`` (never mutated) with ``variant``, evaluate it and measure its per-layer
    spread: for every BatchNorm layer, std of each channel's output after pruning / before, on the first
    ``profile_images`` inputs (below 1: collapse, above 1: overshoot; see :func:`intrafusion.std_ratios`)."""
    from ..core.repair import std_ratios
    from .export import model_report
    from .variants import prune_variant, uses_data

    res = prune_variant(model, example_inputs, "all", sparsity, variant, criterion, taylor_batches=taylor_batches,
                        repair_data=repair_data)
    rep = model_report(res.model, example_inputs, inputs, labels, latency=False, reference_logits=reference_logits)
    table = {"method": variant.label, "uses data": uses_data(variant.repair), "accuracy %": rep["accuracy"],
             "parameters": rep["params"], "MACs": rep["macs"], "logit distance": rep["logit_distance"],
             "prune seconds": res.timings.get("total", 0.0),
             "repair seconds": res.repair.seconds if getattr(res, "repair", None) is not None else 0.0}
    ratios = std_ratios(res.model, model, inputs[:profile_images])
    profile = {name: (float(r.mean()), float(r.min()), float(r.max())) for name, r in ratios.items()}
    return WholeModelRow(variant.label, table, profile, res)
