"""Claim 6 (beyond the paper, issue 9): repair what pruning breaks, with no data.

Every bundled CNN (the MLP has no BatchNorm statistics to restore, and the paper-scale models are too slow for
this run: ``RepairSettings.max_macs``), ℓ1 importance, four parts:

1. ``whole``: every group pruned at once at s = 0.1, 0.3, 0.5, 0.7 for every (method, normalisation, repair):
   default pruning, Intra-Fusion with the paper's and the function-preserving map, Model Folding (when the
   library has it), each followed by every repair kind (``none``, ``bias``, ``moments``, ``synthetic``, ``data``,
   ``refit-synthetic``, ``refit-data``).
2. ``single``: each group pruned alone at s = 0.1 ... 0.7, default and the paper's Intra-Fusion without repair
   against the data-free repaired variants.
3. ``finetune``: claim 4's protocol (whole model at neuron sparsity 0.4 / 0.6 / 0.7, BatchNorm re-estimated,
   4 epochs of SGD) for default pruning and for Intra-Fusion with a data-free repair, on every model.
4. ``std``: for each (method, repair) at s = 0.3 (whole model), each kept channel's std after pruning over the
   same channel's std in the unpruned model, per BatchNorm layer, on a fixed batch of test images (below 1:
   collapse, above 1: overshoot).

The ``data`` repair re-estimates on a seeded sample of training *images* (:func:`unlabelled_images`, labels
never read); every row says ``uses_data``. It is the upper bound the data-free repairs are measured against.
Findings, claims (the targets of issue 9), plots and the report section are in :mod:`.repair_report`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

from ...core import prune as prune_module
from ...core.folding import FoldingOptions
from ...core.importance import group_importance
from ...core.prune import TransportOptions, kept_count, prune
from ...core.repair import REPAIRS, RepairOptions
from ...core.select import prune_closest
from ...data import subset
from ...evaluate import count_macs_params, evaluate, predict_logits
from ..sweep import method_label
from .common import bar, n_params
from .settings import subset_size

__all__ = ["REPAIR_COLUMNS", "FINETUNE_REPAIR_COLUMNS", "FULL_REPAIR", "QUICK_REPAIR", "RepairSettings",
           "STD_COLUMNS", "SINGLE_COLUMNS", "Variant", "channel_std_ratios", "run", "unlabelled_images", "variants"]

WHOLE_COLUMNS = ["model", "arch", "dataset", "sparsity", "method", "normalization", "repair", "label", "uses_data",
                 "accuracy", "logit_distance", "agreement", "params", "kept", "n", "seconds", "repair_seconds",
                 "synthetic_seconds", "eval_samples", "base_accuracy", "note"]
SINGLE_COLUMNS = ["model", "group", "n", "kept", "sparsity", "method", "normalization", "repair", "label",
                  "uses_data", "accuracy", "logit_distance", "agreement", "seconds", "eval_samples"]
FINETUNE_REPAIR_COLUMNS = ["model", "sparsity", "label", "repair", "repair_applied", "epoch", "stage",
                           "test_accuracy", "train_loss", "train_accuracy", "seconds", "params", "params_orig",
                           "weight_sparsity", "macs", "macs_orig", "train_samples", "test_samples", "lr"]
STD_COLUMNS = ["model", "sparsity", "label", "method", "normalization", "repair", "layer_index", "layer", "channels",
               "median", "p10", "p90", "mean_log2", "min", "max"]
REPAIR_COLUMNS = {"repair_whole": WHOLE_COLUMNS, "repair_single": SINGLE_COLUMNS,
                  "repair_finetune": FINETUNE_REPAIR_COLUMNS, "repair_std": STD_COLUMNS}


@dataclass(frozen=True)
class Variant:
    """One (method, normalisation, repair[, target marginal]). ``normalization`` is Intra-Fusion's map, Model
    Folding's variant ('plain' or 'ar', i.e. Fold-AR) for folding, and None for default pruning; ``marginal`` is
    Intra-Fusion's target marginal (``nearest``: each kept channel's share of the channels closest to it);
    ``refit_target`` the refit's target (``closest``: both, the one nearer the original kept); ``criterion`` the
    importance (``auto``: ``l1`` and ``l1-raw`` both run, the one nearer the original on the repair's inputs
    kept, :func:`intrafusion.core.select.prune_closest`)."""

    method: str
    normalization: str | None
    repair: str
    marginal: str = "uniform"
    refit_target: str = "mapped"
    criterion: str = "l1"

    @property
    def label(self) -> str:
        base = method_label(self.method, self.normalization)
        if self.method == "folding" and self.normalization not in (None, "plain"):
            base = f"folding {self.normalization.upper()}"
        if self.method == "fusion" and self.marginal != "uniform":
            base = f"{base[:-1]}, {self.marginal})"
        if self.criterion != "l1":
            base = f"{base} [{self.criterion}]"
        rep = self.repair if self.refit_target == "mapped" else f"{self.repair} ({self.refit_target})"
        return base if self.repair == "none" else f"{base} + {rep}"

    def options(self):
        if self.method == "folding":
            return FoldingOptions(variant=self.normalization or "plain")
        return TransportOptions(normalization=self.normalization or "paper", target_marginal=self.marginal)

    @property
    def uses_data(self) -> bool:
        return RepairOptions(kind=self.repair).uses_data


#: Unlabelled training images of the ``data`` repair (the reference's 8 batches of 64). Runs with another number
#: (``data_images``; None: the whole training split) label those rows ``... + data (N images)``.
DATA_IMAGES = 512


@dataclass(frozen=True)
class RepairSettings:
    """What the repair claim measures (:data:`FULL_REPAIR`, :data:`QUICK_REPAIR`).

    ``*_variants`` list (method, normalization, repair) triples; None means: ``whole``, every available method
    with every repair; ``single``, default and the paper's Intra-Fusion without repair plus every method with
    every data-free repair; ``finetune``, default plus Intra-Fusion (both maps) with every data-free repair.
    ``methods`` and ``repairs`` filter all of them (None: all). ``single_eval`` caps the single-group part's
    evaluation images (a stratified subset, the same for every cell), ``whole_eval`` the whole-model part's;
    ``finetune_max_train`` caps the training
    images of a fine-tuning run (None: claim 4's budget), ``finetune_test`` its test images (None: claim 4's).
    """

    whole_sparsities: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
    whole_variants: tuple | None = None
    single_sparsities: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    single_all_groups: bool = True
    single_variants: tuple | None = None
    single_eval: int | None = None
    whole_eval: int | None = None
    finetune_ratios: tuple[float, ...] = (0.4, 0.6, 0.7)
    finetune_variants: tuple | None = None
    finetune_epochs: int = 4
    finetune_max_train: int | None = None
    finetune_test: int | None = None
    methods: tuple[str, ...] | None = None
    repairs: tuple[str, ...] | None = None
    std_sparsity: float = 0.3
    std_images: int = 256
    data_images: int | None = DATA_IMAGES
    synthetic_size: int | None = None
    synthetic_steps: int | None = None
    max_macs: float = 2e7
    parts: tuple[str, ...] = ("whole", "single", "finetune", "std")

    def to_dict(self) -> dict:
        return asdict(self)


#: The full run (what docs/RESULTS.md reports): every variant on the whole model; on single groups and in
#: fine-tuning, the variants that matter (the synthetic repair after both maps and after folding, moments after
#: the FP map), 4 sparsities and 500 test images per single-group cell, 2,000 training images per epoch.
#: Ours (auto): nearest marginal, the refit's closest target, l1 or l1-raw chosen by the logit gap (no label);
#: and Model Folding with the same refit, for the side-by-side.
OURS_AUTO = ("fusion", "paper", "refit-synthetic", "nearest", "closest", "auto")
FOLDING_CLOSEST = ("folding", "plain", "refit-synthetic", "uniform", "closest")
FULL_REPAIR = RepairSettings(
    single_sparsities=(0.1, 0.3, 0.5, 0.7), single_eval=500,
    single_variants=(("default", None, "none"), ("fusion", "paper", "none"), ("fusion", "paper", "synthetic"),
                     ("fusion", "function-preserving", "synthetic"), ("fusion", "function-preserving", "moments"),
                     ("folding", "plain", "synthetic"), ("fusion", "paper", "refit-synthetic"),
                     ("fusion", "paper", "refit-synthetic", "nearest"), ("folding", "plain", "refit-synthetic"),
                     OURS_AUTO, FOLDING_CLOSEST),
    finetune_max_train=2000,
    finetune_variants=(("default", None, "none"), ("fusion", "paper", "synthetic"),
                       ("fusion", "function-preserving", "synthetic"), ("fusion", "paper", "refit-synthetic"),
                       ("fusion", "paper", "refit-synthetic", "nearest"), OURS_AUTO))
#: ``--quick``: one model, one sparsity, moments and none (and one tiny synthetic batch), a 1-epoch fine-tuning
#: pair on 256 training images.
QUICK_REPAIR = RepairSettings(
    whole_sparsities=(0.3,),
    whole_variants=(("default", None, "none"), ("fusion", "paper", "none"), ("fusion", "function-preserving", "none"),
                    ("fusion", "function-preserving", "moments"), ("fusion", "function-preserving", "synthetic"),
                    ("fusion", "paper", "refit-synthetic", "nearest")),
    whole_eval=300, single_eval=300, finetune_test=300,
    single_sparsities=(0.5,), single_all_groups=False,
    single_variants=(("default", None, "none"), ("fusion", "paper", "none"), ("fusion", "paper", "moments")),
    finetune_ratios=(0.6,), finetune_variants=(("default", None, "none"), ("fusion", "paper", "moments")),
    finetune_epochs=1, finetune_max_train=256, std_images=64, synthetic_size=16, synthetic_steps=5)


def repair_settings(settings) -> RepairSettings:
    """The repair settings that go with a run's :class:`~.settings.Settings` (by its name)."""
    return QUICK_REPAIR if getattr(settings, "name", "full") == "quick" else FULL_REPAIR


def _datafree(r: str) -> bool:
    return r != "none" and not RepairOptions(kind=r).uses_data


def plan(rs: RepairSettings, part: str) -> list[Variant]:
    """The variants of one part (``whole``, ``single`` or ``finetune``), filtered by ``methods``/``repairs``."""
    given = {"whole": rs.whole_variants, "single": rs.single_variants, "finetune": rs.finetune_variants}[part]
    if given is not None:
        todo = [Variant(*t) for t in given]
    elif part == "whole":
        todo = variants(REPAIRS)
        if "refit-synthetic" in REPAIRS:
            todo += [Variant(*OURS_AUTO), Variant(*FOLDING_CLOSEST)]
    elif part == "single":
        todo = [Variant("default", None, "none"), Variant("fusion", "paper", "none")]
        todo += variants([r for r in REPAIRS if _datafree(r)])
        if "folding" in getattr(prune_module, "METHODS", ()):
            todo.append(Variant("folding", "ar", "none"))
    else:
        todo = [Variant("default", None, "none")] + [Variant("fusion", n, r) for n in ("paper", "function-preserving")
                                                     for r in REPAIRS if _datafree(r)]
    methods = {m[0] for m in _methods()}  # what the library offers now
    return [v for v in todo if v.method in methods and v.repair in REPAIRS
            and (rs.methods is None or v.method in rs.methods) and (rs.repairs is None or v.repair in rs.repairs)]


def _methods() -> list[tuple]:
    out = [("default", None), ("fusion", "paper"), ("fusion", "function-preserving"), ("fusion", "paper", "nearest")]
    if "folding" in getattr(prune_module, "METHODS", ()):
        out.append(("folding", "plain"))
    return out


def variants(repairs) -> list[Variant]:
    """Every available method with every repair in ``repairs`` (in that order), and Fold-AR unrepaired
    (Model Folding's own data-free repair) when folding is available."""
    out = [Variant(m[0], m[1], r, *m[2:]) for m in _methods() for r in repairs if r in REPAIRS]
    if "folding" in getattr(prune_module, "METHODS", ()) and "none" in repairs:
        out.append(Variant("folding", "ar", "none"))
    return out


def unlabelled_images(images: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """A seeded sample of ``n`` training images (the tensor of images only: no label is passed in)."""
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images[idx.sort().values]


def _has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class _Pruner:
    """Prunes one model with a variant (repair options and the unlabelled images shared by all its cells)."""

    def __init__(self, ctx, rs: RepairSettings):
        self.ctx, self.rs = ctx, rs
        self.data = unlabelled_images(ctx.x_train, rs.data_images or len(ctx.x_train))
        self.synthetic_seconds = None  # the first synthetic repair of a model makes (or reads) the cached batch

    def label(self, v: Variant) -> str:
        if v.uses_data and self.rs.data_images != DATA_IMAGES:
            return f"{v.label} ({len(self.data)} images)"
        return v.label

    def options(self, repair: str, target: str = "mapped") -> RepairOptions:
        # None: the library's synthetic recipe (and its on-disk cache); quick runs use a tiny batch
        return RepairOptions(kind=repair, synthetic_size=self.rs.synthetic_size,
                             synthetic_steps=self.rs.synthetic_steps,
                             target=target if repair.startswith("refit-") else "mapped")

    def __call__(self, v: Variant, groups, sparsity: float, importance=None):
        ctx = self.ctx
        t0 = time.perf_counter()
        kw = dict(method=v.method, options=v.options(), repair=self.options(v.repair, v.refit_target),
                  repair_data=self.data if v.uses_data else None)
        with ctx.compute():  # the transport cost on the run's device; weights are pruned and repaired on the CPU
            if v.criterion == "auto":
                res = prune_closest(ctx.model, ctx.ex, groups, sparsity, ("l1", "l1-raw"), **kw)
            else:  # the shared scores are l1's; another criterion is scored by prune itself
                res = prune(ctx.model, ctx.ex, groups, sparsity, criterion=v.criterion,
                            importance=importance if v.criterion == "l1" else None, **kw)
        seconds = time.perf_counter() - t0
        rep = res.repair
        synth = rep.details.get("synthetic_seconds") if rep is not None else None
        if synth is not None and self.synthetic_seconds is None:
            self.synthetic_seconds = synth
        return res, seconds, (rep.seconds if rep is not None else 0.0), synth


def _eval_data(ctx, n: int | None):
    """(x, y, reference logits) of a stratified subset of ``n`` eval images, or None for the whole eval set."""
    if not n or n >= len(ctx.y_eval):
        return None
    x, ref, y = subset(torch.utils.data.TensorDataset(ctx.x_eval, ctx.reference, ctx.y_eval), n, seed=0).tensors
    return x, y, ref  # labels last in the TensorDataset: subset() stratifies by them


def _base(ctx, data) -> float:
    if data is None:
        return ctx.base_eval_accuracy
    return 100.0 * float((data[2].argmax(1) == data[1]).float().mean())


def _score(ctx, model, data=None) -> tuple[float, float, float]:
    x, y, ref = data or (ctx.x_eval, ctx.y_eval, ctx.reference)
    ev = evaluate(model, x, y, ref, device=ctx.device)
    return round(ev.accuracy, 3), round(float(ev.logit_distance), 5), round(float(ev.agreement), 3)


#: The parts ``reproduce --workers`` runs as separate tasks (the std ratios are measured with the whole model).
PARTS = (("whole", "std"), ("single",), ("finetune",))


def run(ctx, rs: RepairSettings | None = None, parts: tuple[str, ...] | None = None) -> dict[str, list[dict]]:
    """The four parts on one model (CNNs under ``max_macs`` only; the MLP only fine-tunes); ``parts`` limits
    the run to some of them (each table comes from one part)."""
    rs = rs or repair_settings(ctx.settings)
    if parts is not None:
        rs = replace(rs, parts=tuple(p for p in rs.parts if p in parts))
    t_start, cpu_start = time.perf_counter(), time.process_time()
    tables: dict[str, list[dict]] = {k: [] for k in REPAIR_COLUMNS}
    cnn = _has_bn(ctx.model) and ctx.macs <= rs.max_macs
    pruner = _Pruner(ctx, rs)
    if cnn and "whole" in rs.parts:
        tables["repair_whole"], tables["repair_std"] = whole_model(ctx, rs, pruner)
    if cnn and "single" in rs.parts:
        tables["repair_single"] = single_group(ctx, rs, pruner)
    if "finetune" in rs.parts and ctx.macs <= rs.max_macs:
        tables["repair_finetune"] = finetune(ctx, rs, pruner)
    ctx.timing["repair"] = {"cells": sum(len(v) for v in tables.values()),
                            "wall_seconds": time.perf_counter() - t_start,
                            "cpu_seconds": time.process_time() - cpu_start,
                            "synthetic_seconds": pruner.synthetic_seconds}
    return tables


def whole_model(ctx, rs: RepairSettings, pruner: _Pruner) -> tuple[list[dict], list[dict]]:
    """Part 1 (and part 4 at ``std_sparsity``): every group at once, every variant."""
    cells = [(s, v) for s in rs.whole_sparsities for v in plan(rs, "whole")]
    progress = bar(len(cells), f"{ctx.id}: repair, whole model", ctx.progress)
    std_inputs = ctx.x_eval[: rs.std_images]
    original_stds = _bn_output_stds(ctx.model, std_inputs)
    data = _eval_data(ctx, rs.whole_eval)
    rows, std_rows = [], []
    for s, v in cells:
        note = ""
        try:
            res, seconds, rep_s, synth = pruner(v, "all", s)
        except ValueError as exc:  # e.g. a repair that needs BatchNorm layers: recorded, not fatal
            rows.append({"model": ctx.id, "sparsity": s, "method": v.method, "normalization": v.normalization or "",
                         "repair": v.repair, "label": pruner.label(v), "uses_data": int(v.uses_data),
                         "note": str(exc)})
            progress.update(1)
            continue
        acc, dist, agree = _score(ctx, res.model, data)
        rows.append({"model": ctx.id, "arch": ctx.arch, "dataset": ctx.dataset, "sparsity": s, "method": v.method,
                     "normalization": v.normalization or "", "repair": v.repair, "label": pruner.label(v),
                     "uses_data": int(v.uses_data), "accuracy": acc, "logit_distance": dist, "agreement": agree,
                     "params": n_params(res.model), "kept": sum(r.m for r in res.records),
                     "n": sum(r.n for r in res.records), "seconds": round(seconds, 4),
                     "repair_seconds": round(rep_s, 4), "synthetic_seconds": round(synth, 3) if synth else "",
                     "eval_samples": len(data[1]) if data else len(ctx.y_eval),
                     "base_accuracy": round(_base(ctx, data), 3),
                     "note": note})
        if abs(s - rs.std_sparsity) < 1e-9:
            std_rows += _std_rows(ctx, s, v, res, std_inputs, original_stds, pruner.label(v))
        progress.update(1)
    progress.close()
    return rows, std_rows


def single_group(ctx, rs: RepairSettings, pruner: _Pruner) -> list[dict]:
    """Part 2: each group alone; default and IF paper without repair, and every data-free repaired variant."""
    todo = plan(rs, "single")
    if "l1" not in ctx.importance:  # scored once on the folded model, shared by every cell (as in claim 1)
        graph = ctx.prepared.graph
        ctx.importance["l1"] = {g.index: group_importance(graph.tp_group(g.index), "l1").numpy()
                                for g in ctx.groups}
    groups = range(len(ctx.groups)) if rs.single_all_groups else [ctx.middle]
    cells = [(g, s, v) for g in groups for s in rs.single_sparsities for v in todo
             if kept_count(ctx.groups[g].n, s) >= 1]
    progress = bar(len(cells), f"{ctx.id}: repair, single group", ctx.progress)
    data = _eval_data(ctx, rs.single_eval)
    rows = []
    for g, s, v in cells:
        res, seconds, _, _ = pruner(v, g, s, importance={g: ctx.importance["l1"][g]})
        acc, dist, agree = _score(ctx, res.model, data)
        rec = res.records[0]
        rows.append({"model": ctx.id, "group": g, "n": rec.n, "kept": rec.m, "sparsity": s, "method": v.method,
                     "normalization": v.normalization or "", "repair": v.repair, "label": v.label,
                     "uses_data": int(v.uses_data), "accuracy": acc, "logit_distance": dist, "agreement": agree,
                     "seconds": round(seconds, 4), "eval_samples": len(data[1]) if data else len(ctx.y_eval)})
        progress.update(1)
    progress.close()
    return rows


def finetune(ctx, rs: RepairSettings, pruner: _Pruner) -> list[dict]:
    """Part 3: claim 4's fine-tuning of default pruning and of repaired Intra-Fusion (both maps)."""
    from .finetune import _finetune_one

    s = ctx.settings
    n_train = subset_size(s.finetune_train_macs, ctx.macs, s.finetune_min_train, None, len(ctx.x_train))
    n_train = min(n_train, rs.finetune_max_train or n_train)
    train_set = subset(torch.utils.data.TensorDataset(ctx.x_train, ctx.y_train), n_train, seed=0).tensors
    test = (ctx.x_test, ctx.y_test) if s.finetune_full_test else (ctx.x_eval, ctx.y_eval)
    if rs.finetune_test and rs.finetune_test < len(test[1]):
        test = subset(torch.utils.data.TensorDataset(*test), rs.finetune_test, seed=0).tensors
    todo = plan(rs, "finetune")
    runs = [(ratio, v) for ratio in rs.finetune_ratios for v in todo]
    progress = bar(len(runs) * (rs.finetune_epochs + 1), f"{ctx.id}: repair, fine-tuning", ctx.progress)
    epochs_settings = _EpochSettings(rs.finetune_epochs, s.finetune_lr)
    rows, t = [], {"prune": 0.0, "train": 0.0, "eval": 0.0}
    for ratio, v in runs:
        applied = v.repair
        try:
            res, _, _, _ = pruner(v, "all", ratio)
        except ValueError:  # no BatchNorm (the MLP): the synthetic batch cannot be made; fine-tune unrepaired
            applied = "none (the model has no BatchNorm)"
            res, _, _, _ = pruner(Variant(v.method, v.normalization, "none"), "all", ratio)
        if applied == v.repair and v.repair != "none" and not _has_bn(res.model):
            applied = "none (the model has no BatchNorm)"
        params = n_params(res.model)
        macs, _ = count_macs_params(res.model, ctx.ex)
        common = {"model": ctx.id, "sparsity": ratio, "label": v.label, "repair": v.repair, "repair_applied": applied,
                  "params": params, "params_orig": ctx.params,
                  "weight_sparsity": round(100.0 * (1 - params / ctx.params), 2), "macs": macs,
                  "macs_orig": ctx.macs, "train_samples": n_train, "test_samples": len(test[0]),
                  "lr": s.finetune_lr}
        rows += _finetune_one(res.model, common, train_set, test, epochs_settings, t, progress, ctx.device)
    progress.close()
    return rows


@dataclass(frozen=True)
class _EpochSettings:
    finetune_epochs: int
    finetune_lr: float


# -- part 4: std ratios ------------------------------------------------------------------------------------------
# Measured on the CPU, where the models are, whatever the run's device (a few hundred images at most).


@torch.no_grad()
def _bn_output_stds(model: nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    out, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            def hook(mod, inp, res, name=name):
                dims = [0] + list(range(2, res.dim()))
                out[name] = res.std(dims)
            hooks.append(m.register_forward_hook(hook))
    try:
        predict_logits(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    return out


def channel_std_ratios(pruned: nn.Module, original: nn.Module | dict, records, inputs: torch.Tensor
                       ) -> dict[str, np.ndarray]:
    """Per BatchNorm layer (in model order): std of each channel's output in ``pruned`` over the std of the
    channel it was kept from (``records[i].kept``) in ``original``, on the same ``inputs``.

    A channel written into kept position k of a group is compared with original channel ``kept[k]``; a layer
    whose width is unchanged compares channel by channel. Below 1 the channel's scale collapsed, above 1 it
    overshoots (the pre-activation statistics repair restores). ``original`` may be the unpruned model's stds
    already measured on ``inputs`` (``{layer: std per channel}``).
    """
    kept_of = {}
    for rec in records:
        kept = getattr(rec, "kept", None)
        if kept is None:
            continue
        for name in rec.group.norms:
            kept_of[name] = np.asarray(kept)
    a = _bn_output_stds(pruned, inputs)
    b = original if isinstance(original, dict) else _bn_output_stds(original, inputs)
    out = {}
    for name, sa in a.items():
        sb = b.get(name)
        if sb is None:
            continue
        if len(sa) != len(sb):
            idx = kept_of.get(name)
            if idx is None or len(idx) != len(sa):
                continue
            sb = sb[torch.as_tensor(idx, dtype=torch.long)]
        out[name] = (sa / sb.clamp_min(1e-12)).double().numpy()
    return out


def _std_rows(ctx, s: float, v: Variant, res, inputs, original_stds, label: str | None = None) -> list[dict]:
    ratios = channel_std_ratios(res.model, original_stds, res.records, inputs)
    rows = []
    for i, (name, r) in enumerate(ratios.items()):
        r = r[np.isfinite(r)]
        if not len(r):
            continue
        rows.append({"model": ctx.id, "sparsity": s, "label": label or v.label, "method": v.method,
                     "normalization": v.normalization or "", "repair": v.repair, "layer_index": i, "layer": name,
                     "channels": len(r), "median": round(float(np.median(r)), 5),
                     "p10": round(float(np.quantile(r, 0.1)), 5), "p90": round(float(np.quantile(r, 0.9)), 5),
                     "mean_log2": round(float(np.mean(np.log2(np.clip(r, 1e-12, None)))), 5),
                     "min": round(float(r.min()), 5), "max": round(float(r.max()), 5)})
    return rows
