"""BatchNorm folding: function-preserving, done before scoring for BOTH methods (as in the paper).

For a BatchNorm that directly follows a conv/linear layer (and is that layer's only consumer), with
s = gamma / sqrt(var + eps):

    W' = s * W,   b' = s * b,   BN' : mean = 0, var = 1 - eps, gamma = 1, beta' = beta - s * mean

so BN'(W' x + b') = W' x + b' + beta' equals BN(W x + b). The BN is left in place as a pure per-channel shift
(the paper makes it an identity and moves the shift into the conv bias; keeping the shift in the BN leaves
the architecture and its state-dict keys unchanged, and the shift is fused like a bias). After folding,
importance and cost see the scaled weights, as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from .groups import PruningGraph, UnsupportedLayerError

__all__ = ["bn_targets", "fold_batchnorm"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


@torch.no_grad()
def bn_targets(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel statistics that folding discards: {BatchNorm name: (beta, |gamma|)}.

    The folded pre-activation a_j = gamma_j (z - mean_j) / sqrt(var_j + eps) + beta_j has mean beta_j and
    std |gamma_j| (up to the factor sqrt(var / (var + eps))) over the training distribution: the targets a
    repair restores. Call it on the unfolded model.
    """
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, _BN):
            n = m.num_features
            beta = m.bias.detach().clone() if m.affine else torch.zeros(n)
            gamma = m.weight.detach().abs().clone() if m.affine else torch.ones(n)
            out[name] = (beta.float(), gamma.float())
    return out


@torch.no_grad()
def fold_batchnorm(graph: PruningGraph) -> int:
    """Fold every BatchNorm of ``graph.model`` into the layer before it, in place.

    Parameters
    ----------
    graph : PruningGraph
        Graph of the model to fold (its dependency graph tells which layer feeds each BN).

    Returns
    -------
    int
        Number of BatchNorm layers folded.

    Raises
    ------
    UnsupportedLayerError
        If a BatchNorm does not directly follow a conv/linear layer that feeds only it.
    """
    names = {m: n for n, m in graph.model.named_modules()}
    folded = 0
    for module, node in graph.dg.module2node.items():
        if not isinstance(module, _BN):
            continue
        inputs = [i for i in node.inputs if isinstance(i.module, nn.Module)]
        prev = inputs[0].module if len(inputs) == 1 else None
        if not isinstance(prev, _LAYERS) or len(inputs[0].outputs) != 1:
            raise UnsupportedLayerError(
                f"BatchNorm '{names.get(module)}' does not directly follow a conv/linear layer that feeds only "
                "it, so it cannot be folded; Intra-Fusion folds every BatchNorm into the layer before it"
            )
        if not module.track_running_stats or module.running_var is None:
            raise UnsupportedLayerError(
                f"BatchNorm '{names.get(module)}' has no running statistics; use a model with "
                "track_running_stats=True in eval mode"
            )
        scale = (module.weight if module.affine else torch.ones_like(module.running_var)) / torch.sqrt(
            module.running_var + module.eps
        )
        shift = (module.bias if module.affine else torch.zeros_like(scale)) - scale * module.running_mean
        shape = (-1,) + (1,) * (prev.weight.dim() - 1)
        prev.weight.mul_(scale.view(shape))
        if prev.bias is not None:
            prev.bias.mul_(scale)
        module.running_mean.zero_()
        module.running_var.fill_(1.0 - module.eps)
        if module.affine:
            module.weight.fill_(1.0)
            module.bias.copy_(shift)
        else:  # no affine parameters to hold the shift: give the producer a bias instead
            if prev.bias is None:
                prev.bias = nn.Parameter(torch.zeros_like(scale))
            prev.bias.add_(shift)
        folded += 1
    return folded
