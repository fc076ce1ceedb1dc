"""Importance criteria: one score per channel of a group (the same score for both methods).

As in the paper, a criterion computes one vector per layer of the group (out-rows of producers, in-columns
of consumers; BatchNorms are folded and excluded), averages the vectors over the layers and divides by their
mean. Torch-Pruning's ``GroupMagnitudeImportance`` family computes exactly this when restricted to conv and
linear layers:

- ``l1``:     sum |w|
- ``l2``:     sum w^2
- ``taylor``: sum |w * dL/dw|   (needs gradients from a few batches: :func:`accumulate_gradients`)
- ``lamp``:   l2 with LAMP rescaling  score_i / sum_{j: score_j >= score_i} score_j
- ``random``: uniform scores from a seeded generator (a control)
- ``l1-raw``: ``l1`` of the weights as trained, BatchNorm not folded in (Torch-Pruning's usual ``l1`` on a
  network with BatchNorm), every group scored once on the unpruned model. Folding multiplies channel c's
  weights by gamma_c / sigma_c, so a channel whose outputs hardly vary (small running sigma) gets a large folded
  ``l1`` and is kept; ``l1-raw`` does not see that scale. It needs the unfolded weights:
  :func:`intrafusion.core.prune.prepare` keeps these scores (``PreparedModel.raw_l1``); on a graph alone it is
  ``l1``.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

__all__ = ["CRITERIA", "accumulate_gradients", "group_importance"]

CRITERIA = ("l1", "l2", "taylor", "lamp", "random", "l1-raw")
_TYPES = [nn.modules.conv._ConvNd, nn.Linear]


def _scorer(criterion: str):
    if criterion in ("l1", "l1-raw"):
        return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer="mean",
                                                      target_types=_TYPES)
    if criterion == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer="mean",
                                                      target_types=_TYPES)
    if criterion == "lamp":
        return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer="lamp",
                                                      target_types=_TYPES)
    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer="mean", target_types=_TYPES)
    raise ValueError(f"unknown importance criterion {criterion!r}: choose one of {', '.join(CRITERIA)}")


def group_importance(tp_group, criterion: str = "l1", seed: int = 0) -> torch.Tensor:
    """Importance of every channel of a group.

    Parameters
    ----------
    tp_group : torch_pruning Group
        The group with all its channels (``PruningGraph.tp_group``).
    criterion : {'l1', 'l2', 'taylor', 'lamp', 'random'}
    seed : int
        Seed of the ``random`` criterion.

    Returns
    -------
    torch.Tensor
        Shape (n,), float64, higher = more important.
    """
    n = len(tp_group[0].idxs)
    if criterion == "random":
        gen = torch.Generator().manual_seed(int(seed))
        scores = torch.rand(n, generator=gen, dtype=torch.float64)
        return scores / scores.mean()
    scorer = _scorer(criterion)
    if criterion == "taylor":
        missing = [
            it.dep.target.module
            for it in tp_group
            if isinstance(it.dep.target.module, tuple(_TYPES)) and it.dep.target.module.weight.grad is None
        ]
        if missing:
            raise ValueError(
                "the taylor criterion needs gradients: pass a few batches of data (taylor_batches) so they can "
                "be computed"
            )
    scores = scorer(tp_group)
    if scores is None:
        raise ValueError("this group has no conv/linear layer to score")
    return scores.detach().to(torch.float64).cpu()


def accumulate_gradients(model: nn.Module, batches) -> None:
    """Fill ``.grad`` of every parameter with the gradient of the mean cross-entropy over ``batches``.

    The model stays in eval mode (BatchNorm statistics are not touched).
    """
    model.zero_grad(set_to_none=True)
    loss_fn = nn.CrossEntropyLoss()
    count = 0
    with torch.enable_grad():
        for x, y in batches:
            loss = loss_fn(model(x), y)
            loss.backward()
            count += 1
    if count == 0:
        raise ValueError("the taylor criterion needs at least one batch of data")
    for p in model.parameters():
        if p.grad is not None:
            p.grad.div_(count)
