"""Claim 4, whole-model pruning with fine-tuning (the paper's Table 1).

Every group is pruned at the same neuron sparsity with ℓ1 importance, the BatchNorm running statistics are
re-estimated (:func:`recalibrate_batchnorm`), and the model is fine-tuned for a short budget; test accuracy is
recorded right after pruning, after the re-estimation and after every epoch.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from ...core.prune import TransportOptions, prune
from ...data import subset
from ...device import model_device
from ...evaluate import count_macs_params, evaluate
from ..sweep import method_label
from ..train import train
from .common import Report, Section, bar, figure, fmt, n_params, save
from .paper import PAPER_FINETUNE
from .settings import COLORS, FUSION_LABELS, LABELS, METHOD_CELLS, SHORT, subset_size

__all__ = ["FINETUNE_COLUMNS", "SECTION", "recalibrate_batchnorm"]

FINETUNE_COLUMNS = ["model", "sparsity", "label", "epoch", "stage", "test_accuracy", "train_loss", "train_accuracy",
                    "seconds", "params", "params_orig", "weight_sparsity", "macs", "macs_orig", "train_samples",
                    "test_samples", "lr"]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: torch.Tensor, batch_size: int = 128) -> int:
    """Re-estimate every BatchNorm's running statistics on ``inputs`` (training-mode forward passes, no gradient).

    Pruning folds each BatchNorm into the layer before it (running mean 0, variance 1 - eps, weight 1): the
    identity in eval mode. Fine-tuning trains BatchNorms normally, so from the first batch they standardise their
    inputs with batch statistics; their running statistics must describe that, or a short fine-tuning is
    evaluated with the stale folded ones. This sets them to the cumulative statistics over ``inputs`` (momentum is
    restored afterwards). The batches run where the model is. Returns how many BatchNorms were re-estimated.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was_training = model.training
    where = model_device(model)
    model.train()
    try:
        for i in range(0, len(inputs), batch_size):
            model(inputs[i : i + batch_size].to(where))
    finally:
        for m, mom in zip(norms, momenta):
            m.momentum = mom
        model.train(was_training)
    return len(norms)


def run(ctx) -> dict[str, list[dict]]:
    """Every (neuron sparsity, method) of the settings: prune all groups, re-estimate BatchNorm, fine-tune."""
    s = ctx.settings
    t_start = time.perf_counter()
    n_train = subset_size(s.finetune_train_macs, ctx.macs, s.finetune_min_train, None, len(ctx.x_train))
    train_set = subset(torch.utils.data.TensorDataset(ctx.x_train, ctx.y_train), n_train, seed=0).tensors
    test = (ctx.x_test, ctx.y_test) if s.finetune_full_test else (ctx.x_eval, ctx.y_eval)
    labels = {method_label(m, n): (m, n) for m, n in METHOD_CELLS}
    runs = [(r, lab) for r in s.finetune_ratios for lab in s.finetune_labels]
    progress = bar(len(runs) * (s.finetune_epochs + 1), f"{ctx.id}: fine-tuning", ctx.progress)
    rows, t = [], {"prune": 0.0, "train": 0.0, "eval": 0.0}
    for ratio, label in runs:
        method, norm = labels[label]
        t0 = time.perf_counter()
        with ctx.compute():
            res = prune(ctx.model, ctx.ex, "all", ratio, method=method, criterion="l1",
                        options=TransportOptions(normalization=norm or "paper"))
        t["prune"] += time.perf_counter() - t0
        params = n_params(res.model)
        macs, _ = count_macs_params(res.model, ctx.ex)
        common = {"model": ctx.id, "sparsity": ratio, "label": label, "params": params,
                  "params_orig": ctx.params, "weight_sparsity": round(100.0 * (1 - params / ctx.params), 2),
                  "macs": macs, "macs_orig": ctx.macs, "train_samples": n_train, "test_samples": len(test[0]),
                  "lr": s.finetune_lr}
        rows += _finetune_one(res.model, common, train_set, test, s, t, progress, ctx.device)
    progress.close()
    ctx.timing["finetune"] = {"cells": len(runs), "wall_seconds": time.perf_counter() - t_start,
                              "prune_seconds": t["prune"], "eval_seconds": t["eval"], "train_seconds": t["train"],
                              "train_samples": n_train, "epochs": s.finetune_epochs}
    return {"finetune": rows}


def _finetune_one(model, common: dict, train_set, test, s, t: dict, progress, device: str = "cpu") -> list[dict]:
    """Rows of one pruned model: right after pruning, after BatchNorm re-estimation, after every epoch.

    ``model`` (a pruning result, not shared) is moved to ``device`` and evaluated, re-estimated and trained
    there; ``train_set`` and ``test`` are moved with it.
    """
    if model_device(model) != torch.device(device):
        model.to(device)
        train_set = tuple(v.to(device) for v in train_set)
        test = tuple(v.to(device) for v in test)
    t0 = time.perf_counter()
    acc0 = evaluate(model, *test).accuracy
    t["eval"] += time.perf_counter() - t0
    rows = [{**common, "epoch": 0, "stage": "pruned", "test_accuracy": round(acc0, 3)}]
    progress.update(1)
    t0 = time.perf_counter()
    if recalibrate_batchnorm(model, train_set[0]):
        t["train"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        acc_bn = evaluate(model, *test).accuracy
        t["eval"] += time.perf_counter() - t0
        rows.append({**common, "epoch": 0, "stage": "bn-recalibrated", "test_accuracy": round(acc_bn, 3)})
    hist = train(model, train_set, test, s.finetune_epochs, lr=s.finetune_lr, seed=0,
                 on_epoch=lambda _e: progress.update(1), device=device)
    for e in hist.epochs:
        t["train"] += e.seconds
        t["eval"] += e.eval_seconds
        rows.append({**common, "epoch": e.epoch, "stage": "fine-tuned",
                     "test_accuracy": round(e.test_accuracy, 3), "train_loss": round(e.train_loss, 5),
                     "train_accuracy": round(e.train_accuracy, 3), "seconds": round(e.seconds, 3)})
    return rows


def findings(tables: dict, infos: list[dict]) -> dict:
    """Accuracy right after pruning (``before``), after BatchNorm re-estimation (``bn``), after the last epoch."""
    last: dict = {}
    for r in tables["finetune"]:
        d = last.setdefault((r["model"], r["sparsity"], r["label"]), {"weight_sparsity": r["weight_sparsity"]})
        if r["stage"] == "pruned":
            d["before"] = r["test_accuracy"]
        elif r["stage"] == "bn-recalibrated":
            d["bn"] = r["test_accuracy"]
        elif r["epoch"] >= d.get("epoch", -1):
            d.update(epoch=r["epoch"], after=r["test_accuracy"])
    out: dict = {}
    for (model, ratio, label), v in sorted(last.items()):
        out.setdefault(model, {}).setdefault(str(ratio), {})[label] = v
    return {"finetune": out}


def claims(f: dict, tables: dict, infos: list[dict]) -> list[dict]:
    """After fine-tuning, Intra-Fusion stays ahead of default pruning."""
    out = []
    for label in FUSION_LABELS:
        gains = []
        for ratios in f["finetune"].values():
            for labels in ratios.values():
                d, x = labels.get("default", {}), labels.get(label, {})
                if "after" in d and "after" in x:
                    gains.append(x["after"] - d["after"])
        if gains:
            ahead = sum(g > 0 for g in gains)
            out.append({
                "claim": f"After fine-tuning, Intra-Fusion stays ahead of default pruning ({SHORT[label]})",
                "paper": "+0.24 to +0.96 pt (Table 1, 300-epoch models, full fine-tuning)",
                "ours": f"{ahead} of {len(gains)} runs ahead; gains {min(gains):+.2f} to {max(gains):+.2f} pt "
                        f"(mean {np.mean(gains):+.2f})",
                "verdict": "holds" if np.mean(gains) > 0 and ahead > len(gains) / 2
                else ("partly" if ahead >= len(gains) / 3 else "does not hold"),
            })
    return out


def plots(out, tables: dict, infos: list[dict]) -> list[str]:
    rows = tables["finetune"]
    return [_plot_model(out, i["id"], [r for r in rows if r["model"] == i["id"]]) for i in infos
            if any(r["model"] == i["id"] for r in rows)]


def _plot_model(out, mid: str, rows: list[dict]) -> str:
    ratios = sorted({r["sparsity"] for r in rows})
    has_bn = any(r["stage"] == "bn-recalibrated" for r in rows)
    epochs = max(r["epoch"] for r in rows)
    fig = figure(2.6 * len(ratios) + 0.4, 2.4)
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
    return save(fig, out / f"finetune_{mid}.png")


def report(doc: Report) -> None:
    st, f = doc.settings, doc.findings
    doc.w("## 4. Whole-model pruning with fine-tuning (paper Table 1)")
    doc.w()
    doc.w("Every group pruned at the same neuron sparsity with ℓ1 importance; then the BatchNorm running statistics "
          "are re-estimated on the training images (folding left them as identities, and fine-tuning trains "
          "BatchNorms with batch statistics), and the model is fine-tuned with SGD "
          f"(lr {st['finetune_lr']:g}, cosine, momentum 0.9, weight decay 5e-4, batch 128) for "
          f"{st['finetune_epochs']} epoch(s) on a class-balanced subset of the training split (`train images`). "
          f"Test accuracy on the {'whole test split' if st['finetune_full_test'] else 'eval subset'}: right after "
          "pruning (no data), after the BatchNorm re-estimation (`BN`), and after the last epoch. Weight sparsity = "
          "1 - parameters after / parameters before (all parameters).")
    doc.w()
    ftt = {i["id"]: i["timing"].get("finetune", {}) for i in doc.infos}
    labels_present = [lab for lab in LABELS if any(lab in r for m in f["finetune"].values() for r in m.values())]
    rows = []
    for model, ratios in f["finetune"].items():
        for ratio, labels in ratios.items():
            any_lab = next(iter(labels.values()))
            row = [f"`{model}`", ratio, f"{any_lab['weight_sparsity']:.1f}%",
                   ftt.get(model, {}).get("train_samples", "–")]
            for lab in labels_present:
                x = labels.get(lab)
                row.append(f"{fmt(x.get('before'), 1)} / {fmt(x.get('bn'), 1)} / **{fmt(x.get('after'), 2)}**"
                           if x else "–")
            d = labels.get("default")
            for lab in labels_present[1:]:
                x = labels.get(lab)
                row.append(f"{x['after'] - d['after']:+.2f}" if d and x and "after" in d and "after" in x else "–")
            rows.append(row)
    head = ["model", "neuron sparsity", "weight sparsity", "train images"]
    head += [f"{SHORT[lab]}: pruned / BN / fine-tuned" for lab in labels_present]
    head += [f"{SHORT[lab]} − default" for lab in labels_present[1:]]
    doc.table(head, rows)
    doc.w("The paper (CIFAR-10, ℓ1, full fine-tuning of 300-epoch models):")
    doc.w()
    rows = [[arch, v["base"], f"{ws}%", d, i_, f"{i_ - d:+.2f}"]
            for arch, v in PAPER_FINETUNE.items() for ws, d, i_ in v["rows"]]
    doc.table(["model", "base", "weight sparsity", "default", "Intra-Fusion", "gain"], rows)
    doc.model_images("finetune", "fine-tuning")


SECTION = Section(name="finetune", csv={"finetune": FINETUNE_COLUMNS}, run=run, findings=findings, claims=claims,
                  plots=plots, report=report, files="`finetune.csv` (one row per epoch)")
