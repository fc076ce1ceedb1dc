"""Repair study (issue 9): whole-model pruning (all groups at once, l1, no fine-tuning), method x repair.

For every model, sparsity, method (default, Intra-Fusion with the paper's and the function-preserving map,
Model Folding plain and Fold-AR) and repair (none, bias, moments, synthetic, data) it prints the test accuracy
and seconds, and writes JSON rows (``uses_data`` True only for the ``data`` repair, which reads unlabelled
training images, all of them by default, as the reference's Model Folding row does) to docs/repair_study.json.

Usage: python scripts/repair_study.py [--models M ...] [--sparsities S ...] [--methods ...] [--repairs R ...]
       [--data-images N] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from intrafusion.core.folding import FoldingOptions
from intrafusion.core.prune import TransportOptions, prune
from intrafusion.core.repair import REPAIR_TARGETS, REPAIRS, RepairOptions
from intrafusion.core.select import prune_closest
from intrafusion.core.synthetic import SyntheticOptions
from intrafusion.data import load_dataset
from intrafusion.evaluate import evaluate
from intrafusion.models.zoo import load_zoo_model

MODELS = ["vgg11_bn-mnist5k", "resnet18-mnist5k", "vgg11_bn-animals10k", "resnet18-animals10k"]
VARIANTS = {  # label -> (method, options)
    "default": ("default", None),
    "fusion-paper": ("fusion", TransportOptions(normalization="paper")),
    "fusion-fp": ("fusion", TransportOptions(normalization="function-preserving")),
    "fusion-paper-nearest": ("fusion", TransportOptions(normalization="paper", target_marginal="nearest")),
    "default-l1raw": ("default", None),
    "default-auto": ("default", None),
    "fusion-paper-nearest-l1raw": ("fusion", TransportOptions(normalization="paper", target_marginal="nearest")),
    # prune_closest: l1 and l1-raw both run, the one closer to the original on the repair's inputs kept
    "fusion-paper-nearest-auto": ("fusion", TransportOptions(normalization="paper", target_marginal="nearest")),
    "folding": ("folding", FoldingOptions(variant="plain")),
    "folding-ar": ("folding", FoldingOptions(variant="ar")),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.1, 0.3, 0.5])
    ap.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--repairs", nargs="+", default=list(REPAIRS), choices=list(REPAIRS))
    ap.add_argument("--data-images", type=int, default=0, help="unlabelled training images for 'data' (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="k-means and synthetic-batch seed")
    ap.add_argument("--synthetic-size", type=int, default=None, help="synthetic inputs (default: the recipe's 256)")
    ap.add_argument("--synthetic-steps", type=int, default=None, help="synthetic Adam steps (default: 200)")
    ap.add_argument("--zeroq", action="store_true", help="synthetic batches with the plain ZeroQ recipe (no class "
                    "prior, smoothness or jitter); those rows are labelled '<repair> (ZeroQ)'")
    ap.add_argument("--refit-target", default="mapped", choices=REPAIR_TARGETS,
                    help="the refit's target (rows of another target than 'mapped' are labelled '<repair> (<target>)')")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs/repair_study.json")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="only merge these result files into --out and print "
                    "the summary (for runs split over several processes, one --out each)")
    args = ap.parse_args()
    if args.merge:
        cells = {}  # the last row of every (model, sparsity, variant, repair) cell wins
        for f in args.merge:
            for r in json.loads(Path(f).read_text()):
                cells[(r["model"], r["sparsity"], r["variant"], r["repair"])] = r
        rows = list(cells.values())
        Path(args.out).write_text(json.dumps(rows, indent=1, default=float))
        summarize(rows)
        return
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows = []
    if out.exists():  # keep other models' rows, replace this run's cells
        rows = [r for r in json.loads(out.read_text()) if r["model"] not in args.models]
    for mid in args.models:
        lm = load_zoo_model(mid)
        x_test, y_test = load_dataset(lm.dataset, "test", preprocessing=lm.preprocessing).tensors
        train_x = load_dataset(lm.dataset, "train", preprocessing=lm.preprocessing).tensors[0]  # images only
        if args.data_images:
            gen = torch.Generator().manual_seed(args.seed)
            train_x = train_x[torch.randperm(len(train_x), generator=gen)[: args.data_images]]
        base = evaluate(lm.model, x_test, y_test).accuracy
        print(f"{mid}: unpruned {base:.1f}% ({len(x_test)} test images, data repair on {len(train_x)})", flush=True)
        rows.append(dict(model=mid, sparsity=0.0, method="unpruned", variant="unpruned", repair="none",
                         uses_data=False, accuracy=base, seconds=0.0))
        for s in args.sparsities:
            for label in args.methods:
                method, options = VARIANTS[label]
                for rep in args.repairs:
                    if label == "folding-ar" and rep in ("moments",):
                        continue  # Fold-AR is folding's own moment repair
                    recipe = SyntheticOptions(class_prior=0.0, tv=0.0, jitter=0) if args.zeroq else None
                    refit_target = args.refit_target if rep.startswith("refit-") else "mapped"
                    repair = RepairOptions(rep, seed=args.seed, synthetic_size=args.synthetic_size,
                                           synthetic_steps=args.synthetic_steps, synthetic=recipe, target=refit_target)
                    name = f"{rep} (ZeroQ)" if args.zeroq and repair.inputs == "synthetic" else rep
                    if refit_target != "mapped":
                        name = f"{name} ({refit_target})"
                    if args.data_images and repair.uses_data:
                        name = f"{rep} ({len(train_x)} images)"
                    t0 = time.perf_counter()
                    run = prune
                    kw = dict(method=method, options=options, seed=args.seed, repair=repair,
                              repair_data=train_x if RepairOptions(rep).uses_data else None)
                    if label.endswith("-l1raw"):
                        kw["criterion"] = "l1-raw"
                    if label.endswith("-auto"):
                        if repair.inputs is None:
                            continue  # nothing to compare the candidates on
                        run = prune_closest
                    res = run(lm.model, lm.example_inputs, "all", s, **kw)
                    sec = time.perf_counter() - t0
                    acc = evaluate(res.model, x_test, y_test).accuracy
                    details = res.repair.details if res.repair else {}
                    if repair.inputs == "synthetic":
                        details = dict(details, recipe=repair.synthetic_options().__dict__)
                    rows.append(dict(model=mid, sparsity=s, method=method, variant=label,
                                     normalization=getattr(options, "normalization", None), repair=name,
                                     uses_data=RepairOptions(rep).uses_data, accuracy=acc, seconds=sec,
                                     details=details))
                    syn = details.get("synthetic_seconds")
                    made = details.get("synthetic_made_seconds")
                    extra = f"  (synthetic {syn:.0f}s, made in {made or 0:.0f}s)" if syn is not None else ""
                    chose = " ".join(f"{k}={details[k]}" for k in ("criterion", "refit_target") if k in details)
                    print(f"{mid:22s} s={s:.1f} {label:13s} {name:16s} {acc:6.1f}%  {sec:6.1f}s{extra} {chose}",
                          flush=True)
                    out.write_text(json.dumps(rows, indent=1, default=float))
    summarize(rows)


def summarize(rows: list[dict]) -> None:
    """One table per model: variant x repair rows, sparsity columns; the best data-free and data rows."""
    for mid in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == mid and r["variant"] != "unpruned"]
        sps = sorted({r["sparsity"] for r in mine})
        print(f"\n{mid}: accuracy (%), whole model, l1, no fine-tuning")
        print(f"{'variant':14s} {'repair':16s} " + " ".join(f"s={s:<5}" for s in sps))
        cells = {(r["variant"], r["repair"], r["sparsity"]): r["accuracy"] for r in mine}
        for v, rep in dict.fromkeys((r["variant"], r["repair"]) for r in mine):
            print(f"{v:14s} {rep:16s} " + " ".join(f"{cells.get((v, rep, s), float('nan')):7.1f}" for s in sps))
        for name, keep in (("best data-free", lambda r: not r["uses_data"] and r["repair"] != "none"),
                           ("best with data", lambda r: r["uses_data"])):
            best = [max((r for r in mine if keep(r) and r["sparsity"] == s), key=lambda r: r["accuracy"],
                        default=None) for s in sps]
            print(f"{name:25s} " + " ".join(f"{b['accuracy']:7.1f}" if b else "    nan" for b in best)
                  + "   (" + ", ".join(f"{b['variant']}+{b['repair']}" for b in best if b) + ")")


if __name__ == "__main__":
    main()
