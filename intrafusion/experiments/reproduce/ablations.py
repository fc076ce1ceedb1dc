"""Claim 3, ablations of Intra-Fusion's choices: marginals, targets, solver (exact / Sinkhorn), cost exponent.

Each variant changes one choice of the paper setting (uniform marginals, kept channels as targets, exact EMD,
p = 1) on the middle group (and the input-side group in a full run), with ℓ1 importance.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from ...core.prune import TransportOptions, kept_count
from ..sweep import method_label
from .common import Report, Section, bar, figure, save
from .settings import COLORS, SHORT, Settings

__all__ = ["ABLATION_COLUMNS", "SECTION", "ablation_variants"]

ABLATION_COLUMNS = ["model", "group", "n", "sparsity", "criterion", "variant", "normalization", "label", "target",
                    "source_marginal", "target_marginal", "solver", "reg", "p", "accuracy", "logit_distance",
                    "agreement", "seconds", "solve_seconds", "eval_samples"]


def ablation_variants(settings: Settings) -> list[tuple[str, dict]]:
    """``(name, TransportOptions overrides)`` of every variant, the paper setting first."""
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


def _row(ctx, g: int, sp: float, name: str, method: str, opts: TransportOptions, row: dict, solve_t: float) -> dict:
    fusion = method == "fusion"
    return {"model": ctx.id, "group": g, "n": row["n"], "sparsity": sp, "criterion": "l1",
            "variant": name, "normalization": opts.normalization if fusion else "",
            "label": method_label(method, opts.normalization if fusion else None),
            "target": opts.target if fusion else "",
            "source_marginal": opts.source_marginal if fusion else "",
            "target_marginal": opts.target_marginal if fusion else "",
            "solver": opts.solver if fusion else "",
            "reg": opts.reg if fusion and opts.solver == "sinkhorn" else "",
            "p": opts.p if fusion else "", "accuracy": row["accuracy"],
            "logit_distance": row["logit_distance"], "agreement": row["agreement"],
            "seconds": row["seconds"], "solve_seconds": round(solve_t, 5), "eval_samples": ctx.n_eval}


def run(ctx) -> dict[str, list[dict]]:
    """Default pruning and every variant, per ablation cell (group, sparsity)."""
    s = ctx.settings
    ctx.compute_importance()
    variants = ablation_variants(s)
    t_start = time.perf_counter()
    cells = [(g, sp) for g in ctx.ablation_groups for sp in s.ablation_sparsities
             if kept_count(ctx.groups[g].n, sp) >= 1]
    total = len(cells) * (1 + len(variants) * len(s.ablation_normalizations))
    progress = bar(total, f"{ctx.id}: ablations", ctx.progress)
    rows, prune_t, eval_t = [], 0.0, 0.0
    for g in sorted({g for g, _ in cells}):
        t0 = time.perf_counter()
        ev = ctx.group_evaluator(g)
        eval_t += time.perf_counter() - t0
        first = True
        for sp in [sp for gg, sp in cells if gg == g]:
            todo = [("default (drop)", "default", TransportOptions())]
            for norm in s.ablation_normalizations:
                todo += [(name, "fusion", TransportOptions(normalization=norm, **kw)) for name, kw in variants]
            for name, method, opts in todo:
                row, _, solve_t = ctx.cell(ev, g, sp, method, "l1", opts, check=first)
                first = False
                prune_t += row["seconds"]
                eval_t += row["eval_seconds"]
                rows.append(_row(ctx, g, sp, name, method, opts, row, solve_t))
                progress.update(1)
    progress.close()
    ctx.timing["ablations"] = {"cells": len(rows), "wall_seconds": time.perf_counter() - t_start,
                               "prune_seconds": prune_t, "eval_seconds": eval_t}
    return {"ablations": rows}


def findings(tables: dict, infos: list[dict]) -> dict:
    """Each variant vs the paper setting of the same normalisation (accuracy and distance deltas)."""
    ablations = tables["ablations"]
    abl = defaultdict(list)
    base = {(r["model"], r["group"], r["sparsity"], r["normalization"]): r for r in ablations
            if r["variant"] == "paper setting"}
    for r in ablations:
        b = base.get((r["model"], r["group"], r["sparsity"], r["normalization"]))
        if b is None or r["variant"] in ("paper setting", "default (drop)"):
            continue
        abl[(r["variant"], r["normalization"])].append((r["accuracy"] - b["accuracy"],
                                                        r["logit_distance"] - b["logit_distance"]))
    out = {}
    for (variant, norm), v in abl.items():
        acc = [a for a, _ in v]
        out[f"{variant}|{norm}"] = {"cells": len(v), "mean_acc_delta": round(float(np.mean(acc)), 3),
                                    "mean_abs_acc_delta": round(float(np.mean(np.abs(acc))), 3),
                                    "max_abs_acc_delta": round(float(np.max(np.abs(acc))), 3),
                                    "mean_distance_delta": round(float(np.mean([d for _, d in v])), 4)}
    return {"ablations": out}


def claims(f: dict, tables: dict, infos: list[dict]) -> list[dict]:
    """Uniform vs importance marginals make no significant difference."""
    marg = [v for k, v in f["ablations"].items() if "marginal" in k and k.endswith("|paper")]
    if not marg:
        return []
    worst = max(v["max_abs_acc_delta"] for v in marg)
    mean = float(np.mean([v["mean_abs_acc_delta"] for v in marg]))
    return [{
        "claim": "Uniform vs importance marginals make no significant difference",
        "paper": "insignificant in most cells",
        "ours": f"mean absolute change of accuracy {mean:.2f} pt, largest {worst:.2f} pt (paper map)",
        "verdict": "holds" if mean < 1.0 else ("partly" if mean < 3.0 else "does not hold"),
    }]


def plots(out, tables: dict, infos: list[dict]) -> list[str]:
    rows = tables["ablations"]
    return [_plot_model(out, i["id"], [r for r in rows if r["model"] == i["id"]]) for i in infos
            if any(r["model"] == i["id"] for r in rows)]


def _plot_model(out, mid: str, rows: list[dict]) -> str:
    cells = sorted({(r["group"], r["sparsity"]) for r in rows})
    variants = list(dict.fromkeys(r["variant"] for r in rows if r["variant"] != "default (drop)"))
    norms = list(dict.fromkeys(r["normalization"] for r in rows if r["normalization"]))
    fig = figure(3.0 * len(cells) + 1.6, 0.28 * len(variants) * max(1, len(norms)) + 1.2)
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
    return save(fig, out / f"ablations_{mid}.png")


def report(doc: Report) -> None:
    abl = doc.tables["ablations"]
    doc.w("## 3. Ablations")
    doc.w()
    doc.w("ℓ1 importance; each variant changes one choice of the paper setting (uniform marginals, kept channels "
          "as targets, exact EMD, p = 1). Accuracy % / mean logit distance:")
    doc.w()
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
        doc.w(f"**{model}**")
        doc.w()
        doc.table(head, rows)
    rows = [[k.split("|")[0], SHORT[method_label("fusion", k.split("|")[1])], v["cells"], f"{v['mean_acc_delta']:+.2f}",
             f"{v['mean_abs_acc_delta']:.2f}", f"{v['max_abs_acc_delta']:.2f}", f"{v['mean_distance_delta']:+.3f}"]
            for k, v in doc.findings["ablations"].items()]
    doc.w("Change from the paper setting, over all ablation cells:")
    doc.w()
    doc.table(["variant", "map", "cells", "mean Δacc", "mean abs Δacc", "max abs Δacc", "mean Δdistance"], rows)
    doc.model_images("ablations", "ablations")


SECTION = Section(name="ablations", csv={"ablations": ABLATION_COLUMNS}, run=run, findings=findings,
                  claims=claims, plots=plots, report=report, files="`ablations.csv`")
