"""Intra-Fusion: structured pruning that fuses neurons with optimal transport instead of dropping them.

Theus et al., "Towards Meta-Pruning via Optimal Transport", ICLR 2024. Layers:

- mechanics: :mod:`intrafusion.groups` (Torch-Pruning dependency groups), :mod:`intrafusion.fold` (BatchNorm)
- scoring:   :mod:`intrafusion.importance`
- transport: :mod:`intrafusion.transport` (cost, marginals, plan, map)
- policy:    :mod:`intrafusion.prune` (default pruning and Intra-Fusion), :mod:`intrafusion.sweep`
- measuring: :mod:`intrafusion.evaluate`
- models and data: :mod:`intrafusion.architectures`, :mod:`intrafusion.checkpoint`, :mod:`intrafusion.data`,
  :mod:`intrafusion.zoo`, :mod:`intrafusion.train`
"""

from .evaluate import Evaluation, count_macs_params, evaluate, predict_logits
from .groups import Group, PruningGraph, UnsupportedLayerError, list_groups
from .importance import CRITERIA, group_importance
from .prune import (
    METHODS,
    GroupRecord,
    PreparedModel,
    PruneResult,
    TransportOptions,
    default_pruning,
    intra_fusion,
    kept_count,
    plan_group,
    prepare,
    prune,
)
from .transport import NORMALIZATIONS, SOLVERS, TARGETS

__all__ = [
    "CRITERIA",
    "METHODS",
    "NORMALIZATIONS",
    "SOLVERS",
    "TARGETS",
    "Evaluation",
    "Group",
    "GroupRecord",
    "PreparedModel",
    "PruneResult",
    "PruningGraph",
    "TransportOptions",
    "UnsupportedLayerError",
    "count_macs_params",
    "default_pruning",
    "evaluate",
    "group_importance",
    "intra_fusion",
    "kept_count",
    "list_groups",
    "plan_group",
    "predict_logits",
    "prepare",
    "prune",
]

__version__ = "0.1.0"
