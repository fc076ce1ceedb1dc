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


def naive_vs_fast(repeats: int, threads: int = 2) -> str:
    """Whole-model fusion of full-width VGG11-BN (s = 0.5, p = 1), the naive cost against ours, side by side.

    Wall seconds and CPU seconds (this process, all threads). On shared cores the wall ratio depends on the
    others' load; the CPU seconds give an idle-machine estimate: cost CPU / threads (both costs run on all
    threads) plus the rest of the call's CPU (mostly single-threaded)."""
    import numpy as np

    import intrafusion.core.prune as prune_mod

    model, x = _model("vgg11_bn"), torch.zeros(1, 3, 32, 32)
    fast_cost, opts = prune_mod.cost_matrix, TransportOptions(p=1.0)
    fns = {"naive cdist": _naive_cost, "ours": fast_cost}
    runs, plans = {k: [] for k in fns}, {}
    cost_cpu = [0.0]

    def timed(fn):
        def wrapper(*args, **kwargs):
            c0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                cost_cpu[0] += time.process_time() - c0
        return wrapper

    try:
        for rep in range(repeats + 1):  # interleaved, so load from other processes hits both alike; 0 = warm-up
            for name, fn in fns.items():
                prune_mod.cost_matrix = timed(fn)
                cost_cpu[0] = 0.0
                t0, c0 = time.perf_counter(), time.process_time()
                res = prune(model, x, "all", 0.5, method="fusion", options=opts)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                plans[name] = [r.plan for r in res.records]
                if rep:
                    runs[name].append({"total": wall, "cost": sum(r.timings["cost"] for r in res.records),
                                       "cpu": cpu, "cost_cpu": cost_cpu[0],
                                       "idle": cost_cpu[0] / threads + (cpu - cost_cpu[0])})
    finally:
        prune_mod.cost_matrix = fast_cost
    fields = ("cost", "total", "cost_cpu", "cpu", "idle")
    rows = {k: {f: statistics.median(r[f] for r in v) for f in fields} for k, v in runs.items()}
    gap = max(float(np.abs(a - b).max()) for a, b in zip(plans["naive cdist"], plans["ours"]))
    lines = [f"### VGG11-BN whole-model fusion (8 groups, s = 0.5, p = 1): naive cost vs ours, seconds "
             f"(median of {repeats})", "",
             "| cost | cost s | total s | cost CPU s | total CPU s | idle estimate s |", "|---|---|---|---|---|---|"]
    lines += [f"| {k} | " + " | ".join(f"{v[f]:.3f}" for f in fields) + " |" for k, v in rows.items()]
    a, b = rows["naive cdist"], rows["ours"]
    lines += ["", f"ratio (naive / ours): whole-model fusion **{a['total'] / b['total']:.2f}x** wall, "
              f"{a['idle'] / b['idle']:.2f}x idle estimate from CPU seconds; cost alone {a['cost'] / b['cost']:.2f}x "
              f"wall; largest plan difference {gap:.1e}"]
    return "\n".join(lines)


def sweep_reuse(model_id: str, repeats: int, limit: int | None = None) -> str:
    """Sweep cells as now (the prepared model cloned per cell, evaluation re-running only the layers from the
    pruned group on) against the previous behaviour (a fresh copy, trace and fold per cell, full evaluation),
    interleaved in one run: every group at s = 0.3, 0.5, 0.7, default and fusion."""
    import intrafusion.experiments.sweep as sweep_mod
    from intrafusion.core.prune import prepare
    from intrafusion.data import load_dataset, subset
    from intrafusion.experiments.sweep import sweep
    from intrafusion.models.zoo import resolve_model

    loaded = resolve_model(model_id)
    test = load_dataset(loaded.dataset, "test", preprocessing=loaded.preprocessing)
    if limit:
        test = subset(test, limit, seed=0)
        x, y = (torch.stack(t) for t in zip(*[test[i] for i in range(len(test))]))
    else:
        x, y = test.tensors
    groups = [g.index for g in PruningGraph(loaded.model, loaded.example_inputs).groups if g.prunable]
    reuse, partial_eval = sweep_mod.clone_prepared, sweep_mod._evaluate_cell

    def full_eval(cell, model, shared):
        return sweep_mod.evaluate(model, shared["inputs"], shared["labels"], shared["reference_logits"])

    modes = {"fresh copy, trace and fold per cell, full evaluation (before)":
             (lambda t: prepare(loaded.model, loaded.example_inputs), full_eval),
             "prepared once and cloned, evaluation from the group on (now)": (reuse, partial_eval)}
    runs = {k: [] for k in modes}
    rows_by_mode = {}
    try:
        for rep in range(repeats + 1):  # 0 = warm-up (imports, JIT)
            for name, (clone, evaluate_cell) in modes.items():
                sweep_mod.clone_prepared, sweep_mod._evaluate_cell = clone, evaluate_cell
                t0 = time.perf_counter()
                rows = list(sweep(loaded.model, loaded.example_inputs, x, y, groups, [0.3, 0.5, 0.7]))
                wall = time.perf_counter() - t0
                rows_by_mode[name] = [(r.accuracy, r.logit_distance) for r in rows]
                if rep:
                    runs[name].append({"cell": wall / len(rows),
                                       "prune": statistics.mean(r.seconds for r in rows),
                                       "eval": statistics.mean(r.eval_seconds for r in rows)})
    finally:
        sweep_mod.clone_prepared, sweep_mod._evaluate_cell = reuse, partial_eval
    same = len({tuple(v) for v in rows_by_mode.values()}) == 1
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("cell", "prune", "eval")} for k, v in runs.items()}
    lines = [f"### Sweep cells on {model_id} ({len(groups)} groups x 3 sparsities x default + fusion, {len(y)} test "
             f"images): seconds per cell (median of {repeats})", "",
             "| cells | whole cell s | pruning s | evaluation s |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['cell']:.4f} | {v['prune']:.4f} | {v['eval']:.4f} |" for k, v in med.items()]
    a, b = med.values()
    lines += ["", f"ratio (before / now): whole cell **{a['cell'] / b['cell']:.2f}x**, pruning step "
              f"{a['prune'] / b['prune']:.2f}x, evaluation {a['eval'] / b['eval']:.2f}x; rows identical: {same}"]
    return "\n".join(lines)


def large_group(group: int = 1, sparsity: float = 0.5, threads: int = 2) -> str:
    """One 4096-channel classifier group of torchvision's VGG11-BN (random weights, 224 x 224 inputs): wall and
    CPU seconds of each step. CPU seconds (all threads of this process) do not grow with other processes'
    load the way wall seconds do, so on shared cores they give an estimate for idle ones."""
    from torchvision.models import vgg11_bn

    import intrafusion.core.prune as prune_mod

    torch.manual_seed(0)
    model, x = vgg11_bn(weights=None).eval(), torch.zeros(1, 3, 224, 224)
    cpu: dict[str, float] = {}
    originals = {name: getattr(prune_mod, name) for name in ("cost_matrix", "solve", "apply_map", "feature_vectors")}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            c0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                cpu[name] = cpu.get(name, 0.0) + time.process_time() - c0
        return wrapper

    try:
        for name, fn in originals.items():
            setattr(prune_mod, name, timed(name, fn))
        t0, c0 = time.perf_counter(), time.process_time()
        prepared = prune_mod.prepare(model, x)
        t_prep, c_prep = time.perf_counter() - t0, time.process_time() - c0
        n = prepared.graph.channels(group)
        t0, c0 = time.perf_counter(), time.process_time()
        res = prune_mod.prune(model, x, [group], sparsity, method="fusion", prepared=prepared)
        wall, cpu_total = time.perf_counter() - t0, time.process_time() - c0
    finally:
        for name, fn in originals.items():
            setattr(prune_mod, name, fn)
    t = res.records[0].timings
    cost_cpu = cpu.get("feature_vectors", 0) + cpu.get("cost_matrix", 0)
    lines = [f"### torchvision VGG11-BN, group {group} (n = {n}, s = {sparsity}, p = 1, {threads} threads): seconds",
             "", "| step | wall s | CPU s |", "|---|---|---|",
             f"| copy + graph + fold (224 x 224 trace) | {t_prep:.2f} | {c_prep:.2f} |",
             f"| importance | {t['importance']:.2f} | - |",
             f"| features + cost | {t['cost']:.2f} | {cpu.get('feature_vectors', 0) + cpu.get('cost_matrix', 0):.2f} |",
             f"| exact OT solve + map | {t['solve']:.2f} | {cpu.get('solve', 0):.2f} |",
             f"| weight update | {t['update']:.2f} | {cpu.get('apply_map', 0):.2f} |",
             f"| index-selection prune | {t['prune']:.2f} | - |",
             f"| **one group (prune call)** | **{wall:.2f}** | **{cpu_total:.2f}** |",
             "", f"Estimate for {threads} idle cores: the cost's CPU seconds / {threads} (its kernel is parallel) plus "
             f"every other step's CPU seconds (counted as single-threaded, an upper bound): "
             f"**{cost_cpu / threads + cpu_total - cost_cpu:.1f} s** for the group."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="also write the tables to this markdown file")
    ap.add_argument("--whole-only", action="store_true", help="only the whole-model tables")
    ap.add_argument("--naive-only", action="store_true", help="only the naive-vs-ours comparison")
    ap.add_argument("--sweep-reuse", metavar="MODEL", help="only: sweep cells with and without reuse on MODEL")
    ap.add_argument("--limit", type=int, help="--sweep-reuse: evaluate on this many test images (default all)")
    ap.add_argument("--large", action="store_true",
                    help="only: one 4096-channel group of torchvision VGG11-BN, wall and CPU seconds per step")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    head = (f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
            f"python {platform.python_version()}")
    if args.large:
        print(head + "\n\n" + large_group(threads=args.threads))
        return 0
    if args.sweep_reuse:
        print(head + "\n\n" + sweep_reuse(args.sweep_reuse, args.repeats, args.limit))
        return 0
    parts = [head, naive_vs_fast(args.repeats, args.threads)]
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
