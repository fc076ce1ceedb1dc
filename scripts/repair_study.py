"""Repair study (issue 9): whole-model pruning (all groups, l1), every method/normalisation x repair.

Prints model x s x method x repair -> accuracy, seconds and saves JSON rows to docs/repair_study.json.
Usage: .venv/bin/python scripts/repair_study.py [--models M ...] [--sparsities S ...] [--repairs R ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from intrafusion.core.prune import TransportOptions, prune
from intrafusion.data import load_dataset
from intrafusion.evaluate import evaluate
from intrafusion.models.zoo import load_zoo_model

MODELS = ["vgg11_bn-mnist5k", "resnet18-mnist5k", "vgg11_bn-animals10k", "resnet18-animals10k"]
METHODS = [("default", None), ("fusion", "paper"), ("fusion", "function-preserving")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.1, 0.3, 0.5])
    ap.add_argument("--repairs", nargs="+", default=["none", "moments", "synthetic", "data"])
    ap.add_argument("--data-images", type=int, default=512)
    ap.add_argument("--out", default="docs/repair_study.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    out = Path(args.out)
    if out.exists():
        rows = [r for r in json.loads(out.read_text()) if r["model"] not in args.models]
    for mid in args.models:
        lm = load_zoo_model(mid)
        test = load_dataset(lm.dataset, "test", preprocessing=lm.preprocessing)
        x_test, y_test = test.tensors
        train_x = load_dataset(lm.dataset, "train", preprocessing=lm.preprocessing).tensors[0]
        gen = torch.Generator().manual_seed(0)
        data = train_x[torch.randperm(len(train_x), generator=gen)[: args.data_images]]  # images only
        base = evaluate(lm.model, x_test, y_test).accuracy
        print(f"{mid}: unpruned {base:.1f}%", flush=True)
        for s in args.sparsities:
            for method, norm in METHODS:
                for rep in args.repairs:
                    t0 = time.perf_counter()
                    res = prune(lm.model, lm.example_inputs, "all", s, method=method,
                                options=TransportOptions(normalization=norm or "paper"), repair=rep,
                                repair_data=data if rep == "data" else None)
                    sec = time.perf_counter() - t0
                    acc = evaluate(res.model, x_test, y_test).accuracy
                    row = dict(model=mid, sparsity=s, method=method, normalization=norm, repair=rep,
                               uses_data=rep == "data", accuracy=acc, seconds=sec,
                               details=res.repair.details if res.repair else {})
                    rows.append(row)
                    print(f"{mid:22s} s={s:.1f} {method:8s} {norm or '-':20s} {rep:10s} {acc:6.1f}%  {sec:6.1f}s",
                          flush=True)
                    out.write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
