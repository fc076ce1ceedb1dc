"""Evaluation: exact per-sample accuracy, output preservation, size.

``logit_distance`` is the paper's output-preservation measure: the L2 distance between the pruned and the
original model's logits, per sample (its mean is reported). ``agreement`` is the fraction of samples whose
top-1 class is unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from .device import model_device, resolve_device

__all__ = ["Evaluation", "count_macs_params", "evaluate", "evaluate_logits", "predict_logits"]


@torch.no_grad()
def predict_logits(model: nn.Module, inputs: torch.Tensor, batch_size: int = 512,
                   device: str | torch.device | None = None) -> torch.Tensor:
    """Logits of ``model`` (in eval mode, restored afterwards) on ``inputs``, batched, returned on the CPU.

    ``device`` (``auto``, ``cpu``, ``cuda``): where to run; default where the model is. A model elsewhere is
    copied there (the caller's model is not moved).
    """
    if len(inputs) == 0:
        raise ValueError("the evaluation set is empty: give at least one input (check the dataset and --limit)")
    where = model_device(model) if device is None else resolve_device(device)
    if model_device(model) != where:
        model = copy.deepcopy(model).to(where)
    was_training = model.training
    model.eval()
    try:
        out = [model(inputs[i : i + batch_size].to(where)).cpu() for i in range(0, len(inputs), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).float()


@dataclass
class Evaluation:
    """Results on one dataset. Per-sample arrays allow exact counts and distributions.

    Attributes
    ----------
    accuracy : float
        Percent of samples classified correctly.
    correct : np.ndarray of bool, (N,)
    logit_distance : float or None
        Mean per-sample L2 distance to the reference logits (None without a reference).
    distances : np.ndarray or None, (N,)
    agreement : float or None
        Percent of samples whose top-1 prediction equals the reference's.
    """

    accuracy: float
    correct: np.ndarray
    logit_distance: float | None = None
    distances: np.ndarray | None = None
    agreement: float | None = None

    @property
    def n_correct(self) -> int:
        return int(self.correct.sum())


def evaluate(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
             reference_logits: torch.Tensor | None = None, batch_size: int = 512,
             device: str | torch.device | None = None) -> Evaluation:
    """Accuracy of ``model`` and, given the unpruned model's logits, output preservation.

    ``device``: where the forward passes run (default where the model is); the results are the same within
    float tolerance on every device.
    """
    if len(inputs) != len(labels):
        raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels: the evaluation set must pair them")
    return evaluate_logits(predict_logits(model, inputs, batch_size, device), labels, reference_logits)


def evaluate_logits(logits: torch.Tensor, labels: torch.Tensor,
                    reference_logits: torch.Tensor | None = None) -> Evaluation:
    """:func:`evaluate` from logits already computed (e.g. by a cached partial forward pass)."""
    logits = logits.cpu()
    pred = logits.argmax(1)
    labels = labels.cpu()
    if reference_logits is not None:
        reference_logits = reference_logits.cpu()
    correct = (pred == labels).numpy()
    ev = Evaluation(accuracy=100.0 * float(correct.mean()) if len(correct) else float("nan"), correct=correct)
    if reference_logits is not None:
        dist = (logits - reference_logits).norm(dim=1).cpu().numpy()
        ev.distances = dist
        ev.logit_distance = float(dist.mean())
        ev.agreement = 100.0 * float((pred == reference_logits.argmax(1)).float().mean())
    return ev


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """Multiply-accumulates of one forward pass of ``example_inputs[:1]`` and the parameter count."""
    macs, params = tp.utils.count_ops_and_params(model, example_inputs[:1])
    return int(macs), int(params)
