"""Reproduce the paper's claims on the bundled zoo: ``python -m intrafusion reproduce [--quick]``.

For every bundled model (``--quick``: the default model and a few cells) :func:`run_reproduction` runs five
experiments and writes CSV/JSON tables, PNG plots and a generated ``RESULTS.md`` to the output folder:

1. **Data-free table** (the paper's Tables 10-13): every group pruned alone at sparsities 0.1-0.7 with the
   l1, Taylor and LAMP criteria; default pruning vs Intra-Fusion with the ``paper`` map vs Intra-Fusion with
   the ``function-preserving`` map. No data is used except Taylor's few gradient batches.
2. **Output preservation**: per-sample distances between pruned and unpruned logits for a few cells.
3. **Ablations** of Intra-Fusion's choices: marginals, targets, solver (exact / Sinkhorn), cost exponent.
4. **Whole-model pruning with fine-tuning** (the paper's Table 1): every group at neuron sparsity 0.4/0.6/0.7,
   a short fine-tuning budget, test accuracy after every epoch.
5. **Speed**: pruning time per group for both methods, and where the time of the whole run goes.

How the run fits its time budget (30 minutes on 2 cores for the whole zoo), all of it written to the outputs:

* importance is computed once per (criterion, group) and shared by the three methods and all sparsities
  (``prune(..., importance=...)`` gives exactly what the criterion would);
* each cell is evaluated on a fixed, class-balanced subset of the test split whose size follows from a budget
  of multiply-accumulates per evaluation (small models use their whole test split);
* when a group is pruned alone, everything upstream of its layers is unchanged: the activations entering the
  group are computed once per group (on the BatchNorm-folded unpruned model) and only the layers downstream of
  the group are re-run per cell (exact: checked against a full forward pass on the first cell of every group,
  with a fallback to full evaluation if the check fails or the model cannot be traced).

:func:`write_results_markdown` turns a results folder into the report, and :func:`publish` copies the report
and the plots it shows into ``docs/`` (keeping the hand-written annotations there).
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import shutil
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn

from ...core.importance import accumulate_gradients, group_importance
from ...core.prune import TransportOptions, kept_count, prepare, prune
from ...data import load_dataset, sample_batches, subset
from ...evaluate import count_macs_params, evaluate, predict_logits
from ...models.zoo import DEFAULT_MODEL, list_models, load_zoo_model
from ..sweep import method_label
from ..train import train

__all__ = [
    "FULL",
    "LABELS",
    "PAPER_FINETUNE",
    "QUICK",
    "Settings",
    "paper_datafree",
    "publish",
    "recalibrate_batchnorm",
    "run_reproduction",
    "write_results_markdown",
]

#: The three methods of the data-free table: (method, normalization).
METHOD_CELLS = (("default", None), ("fusion", "paper"), ("fusion", "function-preserving"))
LABELS = tuple(method_label(m, n) for m, n in METHOD_CELLS)
FUSION_LABELS = LABELS[1:]
SHORT = {"default": "default", "fusion (paper)": "IF paper", "fusion (function-preserving)": "IF FP"}
COLORS = {"default": "0.35", "fusion (paper)": "tab:blue", "fusion (function-preserving)": "tab:orange"}
CRITERION_NAMES = {"l1": "ℓ1", "taylor": "Taylor", "lamp": "LAMP", "l2": "ℓ2", "random": "random"}
TIE = 0.5  # accuracy differences within +-0.5 points count as ties

DATAFREE_COLUMNS = ["model", "arch", "dataset", "criterion", "group", "n", "kept", "sparsity", "method",
                    "normalization", "label", "accuracy", "logit_distance", "agreement", "params", "seconds",
                    "eval_seconds", "eval_samples", "fast_eval"]
PRESERVATION_COLUMNS = ["model", "criterion", "group", "n", "sparsity", "label", "mean", "median", "p90", "max",
                        "closer_than_default", "eval_samples"]
ABLATION_COLUMNS = ["model", "group", "n", "sparsity", "criterion", "variant", "normalization", "label", "target",
                    "source_marginal", "target_marginal", "solver", "reg", "p", "accuracy", "logit_distance",
                    "agreement", "seconds", "solve_seconds", "eval_samples"]
FINETUNE_COLUMNS = ["model", "sparsity", "label", "epoch", "stage", "test_accuracy", "train_loss", "train_accuracy",
                    "seconds", "params", "params_orig", "weight_sparsity", "macs", "macs_orig", "train_samples",
                    "test_samples", "lr"]
SPEED_COLUMNS = ["model", "group", "n", "sparsity", "method", "seconds", "setup", "importance", "cost", "solve",
                 "update", "prune", "repeats"]
SWEEP_TIMING_COLUMNS = ["model", "section", "cells", "wall_seconds", "prune_seconds", "eval_seconds",
                        "other_seconds", "eval_share"]


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What one reproduction run measures (see :data:`FULL` and :data:`QUICK`).

    ``eval_macs`` is the budget of multiply-accumulates of one evaluation: the eval subset of a model has
    ``eval_macs / macs_per_sample`` samples (rounded down to 100), clipped to ``[min_eval, max_eval]`` and to the
    test split. ``finetune_train_macs`` likewise sets the training images seen per fine-tuning epoch.
    """

    name: str
    sparsities: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    criteria: tuple[str, ...] = ("l1", "taylor", "lamp")
    all_groups: bool = True
    eval_macs: float = 1e10
    min_eval: int = 300
    max_eval: int | None = None
    preservation_sparsities: tuple[float, ...] = (0.3, 0.5, 0.7)
    ablation_sparsities: tuple[float, ...] = (0.3, 0.5, 0.7)
    ablation_input_group: bool = True
    ablation_normalizations: tuple[str, ...] = ("paper", "function-preserving")
    sinkhorn_regs: tuple[float, ...] = (0.01, 0.05, 0.2)
    finetune_ratios: tuple[float, ...] = (0.4, 0.6, 0.7)
    finetune_labels: tuple[str, ...] = LABELS
    finetune_epochs: int = 4
    finetune_train_macs: float = 1e12
    finetune_min_train: int = 1000
    finetune_full_test: bool = True
    finetune_lr: float = 0.01
    speed_sparsity: float = 0.5
    speed_repeats: int = 5
    taylor_batches: int = 4
    taylor_batch_size: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


#: The full run: every group, 7 sparsities, 3 criteria, 3 methods, for every bundled model.
FULL = Settings(name="full")

#: ``--quick``: the default model, its middle and input-side groups, a few sparsities, one short fine-tuning.
QUICK = Settings(
    name="quick",
    sparsities=(0.3, 0.5, 0.7),
    all_groups=False,
    min_eval=1000,
    max_eval=1000,
    preservation_sparsities=(0.5, 0.7),
    ablation_sparsities=(0.5,),
    ablation_input_group=False,
    ablation_normalizations=("paper",),
    sinkhorn_regs=(0.05,),
    finetune_ratios=(0.6,),
    finetune_labels=("default", "fusion (paper)"),
    finetune_epochs=1,
    speed_repeats=1,
)


def _subset_size(budget: float, macs: int, minimum: int, maximum: int | None, total: int, step: int = 100) -> int:
    n = int(budget // max(macs, 1)) // step * step
    n = max(minimum, n)
    if maximum is not None:
        n = min(maximum, n)
    return min(total, n)


def middle_group(count: int) -> int:
    """The group in the middle of the network (paper numbering): 3 of VGG11's 8, 5 of ResNet18's 12."""
    return (count - 1) // 2


# --------------------------------------------------------------------------------------------------
# The paper's numbers (reference tables 10-13 and table 1)
# --------------------------------------------------------------------------------------------------

# group, sparsity %, then default / Intra-Fusion accuracy for l1, Taylor, LAMP (CIFAR-10).
_PAPER_DATAFREE_TEXT = {
    "vgg11_bn": """
0 10 89.53 89.47 89.47 89.46 89.53 89.52
0 20 89.38 89.41 89.40 89.55 89.54 89.49
0 30 89.30 89.31 89.27 89.46 89.44 89.56
0 40 88.86 89.21 88.67 89.45 89.14 89.50
0 50 87.91 89.07 87.55 89.39 88.85 89.46
0 60 87.42 89.36 85.40 89.21 88.88 89.41
0 70 86.78 89.29 80.82 88.93 88.43 89.25
1 10 89.31 89.52 89.45 89.53 89.22 89.44
1 20 88.99 89.47 89.16 89.46 88.81 89.41
1 30 88.74 89.15 88.76 89.24 87.25 89.28
1 40 87.68 88.84 88.51 88.92 84.88 88.84
1 50 85.44 88.06 87.49 88.23 81.14 88.67
1 60 77.81 87.58 83.55 87.53 68.12 88.25
1 70 60.63 86.82 68.88 86.60 44.23 88.02
2 10 87.67 89.41 89.44 89.37 88.82 89.50
2 20 85.17 88.92 88.99 89.00 86.89 89.21
2 30 80.41 88.26 87.34 88.46 82.80 88.65
2 40 76.07 87.18 84.61 87.36 77.29 87.98
2 50 68.41 85.37 78.94 85.11 70.82 86.55
2 60 60.10 83.51 74.10 83.70 48.04 84.21
2 70 37.89 80.11 65.62 80.86 28.00 80.80
3 10 89.11 89.28 89.30 89.35 89.41 89.42
3 20 88.49 88.84 89.06 88.76 88.70 89.30
3 30 86.76 87.79 88.50 88.06 87.79 88.99
3 40 85.56 87.45 87.47 87.12 86.73 88.47
3 50 79.49 86.68 85.52 86.06 83.51 87.93
3 60 72.23 85.58 82.58 86.15 76.07 86.94
3 70 54.86 84.10 71.07 85.10 59.39 85.58
4 10 89.13 89.20 89.16 89.16 88.55 89.38
4 20 88.79 88.45 88.29 87.59 84.29 88.40
4 30 87.06 86.64 86.31 86.74 82.46 88.04
4 40 82.33 85.04 81.69 84.52 80.17 87.10
4 50 65.26 80.29 73.31 82.81 74.15 83.98
4 60 51.82 80.24 57.40 80.32 68.52 82.74
4 70 47.16 79.02 37.24 76.56 46.77 77.39
5 10 89.17 88.85 89.27 89.00 87.97 89.25
5 20 87.76 87.65 87.86 88.03 85.45 88.59
5 30 85.67 86.56 86.48 87.58 84.58 88.18
5 40 83.49 84.92 83.72 86.05 82.52 85.87
5 50 79.45 78.75 81.26 80.57 76.41 82.30
5 60 74.63 75.26 72.66 77.44 67.12 78.68
5 70 62.81 67.15 59.04 68.87 49.90 69.93
6 10 88.59 88.76 88.88 88.39 87.38 89.00
6 20 87.05 87.78 87.32 87.69 83.39 88.26
6 30 83.59 86.56 80.06 84.90 79.21 86.42
6 40 78.80 82.72 57.45 82.03 59.87 84.33
6 50 59.99 71.37 48.39 70.92 40.62 76.15
6 60 35.62 64.56 32.46 66.00 28.70 66.78
6 70 16.66 51.69 21.35 51.91 20.41 49.87
7 10 89.10 88.00 89.41 86.48 84.84 88.83
7 20 88.71 86.51 89.17 84.48 57.63 84.20
7 30 88.22 79.10 88.19 78.35 50.06 83.44
7 40 87.19 68.28 87.23 70.19 41.91 80.88
7 50 84.23 63.05 83.84 47.18 34.23 75.74
7 60 65.06 57.42 75.65 47.05 28.81 69.65
7 70 48.07 49.67 48.08 41.42 23.30 60.77
""",
    "resnet18": """
0 10 94.89 94.91 94.88 94.84 94.71 94.70
0 20 94.81 94.82 94.81 94.78 94.46 94.64
0 30 94.75 94.79 94.77 94.66 94.23 94.55
0 40 94.50 94.68 94.59 94.49 93.56 94.56
0 50 94.35 94.56 94.22 94.43 92.83 94.51
0 60 93.81 94.39 92.37 94.10 89.54 94.16
0 70 92.90 93.98 87.81 93.82 74.56 93.82
1 10 94.86 94.93 94.90 94.85 94.81 94.76
1 20 94.88 94.88 94.88 94.87 94.80 94.80
1 30 94.86 94.89 94.72 94.88 94.70 94.83
1 40 94.84 94.82 94.65 94.89 94.64 94.74
1 50 94.72 94.86 94.36 94.86 94.38 94.78
1 60 94.61 94.85 94.18 94.80 94.05 94.70
1 70 94.09 94.83 93.13 94.62 91.54 94.65
2 10 94.87 94.91 94.86 94.85 94.71 94.84
2 20 94.75 94.87 94.87 94.75 94.67 94.79
2 30 94.58 94.86 94.72 94.75 94.49 94.73
2 40 94.34 94.82 94.48 94.74 94.19 94.70
2 50 94.10 94.76 94.06 94.59 93.77 94.57
2 60 93.50 94.61 93.67 94.30 93.35 94.59
2 70 92.41 94.41 92.90 94.07 92.64 94.33
3 10 94.25 94.56 94.20 94.52 93.96 94.46
3 20 93.22 94.09 92.95 93.93 93.17 93.99
3 30 91.33 93.59 91.93 93.43 91.85 93.44
3 40 87.75 92.46 89.17 92.58 90.06 92.61
3 50 81.91 91.25 83.69 91.67 85.43 90.45
3 60 75.73 88.32 76.30 88.42 80.52 88.75
3 70 58.93 80.70 57.86 79.97 62.23 80.91
4 10 94.85 94.88 94.78 10.10 94.60 94.65
4 20 94.69 94.75 94.44 10.10 94.27 94.49
4 30 94.43 94.54 94.17 10.10 93.90 94.39
4 40 94.18 94.30 93.91 10.10 93.43 94.13
4 50 93.71 94.02 93.57 10.10 92.87 93.92
4 60 93.11 93.76 92.67 10.10 92.38 93.38
4 70 91.96 92.70 91.81 10.10 91.65 92.62
5 10 94.73 94.84 94.52 94.77 94.38 94.64
5 20 94.37 94.67 94.04 94.63 93.95 94.59
5 30 93.84 94.58 93.68 94.50 93.61 94.33
5 40 93.03 94.40 92.98 94.30 92.77 94.09
5 50 91.21 93.66 91.24 93.62 91.40 93.40
5 60 88.30 93.10 88.93 93.14 89.34 92.85
5 70 82.40 91.05 84.31 91.23 85.76 91.05
6 10 93.46 94.58 94.20 94.60 93.80 94.54
6 20 89.98 94.20 92.44 94.42 91.17 94.04
6 30 85.69 93.47 90.64 93.70 87.71 93.69
6 40 78.73 92.27 85.92 93.60 78.96 92.48
6 50 67.09 86.44 79.16 90.85 61.25 85.41
6 60 50.30 83.08 70.92 87.90 38.66 83.69
6 70 29.14 64.10 49.26 61.44 23.06 61.76
7 10 94.89 94.92 94.89 10.10 94.70 94.78
7 20 94.74 94.88 94.73 10.10 94.33 94.64
7 30 94.71 94.71 94.75 10.10 93.87 94.50
7 40 94.57 94.59 94.54 10.10 93.42 94.55
7 50 94.37 94.32 94.33 10.10 93.10 94.29
7 60 94.02 94.10 94.11 10.10 92.10 94.32
7 70 93.25 93.77 93.23 10.10 90.27 93.77
8 10 94.80 94.87 94.71 94.71 94.21 94.74
8 20 94.48 94.76 94.47 94.64 93.44 94.49
8 30 93.97 94.59 94.28 94.45 90.71 93.82
8 40 93.02 93.74 93.32 93.95 87.82 93.04
8 50 91.03 91.42 91.47 92.28 82.35 88.71
8 60 86.78 88.72 86.46 91.16 69.53 86.15
8 70 77.14 79.06 75.05 86.84 49.80 70.09
9 10 94.26 94.38 94.56 94.35 93.03 93.89
9 20 91.28 93.40 94.04 93.87 84.66 92.62
9 30 82.56 91.57 91.48 92.61 57.60 86.02
9 40 70.47 87.74 85.47 93.21 42.69 81.29
9 50 57.92 71.75 79.20 89.01 16.63 74.11
9 60 40.01 64.03 65.89 79.90 12.52 41.70
9 70 23.41 45.47 40.43 69.15 10.21 17.16
10 10 94.91 94.84 94.88 94.80 94.45 94.73
10 20 94.89 94.66 94.82 94.37 93.91 94.47
10 30 94.83 94.42 94.87 94.22 93.23 94.45
10 40 94.59 94.21 94.85 93.89 93.13 94.46
10 50 94.33 93.51 94.73 93.58 90.27 93.62
10 60 93.61 92.69 94.22 93.09 89.17 92.41
10 70 91.41 91.70 92.28 90.70 86.45 89.01
""",
}

#: The paper's Table 1 (l1, CIFAR-10, all groups pruned, fine-tuned): weight sparsity %, default, Intra-Fusion.
PAPER_FINETUNE = {
    "vgg11_bn": {"base": 89.56, "rows": [(64, 88.95, 89.19), (84, 88.14, 88.51), (91, 87.43, 88.15),
                                         (96, 85.21, 85.89)]},
    "resnet18": {"base": 92.17, "rows": [(64, 91.53, 91.98), (84, 91.22, 91.62), (91, 90.41, 91.37),
                                         (96, 88.82, 89.60)]},
}

PAPER_UNPRUNED = {"vgg11_bn": 90.23, "resnet18": 95.15}


def paper_datafree() -> dict[tuple[str, str, int, float], tuple[float, float]]:
    """The paper's data-free accuracies: ``{(arch, criterion, group, sparsity): (default, intra_fusion)}``."""
    out = {}
    for arch, text in _PAPER_DATAFREE_TEXT.items():
        for line in text.strip().splitlines():
            v = line.split()
            g, s = int(v[0]), int(v[1]) / 100
            for i, crit in enumerate(("l1", "taylor", "lamp")):
                out[(arch, crit, g, round(s, 2))] = (float(v[2 + 2 * i]), float(v[3 + 2 * i]))
    return out


# --------------------------------------------------------------------------------------------------
# Evaluation of single-group prunings: re-run only what is downstream of the group
# --------------------------------------------------------------------------------------------------


class GroupEvaluator:
    """Logits of models that differ from ``reference`` only in the layers named ``changed`` (and their shapes).

    Every fx node that depends on none of those layers computes the same values in both models: the values
    that enter the changed part (the frontier) are computed once on ``reference`` and every evaluated model only
    re-runs the nodes downstream of its changed layers, on the same batches as :func:`predict_logits` (so the
    results are identical, not just close). ``logits`` falls back to a full forward pass when the model cannot be
    traced or its graph does not match, and ``check=True`` compares against a full forward pass and disables the
    shortcut for good if they differ.
    """

    def __init__(self, reference: nn.Module, changed: set[str], inputs: torch.Tensor, batch_size: int = 512):
        self.inputs, self.batch_size = inputs, batch_size
        self.enabled, self.max_diff = False, None
        self.cache: list[dict[str, torch.Tensor]] = []
        try:
            gm = fx.symbolic_trace(reference)
        except Exception:  # noqa: BLE001 - any untraceable model just uses full evaluation
            return
        self.dirty, self.frontier = _dirty_nodes(gm.graph, changed)
        if not self.dirty:
            return
        self.cache = _frontier_values(gm, self.frontier, inputs, batch_size)
        self.enabled = True

    @torch.no_grad()
    def logits(self, model: nn.Module, check: bool = False) -> torch.Tensor:
        if not self.enabled:
            return predict_logits(model, self.inputs, self.batch_size)
        try:
            out = _run_downstream(model, self.dirty, self.cache)
        except Exception:  # noqa: BLE001 - a graph that does not match: evaluate it fully
            out = None
        if out is None or check:
            full = predict_logits(model, self.inputs, self.batch_size)
            if out is not None:
                diff = float((out - full).abs().max())
                self.max_diff = diff if self.max_diff is None else max(self.max_diff, diff)
                if diff > 1e-4 * (1.0 + float(full.abs().max())):
                    self.enabled = False
            else:
                self.enabled = False
            return full
        return out


def _dirty_nodes(graph: fx.Graph, changed: set[str]) -> tuple[set[str], set[str]]:
    dirty: set[str] = set()
    for node in graph.nodes:
        if node.op == "output":
            continue
        if (node.op == "call_module" and node.target in changed) or node.op == "get_attr":
            dirty.add(node.name)  # attributes are re-read from the evaluated model (they may be pruned)
        elif any(a.name in dirty for a in node.all_input_nodes):
            dirty.add(node.name)
    if not any(n.op == "call_module" and n.target in changed for n in graph.nodes):
        return set(), set()
    frontier = {n.name for n in graph.nodes
                if n.name not in dirty and n.op != "output" and any(u.name in dirty or u.op == "output"
                                                                     for u in n.users)}
    return dirty, frontier


@torch.no_grad()
def _frontier_values(gm: fx.GraphModule, frontier: set[str], inputs: torch.Tensor,
                     batch_size: int) -> list[dict[str, torch.Tensor]]:
    gm.eval()
    out = []
    for i in range(0, len(inputs), batch_size):
        interp = fx.Interpreter(gm)
        env: dict = {}
        interp.env = env
        values = {}
        for node in gm.graph.nodes:
            if node.op == "output":
                break
            v = inputs[i : i + batch_size] if node.op == "placeholder" else interp.run_node(node)
            env[node] = v
            if node.name in frontier:
                values[node.name] = v.clone() if isinstance(v, torch.Tensor) else v
        out.append(values)
    return out


def _run_downstream(model: nn.Module, dirty: set[str], cache: list[dict]) -> torch.Tensor | None:
    was_training = model.training
    model.eval()
    try:
        gm = fx.symbolic_trace(model)
        nodes = list(gm.graph.nodes)
        names = {n.name for n in nodes}
        if not cache or not set(cache[0]) <= names:
            return None
        res = []
        for values in cache:
            interp = fx.Interpreter(gm)
            env: dict = {}
            interp.env = env
            for node in nodes:
                if node.name in values:
                    v = values[node.name]
                    env[node] = v.clone() if isinstance(v, torch.Tensor) else v
                elif node.op == "output":
                    res.append(interp.run_node(node))
                elif node.name in dirty:
                    env[node] = interp.run_node(node)
        return torch.cat(res).float()
    finally:
        model.train(was_training)


def _scores(logits: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor) -> tuple[float, float, float,
                                                                                           np.ndarray]:
    pred = logits.argmax(1)
    dist = (logits - reference).norm(dim=1).cpu().numpy()
    acc = 100.0 * float((pred == labels).float().mean())
    agree = 100.0 * float((pred == reference.argmax(1)).float().mean())
    return acc, float(dist.mean()), agree, dist


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not progress, leave=False, dynamic_ncols=True)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: torch.Tensor, batch_size: int = 128) -> int:
    """Re-estimate every BatchNorm's running statistics on ``inputs`` (training-mode forward passes, no gradient).

    Pruning folds each BatchNorm into the layer before it (running mean 0, variance 1 - eps, weight 1): the
    identity in eval mode. Fine-tuning trains BatchNorms normally, so from the first batch they standardise their
    inputs with batch statistics; their running statistics must describe that, or a short fine-tuning is
    evaluated with the stale folded ones. This sets them to the cumulative statistics over ``inputs`` (momentum is
    restored afterwards). Returns how many BatchNorms were re-estimated.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was_training = model.training
    model.train()
    try:
        for i in range(0, len(inputs), batch_size):
            model(inputs[i : i + batch_size])
    finally:
        for m, mom in zip(norms, momenta):
            m.momentum = mom
        model.train(was_training)
    return len(norms)


def _ablation_variants(settings: Settings) -> list[tuple[str, dict]]:
    variants = [
        ("paper setting", {}),
        ("source marginal: importance", {"source_marginal": "importance"}),
        ("target marginal: importance", {"target_marginal": "importance"}),
        ("both marginals: importance", {"source_marginal": "importance", "target_marginal": "importance"}),
        ("targets: centroids", {"target": "centroids"}),
    ]
    variants += [(f"Sinkhorn, reg {r:g}", {"solver": "sinkhorn", "reg": r}) for r in settings.sinkhorn_regs]
    variants.append(("cost p = 2", {"p": 2.0}))
    return variants


class _ModelRun:
    """All five experiments on one bundled model."""

    def __init__(self, model_id: str, settings: Settings, progress: bool):
        self.id, self.settings, self.progress = model_id, settings, progress
        self.loaded = load_zoo_model(model_id)
        self.model, self.ex = self.loaded.model, self.loaded.example_inputs
        self.arch = self.loaded.config.arch
        self.dataset = self.loaded.dataset
        pre = self.loaded.preprocessing
        test = load_dataset(self.dataset, "test", preprocessing=pre)
        train_set = load_dataset(self.dataset, "train", preprocessing=pre)
        self.x_test, self.y_test = test.tensors
        self.x_train, self.y_train = train_set.tensors
        self.macs, self.params = count_macs_params(self.model, self.ex)
        s = settings
        self.n_eval = _subset_size(s.eval_macs, self.macs, s.min_eval, s.max_eval, len(self.x_test))
        self.x_eval, self.y_eval = subset(test, self.n_eval, seed=0).tensors
        self.reference = predict_logits(self.model, self.x_eval)
        self.base_accuracy = 100.0 * float((predict_logits(self.model, self.x_test).argmax(1) == self.y_test)
                                           .float().mean())
        self.base_eval_accuracy = 100.0 * float((self.reference.argmax(1) == self.y_eval).float().mean())
        self.prepared = prepare(self.model, self.ex)
        self.groups = self.prepared.groups
        count = len(self.groups)
        self.middle, self.input_side = middle_group(count), count - 1
        if s.all_groups:
            self.datafree_groups = list(range(count))
        else:
            self.datafree_groups = sorted({self.middle, self.input_side})
        self.preservation_groups = sorted({0, self.middle, self.input_side} & set(self.datafree_groups))
        self.ablation_groups = sorted({self.middle, self.input_side} if s.ablation_input_group else {self.middle})
        self.taylor = sample_batches(self.x_train, self.y_train, s.taylor_batches, s.taylor_batch_size)
        self.fast_eval = {}
        self.timing: dict[str, dict] = {}
        self.importance: dict[str, dict[int, np.ndarray]] = {}
        self.importance_seconds: dict[str, float] = {}

    # -- helpers ---------------------------------------------------------------------------------------------
    def _changed(self, g: int) -> set[str]:
        grp = self.groups[g]
        return set(grp.producers) | set(grp.consumers) | set(grp.norms)

    def _compute_importance(self) -> None:
        model, graph = self.prepared.model, self.prepared.graph
        for crit in dict.fromkeys((*self.settings.criteria, "l1")):  # l1 also drives ablations and speed
            t0 = time.perf_counter()
            if crit == "taylor":
                accumulate_gradients(model, self.taylor)
            self.importance[crit] = {g.index: group_importance(graph.tp_group(g.index), crit).numpy()
                                     for g in self.groups}
            if crit == "taylor":
                model.zero_grad(set_to_none=True)
            self.importance_seconds[crit] = time.perf_counter() - t0

    def _cell(self, evaluator: GroupEvaluator, g: int, s: float, method: str, criterion: str,
              options: TransportOptions, check: bool) -> tuple[dict, np.ndarray, float]:
        t0 = time.perf_counter()
        res = prune(self.model, self.ex, g, s, method=method, criterion=criterion, options=options,
                    importance={g: self.importance[criterion][g]})
        t1 = time.perf_counter()
        logits = evaluator.logits(res.model, check=check)
        t2 = time.perf_counter()
        acc, dist, agree, per_sample = _scores(logits, self.y_eval, self.reference)
        rec = res.records[0]
        row = {"accuracy": round(acc, 3), "logit_distance": round(dist, 5), "agreement": round(agree, 3),
               "params": _params(res.model), "seconds": round(t1 - t0, 5), "eval_seconds": round(t2 - t1, 5),
               "n": rec.n, "kept": rec.m}
        return row, per_sample, rec.timings.get("solve", 0.0)

    # -- 1 + 2: data-free table and output preservation ------------------------------------------------------
    def datafree(self) -> tuple[list[dict], list[dict], dict]:
        s = self.settings
        t_start = time.perf_counter()
        self._compute_importance()
        rows, distances = [], {}
        cells = [(g, c, sp) for g in self.datafree_groups for c in s.criteria for sp in s.sparsities
                 if kept_count(self.groups[g].n, sp) >= 1]
        bar = _bar(len(cells) * len(METHOD_CELLS), f"{self.id}: data-free", self.progress)
        prune_t = eval_t = 0.0
        by_group = defaultdict(list)
        for g, c, sp in cells:
            by_group[g].append((c, sp))
        for g, todo in by_group.items():
            t0 = time.perf_counter()
            ev = GroupEvaluator(self.prepared.model, self._changed(g), self.x_eval)
            eval_t += time.perf_counter() - t0
            first = True
            for c, sp in todo:
                for method, norm in METHOD_CELLS:
                    opts = TransportOptions(normalization=norm or "paper")
                    row, per_sample, _ = self._cell(ev, g, sp, method, c, opts, check=first)
                    first = False
                    prune_t += row["seconds"]
                    eval_t += row["eval_seconds"]
                    label = method_label(method, norm)
                    rows.append({"model": self.id, "arch": self.arch, "dataset": self.dataset, "criterion": c,
                                 "group": g, "n": row["n"], "kept": row["kept"], "sparsity": sp, "method": method,
                                 "normalization": norm or "", "label": label, "accuracy": row["accuracy"],
                                 "logit_distance": row["logit_distance"], "agreement": row["agreement"],
                                 "params": row["params"], "seconds": row["seconds"],
                                 "eval_seconds": row["eval_seconds"], "eval_samples": self.n_eval,
                                 "fast_eval": int(ev.enabled)})
                    if c == "l1" and g in self.preservation_groups and sp in s.preservation_sparsities:
                        distances[(g, sp, label)] = per_sample
                    bar.update(1)
            self.fast_eval[g] = {"enabled": ev.enabled, "max_abs_diff": ev.max_diff}
        bar.close()
        wall = time.perf_counter() - t_start
        self.timing["datafree"] = {"cells": len(rows), "wall_seconds": wall, "prune_seconds": prune_t,
                                   "eval_seconds": eval_t, "importance_seconds": sum(self.importance_seconds.values())}
        pres_rows, pres_json = [], []
        for (g, sp, label), dist in sorted(distances.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                               LABELS.index(kv[0][2]))):
            base = distances.get((g, sp, "default"))
            closer = float(np.mean(dist < base)) if base is not None and label != "default" else float("nan")
            pres_rows.append({"model": self.id, "criterion": "l1", "group": g, "n": self.groups[g].n, "sparsity": sp,
                              "label": label, "mean": round(float(dist.mean()), 5),
                              "median": round(float(np.median(dist)), 5),
                              "p90": round(float(np.quantile(dist, 0.9)), 5), "max": round(float(dist.max()), 5),
                              "closer_than_default": round(closer, 4) if not math.isnan(closer) else "",
                              "eval_samples": self.n_eval})
            pres_json.append({"model": self.id, "criterion": "l1", "group": g, "sparsity": sp, "label": label,
                              "distances": [round(float(d), 4) for d in dist]})
        return rows, pres_rows, {"cells": pres_json}

    # -- 3: ablations ----------------------------------------------------------------------------------------
    def ablations(self) -> list[dict]:
        s = self.settings
        variants = _ablation_variants(s)
        t_start = time.perf_counter()
        cells = [(g, sp) for g in self.ablation_groups for sp in s.ablation_sparsities
                 if kept_count(self.groups[g].n, sp) >= 1]
        total = len(cells) * (1 + len(variants) * len(s.ablation_normalizations))
        bar = _bar(total, f"{self.id}: ablations", self.progress)
        rows, prune_t, eval_t = [], 0.0, 0.0
        for g in sorted({g for g, _ in cells}):
            t0 = time.perf_counter()
            ev = GroupEvaluator(self.prepared.model, self._changed(g), self.x_eval)
            eval_t += time.perf_counter() - t0
            first = True
            for sp in [sp for gg, sp in cells if gg == g]:
                todo = [("default (drop)", "default", TransportOptions())]
                for norm in s.ablation_normalizations:
                    todo += [(name, "fusion", TransportOptions(normalization=norm, **kw)) for name, kw in variants]
                for name, method, opts in todo:
                    row, _, solve_t = self._cell(ev, g, sp, method, "l1", opts, check=first)
                    first = False
                    prune_t += row["seconds"]
                    eval_t += row["eval_seconds"]
                    fusion = method == "fusion"
                    rows.append({"model": self.id, "group": g, "n": row["n"], "sparsity": sp, "criterion": "l1",
                                 "variant": name, "normalization": opts.normalization if fusion else "",
                                 "label": method_label(method, opts.normalization if fusion else None),
                                 "target": opts.target if fusion else "",
                                 "source_marginal": opts.source_marginal if fusion else "",
                                 "target_marginal": opts.target_marginal if fusion else "",
                                 "solver": opts.solver if fusion else "",
                                 "reg": opts.reg if fusion and opts.solver == "sinkhorn" else "",
                                 "p": opts.p if fusion else "", "accuracy": row["accuracy"],
                                 "logit_distance": row["logit_distance"], "agreement": row["agreement"],
                                 "seconds": row["seconds"], "solve_seconds": round(solve_t, 5),
                                 "eval_samples": self.n_eval})
                    bar.update(1)
        bar.close()
        self.timing["ablations"] = {"cells": len(rows), "wall_seconds": time.perf_counter() - t_start,
                                    "prune_seconds": prune_t, "eval_seconds": eval_t}
        return rows

    # -- 4: whole-model pruning + fine-tuning ----------------------------------------------------------------
    def finetune(self) -> list[dict]:
        s = self.settings
        t_start = time.perf_counter()
        n_train = _subset_size(s.finetune_train_macs, self.macs, s.finetune_min_train, None, len(self.x_train))
        train_set = subset(torch.utils.data.TensorDataset(self.x_train, self.y_train), n_train, seed=0).tensors
        test = (self.x_test, self.y_test) if s.finetune_full_test else (self.x_eval, self.y_eval)
        labels = {method_label(m, n): (m, n) for m, n in METHOD_CELLS}
        runs = [(r, lab) for r in s.finetune_ratios for lab in s.finetune_labels]
        bar = _bar(len(runs) * (s.finetune_epochs + 1), f"{self.id}: fine-tuning", self.progress)
        rows, prune_t, train_t, eval_t = [], 0.0, 0.0, 0.0
        for ratio, label in runs:
            method, norm = labels[label]
            t0 = time.perf_counter()
            res = prune(self.model, self.ex, "all", ratio, method=method, criterion="l1",
                        options=TransportOptions(normalization=norm or "paper"))
            prune_t += time.perf_counter() - t0
            params = _params(res.model)
            macs, _ = count_macs_params(res.model, self.ex)
            common = {"model": self.id, "sparsity": ratio, "label": label, "params": params,
                      "params_orig": self.params, "weight_sparsity": round(100.0 * (1 - params / self.params), 2),
                      "macs": macs, "macs_orig": self.macs, "train_samples": n_train, "test_samples": len(test[0]),
                      "lr": s.finetune_lr}
            t0 = time.perf_counter()
            acc0 = evaluate(res.model, *test).accuracy
            eval_t += time.perf_counter() - t0
            rows.append({**common, "epoch": 0, "stage": "pruned", "test_accuracy": round(acc0, 3)})
            bar.update(1)
            t0 = time.perf_counter()
            if recalibrate_batchnorm(res.model, train_set[0]):
                train_t += time.perf_counter() - t0
                t0 = time.perf_counter()
                acc_bn = evaluate(res.model, *test).accuracy
                eval_t += time.perf_counter() - t0
                rows.append({**common, "epoch": 0, "stage": "bn-recalibrated", "test_accuracy": round(acc_bn, 3)})
            hist = train(res.model, train_set, test, s.finetune_epochs, lr=s.finetune_lr, seed=0,
                         on_epoch=lambda _e: bar.update(1))
            for e in hist.epochs:
                train_t += e.seconds
                eval_t += e.eval_seconds
                rows.append({**common, "epoch": e.epoch, "stage": "fine-tuned",
                             "test_accuracy": round(e.test_accuracy, 3), "train_loss": round(e.train_loss, 5),
                             "train_accuracy": round(e.train_accuracy, 3), "seconds": round(e.seconds, 3)})
        bar.close()
        self.timing["finetune"] = {"cells": len(runs), "wall_seconds": time.perf_counter() - t_start,
                                   "prune_seconds": prune_t, "eval_seconds": eval_t, "train_seconds": train_t,
                                   "train_samples": n_train, "epochs": s.finetune_epochs}
        return rows

    # -- 5: speed --------------------------------------------------------------------------------------------
    def speed(self) -> list[dict]:
        s = self.settings
        t_start = time.perf_counter()
        rows = []
        bar = _bar(len(self.groups) * 2 * s.speed_repeats, f"{self.id}: speed", self.progress)
        for grp in self.groups:
            if kept_count(grp.n, s.speed_sparsity) < 1:
                continue
            for method in ("default", "fusion"):
                samples = defaultdict(list)
                for _ in range(s.speed_repeats):
                    res = prune(self.model, self.ex, grp.index, s.speed_sparsity, method=method, criterion="l1")
                    t, rt = res.timings, res.records[0].timings
                    samples["seconds"].append(t["total"])
                    samples["setup"].append(t["copy"] + t["graph"] + t["fold"])
                    for k in ("importance", "cost", "solve", "update", "prune"):
                        samples[k].append(rt.get(k, 0.0))
                    bar.update(1)
                rows.append({"model": self.id, "group": grp.index, "n": grp.n, "sparsity": s.speed_sparsity,
                             "method": method, "repeats": s.speed_repeats,
                             **{k: round(statistics.median(v), 6) for k, v in samples.items()}})
        bar.close()
        self.timing["speed"] = {"cells": len(rows), "wall_seconds": time.perf_counter() - t_start}
        return rows

    def info(self) -> dict:
        e = self.loaded.entry
        return {"id": self.id, "arch": self.arch, "width": e.width if e else None, "dataset": self.dataset,
                "sha256": e.sha256 if e else None,
                "params": self.params, "macs": self.macs, "test_samples": len(self.x_test),
                "train_samples": len(self.x_train), "eval_samples": self.n_eval,
                "base_accuracy": round(self.base_accuracy, 3), "base_eval_accuracy": round(self.base_eval_accuracy, 3),
                "groups": [g.to_dict() for g in self.groups], "middle_group": self.middle,
                "input_group": self.input_side, "datafree_groups": self.datafree_groups,
                "preservation_groups": self.preservation_groups, "ablation_groups": self.ablation_groups,
                "fast_eval": {str(k): v for k, v in self.fast_eval.items()},
                "importance_seconds": self.importance_seconds, "timing": self.timing}


def run_reproduction(models: Sequence[str] | None = None, out_dir: str | Path = "results", quick: bool = False,
                     progress: bool = True, settings: Settings | None = None, threads: int | None = 1) -> dict:
    """Run the five experiments on bundled models and write tables, plots and ``RESULTS.md`` to ``out_dir``.

    Parameters
    ----------
    models : sequence of str, optional
        Bundled model ids; default: every bundled model (``quick``: the default model only).
    out_dir : path
        Created if needed; existing files of the same names are replaced.
    quick : bool
        Run :data:`QUICK` (a few cells, about a minute) instead of :data:`FULL`.
    progress : bool
        tqdm progress bars on stderr.
    settings : Settings, optional
        Overrides the choice made by ``quick``.
    threads : int or None, default 1
        torch intra-op threads during the run (restored afterwards; None leaves the setting alone). The work is
        many small operations: on shared cores a second OpenMP thread mostly waits at barriers for a busy core
        (measured 4-60x slower per operation when another process holds one of 2 cores), so one thread is the
        robust default.

    Returns
    -------
    dict
        The summary also written to ``summary.json``.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _run(models, out_dir, quick, progress, settings)
    finally:
        torch.set_num_threads(previous)


def _run(models, out_dir, quick: bool, progress: bool, settings: Settings | None) -> dict:
    t_start, cpu_start = time.perf_counter(), time.process_time()
    settings = settings or (QUICK if quick else FULL)
    available = [e.id for e in list_models()]
    if not available:
        raise ValueError("no bundled models: assets/models/manifest.json is missing; train the zoo first "
                         "(see docs/ZOO.md)")
    if models:
        unknown = [m for m in models if m not in available]
        if unknown:
            raise ValueError(f"unknown bundled model(s) {', '.join(unknown)}; bundled models: {', '.join(available)}")
        ids = list(dict.fromkeys(models))
    elif quick:
        ids = [DEFAULT_MODEL if DEFAULT_MODEL in available else available[0]]
    else:
        ids = available
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tables: dict[str, list[dict]] = defaultdict(list)
    preservation_json: list[dict] = []
    infos = []
    for model_id in ids:
        t_model, cpu_model = time.perf_counter(), time.process_time()
        run = _ModelRun(model_id, settings, progress)
        setup = time.perf_counter() - t_model
        df, pres, pres_json = run.datafree()
        tables["datafree"] += df
        tables["output_preservation"] += pres
        preservation_json += pres_json["cells"]
        tables["ablations"] += run.ablations()
        tables["speed"] += run.speed()
        tables["finetune"] += run.finetune()
        info = run.info()
        info["timing"]["setup"] = {"wall_seconds": setup}
        info["timing"]["total"] = {"wall_seconds": time.perf_counter() - t_model,
                                   "cpu_seconds": time.process_time() - cpu_model}
        infos.append(info)
        for section in ("datafree", "ablations", "finetune"):
            t = info["timing"][section]
            other = t["wall_seconds"] - t["prune_seconds"] - t["eval_seconds"]
            tables["sweep_timing"].append({"model": model_id, "section": section, "cells": t["cells"],
                                           "wall_seconds": round(t["wall_seconds"], 3),
                                           "prune_seconds": round(t["prune_seconds"], 3),
                                           "eval_seconds": round(t["eval_seconds"], 3),
                                           "other_seconds": round(other, 3),
                                           "eval_share": round(t["eval_seconds"] / max(t["wall_seconds"], 1e-9), 4)})
        if progress:
            print(f"{model_id}: done in {info['timing']['total']['wall_seconds']:.0f} s", file=sys.stderr)

    t_plots = time.perf_counter()
    _write_csv(out / "datafree.csv", tables["datafree"], DATAFREE_COLUMNS)
    _write_csv(out / "output_preservation.csv", tables["output_preservation"], PRESERVATION_COLUMNS)
    (out / "output_preservation.json").write_text(json.dumps({"cells": preservation_json}))
    _write_csv(out / "ablations.csv", tables["ablations"], ABLATION_COLUMNS)
    _write_csv(out / "finetune.csv", tables["finetune"], FINETUNE_COLUMNS)
    _write_csv(out / "speed.csv", tables["speed"], SPEED_COLUMNS)
    _write_csv(out / "sweep_timing.csv", tables["sweep_timing"], SWEEP_TIMING_COLUMNS)
    summary = {
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m intrafusion reproduce" + (" --quick" if settings.name == "quick" else "")
        + (f" --model {' '.join(ids)}" if models else ""),
        "settings": settings.to_dict(),
        "environment": {"torch": torch.__version__.split("+")[0], "threads": torch.get_num_threads(),
                        "python": platform.python_version(), "machine": platform.machine()},
        "models": infos,
        "findings": summarise(tables["datafree"], tables["output_preservation"], tables["ablations"],
                              tables["finetune"], tables["speed"], infos),
    }
    plots = make_plots(out, tables, preservation_json, infos)
    summary["plots"] = plots
    summary["plot_seconds"] = round(time.perf_counter() - t_plots, 2)
    summary["elapsed_seconds"] = round(time.perf_counter() - t_start, 1)
    summary["cpu_seconds"] = round(time.process_time() - cpu_start, 1)
    summary["load_average"] = _load_average()
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    write_results_markdown(out, out / "RESULTS.md")
    if progress:
        print(f"reproduction finished in {summary['elapsed_seconds']:.0f} s; results in {out}", file=sys.stderr)
    return summary


def _load_average() -> list[float] | None:
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a results CSV with numbers converted (empty cells stay '')."""
    with Path(path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k, v in r.items():
            r[k] = _num(v)
    return rows


def _num(v: str):
    if v is None or v == "":
        return v
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


# --------------------------------------------------------------------------------------------------
# Findings: the numbers the report states
# --------------------------------------------------------------------------------------------------


def _gain_stats(diffs: list[tuple[float, dict]]) -> dict:
    if not diffs:
        return {}
    vals = [d for d, _ in diffs]
    best = max(diffs, key=lambda t: t[0])
    worst = min(diffs, key=lambda t: t[0])
    return {"cells": len(vals), "wins": sum(d > TIE for d in vals), "ties": sum(abs(d) <= TIE for d in vals),
            "losses": sum(d < -TIE for d in vals), "mean_gain": round(float(np.mean(vals)), 3),
            "median_gain": round(float(np.median(vals)), 3),
            "best": {"gain": round(best[0], 2), **best[1]}, "worst": {"gain": round(worst[0], 2), **worst[1]}}


def _index(rows: list[dict]) -> dict:
    return {(r["model"], r["criterion"], r["group"], round(float(r["sparsity"]), 2), r["label"]): r for r in rows}


def summarise(datafree: list[dict], preservation: list[dict], ablations: list[dict], finetune: list[dict],
              speed: list[dict], infos: list[dict]) -> dict:
    """Aggregate statistics of a run (wins/losses, gains, distances, fine-tuning, speed) and the paper's."""
    idx = _index(datafree)
    keys = sorted({k[:4] for k in idx})
    out: dict = {"tie_threshold": TIE, "datafree": {}, "paper_datafree": {}, "normalisation": {},
                 "distance": {}, "preservation": {}, "ablations": {}, "finetune": {}, "speed": {}}
    # data-free: fusion - default, per model x criterion x fusion label, and over everything
    for label in FUSION_LABELS:
        overall = []
        per = defaultdict(list)
        for model, crit, g, s in keys:
            d, f = idx.get((model, crit, g, s, "default")), idx.get((model, crit, g, s, label))
            if d is None or f is None:
                continue
            item = (f["accuracy"] - d["accuracy"], {"model": model, "criterion": crit, "group": g, "sparsity": s,
                                                    "default": d["accuracy"], "fusion": f["accuracy"]})
            overall.append(item)
            per[f"{model}|{crit}"].append(item)
        out["datafree"][label] = {"all": _gain_stats(overall), **{k: _gain_stats(v) for k, v in per.items()}}
        # logit distance: fraction of cells where fusion is closer to the unpruned outputs
        closer = defaultdict(list)
        for model, crit, g, s in keys:
            d, f = idx.get((model, crit, g, s, "default")), idx.get((model, crit, g, s, label))
            if d is not None and f is not None:
                closer["all"].append(f["logit_distance"] < d["logit_distance"])
                closer[model].append(f["logit_distance"] < d["logit_distance"])
                closer[f"{model}|{crit}"].append(f["logit_distance"] < d["logit_distance"])
        out["distance"][label] = {k: {"cells": len(v), "fusion_closer": round(float(np.mean(v)), 4)}
                                  for k, v in closer.items()}
    # the paper's own statistics on its tables, for the side-by-side
    paper = paper_datafree()
    for arch in ("vgg11_bn", "resnet18"):
        for crit in ("l1", "taylor", "lamp"):
            items = [(f - d, {"group": g, "sparsity": s, "default": d, "fusion": f})
                     for (a, c, g, s), (d, f) in paper.items() if a == arch and c == crit]
            out["paper_datafree"][f"{arch}|{crit}"] = _gain_stats(items)
        items = [(f - d, {"criterion": c, "group": g, "sparsity": s, "default": d, "fusion": f})
                 for (a, c, g, s), (d, f) in paper.items() if a == arch]
        out["paper_datafree"][f"{arch}|all"] = _gain_stats(items)
    # which normalisation wins where: FP - paper, by model and by sparsity band
    bands = {"s <= 0.3": lambda s: s <= 0.3, "0.3 < s <= 0.5": lambda s: 0.3 < s <= 0.5, "s > 0.5": lambda s: s > 0.5}
    for model in sorted({k[0] for k in keys}):
        entry = {}
        for band, test in bands.items():
            diffs = []
            for m, crit, g, s in keys:
                p = idx.get((m, crit, g, s, "fusion (paper)"))
                f = idx.get((m, crit, g, s, "fusion (function-preserving)"))
                if m == model and test(s) and p is not None and f is not None:
                    diffs.append((f["accuracy"] - p["accuracy"], {"criterion": crit, "group": g, "sparsity": s}))
            if diffs:
                st = _gain_stats(diffs)
                entry[band] = {k: st[k] for k in ("cells", "wins", "ties", "losses", "mean_gain")}
        out["normalisation"][model] = entry
    # output preservation cells: mean distances and share of samples closer than default
    for r in preservation:
        key = f"{r['model']}|g{r['group']}|s{r['sparsity']}"
        out["preservation"].setdefault(key, {})[r["label"]] = {"mean": r["mean"], "median": r["median"],
                                                              "closer_than_default": r["closer_than_default"]}
    # ablations: each variant vs the paper setting of the same normalisation (accuracy and distance deltas)
    abl = defaultdict(list)
    base = {(r["model"], r["group"], r["sparsity"], r["normalization"]): r for r in ablations
            if r["variant"] == "paper setting"}
    for r in ablations:
        b = base.get((r["model"], r["group"], r["sparsity"], r["normalization"]))
        if b is None or r["variant"] in ("paper setting", "default (drop)"):
            continue
        abl[(r["variant"], r["normalization"])].append((r["accuracy"] - b["accuracy"],
                                                        r["logit_distance"] - b["logit_distance"]))
    for (variant, norm), v in abl.items():
        acc = [a for a, _ in v]
        out["ablations"][f"{variant}|{norm}"] = {"cells": len(v), "mean_acc_delta": round(float(np.mean(acc)), 3),
                                                 "mean_abs_acc_delta": round(float(np.mean(np.abs(acc))), 3),
                                                 "max_abs_acc_delta": round(float(np.max(np.abs(acc))), 3),
                                                 "mean_distance_delta": round(float(np.mean([d for _, d in v])), 4)}
    # fine-tuning: accuracy right after pruning, after BatchNorm re-estimation, and after the last epoch
    last: dict = {}
    for r in finetune:
        d = last.setdefault((r["model"], r["sparsity"], r["label"]), {"weight_sparsity": r["weight_sparsity"]})
        if r["stage"] == "pruned":
            d["before"] = r["test_accuracy"]
        elif r["stage"] == "bn-recalibrated":
            d["bn"] = r["test_accuracy"]
        elif r["epoch"] >= d.get("epoch", -1):
            d.update(epoch=r["epoch"], after=r["test_accuracy"])
    for (model, ratio, label), v in sorted(last.items()):
        out["finetune"].setdefault(model, {}).setdefault(str(ratio), {})[label] = v
    # speed: mean over groups of the per-group median times
    sp = defaultdict(list)
    for r in speed:
        sp[(r["model"], r["method"])].append(r)
    for (model, method), rs in sp.items():
        out["speed"].setdefault(model, {})[method] = {
            k: round(float(np.mean([r[k] for r in rs])), 5)
            for k in ("seconds", "setup", "importance", "cost", "solve", "update", "prune")}
    out["claims"] = _claims(out, idx, infos)
    return out


def _claims(f: dict, idx: dict, infos: list[dict]) -> list[dict]:
    """The paper's claims next to what this run measured, with a mechanical verdict."""
    claims = []
    for label in FUSION_LABELS:
        st = f["datafree"][label].get("all", {})
        if st:
            share = st["wins"] / st["cells"]
            claims.append({
                "claim": f"Data-free, Intra-Fusion beats default pruning in most cells ({SHORT[label]})",
                "paper": _paper_share(f),
                "ours": f"{st['wins']} wins / {st['ties']} ties / {st['losses']} losses of {st['cells']} cells "
                        f"(±{TIE} pt = tie); mean gain {st['mean_gain']:+.2f} pt, best {st['best']['gain']:+.1f} "
                        f"({_where(st['best'])}), worst {st['worst']['gain']:+.1f} ({_where(st['worst'])})",
                "verdict": "holds" if share > 0.5 else ("partly" if st["wins"] > st["losses"] else "does not hold"),
            })
    # first conv of VGG with l1/Taylor
    for info in infos:
        if info["arch"] != "vgg11_bn" or info["input_group"] not in info["datafree_groups"]:
            continue
        g = info["input_group"]
        for label in FUSION_LABELS:
            gains = [idx[(info["id"], c, g, s, label)]["accuracy"] - idx[(info["id"], c, g, s, "default")]["accuracy"]
                     for (m, c, gg, s, lab) in idx if m == info["id"] and gg == g and lab == label
                     and c in ("l1", "taylor")]
            if gains:
                claims.append({
                    "claim": f"Intra-Fusion is worse than default on VGG's first conv (group {g}) with l1 and Taylor "
                             f"({info['id']}, {SHORT[label]})",
                    "paper": "VGG11-BN group 7: mean gain -9.0 pt (l1), -14.6 pt (Taylor) over s = 10-70%",
                    "ours": f"mean gain {np.mean(gains):+.2f} pt over {len(gains)} cells",
                    "verdict": "holds" if np.mean(gains) < -TIE else "does not hold",
                })
    for label in FUSION_LABELS:
        d = f["distance"][label].get("all")
        if d:
            claims.append({
                "claim": f"Intra-Fusion's outputs stay closer to the unpruned model's ({SHORT[label]})",
                "paper": "smaller L2 logit distance with Intra-Fusion",
                "ours": f"closer in {100 * d['fusion_closer']:.0f}% of {d['cells']} data-free cells",
                "verdict": "holds" if d["fusion_closer"] > 0.75 else ("partly" if d["fusion_closer"] > 0.5
                                                                      else "does not hold"),
            })
    marg = [v for k, v in f["ablations"].items() if "marginal" in k and k.endswith("|paper")]
    if marg:
        worst = max(v["max_abs_acc_delta"] for v in marg)
        mean = float(np.mean([v["mean_abs_acc_delta"] for v in marg]))
        claims.append({
            "claim": "Uniform vs importance marginals make no significant difference",
            "paper": "insignificant in most cells",
            "ours": f"mean absolute change of accuracy {mean:.2f} pt, largest {worst:.2f} pt (paper map)",
            "verdict": "holds" if mean < 1.0 else ("partly" if mean < 3.0 else "does not hold"),
        })
    for label in FUSION_LABELS:
        gains = []
        for ratios in f["finetune"].values():
            for labels in ratios.values():
                d, x = labels.get("default", {}), labels.get(label, {})
                if "after" in d and "after" in x:
                    gains.append(x["after"] - d["after"])
        if gains:
            ahead = sum(g > 0 for g in gains)
            claims.append({
                "claim": f"After fine-tuning, Intra-Fusion stays ahead of default pruning ({SHORT[label]})",
                "paper": "+0.24 to +0.96 pt (Table 1, 300-epoch models, full fine-tuning)",
                "ours": f"{ahead} of {len(gains)} runs ahead; gains {min(gains):+.2f} to {max(gains):+.2f} pt "
                        f"(mean {np.mean(gains):+.2f})",
                "verdict": "holds" if np.mean(gains) > 0 and ahead > len(gains) / 2
                else ("partly" if ahead >= len(gains) / 3 else "does not hold"),
            })
    # Taylor's collapse to chance on ResNet18 groups 4 and 7
    for info in infos:
        if info["arch"] != "resnet18":
            continue
        accs = [r["accuracy"] for (m, c, g, s, lab), r in idx.items() if m == info["id"] and c == "taylor"
                and g in (4, 7) and lab == "fusion (paper)"]
        if accs:
            chance = 100.0 / 10
            claims.append({
                "claim": f"Taylor + Intra-Fusion collapses to chance on ResNet18 groups 4 and 7 ({info['id']})",
                "paper": "10.10% in every cell of groups 4 and 7 (unexplained)",
                "ours": f"IF paper accuracy {min(accs):.1f} to {max(accs):.1f}% over {len(accs)} cells",
                "verdict": "holds" if max(accs) < chance + 5 else "does not hold",
            })
    return claims


def _paper_share(f: dict) -> str:
    parts = []
    for arch in ("vgg11_bn", "resnet18"):
        st = f["paper_datafree"].get(f"{arch}|all", {})
        if st:
            parts.append(f"{'VGG11-BN' if arch == 'vgg11_bn' else 'ResNet18'}: {st['wins']} wins / {st['ties']} ties "
                         f"/ {st['losses']} losses, mean {st['mean_gain']:+.1f} pt")
    return "; ".join(parts)


def _where(d: dict) -> str:
    parts = [str(d[k]) for k in ("model",) if k in d]
    if "criterion" in d:
        parts.append(CRITERION_NAMES.get(d["criterion"], d["criterion"]))
    parts.append(f"group {d['group']}, s={d['sparsity']:g}")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=fig.dpi)
    return path.name


def make_plots(out: Path, tables: dict, preservation: list[dict], infos: list[dict]) -> list[str]:
    """Draw every PNG of a run into ``out``; returns their file names."""
    files = []
    df = _index(tables["datafree"])
    for info in infos:
        mid = info["id"]
        files.append(_plot_datafree(out, mid, info, df, tables["datafree"]))
        if any(c["model"] == mid for c in preservation):
            files.append(_plot_preservation(out, mid, [c for c in preservation if c["model"] == mid]))
        if any(r["model"] == mid for r in tables["ablations"]):
            files.append(_plot_ablations(out, mid, [r for r in tables["ablations"] if r["model"] == mid]))
        if any(r["model"] == mid for r in tables["finetune"]):
            files.append(_plot_finetune(out, mid, [r for r in tables["finetune"] if r["model"] == mid]))
    files.append(_plot_speed(out, tables["speed"], tables["sweep_timing"]))
    head = _plot_headline(out, df, infos)
    if head:
        files.append(head)
    return files


def _plot_datafree(out: Path, mid: str, info: dict, df: dict, rows: list[dict]) -> str:
    crits = list(dict.fromkeys(r["criterion"] for r in rows if r["model"] == mid))
    groups = info["datafree_groups"]
    fig = _figure(max(4.0, 1.75 * len(groups) + 0.6), 1.55 * len(crits) + 0.8)
    axes = fig.subplots(len(crits), len(groups), squeeze=False, sharex=True, sharey=True)
    for i, c in enumerate(crits):
        for j, g in enumerate(groups):
            ax = axes[i][j]
            for label in LABELS:
                pts = sorted((s, r["accuracy"]) for (m, cc, gg, s, lab), r in df.items()
                             if m == mid and cc == c and gg == g and lab == label)
                if pts:
                    ax.plot(*zip(*pts), marker=".", ms=3, lw=1.2, color=COLORS[label], label=SHORT[label])
            ax.axhline(info["base_eval_accuracy"], color="0.7", lw=0.6, ls=":")
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(f"group {g} (n={info['groups'][g]['n']})", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{CRITERION_NAMES.get(c, c)}\naccuracy %", fontsize=8)
            if i == len(crits) - 1:
                ax.set_xlabel("sparsity", fontsize=8)
    axes[0][0].legend(fontsize=6, loc="lower left")
    fig.suptitle(f"{mid}: data-free accuracy\n(one group pruned at a time; dotted line: unpruned)", fontsize=9)
    return _save(fig, out / f"datafree_{mid}.png")


def _plot_preservation(out: Path, mid: str, cells: list[dict]) -> str:
    groups = sorted({c["group"] for c in cells})
    sps = sorted({c["sparsity"] for c in cells})
    fig = _figure(2.3 * len(sps) + 0.4, 1.7 * len(groups) + 0.6)
    axes = fig.subplots(len(groups), len(sps), squeeze=False)
    for i, g in enumerate(groups):
        for j, s in enumerate(sps):
            ax = axes[i][j]
            sel = {c["label"]: np.asarray(c["distances"]) for c in cells if c["group"] == g and c["sparsity"] == s}
            if not sel:
                ax.set_visible(False)
                continue
            hi = max(float(np.quantile(v, 0.99)) for v in sel.values()) or 1.0
            bins = np.linspace(0, hi, 40)
            for label in LABELS:
                if label in sel:
                    v = sel[label]
                    ax.hist(np.clip(v, 0, hi), bins=bins, histtype="step", lw=1.3, color=COLORS[label],
                            label=f"{SHORT[label]} (mean {v.mean():.2f})")
            ax.set_title(f"group {g}, s={s:g}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6)
            if i == len(groups) - 1:
                ax.set_xlabel("L2 distance to unpruned logits", fontsize=7)
    fig.suptitle(f"{mid}: output preservation (ℓ1, per test sample)", fontsize=9)
    return _save(fig, out / f"output_preservation_{mid}.png")


def _plot_ablations(out: Path, mid: str, rows: list[dict]) -> str:
    cells = sorted({(r["group"], r["sparsity"]) for r in rows})
    variants = list(dict.fromkeys(r["variant"] for r in rows if r["variant"] != "default (drop)"))
    norms = list(dict.fromkeys(r["normalization"] for r in rows if r["normalization"]))
    fig = _figure(3.0 * len(cells) + 1.6, 0.28 * len(variants) * max(1, len(norms)) + 1.2)
    axes = fig.subplots(1, len(cells), squeeze=False, sharey=True)[0]
    y = np.arange(len(variants))
    h = 0.8 / max(1, len(norms))
    for ax, (g, s) in zip(axes, cells):
        sel = [r for r in rows if r["group"] == g and r["sparsity"] == s]
        for k, norm in enumerate(norms):
            acc = [next((r["accuracy"] for r in sel if r["variant"] == v and r["normalization"] == norm), np.nan)
                   for v in variants]
            ax.barh(y + (k - (len(norms) - 1) / 2) * h, acc, height=h, color=COLORS[method_label("fusion", norm)],
                    label=SHORT[method_label("fusion", norm)])
        d = next((r["accuracy"] for r in sel if r["variant"] == "default (drop)"), None)
        if d is not None:
            ax.axvline(d, color=COLORS["default"], ls="--", lw=1, label="default" if (g, s) == cells[0] else None)
        lo = min([r["accuracy"] for r in sel] + [100])
        ax.set_xlim(max(0, lo - 5), 100)
        ax.set_yticks(y, variants, fontsize=7)
        ax.invert_yaxis()
        ax.tick_params(labelsize=7)
        ax.set_title(f"group {g}, s={s:g}", fontsize=8)
        ax.set_xlabel("accuracy %", fontsize=7)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=len(names), fontsize=7)
    fig.suptitle(f"{mid}: ablations of Intra-Fusion (ℓ1; dashed: default pruning)", fontsize=9)
    return _save(fig, out / f"ablations_{mid}.png")


def _plot_finetune(out: Path, mid: str, rows: list[dict]) -> str:
    ratios = sorted({r["sparsity"] for r in rows})
    has_bn = any(r["stage"] == "bn-recalibrated" for r in rows)
    epochs = max(r["epoch"] for r in rows)
    fig = _figure(2.6 * len(ratios) + 0.4, 2.4)
    axes = fig.subplots(1, len(ratios), squeeze=False)[0]

    def xpos(r):
        if r["stage"] == "pruned":
            return -1 if has_bn else 0
        return 0 if r["stage"] == "bn-recalibrated" else r["epoch"]

    for ax, ratio in zip(axes, ratios):
        sel = [r for r in rows if r["sparsity"] == ratio]
        for label in dict.fromkeys(r["label"] for r in sel):
            pts = sorted((xpos(r), r["test_accuracy"]) for r in sel if r["label"] == label)
            ax.plot(*zip(*pts), marker="o", ms=3, color=COLORS.get(label, "k"), label=SHORT.get(label, label))
        ticks = ([-1, 0] if has_bn else [0]) + list(range(1, epochs + 1))
        ax.set_xticks(ticks, (["pruned", "BN"] if has_bn else ["pruned"]) + [str(e) for e in range(1, epochs + 1)])
        ax.set_title(f"neuron sparsity {ratio:g} (weights -{sel[0]['weight_sparsity']:.0f}%)", fontsize=8)
        ax.set_xlabel("fine-tuning epoch", fontsize=7)
        ax.set_ylabel("test accuracy %", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"{mid}: every group pruned (ℓ1), BatchNorm statistics re-estimated, then fine-tuned", fontsize=9)
    return _save(fig, out / f"finetune_{mid}.png")


def _plot_speed(out: Path, speed: list[dict], timing: list[dict]) -> str:
    models = list(dict.fromkeys(r["model"] for r in speed))
    fig = _figure(3.0 * (len(models) + 1) + 0.4, 2.5)
    axes = fig.subplots(1, len(models) + 1, squeeze=False)[0]
    for ax, mid in zip(axes, models):
        rs = [r for r in speed if r["model"] == mid]
        groups = sorted({r["group"] for r in rs})
        x = np.arange(len(groups))
        for k, method in enumerate(("default", "fusion")):
            t = [1000 * next(r["seconds"] for r in rs if r["group"] == g and r["method"] == method) for g in groups]
            ax.bar(x + (k - 0.5) * 0.4, t, width=0.4, color=COLORS["default" if k == 0 else "fusion (paper)"],
                   label=method)
        ax.set_xticks(x, [str(g) for g in groups], fontsize=6)
        ax.set_xlabel("group", fontsize=7)
        ax.set_ylabel("prune time, ms", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.set_title(mid, fontsize=8)
        ax.legend(fontsize=6)
    ax = axes[-1]
    tm = [r for r in timing if r["section"] == "datafree"]
    names = [r["model"] for r in tm]
    x = np.arange(len(tm))
    bottom = np.zeros(len(tm))
    for key, color, lab in (("prune_seconds", "tab:blue", "pruning"), ("eval_seconds", "tab:green", "evaluation"),
                            ("other_seconds", "0.7", "other")):
        v = np.array([r[key] for r in tm], dtype=float)
        ax.bar(x, v, bottom=bottom, color=color, label=lab)
        bottom += v
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=6)
    ax.set_ylabel("data-free sweep, s", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.set_title("where the sweep's time goes", fontsize=8)
    ax.legend(fontsize=6)
    fig.suptitle("Speed: pruning one group at s=0.5 (median), and the whole data-free sweep", fontsize=9)
    return _save(fig, out / "speed.png")


def _plot_headline(out: Path, df: dict, infos: list[dict]) -> str | None:
    info = next((i for i in infos if i["id"] == DEFAULT_MODEL), infos[0] if infos else None)
    if info is None:
        return None
    g = info["middle_group"]
    crit = "l1"
    paper = paper_datafree()
    arch = info["arch"] if info["arch"] in ("vgg11_bn", "resnet18") else None
    fig = _figure(8.0, 3.0)
    axes = fig.subplots(1, 2 if arch else 1, squeeze=False)[0]
    ax = axes[0]
    for label in LABELS:
        pts = sorted((s, r["accuracy"]) for (m, c, gg, s, lab), r in df.items()
                     if m == info["id"] and c == crit and gg == g and lab == label)
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=4, lw=1.8, color=COLORS[label], label=SHORT[label])
    ax.axhline(info["base_eval_accuracy"], color="0.6", ls=":", lw=1, label="unpruned")
    ax.set_title(f"ours: {info['id']}, group {g} (n={info['groups'][g]['n']}), ℓ1", fontsize=9)
    if arch:
        pts = sorted((s, v) for (a, c, gg, s), v in paper.items() if a == arch and c == crit and gg == g)
        ax2 = axes[1]
        ax2.plot([s for s, _ in pts], [v[0] for _, v in pts], marker="o", ms=4, lw=1.8, color=COLORS["default"],
                 label="default")
        ax2.plot([s for s, _ in pts], [v[1] for _, v in pts], marker="o", ms=4, lw=1.8,
                 color=COLORS["fusion (paper)"], label="Intra-Fusion")
        ax2.axhline(PAPER_UNPRUNED[arch], color="0.6", ls=":", lw=1, label="unpruned")
        ax2.set_title(f"paper: {'VGG11-BN' if arch == 'vgg11_bn' else 'ResNet18'} CIFAR-10, group {g}, ℓ1",
                      fontsize=9)
    for a in axes:
        a.set_xlabel("sparsity of the group (fraction of channels removed)", fontsize=8)
        a.set_ylabel("test accuracy %, no data, no fine-tuning", fontsize=8)
        a.grid(alpha=0.3)
        a.tick_params(labelsize=8)
        a.legend(fontsize=7, loc="lower left")
    fig.suptitle("Intra-Fusion vs default pruning of one group", fontsize=10)
    return _save(fig, out / "headline.png")


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------

ANNOTATIONS_START = "<!-- annotations:start -->"
ANNOTATIONS_END = "<!-- annotations:end -->"
_ANNOTATIONS_PLACEHOLDER = ("_(No annotations yet: run `python -m intrafusion.experiments.reproduce publish "
                            "RESULTS_DIR DOCS_DIR` "
                            "and write them here; they are kept when the report is regenerated.)_")


def _cpu_note(summary: dict) -> str:
    parts = []
    if summary.get("cpu_seconds") is not None:
        parts.append(f"{summary['cpu_seconds'] / 60:.1f} CPU-minutes")
    if summary.get("load_average"):
        parts.append("load average " + " / ".join(f"{x:g}" for x in summary["load_average"])
                     + " at the end (1/5/15 min)")
    return f" ({'; '.join(parts)})" if parts else ""


def _fmt(v, nd: int = 2) -> str:
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{nd}f}"


def _md_table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_results_markdown(results_dir: str | Path, path: str | Path, image_prefix: str = "",
                           keep_annotations: bool = True) -> Path:
    """Write the report of a results folder as Markdown.

    ``image_prefix`` is prepended to the PNG names (``"img/"`` for ``docs/``). Text between
    ``<!-- annotations:start -->`` and ``<!-- annotations:end -->`` of an existing ``path`` is kept.
    """
    rd, path = Path(results_dir), Path(path)
    summary = json.loads((rd / "summary.json").read_text())
    df = read_csv(rd / "datafree.csv")
    pres = read_csv(rd / "output_preservation.csv")
    abl = read_csv(rd / "ablations.csv")
    speed = read_csv(rd / "speed.csv")
    timing = read_csv(rd / "sweep_timing.csv")
    annotations = _ANNOTATIONS_PLACEHOLDER
    if keep_annotations and path.exists():
        old = path.read_text()
        if ANNOTATIONS_START in old and ANNOTATIONS_END in old:
            annotations = old.split(ANNOTATIONS_START, 1)[1].split(ANNOTATIONS_END, 1)[0].strip("\n")
    infos = summary["models"]
    # recomputed from the tables, so that a report regenerated by newer code states what its tables show
    f = summarise(df, pres, abl, read_csv(rd / "finetune.csv"), speed, infos)
    st = summary["settings"]
    img = image_prefix
    o = io.StringIO()

    def w(s: str = "") -> None:
        o.write(s + "\n")

    w("# Reproducing Intra-Fusion on the bundled zoo")
    w()
    nt = summary["environment"]["threads"]
    w(f"Generated by `{summary['command']}` on {summary['generated']} (torch {summary['environment']['torch']}, "
      f"{nt} thread{'s' if nt != 1 else ''}): **{summary['elapsed_seconds'] / 60:.1f} minutes** wall clock in "
      f"all{_cpu_note(summary)}. "
      "Paper: Theus et al., *Towards Meta-Pruning via Optimal Transport*, ICLR 2024; its numbers are CIFAR-10 "
      "models trained for 300 epochs, ours are the small bundled models, so compare patterns, not values.")
    w()
    w("Methods: **default** drops the least important channels; **IF paper** is Intra-Fusion with the paper's map "
      "(fused channels are sums on both sides); **IF FP** is Intra-Fusion with the function-preserving map "
      "(producers averaged, consumers summed). All three keep the same channels (same importance score).")
    w()
    if (rd / "headline.png").exists():
        w(f"![Intra-Fusion vs default pruning of one group]({img}headline.png)")
        w()
    w(ANNOTATIONS_START)
    w(annotations)
    w(ANNOTATIONS_END)
    w()
    w("## Models and evaluation")
    w()
    rows = []
    for i in infos:
        rows.append([f"`{i['id']}`", i["arch"], _fmt(i["width"], 3) if i["width"] else "–", i["dataset"],
                     f"{i['params']:,}", len(i["groups"]), _fmt(i["base_accuracy"]),
                     f"{i['eval_samples']} of {i['test_samples']}", _fmt(i["base_eval_accuracy"]),
                     f"{i['timing']['total']['wall_seconds']:.0f} s",
                     f"`{i['sha256'][:12]}`" if i.get("sha256") else "–"])
    w(_md_table(["model", "arch", "width", "dataset", "params", "groups", "test acc %", "eval subset",
                 "acc on subset %", "run time", "sha256"], rows))
    w()
    if all(i["eval_samples"] == i["test_samples"] for i in infos):
        w("Every data-free cell is evaluated on the whole test split of its model (the evaluation budget of "
          f"{st['eval_macs'] / 1e9:g} GMAC per evaluation covers all of them), the same images for every cell and "
          f"method, so differences are paired. Accuracy differences within ±{TIE} points count as ties.")
    else:
        w(f"Data-free cells are evaluated on a fixed class-balanced subset of the test split (`eval subset`: about "
          f"{st['eval_macs'] / 1e9:g} GMAC per evaluation, at least {st['min_eval']} images), the same subset for "
          "every cell and method of a model, so differences are paired. Accuracy differences within "
          f"±{TIE} points count as ties. The unpruned accuracy on that subset is the reference line of the plots.")
    w()
    # ---- 1. data-free
    w("## 1. Data-free pruning (paper Tables 10-13)")
    w()
    w("One group pruned at a time, no fine-tuning, no data (Taylor uses 4 batches of 64 training images for its "
      "gradients). Fusion minus default, in accuracy points, over every (group, sparsity) cell:")
    w()
    rows = []
    for label in FUSION_LABELS:
        for key, s in f["datafree"][label].items():
            if key == "all" or not s:
                continue
            model, crit = key.split("|")
            rows.append([f"`{model}`", CRITERION_NAMES.get(crit, crit), SHORT[label], s["cells"],
                         f"{s['wins']} / {s['ties']} / {s['losses']}", f"{s['mean_gain']:+.2f}",
                         f"{s['best']['gain']:+.1f} (g{s['best']['group']}, s={s['best']['sparsity']:g})",
                         f"{s['worst']['gain']:+.1f} (g{s['worst']['group']}, s={s['worst']['sparsity']:g})"])
    crit_order = {CRITERION_NAMES.get(c, c): k for k, c in enumerate(st["criteria"])}
    label_order = {SHORT[lab]: k for k, lab in enumerate(LABELS)}
    model_order = {f"`{i['id']}`": k for k, i in enumerate(infos)}
    rows.sort(key=lambda r: (model_order.get(r[0], 99), crit_order.get(r[1], 99), label_order.get(r[2], 99)))
    w(_md_table(["model", "criterion", "method", "cells", "wins / ties / losses", "mean gain", "best", "worst"], rows))
    w()
    w("### Side by side: the paper's pattern and ours")
    w()
    sps = ", ".join(f"{x:g}" for x in st["sparsities"])
    w(f"Mean gain of Intra-Fusion over default (points, averaged over s = {sps}) per group, paper normalisation; "
      "paper = CIFAR-10 Tables 10-13, ours = each bundled model of the same architecture. Group 0 is nearest the "
      "classifier.")
    w()
    paper = paper_datafree()
    dfi = _index(df)
    for arch, arch_name in (("vgg11_bn", "VGG11-BN"), ("resnet18", "ResNet18")):
        ours = [i for i in infos if i["arch"] == arch]
        if not ours:
            continue
        crits = [c for c in ("l1", "taylor", "lamp") if any(r["criterion"] == c for r in df)]
        head = ["group"]
        for c in crits:
            head += [f"paper {CRITERION_NAMES[c]}"] + [f"{i['id'].split('-', 1)[1]} {CRITERION_NAMES[c]}"
                                                        for i in ours]
        rows = []
        n_groups = max(len(i["groups"]) for i in ours)
        for g in range(n_groups):
            row = [g]
            have = False
            for c in crits:
                pg = [v[1] - v[0] for (a, cc, gg, s), v in paper.items() if a == arch and cc == c and gg == g
                      and any(abs(s - x) < 1e-9 for x in st["sparsities"])]
                row.append(f"{np.mean(pg):+.1f}" if pg else "–")
                for i in ours:
                    gains = [dfi[(i["id"], c, g, s, "fusion (paper)")]["accuracy"]
                             - dfi[(i["id"], c, g, s, "default")]["accuracy"]
                             for (m, cc, gg, s, lab) in dfi if m == i["id"] and cc == c and gg == g and lab == "default"
                             and (m, cc, gg, s, "fusion (paper)") in dfi]
                    have = have or bool(gains)
                    row.append(f"{np.mean(gains):+.1f}" if gains else "–")
            if have:
                rows.append(row)
        w(f"**{arch_name}**")
        w()
        w(_md_table(head, rows))
        w()
    w("### Which normalisation wins where")
    w()
    w("IF FP minus IF paper accuracy, by sparsity band (wins / ties / losses for FP, mean difference in points):")
    w()
    rows = []
    for model, bands in f["normalisation"].items():
        row = [f"`{model}`"]
        for band in ("s <= 0.3", "0.3 < s <= 0.5", "s > 0.5"):
            b = bands.get(band)
            row.append(f"{b['wins']} / {b['ties']} / {b['losses']}, {b['mean_gain']:+.2f}" if b else "–")
        rows.append(row)
    w(_md_table(["model", "s ≤ 0.3", "0.3 < s ≤ 0.5", "s > 0.5"], rows))
    w()
    rows = []
    for label in FUSION_LABELS:
        for key, d in f["distance"][label].items():
            if "|" in key or key == "all":
                continue
            rows.append([f"`{key}`", SHORT[label], d["cells"], f"{100 * d['fusion_closer']:.0f}%"])
    w("Share of data-free cells whose mean logit distance to the unpruned model is below default pruning's:")
    w()
    w(_md_table(["model", "method", "cells", "closer than default"], sorted(rows)))
    w()
    for i in infos:
        if (rd / f"datafree_{i['id']}.png").exists():
            w(f"![data-free {i['id']}]({img}datafree_{i['id']}.png)")
            w()
    w("<details><summary>Full data-free tables (accuracy %, default / IF paper / IF FP)</summary>")
    w()
    for i in infos:
        crits = [c for c in st["criteria"] if any(r["model"] == i["id"] and r["criterion"] == c for r in df)]
        rows = []
        for g in i["datafree_groups"]:
            for s in st["sparsities"]:
                row = [g, f"{s:g}"]
                for c in crits:
                    vals = [dfi.get((i["id"], c, g, round(s, 2), lab)) for lab in LABELS]
                    row.append(" / ".join(_fmt(v["accuracy"], 1) if v else "–" for v in vals))
                rows.append(row)
        w(f"**{i['id']}** (unpruned {i['base_eval_accuracy']:.2f}% on the {i['eval_samples']}-image subset)")
        w()
        w(_md_table(["group", "s"] + [CRITERION_NAMES[c] for c in crits], rows))
        w()
    w("</details>")
    w()
    # ---- 2. output preservation
    w("## 2. Output preservation")
    w()
    w("Per-sample L2 distance between the pruned and the unpruned model's logits (ℓ1 criterion); "
      "'closer' = share of test images whose distance is below default pruning's for the same image.")
    w()
    rows = []
    for r in pres:
        rows.append([f"`{r['model']}`", r["group"], f"{r['sparsity']:g}", SHORT.get(r["label"], r["label"]),
                     _fmt(r["mean"], 3), _fmt(r["median"], 3), _fmt(r["p90"], 3),
                     f"{100 * r['closer_than_default']:.0f}%" if r["closer_than_default"] != "" else "–"])
    w(_md_table(["model", "group", "s", "method", "mean", "median", "p90", "closer"], rows))
    w()
    for i in infos:
        if (rd / f"output_preservation_{i['id']}.png").exists():
            w(f"![output preservation {i['id']}]({img}output_preservation_{i['id']}.png)")
            w()
    # ---- 3. ablations
    w("## 3. Ablations")
    w()
    w("ℓ1 importance; each variant changes one choice of the paper setting (uniform marginals, kept channels as "
      "targets, exact EMD, p = 1). Accuracy % / mean logit distance:")
    w()
    cells = list(dict.fromkeys((r["model"], r["group"], r["sparsity"]) for r in abl))
    norms = list(dict.fromkeys(r["normalization"] for r in abl if r["normalization"]))
    variants = list(dict.fromkeys(r["variant"] for r in abl))
    for model in dict.fromkeys(c[0] for c in cells):
        mc = [c for c in cells if c[0] == model]
        head = ["variant"] + [f"g{g} s={s:g} {SHORT[method_label('fusion', n)]}" for _, g, s in mc for n in norms]
        rows = []
        for v in variants:
            row = [v]
            for _, g, s in mc:
                for n in norms:
                    r = next((r for r in abl if r["model"] == model and r["group"] == g and r["sparsity"] == s
                              and r["variant"] == v and (r["normalization"] == n or v == "default (drop)")), None)
                    row.append(f"{r['accuracy']:.1f} / {r['logit_distance']:.2f}" if r else "–")
            rows.append(row)
        w(f"**{model}**")
        w()
        w(_md_table(head, rows))
        w()
    rows = [[k.split("|")[0], SHORT[method_label("fusion", k.split("|")[1])], v["cells"], f"{v['mean_acc_delta']:+.2f}",
             f"{v['mean_abs_acc_delta']:.2f}", f"{v['max_abs_acc_delta']:.2f}", f"{v['mean_distance_delta']:+.3f}"]
            for k, v in f["ablations"].items()]
    w("Change from the paper setting, over all ablation cells:")
    w()
    w(_md_table(["variant", "map", "cells", "mean Δacc", "mean abs Δacc", "max abs Δacc", "mean Δdistance"], rows))
    w()
    for i in infos:
        if (rd / f"ablations_{i['id']}.png").exists():
            w(f"![ablations {i['id']}]({img}ablations_{i['id']}.png)")
            w()
    # ---- 4. fine-tuning
    w("## 4. Whole-model pruning with fine-tuning (paper Table 1)")
    w()
    ftt = {i["id"]: i["timing"].get("finetune", {}) for i in infos}
    w(f"Every group pruned at the same neuron sparsity with ℓ1 importance; then the BatchNorm running statistics "
      "are re-estimated on the training images (folding left them as identities, and fine-tuning trains "
      "BatchNorms with batch statistics), and the model is fine-tuned with SGD "
      f"(lr {st['finetune_lr']:g}, cosine, momentum 0.9, weight decay 5e-4, batch 128) for {st['finetune_epochs']} "
      "epoch(s) on a class-balanced subset of the training split (`train images`). Test accuracy on the "
      f"{'whole test split' if st['finetune_full_test'] else 'eval subset'}: right after pruning (no data), after "
      "the BatchNorm re-estimation (`BN`), and after the last epoch. Weight sparsity = 1 - parameters after / "
      "parameters before (all parameters).")
    w()
    labels_present = [lab for lab in LABELS if any(lab in r for m in f["finetune"].values() for r in m.values())]
    rows = []
    for model, ratios in f["finetune"].items():
        for ratio, labels in ratios.items():
            any_lab = next(iter(labels.values()))
            row = [f"`{model}`", ratio, f"{any_lab['weight_sparsity']:.1f}%",
                   ftt.get(model, {}).get("train_samples", "–")]
            for lab in labels_present:
                x = labels.get(lab)
                row.append(f"{_fmt(x.get('before'), 1)} / {_fmt(x.get('bn'), 1)} / **{_fmt(x.get('after'), 2)}**"
                           if x else "–")
            d = labels.get("default")
            for lab in labels_present[1:]:
                x = labels.get(lab)
                row.append(f"{x['after'] - d['after']:+.2f}" if d and x and "after" in d and "after" in x else "–")
            rows.append(row)
    head = ["model", "neuron sparsity", "weight sparsity", "train images"]
    head += [f"{SHORT[lab]}: pruned / BN / fine-tuned" for lab in labels_present]
    head += [f"{SHORT[lab]} − default" for lab in labels_present[1:]]
    w(_md_table(head, rows))
    w()
    w("The paper (CIFAR-10, ℓ1, full fine-tuning of 300-epoch models):")
    w()
    rows = []
    for arch, v in PAPER_FINETUNE.items():
        for ws, d, i_ in v["rows"]:
            rows.append([arch, v["base"], f"{ws}%", d, i_, f"{i_ - d:+.2f}"])
    w(_md_table(["model", "base", "weight sparsity", "default", "Intra-Fusion", "gain"], rows))
    w()
    for i in infos:
        if (rd / f"finetune_{i['id']}.png").exists():
            w(f"![fine-tuning {i['id']}]({img}finetune_{i['id']}.png)")
            w()
    # ---- 5. speed
    w("## 5. Speed")
    w()
    w(f"Pruning one group at s = {st['speed_sparsity']:g} with ℓ1 (median of {st['speed_repeats']} runs, mean over "
      "the groups; setup = copy + dependency graph + BatchNorm folding, shared by both methods):")
    w()
    rows = []
    for model, m in f["speed"].items():
        d, fu = m.get("default", {}), m.get("fusion", {})
        if not d or not fu:
            continue
        rows.append([f"`{model}`", f"{1000 * d['seconds']:.1f}", f"{1000 * fu['seconds']:.1f}",
                     f"{fu['seconds'] / d['seconds']:.2f}×", f"{1000 * fu['setup']:.1f}",
                     f"{1000 * fu['importance']:.1f}", f"{1000 * fu['cost']:.1f}", f"{1000 * fu['solve']:.1f}",
                     f"{1000 * fu['update']:.1f}", f"{1000 * fu['prune']:.1f}"])
    w(_md_table(["model", "default ms", "fusion ms", "ratio", "setup", "importance", "cost", "OT solve", "update",
                 "index prune"], rows))
    w()
    w("Where the time of the run goes:")
    w()
    rows = [[f"`{r['model']}`", r["section"], r["cells"], f"{r['wall_seconds']:.1f}", f"{r['prune_seconds']:.1f}",
             f"{r['eval_seconds']:.1f}", f"{r['other_seconds']:.1f}", f"{100 * r['eval_share']:.0f}%"] for r in timing]
    w(_md_table(["model", "section", "cells", "wall s", "pruning s", "evaluation s", "other s", "evaluating"], rows))
    w()
    if (rd / "speed.png").exists():
        w(f"![speed]({img}speed.png)")
        w()
    if speed:
        w(f"Per-group timings are in `speed.csv` ({len(speed)} rows).")
        w()
    # ---- claims
    w("## The paper's claims, checked mechanically")
    w()
    w(_md_table(["claim", "paper", "ours", "verdict"],
                [[c["claim"], c["paper"], c["ours"], f"**{c['verdict']}**"] for c in f["claims"]]))
    w()
    w("## Files")
    w()
    w("`datafree.csv` (one row per cell and method), `output_preservation.csv` / `.json` (summary and per-sample "
      "distances), `ablations.csv`, `finetune.csv` (one row per epoch), `speed.csv`, `sweep_timing.csv`, "
      "`summary.json` (settings, models, findings, timings) and the PNG plots.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(o.getvalue())
    return path


def publish(results_dir: str | Path, docs_dir: str | Path, images: Sequence[str] | None = None) -> Path:
    """Copy a run's report into ``docs_dir/RESULTS.md`` and the plots it shows into ``docs_dir/img/``.

    ``images``: which PNGs to copy and show (default: the headline, speed, and the default model's plots); the
    report's links to the others are dropped. Hand-written annotations in an existing report are kept.
    """
    rd, dd = Path(results_dir), Path(docs_dir)
    summary = json.loads((rd / "summary.json").read_text())
    if images is None:
        ids = [i["id"] for i in summary["models"]]
        main = DEFAULT_MODEL if DEFAULT_MODEL in ids else ids[0]
        images = ["headline.png", "speed.png"] + [f"{k}_{main}.png" for k in ("datafree", "output_preservation",
                                                                              "ablations", "finetune")]
        resnets = [i["id"] for i in summary["models"] if i["arch"] == "resnet18"]
        if resnets:
            images.append(f"datafree_{resnets[0]}.png")
    (dd / "img").mkdir(parents=True, exist_ok=True)
    keep = [name for name in images if (rd / name).exists()]
    for name in keep:
        shutil.copyfile(rd / name, dd / "img" / name)
    path = write_results_markdown(rd, dd / "RESULTS.md", image_prefix="img/")
    lines = path.read_text().splitlines()
    out = [ln for ln in lines if not (ln.startswith("![") and ln.endswith(".png)")
                                      and ln.split("(img/", 1)[-1][:-1] not in keep)]
    path.write_text("\n".join(out) + "\n")
    return path


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m intrafusion.experiments.reproduce",
                                description="Regenerate or publish the report of a reproduction run.")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("report", help="rewrite RESULTS_DIR/RESULTS.md from its CSV/JSON files")
    a.add_argument("results_dir")
    a = sub.add_parser("publish", help="copy the report and its plots into DOCS_DIR (keeps annotations)")
    a.add_argument("results_dir")
    a.add_argument("docs_dir", nargs="?", default="docs")
    args = p.parse_args(argv)
    if args.command == "report":
        print(write_results_markdown(args.results_dir, Path(args.results_dir) / "RESULTS.md"))
    else:
        print(publish(args.results_dir, args.docs_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
