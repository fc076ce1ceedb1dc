"""Choosing among pruned candidates without labels: keep the one whose logits stay closest to the original's.

A data-free pipeline has choices the numbers do not settle once for all models (which importance, which refit
target). On the repair's own inputs x_1..x_N (the synthetic batch, or unlabelled images), candidate f' is
scored by the mean logit gap to the original network f,

    gap(f') = (1/N) sum_i || f'(x_i) - f(x_i) ||_2,

and the smallest gap wins. No label is read; the same inputs the repair fitted on are reused, so the gap is an
in-sample score, which is fair between candidates that fit the same number of weights on the same inputs (a
repair without inputs is compared on the synthetic batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["logit_gap", "prune_closest", "repair_inputs"]


@torch.no_grad()
def logit_gap(model: nn.Module, original: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> float:
    """Mean L2 distance between ``model``'s and ``original``'s outputs on ``inputs`` (both in eval mode)."""
    model.eval()
    original.eval()
    total = 0.0
    for i in range(0, len(inputs), batch_size):
        chunk = inputs[i : i + batch_size]
        total += float((model(chunk).double() - original(chunk).double()).norm(dim=1).sum())
    return total / max(len(inputs), 1)


def repair_inputs(model: nn.Module, example_inputs: torch.Tensor, repair, repair_data=None) -> torch.Tensor:
    """The inputs candidates are compared on: the repair's own (its cached synthetic batch, or ``repair_data``);
    for a repair without inputs (none, bias, moments), the synthetic batch with the repair's recipe and seed,
    so that the comparison still reads no data."""
    from .repair import RepairOptions
    from .synthetic import synthetic_batch_info

    options = RepairOptions.coerce(repair)
    if options.inputs == "data":
        if repair_data is None:
            raise ValueError(f"repair='{options.kind}' needs repair_data (a few hundred unlabelled inputs)")
        return repair_data
    return synthetic_batch_info(model, example_inputs, options.synthetic_options(), options.cache_dir)[0]


def prune_closest(model: nn.Module, example_inputs: torch.Tensor, groups, sparsity: float,
                  criteria: Sequence[str] = ("l1", "l1-raw"), *, repair, repair_data=None, **kwargs):
    """``prune`` once per importance criterion; return the result whose logits are closest to ``model``'s.

    Parameters
    ----------
    model, example_inputs, groups, sparsity
        As for :func:`intrafusion.core.prune.prune`.
    criteria : sequence of str
        The candidates (default: ``l1`` on the folded weights, as the paper, and ``l1-raw``).
    repair : RepairOptions or str
        The candidates are compared on its inputs (:func:`repair_inputs`: a synthetic batch unless it reads
        unlabelled data); a model without BatchNorm has no synthetic batch, so it needs a ``data`` repair.
    repair_data, **kwargs
        Passed to every ``prune`` call.

    Returns
    -------
    PruneResult
        The winner; ``result.choices`` holds ``criterion`` (the chosen one) and ``criterion_logit_gaps`` (also
        in ``result.repair.details`` when there is a repair).
    """
    from .prune import prune

    if not criteria:
        raise ValueError("give at least one importance criterion to choose from")
    inputs = repair_inputs(model, example_inputs, repair, repair_data)
    gaps, best = {}, None
    for criterion in criteria:
        res = prune(model, example_inputs, groups, sparsity, criterion=criterion, repair=repair,
                    repair_data=repair_data, **kwargs)
        gaps[criterion] = logit_gap(res.model, model, inputs)
        if best is None or gaps[criterion] < gaps[best[0]]:
            best = (criterion, res)
    criterion, res = best
    res.choices.update(criterion=criterion, criterion_logit_gaps=gaps)
    if res.repair is not None:
        res.repair.details.update(res.choices)
    return res
