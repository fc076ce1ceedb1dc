"""Text table and plot of a split-data run (:mod:`intrafusion.experiments.split_data`)."""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["command_line", "plot", "table"]

STEPS = ("training", "fusion", "pruning", "fine_tuning")


def _f(v: float, fmt: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def command_line(config: dict, quick: bool = False) -> str:
    """The ``python -m intrafusion split-data`` line that runs ``config`` (the app shows it)."""
    cmd = f"python -m intrafusion split-data {config['arch']} --dataset {config['dataset']} --parts {config['parts']}"
    if quick:
        cmd += " --quick"
    else:
        cmd += (f" --width {config['width']:g} --epochs {config['epochs']} --finetune-epochs "
                f"{config['finetune_epochs']} --sparsity {config['sparsity']:g}")
        if config.get("train_size"):
            cmd += f" --train-size {config['train_size']}"
        if config.get("test_size"):
            cmd += f" --test-size {config['test_size']}"
    if config.get("repair", "none") != "none":
        cmd += f" --repair {config['repair']}"
    if config.get("workers", 1) != 1:
        cmd += f" --workers {config['workers']}"
    return cmd


def table(result: dict) -> str:
    """Markdown table of a result's ``to_dict()``: accuracy per stage, seconds per step, speedups."""
    c = result["config"]
    lines = [f"{c['arch']} width {c['width']:g} on {c['dataset']}, {c['parts']} parts "
             f"{result['part_sizes']}, T={c['epochs']}, F={c['finetune_epochs']}, sparsity {c['sparsity']:g}, "
             f"fusion {c['fusion']}, workers {c['workers']}",
             "",
             "| pipeline | accuracy after each stage (%) | final % | train s | fusion s | prune s | fine-tune s "
             "| total s | train speedup | overall speedup |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in result["pipelines"].items():
        stages = ", ".join(f"{s['stage']} {s['accuracy']:.1f}" for s in p["stages"])
        t = p["times"]
        lines.append(f"| {name} | {stages} | {p['final_accuracy']:.1f} | "
                     + " | ".join(_f(t[k], ".1f") for k in (*STEPS, "total"))
                     + f" | {_f(p['training_speedup'])} | {_f(p['overall_speedup'])} |")
    split = ", ".join(f"{m['accuracy']:.1f}" for m in result["split_models"])
    env = result["environment"]
    lines += ["", f"split models: {split} %; averaged without alignment: {result['naive_average_accuracy']:.1f} %; "
              f"split training {_f(env.get('split_training_sum'), '.1f')} s summed over models; "
              f"start-up {env['startup']:.1f} s (not in the totals); {env['cores']} cores, "
              f"{env['threads_per_task']} torch thread(s) per task, Ray {'on' if env['ray'] else 'off'}"]
    return "\n".join(lines)


def plot(result: dict, path: str | Path) -> Path:
    """A PNG: final accuracy per pipeline (left) and wall-clock seconds per step, stacked (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pipes = result["pipelines"]
    names = list(pipes)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    acc = [pipes[n]["final_accuracy"] for n in names]
    ax1.bar(names, acc, color=["tab:blue", "tab:orange", "tab:gray"][: len(names)])
    for i, v in enumerate(acc):
        ax1.text(i, v + 0.5, f"{v:.1f}", ha="center", va="bottom")
    for m in result["split_models"]:
        ax1.axhline(m["accuracy"], color="tab:green", lw=0.8, ls=":")
    ax1.set_ylabel("test accuracy after the pipeline (%)")
    ax1.set_ylim(0, 105)
    ax1.set_title("accuracy (dotted: each split model before pruning)", fontsize=9)
    bottom = [0.0] * len(names)
    for step, color in zip(STEPS, ("tab:blue", "tab:purple", "tab:red", "tab:olive")):
        vals = [pipes[n]["times"][step] for n in names]
        ax2.bar(names, vals, bottom=bottom, label=step.replace("_", "-"), color=color)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, n in enumerate(names):
        sp = pipes[n]["overall_speedup"]
        ax2.text(i, bottom[i], f"x{sp:.2f}" if n != "whole-data" else "", ha="center", va="bottom")
    ax2.set_ylabel("wall-clock seconds")
    ax2.set_title("time per step (label: overall speedup vs whole-data)", fontsize=9)
    ax2.legend(fontsize=8)
    c = result["config"]
    fig.suptitle(f"Split-data training: {c['arch']} width {c['width']:g}, {c['dataset']}, {c['parts']} parts, "
                 f"{result['environment']['workers']} worker(s)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
