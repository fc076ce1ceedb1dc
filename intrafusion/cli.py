"""Command line: ``python -m intrafusion {models,groups,sweep,train,reproduce} ...``.

Results go to stdout (a table, or JSON lines with ``--json``); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

__all__ = ["main"]


def _threads() -> None:
    # Shared 2-core machines: more threads than cores only adds contention.
    torch.set_num_threads(min(2, torch.get_num_threads()))


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a bundled model id (see `models`) or a checkpoint file")
    p.add_argument("--arch", help="architecture of a checkpoint file: vgg11_bn, resnet18 or mlp")
    p.add_argument("--dataset", help="dataset a checkpoint file was trained on (decides its inputs)")
    p.add_argument("--data", help="folder of torchvision datasets (default: $INTRAFUSION_DATA or ./data)")


def _load(args):
    from .models.zoo import resolve_model

    return resolve_model(args.model, arch=args.arch, dataset=args.dataset)


def cmd_models(args) -> int:
    from .models.zoo import list_models

    models = list_models()
    if args.json:
        for e in models:
            d = e.to_dict()
            d["accuracy"] = e.test_accuracy
            print(json.dumps(d, sort_keys=True))
        return 0
    if not models:
        print("no bundled models: assets/models/manifest.json is missing")
        return 1
    print(f"{'id':<24} {'arch':<9} {'width':>5} {'dataset':<11} {'acc %':>6} {'params':>9} {'size':>8}  path")
    for e in models:
        print(f"{e.id:<24} {e.arch:<9} {e.width:>5g} {e.dataset:<11} {e.test_accuracy:>6.2f} {e.params:>9,} "
              f"{e.size_bytes / 1e6:>6.2f}MB  {e.path}")
    return 0


def cmd_groups(args) -> int:
    from .core.groups import list_groups

    loaded = _load(args)
    groups = list_groups(loaded.model, loaded.example_inputs)
    if args.json:
        for g in groups:
            print(json.dumps(g.to_dict()))
        return 0
    print(f"{loaded.name}: {len(groups)} groups (0 = nearest the classifier)")
    print(f"{'group':>5} {'n':>5} {'residual':>8}  producers -> consumers")
    for g in groups:
        print(f"{g.index:>5} {g.n:>5} {'yes' if g.residual else 'no':>8}  {', '.join(g.producers)} -> "
              f"{', '.join(g.consumers)}" + (f"  [depthwise: {', '.join(g.depthwise)}]" if g.depthwise else "")
              + ("" if g.prunable else f"  [NOT PRUNABLE: {g.reason}]"))
    return 0


def _sample_count(text: str) -> int:
    """argparse type of --limit: a whole number of samples, at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--limit takes a whole number of test samples, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(
            f"--limit must be at least 1 test sample, got {n}; leave it out to evaluate on the whole test set")
    return n


def _eval_data(loaded, args, limit: int | None):
    from .data import load_dataset, subset

    test = load_dataset(loaded.dataset, "test", root=args.data, preprocessing=loaded.preprocessing)
    if limit:
        test = subset(test, limit, seed=0)
        xs, ys = zip(*[test[i] for i in range(len(test))])
        return torch.stack(xs), torch.stack(ys)
    return test.tensors


def _taylor_batches(loaded, args):
    from .data import load_dataset, sample_batches

    train = load_dataset(loaded.dataset, "train", root=args.data, preprocessing=loaded.preprocessing)
    return sample_batches(*train.tensors)


def cmd_sweep(args) -> int:
    from tqdm import tqdm

    from .core.prune import TransportOptions
    from .evaluate import evaluate, predict_logits
    from .experiments.sweep import sweep, sweep_cells

    loaded = _load(args)
    x, y = _eval_data(loaded, args, args.limit)
    options = TransportOptions(normalization=args.normalization[0], target=args.target,
                               source_marginal=args.marginals, target_marginal=args.marginals,
                               solver=args.solver, reg=args.reg, p=args.p)
    ref = predict_logits(loaded.model, x)
    base = evaluate(loaded.model, x, y)
    taylor = _taylor_batches(loaded, args) if args.criterion == "taylor" else None
    cells = sweep_cells(args.groups, args.sparsities, ("default", "fusion"), args.normalization)
    rows = []
    bar = tqdm(total=len(cells), desc="sweep", file=sys.stderr, disable=args.quiet)
    for row in sweep(loaded.model, loaded.example_inputs, x, y, args.groups, args.sparsities, args.criterion,
                     normalizations=args.normalization, options=options, taylor_batches=taylor, seed=args.seed,
                     reference_logits=ref):
        bar.update(1)
        rows.append(row)
        if args.json:
            print(json.dumps(row.to_dict()), flush=True)
    bar.close()
    if not args.json:
        print(format_table(rows, loaded.name, base.accuracy, args.criterion))
    return 0


def format_table(rows, name: str, base_accuracy: float, criterion: str) -> str:
    """The paper's data-free table: default vs fusion accuracy and logit distance per (group, sparsity)."""
    norms = sorted({r.normalization for r in rows if r.method == "fusion"}, reverse=True)
    by = {(r.group, r.sparsity, r.label): r for r in rows}
    head = f"{'group':>5} {'s':>5} {'default':>8}"
    for nm in norms:
        short = "FP" if nm == "function-preserving" else "paper"
        head += f" {'IF ' + short:>9} {'diff':>6}"
    head += f" {'dist def':>9}" + "".join(f" {'dist ' + ('FP' if nm != 'paper' else 'paper'):>10}" for nm in norms)
    lines = [f"{name}: unpruned accuracy {base_accuracy:.2f}%, criterion {criterion}; accuracy in %, "
             "dist = mean L2 distance to the unpruned logits", head]
    for g, s in dict.fromkeys((r.group, r.sparsity) for r in rows):
        d = by.get((g, s, "default"))
        line = f"{g:>5} {s:>5.2f} {d.accuracy if d else float('nan'):>8.2f}"
        for nm in norms:
            f = by.get((g, s, f"fusion ({nm})"))
            line += f" {f.accuracy:>9.2f} {f.accuracy - d.accuracy:>+6.2f}" if f and d else f" {'':>9} {'':>6}"
        line += f" {d.logit_distance if d else float('nan'):>9.3f}"
        for nm in norms:
            f = by.get((g, s, f"fusion ({nm})"))
            line += f" {f.logit_distance:>10.3f}" if f else f" {'':>10}"
        lines.append(line)
    return "\n".join(lines)


def cmd_train(args) -> int:
    from .experiments.train import train_zoo_model

    entry = train_zoo_model(args.arch, args.width, args.dataset, args.epochs, seed=args.seed, model_id=args.id,
                            out_dir=args.out, lr=args.lr, batch_size=args.batch_size, progress=not args.quiet)
    print(json.dumps({k: entry[k] for k in ("id", "file", "test_accuracy", "sha256") if k in entry}))
    return 0


def cmd_reproduce(args) -> int:
    from .experiments.reproduce import run_reproduction

    run_reproduction(models=args.model, out_dir=args.out, quick=args.quick, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .core.importance import CRITERIA
    from .core.transport import MARGINALS, NORMALIZATIONS, SOLVERS, TARGETS

    parser = argparse.ArgumentParser(prog="python -m intrafusion",
                                     description="Intra-Fusion: prune by fusing neurons with optimal transport.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the bundled models")
    p.add_argument("--json", action="store_true", help="one JSON object per model")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("groups", help="the pruning groups of a model (0 = nearest the classifier)")
    _model_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per group")
    p.set_defaults(func=cmd_groups)

    p = sub.add_parser("sweep", help="default pruning vs Intra-Fusion per (group, sparsity)")
    _model_args(p)
    p.add_argument("--groups", type=int, nargs="+", required=True)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--criterion", choices=CRITERIA, default="l1")
    p.add_argument("--normalization", choices=NORMALIZATIONS, nargs="+", default=["paper"],
                   help="map normalisation(s) of Intra-Fusion; give both to compare")
    p.add_argument("--solver", choices=SOLVERS, default="emd")
    p.add_argument("--reg", type=float, default=0.05, help="Sinkhorn regularisation (relative to the max cost)")
    p.add_argument("--p", type=float, default=1.0, help="exponent of the cost ||x - y||_p")
    p.add_argument("--target", choices=TARGETS, default="kept")
    p.add_argument("--marginals", choices=MARGINALS, default="uniform")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=_sample_count, help="evaluate on a stratified subset of this many test samples")
    p.add_argument("--json", action="store_true", help="one JSON object per row")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("train", help="train a model on a dataset and register it in the zoo manifest")
    p.add_argument("--arch", required=True, choices=["vgg11_bn", "resnet18", "mlp", "mobilenet_v2"])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--dataset", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--id", help="model id (default ARCH-DATASET)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", help="folder for the weights and manifest (default assets/models)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("reproduce", help="reproduce the paper's claims on the bundled zoo")
    p.add_argument("--quick", action="store_true", help="one model, a few cells (about 3 minutes)")
    p.add_argument("--model", nargs="+", help="bundled model ids (default: all)")
    p.add_argument("--out", default="results", help="output folder for CSV/JSON/PNG")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; problems the user can fix end in one line on stderr and exit status 2."""
    from .core.groups import UnsupportedLayerError
    from .data import DatasetUnavailable
    from .models.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    _threads()
    try:
        return args.func(args)
    except (CheckpointError, DatasetUnavailable, UnsupportedLayerError, ValueError, IndexError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
