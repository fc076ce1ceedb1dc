"""Claim 6, repair: the Markdown of the report section (tables from :mod:`.repair_report`'s findings)."""

from __future__ import annotations

from .common import Report, fmt

__all__ = ["write_report"]


def write_report(doc: Report) -> None:
    from .repair_report import MODEL_FOLDING_REFERENCE, short

    rep = doc.findings.get("repair", {})
    whole, single, ft = rep.get("whole", {}), rep.get("single", {}), rep.get("finetune", {})
    if not (whole.get("models") or single.get("models") or ft.get("runs")):
        return
    best = whole.get("best_datafree")
    doc.w("## 6. Repair: whole-model pruning without data (beyond the paper, issue 9)")
    doc.w()
    doc.w("Every group pruned at once with ℓ1 importance, no fine-tuning. Each method (default pruning, Intra-Fusion "
          "with the paper's map and with the function-preserving map, Model Folding) is followed by each repair: "
          "`none`; `moments` (no data, no optimisation: fused channels rescaled to their targets' statistics); "
          "`synthetic` (no real data: BatchNorm statistics re-estimated on a batch optimised from noise to match "
          "the stored ones, cached on disk); `data` (the same on unlabelled training images: **uses data**, the "
          "upper bound). Accuracy % on the whole test split.")
    doc.w()
    if best:
        doc.w(f"**Our best data-free variant** (highest mean over every whole-model cell, folding and real data "
              f"excluded): **{short(best)}**. The targets below are checked with this one variant; `best per cell` "
              "names the best data-free non-folding variant of each cell, for information.")
        doc.w()
    for model, ss in whole.get("models", {}).items():
        sps = sorted(ss, key=float)
        labels = list(dict.fromkeys(lab for s in sps for lab in ss[s]["accuracy"]))
        unpruned = ss[sps[0]].get("unpruned")
        doc.w(f"**{model}** (unpruned {fmt(unpruned, 1)}%)")
        doc.w()
        rows = []
        for lab in labels:
            uses = "+ data" in lab
            name = f"{short(lab)}{' (uses data)' if uses else ''}"
            rows.append([f"**{name}**" if lab == best else name]
                        + [fmt(ss[s]["accuracy"].get(lab), 1) for s in sps])
        rows.append(["best per cell (no data)"] + [f"{fmt(ss[s]['best_cell'], 1)} ({short(ss[s]['best_cell_label'])})"
                                                   if ss[s].get("best_cell_label") else "–" for s in sps])
        doc.table(["variant"] + [f"s = {s}" for s in sps], rows)
        doc.image(f"repair_whole_{model}.png", f"repair, whole model, {model}")
    gaps = [[m, s, fmt(c.get("best"), 1), fmt(c.get("moments_best"), 1), fmt(c.get("folding_best"), 1),
             f"{fmt(c.get('data_best'), 1)} ({short(c['data_best_label'])})" if c.get("data_best_label") else "–",
             fmt(c.get("folding_data"), 1),
             fmt(c["best"] - c["data_best"], 1) if c.get("data_best") is not None and c.get("best") is not None
             else "–",
             fmt(c["moments_best"] - c["data_best"], 1) if c.get("data_best") is not None
             and c.get("moments_best") is not None else "–"]
            for m, ss in whole.get("models", {}).items() for s, c in ss.items()]
    if gaps:
        doc.w("How much of the `data` upper bound the data-free repairs recover (accuracy %; the upper bound is the "
              "best `data` row of default pruning and Intra-Fusion; gaps in points):")
        doc.w()
        doc.table(["model", "s", f"{short(best) if best else 'best'}", "best moments", "best folding (no data)",
                   "best with data", "folding + data", f"{short(best) if best else 'best'} − data",
                   "moments − data"], gaps)
    doc.w("Model Folding with the authors' own code on `vgg11_bn-mnist5k` (reference, s = 0.3 / 0.5): "
          + "; ".join(f"{k} {a} / {b}%" for k, (a, b) in MODEL_FOLDING_REFERENCE.items()) + ".")
    doc.w()
    _single(doc, single)
    _finetune(doc, ft)
    if rep.get("std"):
        doc.w("Each kept channel's standard deviation after pruning over the same channel's before (BatchNorm "
              "outputs, i.e. the pre-activations, on a fixed batch of test images), per layer: below 1 the scale "
              "collapsed, above 1 it overshoots.")
        doc.w()
        std = rep.get("std", {})
        if std:
            labs = list(dict.fromkeys(lab for v in std.values() for lab in v))
            doc.table(["variant"] + [f"`{m}`" for m in std],
                      [[short(lab)] + [fmt(v.get(lab), 2) for v in std.values()] for lab in labs])
            doc.w("(geometric mean over layers of the geometric mean over channels)")
            doc.w()
        doc.model_images("repair_std", "std ratio")


def _single(doc: Report, single: dict) -> None:
    from .repair_report import short

    sm = single.get("models", {})
    if not sm:
        return
    best = single.get("best_datafree")
    doc.w(f"**Single group at a time** (each group alone, ℓ1; repaired variant with the best mean: "
          f"**{short(best)}**):")
    doc.w()
    doc.table(["model", "cells", "default mean", "IF paper mean", f"{short(best)} mean", "worst vs default",
               "cells below −5", "IF paper worst vs default", "best per cell, worst vs default",
               "best folding: mean, worst vs default"],
              [[m, v["cells"], fmt(v["mean_default"]), fmt(v["mean_if_paper"]), fmt(v["mean_best"]),
                f"{v['worst_gain']:+.1f} (g{v['worst_cell']['group']}, s = {v['worst_cell']['sparsity']})",
                v["below_5"], fmt(v.get("worst_if_paper_gain"), 1), fmt(v.get("worst_oracle_gain"), 1),
                f"{short(v['folding']['label'])}: {fmt(v['folding']['mean'])}, {fmt(v['folding']['worst_gain'], 1)}"
                if v.get("folding") else "–"]
               for m, v in sm.items()])


def _finetune(doc: Report, ft: dict) -> None:
    from .repair_report import short

    runs = ft.get("runs", {})
    if not runs:
        return
    labels = list(dict.fromkeys(lab for v in runs.values() for lab in v))
    doc.w("**Fine-tuning with repair** (claim 4's protocol: whole model, BatchNorm re-estimated on training "
          "images, then SGD, on `train images` per epoch; test accuracy after the last epoch, right after pruning "
          "and repair in brackets):")
    doc.w()
    rows = []
    for key, v in runs.items():
        model, _, ratio = key.rpartition("@")
        first = next(iter(v.values()))
        rows.append([model, ratio, first.get("train_samples", "–"), first.get("epoch", "–")]
                    + [f"{fmt(v[lab].get('after'), 2)} ({fmt(v[lab].get('before'), 1)})" if lab in v else "–"
                       for lab in labels])
    doc.table(["model", "neuron sparsity", "train images", "epochs"] + [short(lab) for lab in labels], rows)
    counts = ft.get("counts", {})
    if counts:
        doc.w("; ".join(f"{short(lab)} at or above default in {c['at_or_above']} of {c['runs']} runs "
                        f"(mean {c['mean_gain']:+.2f}, worst {c['min_gain']:+.2f})" for lab, c in counts.items())
              + ". Models without BatchNorm (the MLP) cannot be repaired and are fine-tuned unrepaired "
                "(`repair_applied` in `repair_finetune.csv`).")
        doc.w()
