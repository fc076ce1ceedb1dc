"""Claim 5, speed: pruning time per group for both methods, and where the time of the whole run goes.

The second part reads ``sweep_timing``, the table :mod:`.run` builds from every section's timing.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

import numpy as np

from ...core.prune import kept_count, prune
from .common import Report, Section, bar, figure, save
from .settings import COLORS

__all__ = ["SECTION", "SPEED_COLUMNS"]

SPEED_COLUMNS = ["model", "group", "n", "sparsity", "method", "seconds", "setup", "importance", "cost", "solve",
                 "update", "prune", "repeats"]
_STEPS = ("importance", "cost", "solve", "update", "prune")


def run(ctx) -> dict[str, list[dict]]:
    """Median time of pruning each group at ``settings.speed_sparsity``, per step, for both methods."""
    s = ctx.settings
    t_start = time.perf_counter()
    rows = []
    progress = bar(len(ctx.groups) * 2 * s.speed_repeats, f"{ctx.id}: speed", ctx.progress)
    for grp in ctx.groups:
        if kept_count(grp.n, s.speed_sparsity) < 1:
            continue
        for method in ("default", "fusion"):
            samples = defaultdict(list)
            for _ in range(s.speed_repeats):
                with ctx.compute():  # the transport cost on the run's device, as in the other sections
                    res = prune(ctx.model, ctx.ex, grp.index, s.speed_sparsity, method=method, criterion="l1")
                t, rt = res.timings, res.records[0].timings
                samples["seconds"].append(t["total"])
                samples["setup"].append(t["copy"] + t["graph"] + t["fold"])
                for k in _STEPS:
                    samples[k].append(rt.get(k, 0.0))
                progress.update(1)
            rows.append({"model": ctx.id, "group": grp.index, "n": grp.n, "sparsity": s.speed_sparsity,
                         "method": method, "repeats": s.speed_repeats,
                         **{k: round(statistics.median(v), 6) for k, v in samples.items()}})
    progress.close()
    ctx.timing["speed"] = {"cells": len(rows), "wall_seconds": time.perf_counter() - t_start}
    return {"speed": rows}


def findings(tables: dict, infos: list[dict]) -> dict:
    """Mean over groups of the per-group median times, per model and method."""
    sp = defaultdict(list)
    for r in tables["speed"]:
        sp[(r["model"], r["method"])].append(r)
    out: dict = {}
    for (model, method), rs in sp.items():
        out.setdefault(model, {})[method] = {k: round(float(np.mean([r[k] for r in rs])), 5)
                                             for k in ("seconds", "setup", *_STEPS)}
    return {"speed": out}


def plots(out, tables: dict, infos: list[dict]) -> list[str]:
    speed, timing = tables["speed"], tables.get("sweep_timing", [])
    models = list(dict.fromkeys(r["model"] for r in speed))
    fig = figure(3.0 * (len(models) + 1) + 0.4, 2.5)
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
    _plot_sweep_time(axes[-1], [r for r in timing if r["section"] == "datafree"])
    fig.suptitle("Speed: pruning one group at s=0.5 (median), and the whole data-free sweep", fontsize=9)
    return [save(fig, out / "speed.png")]


def _plot_sweep_time(ax, tm: list[dict]) -> None:
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


def report(doc: Report) -> None:
    st, speed = doc.settings, doc.tables["speed"]
    doc.w("## 5. Speed")
    doc.w()
    doc.w(f"Pruning one group at s = {st['speed_sparsity']:g} with ℓ1 (median of {st['speed_repeats']} runs, mean "
          "over the groups; setup = copy + dependency graph + BatchNorm folding, shared by both methods):")
    doc.w()
    rows = []
    for model, m in doc.findings["speed"].items():
        d, fu = m.get("default", {}), m.get("fusion", {})
        if not d or not fu:
            continue
        rows.append([f"`{model}`", f"{1000 * d['seconds']:.1f}", f"{1000 * fu['seconds']:.1f}",
                     f"{fu['seconds'] / d['seconds']:.2f}×", f"{1000 * fu['setup']:.1f}",
                     f"{1000 * fu['importance']:.1f}", f"{1000 * fu['cost']:.1f}", f"{1000 * fu['solve']:.1f}",
                     f"{1000 * fu['update']:.1f}", f"{1000 * fu['prune']:.1f}"])
    doc.table(["model", "default ms", "fusion ms", "ratio", "setup", "importance", "cost", "OT solve", "update",
               "index prune"], rows)
    doc.w("Where the time of the run goes:")
    doc.w()
    rows = [[f"`{r['model']}`", r["section"], r["cells"], f"{r['wall_seconds']:.1f}", f"{r['prune_seconds']:.1f}",
             f"{r['eval_seconds']:.1f}", f"{r['other_seconds']:.1f}", f"{100 * r['eval_share']:.0f}%"]
            for r in doc.tables["sweep_timing"]]
    doc.table(["model", "section", "cells", "wall s", "pruning s", "evaluation s", "other s", "evaluating"], rows)
    doc.image("speed.png", "speed")
    if speed:
        doc.w(f"Per-group timings are in `speed.csv` ({len(speed)} rows).")
        doc.w()


SECTION = Section(name="speed", csv={"speed": SPEED_COLUMNS}, run=run, findings=findings, plots=plots,
                  report=report, files="`speed.csv`")
