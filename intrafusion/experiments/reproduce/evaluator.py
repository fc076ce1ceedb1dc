"""Evaluation of single-group prunings: re-run only what is downstream of the group.

When one group is pruned, every layer upstream of it computes the same values as in the unpruned model, so the
activations entering the group are computed once and only the downstream part is re-run per evaluated model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn

from ...evaluate import predict_logits

__all__ = ["GroupEvaluator", "scores"]



class GroupEvaluator:
    """Logits of models that differ from ``reference`` only in the layers named ``changed`` (and their shapes).

    Every fx node that depends on none of those layers computes the same values in both models: the values
    that enter the changed part (the frontier) are computed once on ``reference`` and every evaluated model only
    re-runs the nodes downstream of its changed layers, on the same batches as :func:`predict_logits` (so the
    results are identical, not just close). ``logits`` falls back to a full forward pass when the model cannot be
    traced or its graph does not match, and ``check=True`` compares against a full forward pass and disables the
    shortcut for good if they differ.

    ``device`` other than the CPU (``cuda``): the inputs are moved there once and every model is evaluated there
    with a full forward pass (no shortcut: on a GPU the forward pass is cheap, and its results would not be
    bit-identical to a partial one); the logits come back on the CPU.
    """

    def __init__(self, reference: nn.Module, changed: set[str], inputs: torch.Tensor, batch_size: int = 512,
                 device: str | torch.device | None = None):
        self.device = None if device is None or torch.device(device).type == "cpu" else torch.device(device)
        self.inputs = inputs if self.device is None else inputs.to(self.device)
        self.batch_size = batch_size
        self.enabled, self.max_diff = False, None
        self.cache: list[dict[str, torch.Tensor]] = []
        if self.device is not None:
            return
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
            return predict_logits(model, self.inputs, self.batch_size, device=self.device)
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


def scores(logits: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor) -> tuple[float, float, float,
                                                                                           np.ndarray]:
    """Accuracy %, mean L2 distance to ``reference`` logits, agreement with its predictions %, per-sample distances."""
    pred = logits.argmax(1)
    dist = (logits - reference).norm(dim=1).cpu().numpy()
    acc = 100.0 * float((pred == labels).float().mean())
    agree = 100.0 * float((pred == reference.argmax(1)).float().mean())
    return acc, float(dist.mean()), agree, dist
