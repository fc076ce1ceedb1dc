"""``python -m intrafusion prune``: prune a model once, measure it before and after, write the pruned checkpoint.

One pruning (default, Intra-Fusion or Model Folding, then an optional repair), measured on the model's test split
(accuracy, mean logit distance to the unpruned model, top-1 agreement, parameters and multiply-accumulates), and
written as a safetensors file whose header carries the pruned architecture, the dataset and the preprocessing, so
that ``load_model`` (or any command, given the file instead of a model id) rebuilds it.

The repairs that use data (``data``, ``refit-data``) read a seeded sample of the training split's *images* only:
labels are never loaded into them. ``synthetic`` and ``refit-synthetic`` use a batch made from the model's own
BatchNorm statistics instead (no data); the ``refit-*`` kinds refit every layer by least squares to the original's
outputs on those inputs (:mod:`intrafusion.core.reconstruct`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from ._common import add_command, eval_data, load_model, model_args, sample_count, taylor_batches

__all__ = ["cmd_prune", "format_report", "parse_groups", "prune_report", "register", "repair_images"]

#: Unlabelled training images the ``data`` / ``refit-data`` repairs use (the reference's 8 batches of 64).
REPAIR_SAMPLES = 512


def parse_groups(values) -> str | list[int]:
    """``['all']`` -> ``'all'``; ``['0', '3']`` -> ``[0, 3]``; anything else is a ValueError naming the fix."""
    values = [str(v) for v in values]
    if values == ["all"]:
        return "all"
    try:
        return [int(v) for v in values]
    except ValueError:
        raise ValueError(f"--groups takes 'all' or group indices (0 = nearest the classifier), got "
                         f"{' '.join(values)}; list them with `python -m intrafusion groups MODEL`") from None


def repair_images(dataset: str, preprocessing, n: int = REPAIR_SAMPLES, seed: int = 0, root=None) -> torch.Tensor:
    """A seeded sample of ``n`` preprocessed training images of ``dataset``, without their labels.

    Only the image array of the training split is used (the labels returned next to it are dropped unread), so
    a repair fed with it cannot see a label.

    Raises
    ------
    DatasetUnavailable
        The training split is not on disk (and could not be downloaded).
    """
    from ..data import load_arrays, preprocess

    images = load_arrays(dataset, "train", root=root)[0]
    if n < 1:
        raise ValueError(f"a repair that uses data (data, refit-data) needs at least 1 training image, got {n}")
    idx = np.random.default_rng(seed).permutation(len(images))[:n]
    return preprocess(images[np.sort(idx)], preprocessing)


def _check_choices(args) -> None:
    """Reject a bad sparsity, method, normalisation or repair before anything is loaded: one sentence each."""
    from ..core.folding import FOLDING_VARIANTS
    from ..core.prune import METHODS, check_sparsity
    from ..core.repair import REPAIRS
    from ..core.transport import NORMALIZATIONS

    check_sparsity(args.sparsity)
    for what, value, allowed in (("method", args.method, METHODS), ("repair", args.repair, REPAIRS),
                                 ("normalization", args.normalization, NORMALIZATIONS),
                                 ("folding variant", args.folding, FOLDING_VARIANTS)):
        if value not in allowed:
            raise ValueError(f"unknown {what} {value!r}: choose one of {', '.join(allowed)}")


def _repair_options(args):
    from ..core.repair import RepairOptions

    fields = {f.name for f in dataclasses.fields(RepairOptions)}
    extra = {"seed": args.seed}
    if args.synthetic_size is not None:
        extra["synthetic_size"] = args.synthetic_size
    if args.synthetic_steps is not None:
        extra["synthetic_steps"] = args.synthetic_steps
    extra["target"] = args.repair_target
    return RepairOptions(kind=args.repair, **{k: v for k, v in extra.items() if k in fields})


def _measure(model, example_inputs, x, y, reference=None) -> dict:
    from ..device import compute_device
    from ..evaluate import count_macs_params, evaluate

    ev = evaluate(model, x, y, reference, device=compute_device())  # --device (cmd_prune's compute_on)
    macs, params = count_macs_params(copy.deepcopy(model), example_inputs)  # the counter hooks the model
    out = {"accuracy": ev.accuracy, "correct": ev.n_correct, "params": params, "macs": macs}
    if reference is not None:
        out.update(logit_distance=ev.logit_distance, agreement=ev.agreement)
    return out


def prune_report(loaded, x, y, groups, sparsity: float, method: str = "fusion", normalization: str = "paper",
                 criterion: str = "l1", repair=None, repair_data=None, taylor_batches=None, seed: int = 0,
                 folding: str = "plain", target_marginal: str = "uniform", choose_criteria=None):
    """Prune ``loaded.model`` (never changed) once and measure it before and after.

    Returns
    -------
    result : PruneResult
        The pruned (and repaired) model with its group records.
    report : dict
        ``before`` and ``after`` (accuracy %, correct, params, macs; ``after`` also logit_distance and
        agreement %), ``change`` (points and ratios), the settings, ``uses_data`` and the repair's details.
    """
    from ..core.folding import FoldingOptions
    from ..core.prune import TransportOptions, prune
    from ..core.repair import RepairOptions
    from ..evaluate import predict_logits

    repair = RepairOptions.coerce(repair)
    options = (FoldingOptions(variant=folding) if method == "folding"
               else TransportOptions(normalization=normalization, target_marginal=target_marginal))
    reference = predict_logits(loaded.model, x)
    before = _measure(loaded.model, loaded.example_inputs, x, y)
    t0 = time.perf_counter()
    kw = dict(method=method, options=options, taylor_batches=taylor_batches, seed=seed, repair=repair,
              repair_data=repair_data if repair.uses_data else None)
    if choose_criteria:
        from ..core.select import prune_closest

        res = prune_closest(loaded.model, loaded.example_inputs, groups, sparsity, tuple(choose_criteria), **kw)
        criterion = res.choices["criterion"]
    else:
        res = prune(loaded.model, loaded.example_inputs, groups, sparsity, criterion=criterion, **kw)
    seconds = time.perf_counter() - t0
    after = _measure(res.model, loaded.example_inputs, x, y, reference)
    rep = res.repair
    report = {
        "model": loaded.name, "dataset": loaded.dataset, "groups": groups if groups == "all" else list(groups),
        "pruned_groups": [r.group.index for r in res.records], "sparsity": float(sparsity), "method": method,
        "normalization": normalization if method == "fusion" else None,
        "folding": folding if method == "folding" else None, "criterion": criterion,
        "repair": repair.kind, "uses_data": bool(repair.uses_data), "test_samples": len(y),
        "channels": {"before": sum(r.n for r in res.records), "after": sum(r.m for r in res.records)},
        "before": before, "after": after,
        "change": {"accuracy_points": after["accuracy"] - before["accuracy"],
                   "params_ratio": after["params"] / before["params"], "macs_ratio": after["macs"] / before["macs"]},
        "seconds": seconds,
        "repair_details": ({"seconds": rep.seconds, **rep.details} if rep is not None else {}),
        "choices": res.choices,
    }
    if repair.uses_data:
        report["repair_details"]["inputs"] = len(repair_data)
    return res, report


def format_report(report: dict) -> str:
    """The report as a short before/after table."""
    b, a, c = report["before"], report["after"], report["change"]
    how = report["method"] + (f" ({report['normalization']})" if report["normalization"] else "") + (
        f" ({report['folding']})" if report.get("folding") else "")
    groups = "all groups" if report["groups"] == "all" else f"group(s) {' '.join(map(str, report['groups']))}"
    repair = report["repair"] + (" (uses data: unlabelled training images)" if report["uses_data"] else
                                 ", no data" if report["repair"] != "none" else "")
    lines = [
        f"{report['model']}: {how}, {groups} at sparsity {report['sparsity']:g} "
        f"({report['channels']['before']} -> {report['channels']['after']} channels), criterion "
        f"{report['criterion']}, repair {repair}; {report['test_samples']} test images",
        f"{'':<16} {'before':>12} {'after':>12} {'change':>10}",
        f"{'accuracy %':<16} {b['accuracy']:>12.2f} {a['accuracy']:>12.2f} {c['accuracy_points']:>+10.2f}",
        f"{'logit distance':<16} {0.0:>12.3f} {a['logit_distance']:>12.3f}",
        f"{'agreement %':<16} {100.0:>12.2f} {a['agreement']:>12.2f}",
        f"{'parameters':<16} {b['params']:>12,} {a['params']:>12,} {c['params_ratio']:>9.3f}x",
        f"{'MACs':<16} {b['macs']:>12,} {a['macs']:>12,} {c['macs_ratio']:>9.3f}x",
        f"pruning{' and repair' if report['repair'] != 'none' else ''}: {report['seconds']:.2f} s",
    ]
    d = {**report.get("repair_details", {}), **report.get("choices", {})}
    for key, what in (("criterion_logit_gaps", "criterion"), ("refit_logit_gaps", "refit target")):
        if key in d:  # the label-free choices: each candidate's mean logit gap on the repair's inputs
            gaps = ", ".join(f"{k} {v:.3f}" for k, v in d[key].items())
            chosen = report["criterion"] if what == "criterion" else d["refit_target"]
            lines.append(f"{what} chosen: {chosen} (logit gap to the original on the repair's inputs: {gaps})")
    if report.get("out"):
        lines.append(f"written: {report['out']}")
    return "\n".join(lines)


def cmd_prune(args) -> int:
    from ..data import DatasetUnavailable, get_info
    from ..models.checkpoint import write_atomic
    from ..views import export_model

    groups = parse_groups(args.groups)
    _check_choices(args)
    repair = _repair_options(args)
    loaded = load_model(args)
    data = None
    if repair.uses_data:  # first, so a missing training split is named as the repair's problem
        try:
            data = repair_images(loaded.dataset, loaded.preprocessing, args.repair_samples, args.seed, args.data)
        except DatasetUnavailable as exc:
            raise DatasetUnavailable(
                f"the {repair.kind} repair needs unlabelled {get_info(loaded.dataset).name} training images, but "
                f"{str(exc).rstrip('.')}; or use --repair moments or synthetic (or refit-synthetic), which need no "
                "data.") from None
    x, y = eval_data(loaded, args, args.limit)
    taylor = taylor_batches(loaded, args) if args.criterion == "taylor" else None
    from ..device import compute_on

    with compute_on(args.device):  # the transport cost and the evaluations on --device
        res, report = prune_report(loaded, x, y, groups, args.sparsity, args.method, args.normalization,
                                   args.criterion, repair, data, taylor, args.seed, args.folding,
                                   args.target_marginal, args.choose_criterion)
    if args.out:
        settings = {k: report[k] for k in ("groups", "sparsity", "method", "normalization", "folding", "criterion",
                                           "repair", "uses_data")}
        meta = {"dataset": loaded.dataset, "preprocessing": loaded.preprocessing.to_dict(),
                "test_accuracy": report["after"]["accuracy"], "test_samples": report["test_samples"],
                "pruned_from": loaded.name, "pruning": settings}
        blob, config = export_model(res.model, loaded.config, meta)
        write_atomic(args.out, blob)
        report["out"] = str(Path(args.out))
        report["config"] = config
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(format_report(report))
    return 0


def register(subparsers) -> None:
    from ..core.importance import CRITERIA
    from ..core.prune import METHODS
    from ..core.repair import REPAIR_TARGETS, REPAIRS
    from ..core.transport import TARGET_MARGINALS

    p = add_command(subparsers, "prune", cmd_prune,
                    "prune a model once, print accuracy, logit distance, agreement, parameters and MACs before "
                    "and after, and write the pruned checkpoint")
    model_args(p)
    p.add_argument("--groups", nargs="+", default=["all"], metavar="G",
                   help="'all' (default) or group indices, 0 = nearest the classifier")
    p.add_argument("--sparsity", type=float, required=True, help="fraction of each group's channels removed, [0, 1)")
    p.add_argument("--method", default="fusion", help=f"one of {', '.join(METHODS)} (default fusion)")
    p.add_argument("--normalization", default="paper",
                   help="Intra-Fusion's map: paper (sums) or function-preserving (default paper)")
    p.add_argument("--folding", default="plain",
                   help="Model Folding's variant: plain, or ar (Fold-AR, its data-free moment repair)")
    p.add_argument("--criterion", choices=CRITERIA, default="l1",
                   help="importance (default l1, on BatchNorm-folded weights as the paper; l1-raw: before folding)")
    p.add_argument("--choose-criterion", nargs="+", choices=CRITERIA, metavar="CRIT",
                   help="prune once per criterion given and keep the result whose logits on the repair's inputs "
                        "(a synthetic batch unless the repair reads data) stay closest to the original's")
    p.add_argument("--target-marginal", default="uniform", choices=TARGET_MARGINALS,
                   help="Intra-Fusion's target marginal: uniform (the paper), importance, or nearest (each target "
                        "gets the channels closest to it)")
    p.add_argument("--repair", default="none",
                   help=f"one of {', '.join(REPAIRS)} (default none). No data: bias, moments, synthetic (BatchNorm "
                        "statistics re-estimated on a batch matched to the stored ones), refit-synthetic (every "
                        "layer refitted to the original's outputs on that synthetic batch, least squares). Uses "
                        "unlabelled training images: data (re-estimation on them), refit-data (the refit on them)")
    p.add_argument("--repair-target", default="mapped", choices=REPAIR_TARGETS,
                   help="what a fused channel is repaired towards: mapped (its sources' average, default), kept (the "
                        "kept channel's own), closest (refit repairs: refit towards both, keep the one whose "
                        "logits on the repair's inputs are closer to the original's)")
    p.add_argument("--repair-samples", type=int, default=REPAIR_SAMPLES,
                   help=f"training images the data and refit-data repairs use (default {REPAIR_SAMPLES}; never "
                        "their labels)")
    p.add_argument("--synthetic-size", type=int, help="images in the synthetic batch (synthetic, refit-synthetic)")
    p.add_argument("--synthetic-steps", type=int,
                   help="optimisation steps of the synthetic batch (synthetic, refit-synthetic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=sample_count, help="evaluate on a stratified subset of this many test samples")
    p.add_argument("--out", help="write the pruned model here (safetensors, with its config)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the transport cost and the evaluations run (auto: CUDA when available)")
