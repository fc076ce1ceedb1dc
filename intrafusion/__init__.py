"""Intra-Fusion: structured pruning that fuses neurons with optimal transport instead of dropping them.

Theus et al., "Towards Meta-Pruning via Optimal Transport", ICLR 2024. Layers:

- mechanics: :mod:`intrafusion.core.groups` (Torch-Pruning dependency groups), :mod:`intrafusion.core.fold` (BatchNorm)
- scoring:   :mod:`intrafusion.core.importance`
- transport: :mod:`intrafusion.core.transport` (cost, marginals, plan, map)
- policy:    :mod:`intrafusion.core.prune` (default pruning and Intra-Fusion), :mod:`intrafusion.experiments.sweep`
- repair:    :mod:`intrafusion.core.repair`; label-free choices among candidates: :mod:`intrafusion.core.select`
- measuring: :mod:`intrafusion.evaluate`
- models and data: :mod:`intrafusion.models` (architectures, checkpoint, zoo), :mod:`intrafusion.data`
- experiments: :mod:`intrafusion.experiments` (sweep, train, reproduce); command line: :mod:`intrafusion.cli`

See ``docs/ARCHITECTURE.md``. The loaders (``load_zoo_model``, ``resolve_model``, ``load_model``,
``save_model``, ``load_dataset``, ...) are importable from here too; they are imported on first use.
"""

from .core.folding import FoldingOptions
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
from .core.select import logit_gap, prune_closest
from .core.synthetic import SyntheticOptions
from .core.transport import NORMALIZATIONS, SOLVERS, TARGETS
from .evaluate import Evaluation, count_macs_params, evaluate, predict_logits

__all__ = [
    "CRITERIA",
    "METHODS",
    "NORMALIZATIONS",
    "FoldingOptions",
    "REPAIRS",
    "SyntheticOptions",
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
    "logit_gap",
    "plan_group",
    "predict_logits",
    "prepare",
    "prune",
    "prune_closest",
]

__version__ = "0.1.0"

# Loaders, imported on first use (the zoo pulls in torchvision's model definitions; `import intrafusion` stays
# as light as the core).
_LAZY = {
    "load_zoo_model": "models.zoo", "list_models": "models.zoo", "resolve_model": "models.zoo",
    "load_model": "models.checkpoint", "save_model": "models.checkpoint", "read_state_dict": "models.checkpoint",
    "CheckpointError": "models.checkpoint", "ArchConfig": "models.architectures",
    "build_model": "models.architectures", "load_dataset": "data", "DatasetUnavailable": "data",
}
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
