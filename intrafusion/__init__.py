"""Intra-Fusion: structured pruning that fuses neurons with optimal transport instead of dropping them.

Theus et al., "Towards Meta-Pruning via Optimal Transport", ICLR 2024. Layers:

- mechanics: :mod:`intrafusion.core.groups` (Torch-Pruning dependency groups), :mod:`intrafusion.core.fold` (BatchNorm)
- scoring:   :mod:`intrafusion.core.importance`
- transport: :mod:`intrafusion.core.transport` (cost, marginals, plan, map)
- policy:    :mod:`intrafusion.core.prune` (default pruning and Intra-Fusion), :mod:`intrafusion.experiments.sweep`
- measuring: :mod:`intrafusion.evaluate`
- models and data: :mod:`intrafusion.models.architectures`, :mod:`intrafusion.models.checkpoint`,
  :mod:`intrafusion.data`,
  :mod:`intrafusion.models.zoo`, :mod:`intrafusion.experiments.train`
"""

from .core.groups import Group, PruningGraph, UnsupportedLayerError, list_groups
from .core.importance import CRITERIA, group_importance
from .core.prune import (
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
from .core.repair import REPAIRS, RepairOptions, RepairResult, std_ratios, synthetic_batch
from .core.transport import NORMALIZATIONS, SOLVERS, TARGETS
from .evaluate import Evaluation, count_macs_params, evaluate, predict_logits

__all__ = [
    "CRITERIA",
    "METHODS",
    "NORMALIZATIONS",
    "REPAIRS",
    "RepairOptions",
    "RepairResult",
    "std_ratios",
    "synthetic_batch",
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
