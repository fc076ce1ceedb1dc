"""Consumer bias correction for dropped or merged channels (data-free; Nagel et al. 2019).

A consumer layer reads x_j = relu(a_j) from channel j of a group. With a_j ~ N(mu_j, sigma_j^2) (its stored
BatchNorm statistics: mean beta_j, std |gamma_j|),

    E[relu(a)] = mu Phi(mu / sigma) + sigma phi(mu / sigma).

Pruning replaces the consumer's input term sum_j V_j x_j (V_j its in-column j, summed over the kernel) by
sum_t V'_t x'_t over the m channels left, whose statistics (mu'_t, sigma'_t) are those the method and the
repair leave them. On average its output shifts by

    delta = sum_j V_j E[relu(a_j)] - sum_t V'_t E[relu(a'_t)],

which the consumer absorbs: added to its input of the BatchNorm that follows it (running_mean -= delta, right
in folded or unfolded form), or to its bias when no BatchNorm follows. This is exact in expectation for a
dropped channel whose activation does not depend on the input, and first-order otherwise (zero padding at the
borders and max-pooling between ReLU and consumer are ignored).

Only groups with exactly one BatchNorm whose output goes only into a ReLU are corrected; residual streams
(where consumers read a sum of several BatchNorms and an identity path) are left as they are.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["BiasCorrection", "expected_relu"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def expected_relu(mu, sigma):
    """E[relu(a)] for a ~ N(mu, sigma^2): mu Phi(mu / sigma) + sigma phi(mu / sigma) (sigma = 0: relu(mu))."""
    mu = torch.as_tensor(mu, dtype=torch.float64)
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    if bool((sigma < 0).any()) or not bool(torch.isfinite(sigma).all()) or not bool(torch.isfinite(mu).all()):
        raise ValueError("expected_relu needs finite means and non-negative finite stds (got NaN, inf or < 0)")
    safe = sigma.clamp_min(1e-12)
    z = mu / safe
    normal = torch.distributions.Normal(0.0, 1.0)
    out = mu * normal.cdf(z) + sigma * torch.exp(normal.log_prob(z))
    return torch.where(sigma > 0, out, mu.clamp_min(0))


def _relu_only(graph, norm: nn.Module) -> bool:
    node = graph.dg.module2node.get(norm)
    if node is None or not node.outputs:
        return False
    return all("Relu" in str(getattr(o, "name", "")) or isinstance(o.module, nn.ReLU) for o in node.outputs)


def _norm_after(graph, layer: nn.Module) -> nn.Module | None:
    """The BatchNorm that directly follows ``layer`` (and only it), if any."""
    node = graph.dg.module2node.get(layer)
    if node is None:
        return None
    outs = [o.module for o in node.outputs]
    return outs[0] if len(outs) == 1 and isinstance(outs[0], _BN) else None


class BiasCorrection:
    """Snapshot a group's consumer columns before it is pruned; after, shift every consumer by delta.

    Use: ``bc = BiasCorrection.start(graph, index, slices, norms)``; merge and prune the group;
    ``bc.finish(kept, post_mean, post_std)``. ``start`` returns None when the group is not eligible.
    """

    def __init__(self, graph, slices, mean: torch.Tensor, std: torch.Tensor):
        self.graph = graph
        self.mean, self.std = mean.double(), std.double()
        self.consumers = [(s.module, self._colsum(s.module, s.index)) for s in slices if s.side == "in"]
        self.index = {id(s.module): s.index for s in slices if s.side == "in"}

    @classmethod
    def start(cls, graph, slices, targets: dict, norm_names: tuple[str, ...]) -> BiasCorrection | None:
        norms = [s for s in slices if s.side == "norm"]
        if len(norms) != 1 or len(norm_names) != 1 or norm_names[0] not in targets:
            return None
        if not _relu_only(graph, norms[0].module):
            return None
        mean, std = targets[norm_names[0]]
        if len(mean) != len(norms[0].index):
            return None
        return cls(graph, slices, mean, std)

    @staticmethod
    def _colsum(module: nn.Module, index: torch.Tensor) -> torch.Tensor:
        """(n, out): every channel's in-column of ``module`` summed over its k inputs and the kernel."""
        wt = module.weight.detach().transpose(0, 1)[index]  # (n, k, out, ...)
        n, k, out = wt.shape[:3]
        return wt.reshape(n, k, out, -1).sum(dim=(1, 3)).double()

    @torch.no_grad()
    def finish(self, kept: np.ndarray, post_mean, post_std) -> float:
        """Add each consumer's expected output shift to it. ``kept``: the slots left (ascending); returns the
        largest |delta|. Call after the group's channels were merged into the kept slots (before or after
        the others were removed: ``kept`` indexes the pre-pruning channels)."""
        e_src = expected_relu(self.mean, self.std)
        e_post = expected_relu(torch.as_tensor(post_mean), torch.as_tensor(post_std))
        kept_t = torch.as_tensor(np.asarray(kept), dtype=torch.long)
        worst = 0.0
        for module, before in self.consumers:
            after = self._colsum(module, self.index[id(module)][kept_t])
            delta = e_src @ before - e_post @ after  # (out,)
            worst = max(worst, float(delta.abs().max()))
            bn = _norm_after(self.graph, module)
            if bn is not None and bn.running_mean is not None:
                bn.running_mean.sub_(delta.to(bn.running_mean.dtype))
            else:
                if module.bias is None:
                    module.bias = nn.Parameter(torch.zeros(module.weight.shape[0], dtype=module.weight.dtype))
                module.bias.data.add_(delta.to(module.bias.dtype))
        return worst
