#!/usr/bin/env python
"""The paper's per-group pattern next to ours, at the paper's width and at the small zoo's (docs/RESULTS.md).

Reads the JSON lines of data-free sweeps (``python -m intrafusion sweep MODEL --groups ... --json``), one file
per model, and prints markdown: the mean gain of Intra-Fusion over default pruning per group (l1 criterion,
averaged over the sparsities swept) for each model, next to the paper's gain for the same groups and
sparsities (CIFAR-10 Tables 10-13), and the mean gain per sparsity::

    python -m intrafusion sweep vgg11_bn_w1-mnist5k --groups 0 1 2 3 4 5 6 7 --sparsities 0.3 0.5 0.7 \\
        --criterion l1 --normalization paper function-preserving --limit 500 --json > vgg11_bn_w1-mnist5k.jsonl
    python scripts/paper_width.py vgg11_bn_w1-mnist5k.jsonl vgg11_bn-mnist5k.jsonl ...

The model id is the file's name without ``.jsonl``; its architecture comes from the bundled zoo.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from intrafusion.experiments.reproduce.paper import paper_datafree  # noqa: E402
from intrafusion.models.zoo import get_entry  # noqa: E402

LABELS = {"paper": "fusion (paper)", "FP": "fusion (function-preserving)"}


def read(path: Path) -> dict[tuple[int, float, str], float]:
    """``{(group, sparsity, label): accuracy}`` of one sweep file."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[(int(r["group"]), round(float(r["sparsity"]), 2), r["label"])] = float(r["accuracy"])
    return out


def gains(cells: dict, label: str) -> tuple[dict[int, float], dict[float, float]]:
    """Mean (``label`` - default) per group and per sparsity."""
    by_g, by_s = defaultdict(list), defaultdict(list)
    for (g, s, lab), acc in cells.items():
        if lab == label and (g, s, "default") in cells:
            d = acc - cells[(g, s, "default")]
            by_g[g].append(d)
            by_s[s].append(d)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {g: mean(v) for g, v in sorted(by_g.items())}, {s: mean(v) for s, v in sorted(by_s.items())}


def paper_gains(arch: str, sparsities: list[float]) -> tuple[dict[int, float], dict[float, float]]:
    table = paper_datafree()
    cells = {}
    for (a, crit, g, s), (d, f) in table.items():
        if a == arch and crit == "l1" and s in sparsities:
            cells[(g, s, "default")], cells[(g, s, "if")] = d, f
    return gains(cells, "if")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="sweep JSON lines, one file per model (MODEL.jsonl)")
    args = parser.parse_args(argv)
    runs = {}
    for f in args.files:
        model_id = f.name.removesuffix(".jsonl").removeprefix("sweep-")
        runs[model_id] = (get_entry(model_id), read(f))
    for arch in dict.fromkeys(e.arch for e, _ in runs.values()):
        models = [(mid, e, c) for mid, (e, c) in runs.items() if e.arch == arch]
        sparsities = sorted({s for _, _, c in models for (_, s, _) in c})
        pg, ps = paper_gains(arch, sparsities)
        groups = sorted({g for _, _, c in models for (g, _, _) in c})
        cols = [(mid, short) for mid, _, _ in models for short in LABELS]
        print(f"\n**{arch}**, l1, mean gain over default (points) at s = {', '.join(f'{s:g}' for s in sparsities)}\n")
        print("| group | n | paper | " + " | ".join(f"`{m}` IF {s}" for m, s in cols) + " |")
        print("|---" * (3 + len(cols)) + "|")
        per = {(mid, short): gains(c, LABELS[short]) for mid, _, c in models for short in LABELS}
        ns = {}
        for mid, _e, _ in models:
            from intrafusion.core.groups import list_groups
            from intrafusion.models.zoo import load_zoo_model

            loaded = load_zoo_model(mid)
            ns[mid] = {g.index: g.n for g in list_groups(loaded.model, loaded.example_inputs)}
        for g in groups:
            n = " / ".join(str(ns[mid].get(g, "")) for mid, _, _ in models)
            paper = f"{pg[g]:+.1f}" if g in pg else "–"
            print(f"| {g} | {n} | {paper} | " + " | ".join(
                f"{per[k][0][g]:+.1f}" if g in per[k][0] else "" for k in cols) + " |")
        print("| **by s** | | " + ", ".join(f"{ps[s]:+.1f}" for s in sparsities) + " | " + " | ".join(
            ", ".join(f"{per[k][1][s]:+.1f}" for s in sparsities) for k in cols) + " |")
        for mid, e, c in models:
            unpruned = None
            print(f"\n`{mid}`: {e.description}; cells {len(c)}" + (f", unpruned {unpruned}" if unpruned else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
