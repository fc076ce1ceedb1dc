"""Latency, before/after reports and safetensors export (the Export page).

No Streamlit here: the pages in ``pages/`` draw what these functions return.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..evaluate import count_macs_params, evaluate, predict_logits


@torch.inference_mode()
def measure_latency(model: nn.Module, example_inputs: torch.Tensor, batch_size: int = 1, repeats: int = 30,
                    warmup: int = 3, budget_s: float = 1.0) -> dict:
    """Wall-clock time of one forward pass (CPU, current torch thread count), median over repeats.

    Parameters
    ----------
    model : nn.Module
        Run in eval mode (its mode is restored).
    example_inputs : torch.Tensor
        One input; it is repeated to ``batch_size``.
    batch_size : int
    repeats : int
        At most this many timed passes...
    warmup : int
        ...after this many untimed ones.
    budget_s : float
        ...and no more than about this many seconds in all (at least 3 timed passes).

    Returns
    -------
    dict
        ``batch_size, repeats, median_ms, p10_ms, p90_ms, threads``.
    """
    x = example_inputs[:1].expand(batch_size, *example_inputs.shape[1:]).contiguous()
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            model(x)
        times = []
        start = time.perf_counter()
        while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
            t0 = time.perf_counter()
            model(x)
            times.append(1000.0 * (time.perf_counter() - t0))
    finally:
        model.train(was_training)
    times.sort()
    # 'inclusive': deciles between the fastest and the slowest pass (the default 'exclusive' method extrapolates
    # beyond them with few passes, and gave a negative p10 on a busy machine)
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) >= 2 else [times[0]] * 9
    return {"batch_size": batch_size, "repeats": len(times), "median_ms": statistics.median(times),
            "p10_ms": q[0], "p90_ms": q[-1], "threads": torch.get_num_threads()}


def model_report(model: nn.Module, example_inputs: torch.Tensor, inputs: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None, *, latency: bool = True, batch_sizes: Sequence[int] = (1, 64),
                 reference_logits: torch.Tensor | None = None) -> dict:
    """Accuracy, parameters, MACs and measured latency of one model.

    Parameters
    ----------
    model : nn.Module
        Not changed (MACs are counted on a copy), so a shared cached model can be measured.
    example_inputs : torch.Tensor
    inputs, labels : torch.Tensor, optional
        Test data; without them ``accuracy`` is None.
    latency : bool
        Measure latency at each of ``batch_sizes``.
    reference_logits : torch.Tensor, optional
        The unpruned model's logits on ``inputs``: adds ``logit_distance`` and ``agreement``.

    Returns
    -------
    dict
    """
    macs, params = count_macs_params(copy.deepcopy(model), example_inputs)  # the counter hooks the model: a copy
    out: dict = {"params": params, "macs": macs, "accuracy": None}
    if inputs is not None and labels is not None:
        ev = evaluate(model, inputs, labels, reference_logits)
        out["accuracy"] = ev.accuracy
        out["test_samples"] = len(labels)
        if reference_logits is not None:
            out["logit_distance"] = ev.logit_distance
            out["agreement"] = ev.agreement
    if latency:
        out["latency"] = {f"batch_{b}": measure_latency(model, example_inputs, batch_size=b) for b in batch_sizes}
    return out


def before_after_report(original: nn.Module, pruned: nn.Module, example_inputs: torch.Tensor,
                        inputs: torch.Tensor | None = None, labels: torch.Tensor | None = None, *,
                        settings: Mapping | None = None, latency: bool = True,
                        batch_sizes: Sequence[int] = (1, 64)) -> dict:
    """Before/after report of a pruning: accuracy, parameters, MACs, measured latency and their changes.

    Returns
    -------
    dict
        ``{"settings", "before", "after", "change"}``; ``change`` holds ratios (after / before) for params,
        MACs and median latencies, and the accuracy difference in points.
    """
    ref = predict_logits(original, inputs) if inputs is not None else None
    before = model_report(original, example_inputs, inputs, labels, latency=latency, batch_sizes=batch_sizes)
    after = model_report(pruned, example_inputs, inputs, labels, latency=latency, batch_sizes=batch_sizes,
                         reference_logits=ref)
    change: dict = {
        "params_ratio": after["params"] / before["params"] if before["params"] else None,
        "macs_ratio": after["macs"] / before["macs"] if before["macs"] else None,
        "accuracy_points": (after["accuracy"] - before["accuracy"]) if before["accuracy"] is not None else None,
    }
    if latency:
        for key in before["latency"]:
            b, a = before["latency"][key]["median_ms"], after["latency"][key]["median_ms"]
            change[f"latency_{key}_ratio"] = a / b if b > 0 else None
    return {"settings": dict(settings or {}), "before": before, "after": after, "change": change}


def export_model(model: nn.Module, config, metadata: Mapping | None = None) -> tuple[bytes, dict]:
    """Safetensors bytes of a (pruned) model and the architecture config stored in them.

    The config is the one :func:`intrafusion.models.checkpoint.load_model` rebuilds the model from (explicit
    per-layer channels for a pruned VGG/ResNet, hidden sizes for an MLP).

    Returns
    -------
    data : bytes
    config : dict
    """
    from ..models.checkpoint import model_to_bytes, read_state_dict

    data = model_to_bytes(model, config, metadata)
    _, meta = read_state_dict(data)
    return data, meta["arch_config"]
