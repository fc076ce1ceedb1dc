"""Repair: restore the per-channel statistics that pruning, fusion or folding broke (issue 9).

With BatchNorm folded, the original network's pre-activation a_j of channel j has mean beta_j and std
|gamma_j| (see :func:`intrafusion.core.fold.bn_targets`). A fused channel a_t' = sum_j A_tj a_j has

    E[a_t'] = sum_j A_tj beta_j,    Var[a_t'] = sum_{j,l} A_tj A_tl rho_jl |gamma_j| |gamma_l|,

and the drift compounds over layers. Every fused or kept channel has a *target* (``RepairOptions.target``):
``kept``: the kept channel's own (beta, |gamma|); ``mapped``: the map-weighted average of its sources'
(sum_j Abar_tj beta_j, sum_j Abar_tj |gamma_j|), Abar the producer map with rows rescaled to sum to 1 (for
folding: the cluster means). The kinds (``REPAIRS``):

- ``none``: nothing.
- ``bias`` (no data, no optimisation): consumer bias correction only (:mod:`intrafusion.core.bias`): every
  consumer absorbs the expected contribution E[relu(a)] that dropped or merged channels remove or add.
- ``moments`` (no data, no optimisation): every fused channel is rescaled to its target std (its std
  estimated through the map with rho = cosine of the channels' feature vectors, Model Folding's data-free
  REPAIR generalised to transport maps) and its mean set to its target mean; then the consumer bias
  correction with the restored statistics. Only layers with a BatchNorm are rescaled (the MLP's plain linear
  layers are not); folding records get the bias correction only (Fold-AR, ``FoldingOptions(variant='ar')``,
  is folding's own moment repair).
- ``synthetic`` (no real data): a batch optimised from noise to match the stored BatchNorm statistics
  (:mod:`intrafusion.core.synthetic`), cached on disk; the pruned network's BatchNorms are set to their
  targets and their running statistics re-estimated on it (train-mode forward passes, no gradient step).
- ``data``: the same re-estimation on real, unlabelled inputs (``uses_data`` True). Never reads a label.
- ``refit-synthetic`` (no real data) and ``refit-data`` (unlabelled real inputs, ``uses_data`` True): every
  dense layer refitted in execution order by ridge regression to the original network's outputs mapped to the
  pruned channels (:mod:`intrafusion.core.reconstruct`): closed form, no gradient step, no label. Where BatchNorm
  re-estimation only restores each channel's mean and scale, the refit also corrects what the merged or
  dropped channels did to every consumer's weights. Models with depthwise or grouped convolutions (which the
  refit leaves alone) get the re-estimation first. The refit's ``target='closest'`` refits twice, towards the
  ``mapped`` and the ``kept`` outputs, and keeps the model whose logits on the repair's own inputs are closer
  to the original's (:func:`intrafusion.core.select.logit_gap`; no label): with one or two channels left of a
  group, the average of four channels is a worse thing to carry than one real channel, and with many left
  it is the other way round.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from .bias import BiasCorrection, expected_relu
from .reconstruct import averaging_map, reconstruct_layers
from .synthetic import SyntheticOptions, bn_mismatch, synthetic_batch_info
from .synthetic import synthetic_batch as _synthetic_batch

__all__ = ["REPAIRS", "REPAIR_TARGETS", "BiasCorrection", "RepairOptions", "RepairResult", "apply_repair",
           "bn_mismatch", "channel_targets", "check_targets", "expected_relu", "post_statistics", "reestimate_bn",
           "std_ratios", "synthetic_batch"]

REPAIRS = ("none", "bias", "moments", "synthetic", "data", "refit-synthetic", "refit-data")
REPAIR_TARGETS = ("kept", "mapped", "closest")
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class RepairOptions:
    """How the pruned model is repaired.

    Attributes
    ----------
    kind : {'none', 'bias', 'moments', 'synthetic', 'data', 'refit-synthetic', 'refit-data'}
    target : {'kept', 'mapped', 'closest'}
        Target statistics of a fused channel: the kept channel's, or the map-weighted average of its sources'
        (for the refit: the target outputs of every pruned channel, likewise). ``closest`` (refits only): both,
        keeping the refit whose logits on the repair's inputs are closer to the original's.
    ridge : float
        The refit's pull towards the method's weights, relative to the mean diagonal of X^T X.
    synthetic_size, synthetic_steps, synthetic_lr : int, int, float or None
        Override the synthetic recipe's number of inputs, Adam steps and learning rate (None: the recipe's).
    synthetic : SyntheticOptions or None
        The full synthetic recipe (None: :class:`SyntheticOptions` defaults).
    batch_size : int
        Batch size of the train-mode re-estimation passes.
    seed : int
        Seed of the synthetic batch.
    cache_dir : str or None
        Where synthetic batches are cached ($INTRAFUSION_CACHE or ~/.cache/intrafusion by default).
    """

    kind: str = "none"
    target: str = "mapped"
    synthetic_size: int | None = None
    synthetic_steps: int | None = None
    synthetic_lr: float | None = None
    synthetic: SyntheticOptions | None = None
    batch_size: int = 64
    seed: int = 0
    cache_dir: str | None = None
    ridge: float = 1e-2

    def __post_init__(self):
        if self.kind not in REPAIRS:
            raise ValueError(f"unknown repair {self.kind!r}: choose one of {', '.join(REPAIRS)}")
        if self.target not in REPAIR_TARGETS:
            raise ValueError(f"unknown repair target {self.target!r}: choose one of {', '.join(REPAIR_TARGETS)}")
        if self.target == "closest" and not self.refits:
            raise ValueError(f"target 'closest' chooses between the refit's two targets; repair '{self.kind}' has "
                             "one: use target 'kept' or 'mapped', or a refit repair (refit-synthetic, refit-data)")
        if not self.ridge >= 0:
            raise ValueError(f"the refit ridge must be non-negative, got {self.ridge}")
        if self.batch_size < 2:
            raise ValueError("the re-estimation batch_size must be at least 2 (BatchNorm needs a batch)")
        self.synthetic_options()  # validates the synthetic settings

    @property
    def uses_data(self) -> bool:
        return self.kind in ("data", "refit-data")

    @property
    def inputs(self) -> str | None:
        """Where the repair's inputs come from: 'synthetic', 'data' or None (no inputs)."""
        if self.kind in ("synthetic", "refit-synthetic"):
            return "synthetic"
        return "data" if self.uses_data else None

    @property
    def refits(self) -> bool:
        return self.kind.startswith("refit-")

    @property
    def corrects_bias(self) -> bool:
        return self.kind in ("bias", "moments")

    def synthetic_options(self) -> SyntheticOptions:
        """The synthetic recipe with this option's overrides and seed."""
        base = self.synthetic or SyntheticOptions()
        over = {k: v for k, v in (("size", self.synthetic_size), ("steps", self.synthetic_steps),
                                  ("lr", self.synthetic_lr)) if v is not None}
        return replace(base, seed=self.seed, **over)

    @classmethod
    def coerce(cls, repair) -> RepairOptions:
        if repair is None:
            return cls()
        if isinstance(repair, cls):
            return repair
        if isinstance(repair, str):
            return cls(kind=repair)
        raise TypeError(f"repair must be a RepairOptions, one of {', '.join(REPAIRS)} or None, got {repair!r}")


@dataclass
class RepairResult:
    """What a repair did: its kind, whether it used real data, its cost and details (e.g. synthetic seconds)."""

    kind: str
    uses_data: bool
    seconds: float
    details: dict = field(default_factory=dict)


def synthetic_batch(model: nn.Module, example_inputs: torch.Tensor, size: int | None = None,
                    steps: int | None = None, seed: int = 0, cache_dir=None, lr: float | None = None,
                    options: SyntheticOptions | None = None) -> torch.Tensor:
    """The synthetic batch the ``synthetic`` repair uses (same cache), see
    :func:`intrafusion.core.synthetic.synthetic_batch`; None keeps the recipe's value."""
    opts = RepairOptions(kind="synthetic", synthetic_size=size, synthetic_steps=steps, synthetic_lr=lr,
                         synthetic=options, seed=seed).synthetic_options()
    return _synthetic_batch(model, example_inputs, opts, cache_dir)


def check_targets(targets: dict) -> None:
    for name, (mean, std) in targets.items():
        if not bool(torch.isfinite(mean).all()) or not bool(torch.isfinite(std).all()) or bool((std < 0).any()):
            raise ValueError(f"BatchNorm '{name}' has NaN/infinite or negative target statistics: "
                             "load a healthy checkpoint (its running_var and affine parameters must be finite)")


def channel_targets(rec, mean: torch.Tensor, std: torch.Tensor, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Target (mean, std) of the m channels a record leaves, from its n sources' (mean, std)."""
    kept = torch.as_tensor(np.asarray(rec.kept), dtype=torch.long)
    if rec.map_out is None or target == "kept":
        return mean.double()[kept], std.double()[kept]
    a = averaging_map(rec.map_out)
    return a @ mean.double(), a @ std.double()


def _rho(rec) -> torch.Tensor:
    x = torch.as_tensor(rec.features, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (x @ x.T).clamp(-1, 1)


def post_statistics(rec, mean: torch.Tensor, std: torch.Tensor, options: RepairOptions):
    """(mean, std) of the m channels a record leaves, after the method and the repair's rescaling."""
    kept = torch.as_tensor(np.asarray(rec.kept), dtype=torch.long)
    mean, std = mean.double(), std.double()
    if rec.map_out is None:
        return mean[kept], std[kept]
    if options.kind == "moments" and rec.method != "folding":
        return channel_targets(rec, mean, std, options.target)
    a = torch.as_tensor(rec.map_out, dtype=torch.float64)
    if rec.method == "folding" and getattr(rec.options, "variant", "plain") == "ar":
        return a @ mean, a @ std  # Fold-AR rescaled every cluster to its mean |gamma|
    cov = _rho(rec) * std[:, None] * std[None, :] if rec.features is not None else torch.diag(std ** 2)
    return a @ mean, torch.einsum("tj,jl,tl->t", a, cov, a).clamp_min(0).sqrt()


def kept_targets(model: nn.Module, targets: dict, records, target: str = "kept") -> dict:
    """Target (mean, std) of every BatchNorm of the pruned ``model`` (see :func:`channel_targets`)."""
    out = {name: (m.clone(), s.clone()) for name, (m, s) in targets.items()}
    for rec in records:
        for name in rec.group.norms:
            if name in out and len(out[name][0]) != len(rec.kept) and len(out[name][0]) == rec.n:
                out[name] = tuple(t.float() for t in channel_targets(rec, *out[name], target))
    mods = dict(model.named_modules())
    for name, (mean, _) in out.items():
        if name in mods and mods[name].num_features != len(mean):
            raise RuntimeError(f"repair: BatchNorm '{name}' has {mods[name].num_features} channels but "
                               f"{len(mean)} targets")
    return out


@torch.no_grad()
def reestimate_bn(model: nn.Module, inputs: torch.Tensor, targets: dict, batch_size: int = 64) -> None:
    """Set every BatchNorm's affine to its target (beta, |gamma|) and re-estimate its running statistics on
    ``inputs`` (a plain tensor: no labels) in train-mode forward passes with a cumulative average."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError("repair data must be a tensor of unlabelled inputs (N, C, H, W), not a dataset or tuple")
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError("repair data holds NaN or infinite values")
    if len(inputs) < 2:
        raise ValueError("repair data needs at least 2 inputs (BatchNorm statistics need a batch)")
    bns = {n: m for n, m in model.named_modules() if isinstance(m, _BN)}
    saved = {}
    for n, m in bns.items():
        if n in targets and m.affine:
            mean, std = targets[n]
            m.weight.data.copy_(std)
            m.bias.data.copy_(mean)
        saved[n] = m.momentum
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all passes
    was_training = model.training
    model.train()
    try:
        for i in range(0, len(inputs), batch_size):
            chunk = inputs[i : i + batch_size]
            if len(chunk) > 1:
                model(chunk)
    finally:
        for n, m in bns.items():
            m.momentum = saved[n]
        model.train(was_training)
        model.eval()


@torch.no_grad()
def moments_repair(model: nn.Module, targets: dict, records, target: str = "mapped") -> int:
    """Rescale every fused channel to its target std (std estimated through the map, with correlations from
    feature cosines) and set its mean to its target mean. Returns the number of channels changed."""
    mods = dict(model.named_modules())
    changed = 0
    for rec in records:
        if rec.map_out is None or rec.features is None or rec.method == "folding":
            continue
        a = torch.as_tensor(rec.map_out, dtype=torch.float64)  # (m, n)
        rho = _rho(rec)
        for name in rec.group.norms:
            bn = mods.get(name)
            if bn is None or not bn.affine or name not in targets:
                continue
            mean, std = (t.double() for t in targets[name])
            if len(std) != a.shape[1]:
                continue
            est = torch.einsum("tj,jl,tl->t", a, rho * std[:, None] * std[None, :], a).clamp_min(1e-12).sqrt()
            t_mean, t_std = channel_targets(rec, mean, std, target)
            ratio = t_std / est
            # a_t = w z + b has mean mu_t = sum_j A_tj beta_j; make it r (a_t - mu_t) + target mean
            new_bias = ratio * (bn.bias.data.double() - a @ mean) + t_mean
            bn.weight.data.mul_(ratio.to(bn.weight.dtype))
            bn.bias.data.copy_(new_bias.to(bn.bias.dtype))
            changed += len(rec.kept)
    return changed


def apply_repair(model: nn.Module, example_inputs: torch.Tensor, original: nn.Module, targets: dict, records,
                 options: RepairOptions, repair_data: torch.Tensor | None = None,
                 details: dict | None = None) -> RepairResult | None:
    """Repair the pruned ``model`` in place (``original`` is the unpruned, unfolded model, never changed).

    The bias correction of ``bias`` and ``moments`` happened group by group during pruning
    (:class:`intrafusion.core.bias.BiasCorrection`); ``details`` carries what it reported.
    """
    if options.kind == "none":
        return None
    t0 = time.perf_counter()
    if options.uses_data and repair_data is None:
        raise ValueError(f"repair='{options.kind}' needs repair_data: a tensor of a few hundred unlabelled "
                         "training inputs (N, C, H, W); use repair='synthetic' or 'moments' for a repair without data")
    check_targets(targets)
    details = dict(details or {})
    if not any(len(r.pruned) for r in records):
        return RepairResult(options.kind, options.uses_data, time.perf_counter() - t0,
                            {"note": "nothing was pruned: nothing to repair"})
    if options.kind == "moments":
        details["channels"] = moments_repair(model, targets, records, options.target)
        details["note"] = "moments rescales only layers with a BatchNorm (folding: bias correction only)"
    elif options.inputs is not None:
        if options.inputs == "synthetic":
            t1 = time.perf_counter()
            inputs, info = synthetic_batch_info(original, example_inputs, options.synthetic_options(),
                                                options.cache_dir)
            details["synthetic_seconds"] = time.perf_counter() - t1  # this call's (a cache read is quick)
            details["synthetic_made_seconds"] = info["made_seconds"]  # what making the batch cost, once
            details["synthetic_cached"] = info["cached"]
        else:
            inputs = repair_data
        details["inputs"] = len(inputs)
        if not options.refits:
            reestimate_bn(model, inputs, kept_targets(model, targets, records, options.target), options.batch_size)
        elif options.target != "closest":
            details.update(_refit(model, original, inputs, targets, records, options, options.target))
        else:
            from .select import logit_gap

            trials = {}
            for target in ("mapped", "kept"):
                trial = copy.deepcopy(model)
                info = _refit(trial, original, inputs, targets, records, options, target)
                trials[target] = (logit_gap(trial, original, inputs, options.batch_size), trial, info)
            best = min(trials, key=lambda t: trials[t][0])
            _take_weights(model, trials[best][1])
            details.update(trials[best][2], refit_target=best,
                           refit_logit_gaps={t: trials[t][0] for t in trials})
    return RepairResult(options.kind, options.uses_data, time.perf_counter() - t0, details)


def _take_weights(model: nn.Module, source: nn.Module) -> None:
    """Give ``model`` the parameters and buffers of ``source``, a refitted copy of it (module by module: the
    refit may have given a layer a bias it did not have)."""
    mods = dict(model.named_modules())
    for name, mod in source.named_modules():
        mods[name]._parameters.update(mod._parameters)
        mods[name]._buffers.update(mod._buffers)


def _refit(model, original, inputs, targets, records, options: RepairOptions, target: str) -> dict:
    """The refit towards ``target`` outputs, in place; what it reports."""
    # The refit replaces every dense layer's weights and its BatchNorm, so it needs no re-estimation first
    # (and skipping it keeps an exact pruning exact); layers it leaves alone (depthwise, grouped convs) do.
    if any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules()):
        reestimate_bn(model, inputs, kept_targets(model, targets, records, target), options.batch_size)
    t1 = time.perf_counter()
    fit = reconstruct_layers(model, original, inputs, records, target, options.ridge, options.batch_size)
    errors = fit["relative_error"]
    return {"refit_layers": fit["layers"], "refit_worst_error": max(errors.values()) if errors else 0.0,
            "refit_seconds": time.perf_counter() - t1}


@torch.no_grad()
def std_ratios(pruned: nn.Module, original: nn.Module, inputs: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-layer, per-channel std of every BatchNorm's output in ``pruned`` over the same channel's std in
    ``original`` on the same ``inputs``: per channel where the widths agree, else one number, the ratio of
    the layer's mean channel std (collapse below 1, overshoot above 1)."""
    def stds(model):
        out, hooks = {}, []
        for n, m in model.named_modules():
            if isinstance(m, _BN):
                def hook(mod, inp, res, n=n):
                    dims = [0] + list(range(2, res.dim()))
                    out[n] = res.std(dims)
                hooks.append(m.register_forward_hook(hook))
        try:
            model.eval()(inputs)
        finally:
            for h in hooks:
                h.remove()
        return out
    a, b = stds(pruned), stds(original)
    res = {}
    for n in a:
        if n in b:
            if len(a[n]) == len(b[n]):
                res[n] = (a[n] / b[n].clamp_min(1e-12)).numpy()
            else:
                res[n] = np.array([float(a[n].mean() / b[n].mean().clamp_min(1e-12))])
    return res
