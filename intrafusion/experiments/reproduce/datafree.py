"""Claim 1, the data-free table (the paper's Tables 10-13): every group pruned alone, default vs Intra-Fusion.

Every cell (group, criterion, sparsity) is pruned three ways (default, IF paper, IF FP) with the same importance
and scored on the same evaluation subset, so differences are paired. The per-sample logit distances of the l1
cells of the output-preservation groups are left in ``ctx.distances`` for :mod:`.preservation`.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from ...core.prune import TransportOptions, kept_count
from ...models.zoo import DEFAULT_MODEL
from ..sweep import method_label
from .common import Report, Section, bar, figure, fmt, gain_stats, index, save
from .paper import PAPER_UNPRUNED, paper_datafree
from .settings import COLORS, CRITERION_NAMES, FUSION_LABELS, LABELS, METHOD_CELLS, SHORT, TIE

__all__ = ["DATAFREE_COLUMNS", "SECTION"]

DATAFREE_COLUMNS = ["model", "arch", "dataset", "criterion", "group", "n", "kept", "sparsity", "method",
                    "normalization", "label", "accuracy", "logit_distance", "agreement", "params", "seconds",
                    "eval_seconds", "eval_samples", "fast_eval"]


# -- measure ---------------------------------------------------------------------------------------------------

def run(ctx) -> dict[str, list[dict]]:
    """Every (group, criterion, sparsity) cell of ``ctx`` with the three methods."""
    s = ctx.settings
    t_start = time.perf_counter()
    ctx.compute_importance()
    rows = []
    cells = [(g, c, sp) for g in ctx.datafree_groups for c in s.criteria for sp in s.sparsities
             if kept_count(ctx.groups[g].n, sp) >= 1]
    progress = bar(len(cells) * len(METHOD_CELLS), f"{ctx.id}: data-free", ctx.progress)
    prune_t = eval_t = 0.0
    by_group = defaultdict(list)
    for g, c, sp in cells:
        by_group[g].append((c, sp))
    for g, todo in by_group.items():
        t0 = time.perf_counter()
        ev = ctx.group_evaluator(g)
        eval_t += time.perf_counter() - t0
        first = True
        for c, sp in todo:
            for method, norm in METHOD_CELLS:
                opts = TransportOptions(normalization=norm or "paper")
                row, per_sample, _ = ctx.cell(ev, g, sp, method, c, opts, check=first)
                first = False
                prune_t += row["seconds"]
                eval_t += row["eval_seconds"]
                label = method_label(method, norm)
                rows.append({"model": ctx.id, "arch": ctx.arch, "dataset": ctx.dataset, "criterion": c,
                             "group": g, "n": row["n"], "kept": row["kept"], "sparsity": sp, "method": method,
                             "normalization": norm or "", "label": label, "accuracy": row["accuracy"],
                             "logit_distance": row["logit_distance"], "agreement": row["agreement"],
                             "params": row["params"], "seconds": row["seconds"],
                             "eval_seconds": row["eval_seconds"], "eval_samples": ctx.n_eval,
                             "fast_eval": int(ev.enabled)})
                if c == "l1" and g in ctx.preservation_groups and sp in s.preservation_sparsities:
                    ctx.distances[(g, sp, label)] = per_sample
                progress.update(1)
        ctx.fast_eval[g] = {"enabled": ev.enabled, "max_abs_diff": ev.max_diff}
    progress.close()
    ctx.timing["datafree"] = {"cells": len(rows), "wall_seconds": time.perf_counter() - t_start,
                              "prune_seconds": prune_t, "eval_seconds": eval_t,
                              "importance_seconds": sum(ctx.importance_seconds.values())}
    return {"datafree": rows}


# -- state -----------------------------------------------------------------------------------------------------

def _pairs(idx: dict, label: str):
    """``(key, default row, fusion row)`` of every cell that has both."""
    for key in sorted({k[:4] for k in idx}):
        d, f = idx.get((*key, "default")), idx.get((*key, label))
        if d is not None and f is not None:
            yield key, d, f


def findings(tables: dict, infos: list[dict]) -> dict:
    """Fusion - default per model x criterion (``datafree``), the paper's own (``paper_datafree``), FP - paper
    by sparsity band (``normalisation``) and the share of cells where fusion is closer (``distance``)."""
    idx = index(tables["datafree"])
    out: dict = {"datafree": {}, "paper_datafree": _paper_findings(), "normalisation": _normalisation(idx),
                 "distance": {}}
    for label in FUSION_LABELS:
        overall, per, closer = [], defaultdict(list), defaultdict(list)
        for (model, crit, g, s), d, f in _pairs(idx, label):
            item = (f["accuracy"] - d["accuracy"], {"model": model, "criterion": crit, "group": g, "sparsity": s,
                                                    "default": d["accuracy"], "fusion": f["accuracy"]})
            overall.append(item)
            per[f"{model}|{crit}"].append(item)
            is_closer = f["logit_distance"] < d["logit_distance"]
            for k in ("all", model, f"{model}|{crit}"):
                closer[k].append(is_closer)
        out["datafree"][label] = {"all": gain_stats(overall), **{k: gain_stats(v) for k, v in per.items()}}
        out["distance"][label] = {k: {"cells": len(v), "fusion_closer": round(float(np.mean(v)), 4)}
                                  for k, v in closer.items()}
    return out


def _paper_findings() -> dict:
    """The paper's own statistics on its tables, for the side-by-side."""
    paper, out = paper_datafree(), {}
    for arch in ("vgg11_bn", "resnet18"):
        for crit in ("l1", "taylor", "lamp"):
            items = [(f - d, {"group": g, "sparsity": s, "default": d, "fusion": f})
                     for (a, c, g, s), (d, f) in paper.items() if a == arch and c == crit]
            out[f"{arch}|{crit}"] = gain_stats(items)
        items = [(f - d, {"criterion": c, "group": g, "sparsity": s, "default": d, "fusion": f})
                 for (a, c, g, s), (d, f) in paper.items() if a == arch]
        out[f"{arch}|all"] = gain_stats(items)
    return out


_BANDS = {"s <= 0.3": lambda s: s <= 0.3, "0.3 < s <= 0.5": lambda s: 0.3 < s <= 0.5, "s > 0.5": lambda s: s > 0.5}


def _normalisation(idx: dict) -> dict:
    """Which normalisation wins where: FP - paper, by model and by sparsity band."""
    keys = sorted({k[:4] for k in idx})
    out = {}
    for model in sorted({k[0] for k in keys}):
        entry = {}
        for band, test in _BANDS.items():
            diffs = []
            for m, crit, g, s in keys:
                p = idx.get((m, crit, g, s, "fusion (paper)"))
                f = idx.get((m, crit, g, s, "fusion (function-preserving)"))
                if m == model and test(s) and p is not None and f is not None:
                    diffs.append((f["accuracy"] - p["accuracy"], {"criterion": crit, "group": g, "sparsity": s}))
            if diffs:
                st = gain_stats(diffs)
                entry[band] = {k: st[k] for k in ("cells", "wins", "ties", "losses", "mean_gain")}
        out[model] = entry
    return out


def claims(f: dict, tables: dict, infos: list[dict]) -> list[dict]:
    """Most cells won; VGG's first conv lost; outputs closer; Taylor's collapse on ResNet18 groups 4 and 7."""
    idx = index(tables["datafree"])
    out = []
    for label in FUSION_LABELS:
        st = f["datafree"][label].get("all", {})
        if st:
            share = st["wins"] / st["cells"]
            out.append({
                "claim": f"Data-free, Intra-Fusion beats default pruning in most cells ({SHORT[label]})",
                "paper": _paper_share(f),
                "ours": f"{st['wins']} wins / {st['ties']} ties / {st['losses']} losses of {st['cells']} cells "
                        f"(±{TIE} pt = tie); mean gain {st['mean_gain']:+.2f} pt, best {st['best']['gain']:+.1f} "
                        f"({_where(st['best'])}), worst {st['worst']['gain']:+.1f} ({_where(st['worst'])})",
                "verdict": "holds" if share > 0.5 else ("partly" if st["wins"] > st["losses"] else "does not hold"),
            })
    out += _first_conv_claims(idx, infos)
    for label in FUSION_LABELS:
        d = f["distance"][label].get("all")
        if d:
            out.append({
                "claim": f"Intra-Fusion's outputs stay closer to the unpruned model's ({SHORT[label]})",
                "paper": "smaller L2 logit distance with Intra-Fusion",
                "ours": f"closer in {100 * d['fusion_closer']:.0f}% of {d['cells']} data-free cells",
                "verdict": "holds" if d["fusion_closer"] > 0.75 else ("partly" if d["fusion_closer"] > 0.5
                                                                      else "does not hold"),
            })
    return out + _taylor_collapse_claims(idx, infos)


def _first_conv_claims(idx: dict, infos: list[dict]) -> list[dict]:
    out = []
    for info in infos:
        if info["arch"] != "vgg11_bn" or info["input_group"] not in info["datafree_groups"]:
            continue
        g = info["input_group"]
        for label in FUSION_LABELS:
            gains = [idx[(info["id"], c, g, s, label)]["accuracy"] - idx[(info["id"], c, g, s, "default")]["accuracy"]
                     for (m, c, gg, s, lab) in idx if m == info["id"] and gg == g and lab == label
                     and c in ("l1", "taylor")]
            if gains:
                out.append({
                    "claim": f"Intra-Fusion is worse than default on VGG's first conv (group {g}) with l1 and Taylor "
                             f"({info['id']}, {SHORT[label]})",
                    "paper": "VGG11-BN group 7: mean gain -9.0 pt (l1), -14.6 pt (Taylor) over s = 10-70%",
                    "ours": f"mean gain {np.mean(gains):+.2f} pt over {len(gains)} cells",
                    "verdict": "holds" if np.mean(gains) < -TIE else "does not hold",
                })
    return out


def _taylor_collapse_claims(idx: dict, infos: list[dict]) -> list[dict]:
    out = []
    for info in infos:
        if info["arch"] != "resnet18":
            continue
        accs = [r["accuracy"] for (m, c, g, s, lab), r in idx.items() if m == info["id"] and c == "taylor"
                and g in (4, 7) and lab == "fusion (paper)"]
        if accs:
            chance = 100.0 / 10
            out.append({
                "claim": f"Taylor + Intra-Fusion collapses to chance on ResNet18 groups 4 and 7 ({info['id']})",
                "paper": "10.10% in every cell of groups 4 and 7 (unexplained)",
                "ours": f"IF paper accuracy {min(accs):.1f} to {max(accs):.1f}% over {len(accs)} cells",
                "verdict": "holds" if max(accs) < chance + 5 else "does not hold",
            })
    return out


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


# -- draw ------------------------------------------------------------------------------------------------------

def plots(out, tables: dict, infos: list[dict]) -> list[str]:
    """One grid of accuracy curves per model, and the headline figure (ours next to the paper's)."""
    df = index(tables["datafree"])
    files = [_plot_model(out, info["id"], info, df, tables["datafree"]) for info in infos]
    head = _plot_headline(out, df, infos)
    return files + ([head] if head else [])


def _plot_model(out, mid: str, info: dict, df: dict, rows: list[dict]) -> str:
    crits = list(dict.fromkeys(r["criterion"] for r in rows if r["model"] == mid))
    groups = info["datafree_groups"]
    fig = figure(max(4.0, 1.75 * len(groups) + 0.6), 1.55 * len(crits) + 0.8)
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
    return save(fig, out / f"datafree_{mid}.png")


def _plot_headline(out, df: dict, infos: list[dict]) -> str | None:
    info = next((i for i in infos if i["id"] == DEFAULT_MODEL), infos[0] if infos else None)
    if info is None:
        return None
    g, crit = info["middle_group"], "l1"
    arch = info["arch"] if info["arch"] in ("vgg11_bn", "resnet18") else None
    fig = figure(8.0, 3.0)
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
        pts = sorted((s, v) for (a, c, gg, s), v in paper_datafree().items() if a == arch and c == crit and gg == g)
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
    return save(fig, out / "headline.png")


# -- report ----------------------------------------------------------------------------------------------------

def report(doc: Report) -> None:
    doc.w("## 1. Data-free pruning (paper Tables 10-13)")
    doc.w()
    doc.w("One group pruned at a time, no fine-tuning, no data (Taylor uses 4 batches of 64 training images for "
          "its gradients). Fusion minus default, in accuracy points, over every (group, sparsity) cell:")
    doc.w()
    _report_gains(doc)
    _report_side_by_side(doc)
    _report_normalisation(doc)
    doc.model_images("datafree", "data-free")
    _report_full_tables(doc)


def _report_gains(doc: Report) -> None:
    rows = []
    for label in FUSION_LABELS:
        for key, s in doc.findings["datafree"][label].items():
            if key == "all" or not s:
                continue
            model, crit = key.split("|")
            rows.append([f"`{model}`", CRITERION_NAMES.get(crit, crit), SHORT[label], s["cells"],
                         f"{s['wins']} / {s['ties']} / {s['losses']}", f"{s['mean_gain']:+.2f}",
                         f"{s['best']['gain']:+.1f} (g{s['best']['group']}, s={s['best']['sparsity']:g})",
                         f"{s['worst']['gain']:+.1f} (g{s['worst']['group']}, s={s['worst']['sparsity']:g})"])
    crit_order = {CRITERION_NAMES.get(c, c): k for k, c in enumerate(doc.settings["criteria"])}
    label_order = {SHORT[lab]: k for k, lab in enumerate(LABELS)}
    model_order = {f"`{i['id']}`": k for k, i in enumerate(doc.infos)}
    rows.sort(key=lambda r: (model_order.get(r[0], 99), crit_order.get(r[1], 99), label_order.get(r[2], 99)))
    doc.table(["model", "criterion", "method", "cells", "wins / ties / losses", "mean gain", "best", "worst"], rows)


def _report_side_by_side(doc: Report) -> None:
    df, st = doc.tables["datafree"], doc.settings
    doc.w("### Side by side: the paper's pattern and ours")
    doc.w()
    sps = ", ".join(f"{x:g}" for x in st["sparsities"])
    doc.w(f"Mean gain of Intra-Fusion over default (points, averaged over s = {sps}) per group, paper "
          "normalisation; paper = CIFAR-10 Tables 10-13, ours = each bundled model of the same architecture. "
          "Group 0 is nearest the classifier.")
    doc.w()
    paper, dfi = paper_datafree(), index(df)
    for arch, arch_name in (("vgg11_bn", "VGG11-BN"), ("resnet18", "ResNet18")):
        ours = [i for i in doc.infos if i["arch"] == arch]
        if not ours:
            continue
        crits = [c for c in ("l1", "taylor", "lamp") if any(r["criterion"] == c for r in df)]
        head = ["group"]
        for c in crits:
            head += [f"paper {CRITERION_NAMES[c]}"] + [f"{i['id'].split('-', 1)[1]} {CRITERION_NAMES[c]}"
                                                        for i in ours]
        rows = []
        for g in range(max(len(i["groups"]) for i in ours)):
            row, have = [g], False
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
        doc.w(f"**{arch_name}**")
        doc.w()
        doc.table(head, rows)


def _report_normalisation(doc: Report) -> None:
    f = doc.findings
    doc.w("### Which normalisation wins where")
    doc.w()
    doc.w("IF FP minus IF paper accuracy, by sparsity band (wins / ties / losses for FP, mean difference in points):")
    doc.w()
    rows = []
    for model, bands in f["normalisation"].items():
        row = [f"`{model}`"]
        for band in ("s <= 0.3", "0.3 < s <= 0.5", "s > 0.5"):
            b = bands.get(band)
            row.append(f"{b['wins']} / {b['ties']} / {b['losses']}, {b['mean_gain']:+.2f}" if b else "–")
        rows.append(row)
    doc.table(["model", "s ≤ 0.3", "0.3 < s ≤ 0.5", "s > 0.5"], rows)
    rows = []
    for label in FUSION_LABELS:
        for key, d in f["distance"][label].items():
            if "|" in key or key == "all":
                continue
            rows.append([f"`{key}`", SHORT[label], d["cells"], f"{100 * d['fusion_closer']:.0f}%"])
    doc.w("Share of data-free cells whose mean logit distance to the unpruned model is below default pruning's:")
    doc.w()
    doc.table(["model", "method", "cells", "closer than default"], sorted(rows))


def _report_full_tables(doc: Report) -> None:
    df, st = doc.tables["datafree"], doc.settings
    dfi = index(df)
    doc.w("<details><summary>Full data-free tables (accuracy %, default / IF paper / IF FP)</summary>")
    doc.w()
    for i in doc.infos:
        crits = [c for c in st["criteria"] if any(r["model"] == i["id"] and r["criterion"] == c for r in df)]
        rows = []
        for g in i["datafree_groups"]:
            for s in st["sparsities"]:
                row = [g, f"{s:g}"]
                for c in crits:
                    vals = [dfi.get((i["id"], c, g, round(s, 2), lab)) for lab in LABELS]
                    row.append(" / ".join(fmt(v["accuracy"], 1) if v else "–" for v in vals))
                rows.append(row)
        doc.w(f"**{i['id']}** (unpruned {i['base_eval_accuracy']:.2f}% on the {i['eval_samples']}-image subset)")
        doc.w()
        doc.table(["group", "s"] + [CRITERION_NAMES[c] for c in crits], rows)
    doc.w("</details>")
    doc.w()


SECTION = Section(name="datafree", csv={"datafree": DATAFREE_COLUMNS}, run=run, findings=findings, claims=claims,
                  plots=plots, report=report, files="`datafree.csv` (one row per cell and method)")
