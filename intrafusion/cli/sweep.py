"""``intrafusion sweep MODEL --groups ...``: default pruning vs Intra-Fusion per (group, sparsity)."""

from __future__ import annotations

import json
import sys

from ._common import add_command, at_least_one, eval_data, load_model, model_args, sample_count, taylor_batches


def cmd_sweep(args) -> int:
    from tqdm import tqdm

    from ..core.prune import TransportOptions
    from ..core.repair import RepairOptions
    from ..evaluate import evaluate, predict_logits
    from ..experiments.sweep import sweep, sweep_cells

    if not args.whole_model and not args.groups:
        raise ValueError("give --groups (indices, each pruned alone) or --whole-model (all groups at once)")
    groups = "all" if args.whole_model else args.groups
    cells = sweep_cells(groups, args.sparsities, args.methods, args.normalization, args.repair)  # fail fast
    loaded = load_model(args)
    repair_data = _repair_data(loaded, args) if any(RepairOptions(r).uses_data for r in args.repair) else None
    x, y = eval_data(loaded, args, args.limit)
    options = TransportOptions(normalization=args.normalization[0], target=args.target,
                               source_marginal=args.marginals, target_marginal=args.marginals,
                               solver=args.solver, reg=args.reg, p=args.p)
    ref = predict_logits(loaded.model, x, device=args.device)
    base = evaluate(loaded.model, x, y, device=args.device)
    taylor = taylor_batches(loaded, args) if args.criterion == "taylor" else None
    rows = []
    bar = tqdm(total=len(cells), desc="sweep", file=sys.stderr, disable=args.quiet)
    for row in sweep(loaded.model, loaded.example_inputs, x, y, groups, args.sparsities, args.criterion,
                     methods=args.methods, normalizations=args.normalization, options=options,
                     repairs=args.repair, repair_data=repair_data, taylor_batches=taylor, seed=args.seed,
                     reference_logits=ref, workers=args.workers, address=args.address, device=args.device):
        bar.update(1)
        rows.append(row)
        if args.json:
            print(json.dumps(row.to_dict()), flush=True)
    bar.close()
    if not args.json:
        simple = set(args.repair) == {"none"} and not args.whole_model and set(args.methods) <= {"default", "fusion"}
        print(format_table(rows, loaded.name, base.accuracy, args.criterion) if simple
              else format_rows(rows, loaded.name, base.accuracy, args.criterion))
    return 0


def _repair_data(loaded, args):
    """Unlabelled training images for the repairs that use data (``data``, ``refit-data``; a seeded sample, labels
    are never read)."""
    from .prune import REPAIR_SAMPLES, repair_images

    return repair_images(loaded.dataset, loaded.preprocessing, REPAIR_SAMPLES, args.seed, args.data)


def format_rows(rows, name: str, base_accuracy: float, criterion: str) -> str:
    """One line per row: group, sparsity, method, repair, accuracy, logit distance (whole-model and repairs)."""
    wl = max([30] + [len(r.label) for r in rows])  # 'fusion (function-preserving) + refit-synthetic repair'
    wr = max([10] + [len(r.repair) + 1 for r in rows])
    lines = [f"{name}: unpruned accuracy {base_accuracy:.2f}%, criterion {criterion}; accuracy in %, "
             "dist = mean L2 distance to the unpruned logits; * = the repair used unlabelled training images",
             f"{'group':>5} {'s':>5} {'method':<{wl}} {'repair':<{wr}} {'acc %':>7} {'dist':>9} {'s/cell':>7}"]
    for r in rows:
        rep = r.repair + ("*" if r.uses_data else "")
        lines.append(f"{r.group!s:>5} {r.sparsity:>5.2f} {r.label:<{wl}} {rep:<{wr}}"
                     f" {r.accuracy:>7.2f} {r.logit_distance:>9.3f} {r.seconds + r.eval_seconds:>7.2f}")
    return "\n".join(lines)


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


_workers = at_least_one("--workers")


def register(subparsers) -> None:
    from ..core.importance import CRITERIA
    from ..core.transport import MARGINALS, NORMALIZATIONS, SOLVERS, TARGETS

    p = add_command(subparsers, "sweep", cmd_sweep, "default pruning vs Intra-Fusion per (group, sparsity)")
    model_args(p)
    from ..core.prune import METHODS
    from ..core.repair import REPAIRS
    from ..device import DEVICES

    p.add_argument("--groups", type=int, nargs="+", help="group indices, each pruned alone")
    p.add_argument("--whole-model", action="store_true",
                   help="prune every prunable group at once, per sparsity (rows have group 'all')")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=["default", "fusion"],
                   help="pruning methods to compare")
    p.add_argument("--repair", nargs="+", choices=REPAIRS, default=["none"],
                   help="repair(s) after each method. No data: bias, moments, synthetic, refit-synthetic (every "
                        "layer refitted by least squares to the original's outputs on the synthetic batch). Read "
                        "unlabelled training images (uses_data, marked * in the table): data, refit-data")
    p.add_argument("--workers", type=_workers, default=1,
                   help="parallel workers (Ray); 1 runs in this process without Ray")
    p.add_argument("--address", help="Ray cluster to run on (default $RAY_ADDRESS, else a local instance)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the transport cost and the evaluation run (auto: CUDA when available)")
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
    p.add_argument("--limit", type=sample_count, help="evaluate on a stratified subset of this many test samples")
    p.add_argument("--json", action="store_true", help="one JSON object per row")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
