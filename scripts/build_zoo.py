#!/usr/bin/env python
"""Train the bundled model zoo (``assets/models/``) and write its documentation (``docs/ZOO.md``).

::

    python scripts/build_zoo.py                 # train all bundled models (about 6 minutes on 2 cores), write the doc
    python scripts/build_zoo.py --only mlp-digits8x8   # retrain one model, rewrite the doc
    python scripts/build_zoo.py --table-only    # train nothing: re-measure the bundled models, rewrite the doc

Every model is trained by :func:`intrafusion.experiments.train_zoo.train_zoo_model`, exactly what its manifest
``command`` (``python -m intrafusion train ...``) runs, so either way rebuilds it. The doc reports, per model: test
accuracy, parameters, MACs, file size, training time per epoch, evaluation time on the test split, the
time of a full default-vs-fusion sweep (every group x sparsities 0.3/0.5/0.7, l1), and default pruning vs
Intra-Fusion (paper and function-preserving normalisation) at 50% sparsity, l1 criterion, on the model's
*middle groups* (see :func:`middle_groups`).

Widths and epochs were chosen so that every model reaches at least 97% test accuracy, a full sweep of one
model takes well under a minute on 2 cores (seconds for VGG and the MLP), and default pruning of a middle
group at 50% visibly hurts (the smaller the network, the less redundant its channels, the clearer the
difference between dropping and fusing). The MLP's seed was picked among three tried (0, 1, 2; all reach
97.2-97.5%) as the one where default pruning of its 16-neuron layer hurts visibly with the best accuracy.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
# Sleep instead of spinning while waiting for the other OpenMP thread: on a shared 2-core machine spinning
# makes every parallel region wait for a descheduled thread (tiny models train up to 100x slower).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from intrafusion.core.groups import list_groups  # noqa: E402
from intrafusion.data import get_info, load_dataset  # noqa: E402
from intrafusion.evaluate import evaluate, predict_logits  # noqa: E402
from intrafusion.experiments.sweep import sweep  # noqa: E402
from intrafusion.experiments.train_zoo import train_zoo_model  # noqa: E402
from intrafusion.models import zoo  # noqa: E402

DOC = REPO / "docs" / "ZOO.md"
SPARSITIES = (0.3, 0.5, 0.7)
NORMALIZATIONS = ("paper", "function-preserving")


@dataclass(frozen=True)
class Recipe:
    """One bundled model: the arguments of ``python -m intrafusion train``."""

    arch: str
    width: float
    dataset: str
    epochs: int
    lr: float = 0.05
    batch_size: int = 128
    seed: int = 0

    @property
    def id(self) -> str:
        return f"{self.arch}-{self.dataset}"


#: The bundled models, in manifest order (the app's default model first).
ZOO = (
    Recipe("vgg11_bn", 0.125, "mnist5k", 20),
    Recipe("resnet18", 0.125, "mnist5k", 20),
    Recipe("vgg11_bn", 0.125, "animals10k", 20),
    Recipe("resnet18", 0.0625, "animals10k", 20),  # twice the test images of mnist5k: half the width
    Recipe("mlp", 0.5, "digits8x8", 60, lr=0.1, batch_size=32, seed=2),
)


def middle_groups(n_groups: int) -> list[int]:
    """The middle half of a model's groups: indices ``n//4 .. n - n//4 - 1`` (all of them below 4 groups).

    VGG11-BN (8 groups): 2-5; ResNet18 (12 groups): 3-8; the MLP (2 hidden layers): 0-1.
    """
    if n_groups < 4:
        return list(range(n_groups))
    return list(range(n_groups // 4, n_groups - n_groups // 4))


def measure(model_id: str) -> dict:
    """Accuracy, middle-group comparison at 50% and the time of a full sweep, for one bundled model."""
    loaded = zoo.load_zoo_model(model_id)
    x, y = load_dataset(loaded.dataset, "test", preprocessing=loaded.preprocessing).tensors
    ex = loaded.example_inputs
    ref = predict_logits(loaded.model, x)
    accuracy = evaluate(loaded.model, x, y).accuracy
    groups = list_groups(loaded.model, ex)
    middle = middle_groups(len(groups))
    rows = list(sweep(loaded.model, ex, x, y, middle, [0.5], "l1", normalizations=NORMALIZATIONS,
                      reference_logits=ref))
    table = {}
    for r in rows:
        table.setdefault(r.group, {"n": r.n, "kept": r.kept})[r.label] = r.accuracy
    t0 = time.perf_counter()
    cells = [r.seconds + r.eval_seconds for r in sweep(loaded.model, ex, x, y, range(len(groups)), SPARSITIES,
                                                        "l1", reference_logits=ref)]
    sweep_seconds = time.perf_counter() - t0
    median_cell = sorted(cells)[len(cells) // 2]
    t0 = time.perf_counter()
    evaluate(loaded.model, x, y)
    return {
        "entry": loaded.entry,
        "accuracy": accuracy,
        "groups": groups,
        "middle": table,
        "sweep_seconds": sweep_seconds,
        "sweep_cells": len(cells),
        "sweep_median_estimate": median_cell * len(cells),
        "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
        "eval_seconds_now": time.perf_counter() - t0,
    }


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _m(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def _s(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds:.2f} s" if seconds >= 0.01 else f"{seconds:.4f} s"


def render(results: list[dict], regenerate: str) -> str:
    """docs/ZOO.md from the measurements."""
    total = sum(f.stat().st_size for f in (REPO / "assets").rglob("*") if f.is_file())
    lines = [
        "# The bundled model zoo",
        "",
        "Small models trained from scratch on the bundled datasets, so that the app and the library work",
        "offline. They live in `assets/models/` as safetensors files (architecture and preprocessing in the",
        "header), listed in `assets/models/manifest.json` with their sha256 (verified on every load), training",
        "recipe and the one command that rebuilds each of them. `python -m intrafusion models` lists them.",
        "",
        f"Regenerate this page (and retrain nothing): `{regenerate}`. Retrain everything: "
        "`python scripts/build_zoo.py`.",
        "",
        "Widths are small on purpose: every model reaches at least 97% test accuracy, a full default-vs-fusion",
        "sweep of one model (every group x sparsities 0.3 / 0.5 / 0.7, evaluated on the whole test split) takes",
        "seconds (VGG, MLP) to well under a minute (ResNet18) on 2 CPU cores, and dropping half the channels",
        "of a middle group visibly hurts, which is what Intra-Fusion repairs. The ResNet18 on the animals has",
        "half the width of the one on MNIST because its test split is twice as large (same sweep time).",
        "",
        "## Summary",
        "",
        "| model | architecture | dataset | test accuracy | parameters | MACs | file size | train s / epoch "
        "| eval s (test split) | full sweep (cells x median cell) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        e = r["entry"]
        info = get_info(e.dataset)
        arch = e.description.split(", trained")[0] if e.description else e.arch
        lines.append(
            f"| `{e.id}` | {arch} | {e.dataset} ({info.test_size} test) | {e.test_accuracy:.2f}% | "
            f"{e.params:,} | {_m(e.macs)} | {_mb(e.size_bytes)} | {_s(e.train_seconds_per_epoch)} | "
            f"{_s(e.eval_seconds)} | {_s(r['sweep_seconds'])} ({r['sweep_cells']} x "
            f"{_s(r['sweep_median_estimate'] / r['sweep_cells'])} = {_s(r['sweep_median_estimate'])}) |"
        )
    lines += [
        "",
        f"All of `assets/` (datasets and models): {_mb(total)} (limit 60 MB). Times were measured on "
        f"{platform.machine()} with {torch.get_num_threads()} torch threads (torch {torch.__version__}) on a "
        "shared machine: *train s / epoch* is the median epoch of training (training pass only, augmentation "
        "included), *eval s* the best of three exact evaluations of the whole test split, *full sweep* one run "
        "of `intrafusion.experiments.sweep.sweep` over every group at sparsities 0.3, 0.5 and 0.7 with default "
        "pruning and "
        "Intra-Fusion (paper), l1 criterion, evaluated on the whole test split (pruning + evaluation of every "
        "cell; in brackets the number of cells times the median cell, which is less sensitive to other work on "
        "the machine; 1-minute load average during the measurements: "
        + ", ".join(f"{r['load']:.1f}" for r in results)
        + "). MACs are one forward pass of one image (torch-pruning's counter).",
        "",
        "## Default pruning vs Intra-Fusion at 50% on the middle groups",
        "",
        "Each row prunes ONE group of the unpruned model (all other groups untouched) to half its channels, l1",
        "criterion, no data and no fine-tuning, and reports exact accuracy on the whole test split. *IF paper*:",
        "Intra-Fusion with the paper's normalisation; *IF FP*: the function-preserving normalisation (producers",
        "averaged, consumers summed). Groups are numbered as in the paper, 0 nearest the classifier; the middle",
        "groups are the middle half (`n//4 .. n - n//4 - 1` of n groups; both hidden layers for the MLP).",
        "Reproduce one row: `python -m intrafusion sweep MODEL --groups G --sparsities 0.5 --normalization "
        "paper function-preserving`.",
    ]
    for r in results:
        e = r["entry"]
        lines += [
            "",
            f"### `{e.id}`",
            "",
            f"{e.description}. Unpruned: **{r['accuracy']:.2f}%**. {len(r['groups'])} groups. "
            f"Trained {e.epochs} epochs, SGD (lr {e.optimizer.get('lr')}, momentum {e.optimizer.get('momentum')}, "
            f"weight decay {e.optimizer.get('weight_decay')}, batch {e.optimizer.get('batch_size')}, "
            f"{e.optimizer.get('schedule', 'cosine')}), augmentation: {e.optimizer.get('augmentation', 'none')}; "
            f"split: {e.split}.",
            "",
            f"Rebuild: `{e.command}`",
            "",
            "| group | channels (kept) | default | IF paper | IF FP | IF paper - default |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for g, row in sorted(r["middle"].items()):
            d, p, f = row["default"], row["fusion (paper)"], row["fusion (function-preserving)"]
            lines.append(f"| {g} | {row['n']} ({row['kept']}) | {d:.2f}% | {p:.2f}% | {f:.2f}% | {p - d:+.2f} |")
        ds = [row["default"] for row in r["middle"].values()]
        ps = [row["fusion (paper)"] for row in r["middle"].values()]
        fs = [row["fusion (function-preserving)"] for row in r["middle"].values()]
        lines.append(f"| mean | | {sum(ds) / len(ds):.2f}% | {sum(ps) / len(ps):.2f}% | {sum(fs) / len(fs):.2f}% | "
                     f"{(sum(ps) - sum(ds)) / len(ds):+.2f} |")
    lines.append("")
    return "\n".join(lines)


#: Paper-scale models (groups of 64-512 channels), stored in half precision and loaded as float32.
PAPER_SCALE = (
    Recipe("vgg11_bn", 1.0, "mnist5k", 30),
    Recipe("vgg11_bn", 1.0, "animals10k", 30),
    Recipe("resnet18", 0.5, "mnist5k", 20),
)


#: Bundled like the paper-scale models (float16, ``--paper-scale --only ID``) but beyond the paper's architectures:
#: a CIFAR-form MobileNetV2 (depthwise convs, inverted residuals). Width 0.25 (26 groups of 4 to 320 channels,
#: expanded layers of 8-240): one epoch at width 0.5 took 82 s of one core, and the shared machine gave a
#: training job about a fifth of a core.
BEYOND_PAPER = (
    Recipe("mobilenet_v2", 0.25, "mnist5k", 20),
)


def paper_scale_id(recipe: Recipe) -> str:
    return f"{recipe.arch}_w{recipe.width:g}-{recipe.dataset}"


def bundle_half(src_dir: Path, model_id: str) -> dict:
    """Copy ``src_dir/model_id`` (trained by ``python -m intrafusion train --out src_dir``) into the zoo as float16.

    The manifest entry is the training entry with the file, sha256, size and test accuracy of the STORED model
    (loaded back as float32 after the cast), so every number the app shows is the bundled model's.
    """
    import json

    from safetensors.torch import load_file, save_file

    from intrafusion.experiments.train_zoo import _write_manifest

    entry = next(e for e in json.loads((src_dir / "manifest.json").read_text())["models"] if e["id"] == model_id)
    tensors = load_file(str(src_dir / entry["file"]))
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    from safetensors import safe_open

    with safe_open(str(src_dir / entry["file"]), "pt") as fh:
        meta = dict(fh.metadata() or {})
    meta["stored_dtype"] = json.dumps("float16")
    dest = zoo.MODELS_DIR / entry["file"]
    save_file(half, str(dest), metadata=meta)
    entry = dict(entry, sha256=zoo.sha256_file(dest), size_bytes=dest.stat().st_size)
    entry["train_command"] = entry["command"].replace(f" --out {src_dir}", "")
    entry["command"] = f"python scripts/build_zoo.py --paper-scale --only {model_id}"
    entry["storage"] = "float16 safetensors, loaded as float32; test_accuracy measured on the loaded model"
    _write_manifest(zoo.MODELS_DIR, entry)
    zoo._load_verified.cache_clear()
    loaded = zoo.load_zoo_model(model_id)
    x, y = load_dataset(loaded.dataset, "test", preprocessing=loaded.preprocessing).tensors
    acc = evaluate(loaded.model, x, y).accuracy
    entry["float32_test_accuracy"], entry["test_accuracy"] = entry["test_accuracy"], acc
    entry["description"] = entry["description"].rsplit(";", 1)[0] + (
        f"; {acc:.2f}% on its {get_info(loaded.dataset).test_size} test images (stored as float16)")
    _write_manifest(zoo.MODELS_DIR, entry)
    zoo._load_verified.cache_clear()
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table-only", action="store_true", help="train nothing; measure and rewrite the doc")
    parser.add_argument("--only", nargs="+", metavar="ID", help="train only these models (ids of the zoo)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--doc", type=Path, default=DOC, help="where to write the doc (default docs/ZOO.md)")
    parser.add_argument("--no-doc", action="store_true", help="train only; measure nothing, write no doc")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--paper-scale", action="store_true",
                        help="train the paper-scale models (PAPER_SCALE) and bundle them as float16")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.paper_scale:
        import tempfile

        for recipe in PAPER_SCALE + BEYOND_PAPER:
            mid = paper_scale_id(recipe)
            if args.only and mid not in args.only:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                train_zoo_model(recipe.arch, recipe.width, recipe.dataset, recipe.epochs, seed=recipe.seed,
                                model_id=mid, out_dir=tmp, lr=recipe.lr, batch_size=recipe.batch_size,
                                progress=not args.quiet)
                entry = bundle_half(Path(tmp), mid)
            print(f"  {mid}: {entry['test_accuracy']:.2f}% (float16), {entry['size_bytes'] / 1e6:.1f} MB",
                  file=sys.stderr)
        return 0
    known = {r.id: r for r in ZOO} | {paper_scale_id(r): r for r in PAPER_SCALE + BEYOND_PAPER}
    for i in args.only or []:
        if i not in known:
            parser.error(f"unknown zoo model {i!r}; zoo models: {', '.join(known)}")
    if not args.table_only:
        for recipe in ZOO:
            if args.only and recipe.id not in args.only:
                continue
            print(f"training {recipe.id} ...", file=sys.stderr)
            entry = train_zoo_model(recipe.arch, recipe.width, recipe.dataset, recipe.epochs, seed=recipe.seed,
                                    lr=recipe.lr, batch_size=recipe.batch_size, progress=not args.quiet,
                                    out_dir=zoo.MODELS_DIR, overwrite_bundled=True)
            print(f"  {entry['id']}: {entry['test_accuracy']:.2f}%, {entry['size_bytes'] / 1e6:.2f} MB, "
                  f"{entry['train_seconds_per_epoch']:.1f} s/epoch", file=sys.stderr)
    if args.no_doc:
        return 0
    listed = {e.id for e in zoo.list_models()}
    results = []
    for recipe in ZOO:
        if recipe.id not in listed:
            print(f"warning: {recipe.id} is not in the manifest (train it first)", file=sys.stderr)
            continue
        print(f"measuring {recipe.id} ...", file=sys.stderr)
        r = measure(recipe.id)
        results.append(r)
        mid = ", ".join(f"g{g}: {row['default']:.1f} -> {row['fusion (paper)']:.1f} / "
                        f"{row['fusion (function-preserving)']:.1f}" for g, row in sorted(r["middle"].items()))
        print(f"  {recipe.id}: {r['accuracy']:.2f}%, full sweep {r['sweep_seconds']:.1f} s; 50% default -> IF "
              f"paper / FP: {mid}", file=sys.stderr)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(render(results, "python scripts/build_zoo.py --table-only"))
    print(f"wrote {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
