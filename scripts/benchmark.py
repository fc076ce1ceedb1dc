"""Speed of default pruning vs Intra-Fusion on full-width CIFAR VGG11-BN and ResNet18.

Prints markdown tables (and writes them to --out): per group, the median seconds of each step (graph
building, importance, cost matrix, OT solve, weight update, index-selection pruning); then whole-model
pruning of every group at s = 0.5 with one graph build, p = 1 and p = 2.

    python scripts/benchmark.py [--repeats 3] [--threads 2] [--out docs/BENCHMARK.md]

Weights are random (seeded) with non-trivial BatchNorm statistics: timings depend on shapes, not on what
the network learned. Machines are shared and noisy: compare ratios from one run, not absolute numbers
across runs.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from intrafusion.core.groups import PruningGraph  # noqa: E402
from intrafusion.core.prune import TransportOptions, prune  # noqa: E402
from intrafusion.models.architectures import VGG, ResNet18  # noqa: E402

STEPS = ("importance", "cost", "solve", "update", "prune")


def _model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    model = VGG(width=1.0) if arch == "vgg11_bn" else ResNet18(width=1.0)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def _median_timings(model, x, groups, method, repeats, options) -> dict[str, float]:
    runs = []
    prune(model, x, groups, 0.5, method=method, options=options)  # warm-up: first calls pay one-off costs
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = prune(model, x, groups, 0.5, method=method, options=options)
        wall = time.perf_counter() - t0
        row = {"graph": res.timings["graph"] + res.timings["fold"], "total": wall}
        for step in STEPS:
            row[step] = sum(r.timings.get(step, 0.0) for r in res.records)
        runs.append(row)
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def per_group_table(arch: str, repeats: int) -> str:
    model = _model(arch)
    x = torch.zeros(1, 3, 32, 32)
    groups = PruningGraph(model, x).groups
    lines = [f"### {arch} (full width, CIFAR form), one group at s = 0.5, p = 1, seconds (median of {repeats})",
             "", "| group | n | method | graph+fold | importance | cost | OT solve | update | prune | total |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        for method in ("default", "fusion"):
            t = _median_timings(model, x, [g.index], method, repeats, TransportOptions())
            cells = " | ".join(f"{t[k]:.3f}" for k in ("graph", *STEPS, "total"))
            lines.append(f"| {g.index} | {g.n} | {method} | {cells} |")
    return "\n".join(lines)


def whole_model_table(repeats: int) -> str:
    lines = [f"### Whole model: every group pruned at s = 0.5, one graph build, seconds (median of {repeats})", "",
             "| model | method | p | graph+fold | importance | cost | OT solve | update | prune | total |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arch in ("vgg11_bn", "resnet18"):
        model = _model(arch)
        x = torch.zeros(1, 3, 32, 32)
        for method, p in (("default", None), ("fusion", 1.0), ("fusion", 2.0)):
            t = _median_timings(model, x, "all", method, repeats, TransportOptions(p=p or 1.0))
            cells = " | ".join(f"{t[k]:.3f}" for k in ("graph", *STEPS, "total"))
            lines.append(f"| {arch} | {method} | {p or '-'} | {cells} |")
    return "\n".join(lines)


def _naive_cost(x, y, p=1.0, *, kept=None):
    """The naive way: one ``torch.cdist`` of the normalised features against the targets."""
    return torch.cdist(x, y, p=float(p))


def naive_vs_fast(repeats: int) -> str:
    """Whole-model fusion of full-width VGG11-BN (s = 0.5, p = 1), the naive cost against ours, side by side."""
    import numpy as np

    import intrafusion.core.prune as prune_mod

    model, x = _model("vgg11_bn"), torch.zeros(1, 3, 32, 32)
    fast_cost, opts = prune_mod.cost_matrix, TransportOptions(p=1.0)
    fns = {"naive cdist": _naive_cost, "ours": fast_cost}
    runs, plans = {k: [] for k in fns}, {}
    try:
        for rep in range(repeats + 1):  # interleaved, so load from other processes hits both alike; 0 = warm-up
            for name, fn in fns.items():
                prune_mod.cost_matrix = fn
                t0 = time.perf_counter()
                res = prune(model, x, "all", 0.5, method="fusion", options=opts)
                wall = time.perf_counter() - t0
                plans[name] = [r.plan for r in res.records]
                if rep:
                    runs[name].append({"total": wall, "cost": sum(r.timings["cost"] for r in res.records)})
    finally:
        prune_mod.cost_matrix = fast_cost
    rows = {k: {f: statistics.median(r[f] for r in v) for f in ("cost", "total")} for k, v in runs.items()}
    gap = max(float(np.abs(a - b).max()) for a, b in zip(plans["naive cdist"], plans["ours"]))
    lines = [f"### VGG11-BN whole-model fusion (8 groups, s = 0.5, p = 1): naive cost vs ours, seconds "
             f"(median of {repeats})", "", "| cost | cost s | total s |", "|---|---|---|"]
    lines += [f"| {k} | {v['cost']:.3f} | {v['total']:.3f} |" for k, v in rows.items()]
    ratio_total = rows["naive cdist"]["total"] / rows["ours"]["total"]
    ratio_cost = rows["naive cdist"]["cost"] / rows["ours"]["cost"]
    lines += ["", f"ratio (naive / ours): whole-model fusion **{ratio_total:.2f}x**, cost alone {ratio_cost:.2f}x; "
              f"largest plan difference {gap:.1e}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="also write the tables to this markdown file")
    ap.add_argument("--whole-only", action="store_true", help="only the whole-model tables")
    ap.add_argument("--naive-only", action="store_true", help="only the naive-vs-ours comparison")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    head = (f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
            f"python {platform.python_version()}")
    parts = [head, naive_vs_fast(args.repeats)]
    if not args.naive_only:
        parts.append(whole_model_table(args.repeats))
    if not (args.whole_only or args.naive_only):
        parts += [per_group_table("vgg11_bn", args.repeats), per_group_table("resnet18", args.repeats)]
    text = "\n\n".join(parts) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
