"""Claim 2, output preservation: per-sample distances between pruned and unpruned logits.

Measured inside the data-free cells (ℓ1, the groups nearest the classifier, in the middle and at the input,
``settings.preservation_sparsities``): :mod:`.datafree` leaves the per-sample distances in ``ctx.distances``,
so this section must come after it.
"""

from __future__ import annotations

import json
import math

import numpy as np

from .common import Report, Section, figure, fmt, save
from .settings import COLORS, LABELS, SHORT

__all__ = ["PRESERVATION_COLUMNS", "SECTION"]

PRESERVATION_COLUMNS = ["model", "criterion", "group", "n", "sparsity", "label", "mean", "median", "p90", "max",
                        "closer_than_default", "eval_samples"]


def run(ctx) -> dict[str, list[dict]]:
    """Summary rows (``output_preservation``) and per-sample distances (``output_preservation_cells``)."""
    rows, cells = [], []
    distances = ctx.distances
    for (g, sp, label), dist in sorted(distances.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                          LABELS.index(kv[0][2]))):
        base = distances.get((g, sp, "default"))
        closer = float(np.mean(dist < base)) if base is not None and label != "default" else float("nan")
        rows.append({"model": ctx.id, "criterion": "l1", "group": g, "n": ctx.groups[g].n, "sparsity": sp,
                     "label": label, "mean": round(float(dist.mean()), 5),
                     "median": round(float(np.median(dist)), 5),
                     "p90": round(float(np.quantile(dist, 0.9)), 5), "max": round(float(dist.max()), 5),
                     "closer_than_default": round(closer, 4) if not math.isnan(closer) else "",
                     "eval_samples": ctx.n_eval})
        cells.append({"model": ctx.id, "criterion": "l1", "group": g, "sparsity": sp, "label": label,
                      "distances": [round(float(d), 4) for d in dist]})
    return {"output_preservation": rows, "output_preservation_cells": cells}


def write(out, tables: dict) -> None:
    """The per-sample distances go to ``output_preservation.json``."""
    (out / "output_preservation.json").write_text(json.dumps({"cells": tables["output_preservation_cells"]}))


def findings(tables: dict, infos: list[dict]) -> dict:
    """Mean and median distance and the share of samples closer than default, per cell and method."""
    out: dict = {}
    for r in tables["output_preservation"]:
        key = f"{r['model']}|g{r['group']}|s{r['sparsity']}"
        out.setdefault(key, {})[r["label"]] = {"mean": r["mean"], "median": r["median"],
                                               "closer_than_default": r["closer_than_default"]}
    return {"preservation": out}


def plots(out, tables: dict, infos: list[dict]) -> list[str]:
    cells = tables.get("output_preservation_cells", [])
    return [_plot_model(out, i["id"], [c for c in cells if c["model"] == i["id"]]) for i in infos
            if any(c["model"] == i["id"] for c in cells)]


def _plot_model(out, mid: str, cells: list[dict]) -> str:
    groups = sorted({c["group"] for c in cells})
    sps = sorted({c["sparsity"] for c in cells})
    fig = figure(2.3 * len(sps) + 0.4, 1.7 * len(groups) + 0.6)
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
    return save(fig, out / f"output_preservation_{mid}.png")


def report(doc: Report) -> None:
    doc.w("## 2. Output preservation")
    doc.w()
    doc.w("Per-sample L2 distance between the pruned and the unpruned model's logits (ℓ1 criterion); "
          "'closer' = share of test images whose distance is below default pruning's for the same image.")
    doc.w()
    rows = []
    for r in doc.tables["output_preservation"]:
        rows.append([f"`{r['model']}`", r["group"], f"{r['sparsity']:g}", SHORT.get(r["label"], r["label"]),
                     fmt(r["mean"], 3), fmt(r["median"], 3), fmt(r["p90"], 3),
                     f"{100 * r['closer_than_default']:.0f}%" if r["closer_than_default"] != "" else "–"])
    doc.table(["model", "group", "s", "method", "mean", "median", "p90", "closer"], rows)
    doc.model_images("output_preservation", "output preservation")


SECTION = Section(name="output_preservation", csv={"output_preservation": PRESERVATION_COLUMNS}, run=run,
                  findings=findings, plots=plots, report=report, write=write,
                  files="`output_preservation.csv` / `.json` (summary and per-sample distances)")
