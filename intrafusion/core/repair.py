"""Repair: restore the per-channel statistics that pruning or fusion broke, after any method (issue 9).

With BatchNorm folded, the original network's pre-activation a_j of channel j has mean beta_j and std
|gamma_j| (see :func:`intrafusion.core.fold.bn_targets`). Pruning changes them: a fused channel
a_t' = sum_j A_tj a_j has

    E[a_t'] = sum_j A_tj beta_j,    Var[a_t'] = sum_{j,l} A_tj A_tl rho_jl |gamma_j| |gamma_l|,

and the drift compounds over layers. The kinds (``REPAIRS``):

- ``none``: nothing.
- ``moments`` (no data, no optimisation): every fused channel is rescaled to the kept channel's target std,
  its std estimated through the map with rho = cosine of the channels' feature vectors, and its mean set to
  the kept channel's beta. Only layers with a BatchNorm are repaired (the MLP's plain linear layers are not).
- ``synthetic`` (no real data): a batch optimised from noise so that every BatchNorm's batch statistics match
  its stored running statistics (ZeroQ), cached on disk; then the pruned network's BatchNorms are re-estimated
  on it (affine set to the kept channel's target beta and |gamma|, running statistics reset and re-estimated
  in train-mode forward passes, no gradient step).
- ``data``: the same re-estimation on real, unlabelled images (``uses_data`` True). Never reads a label.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["REPAIRS", "RepairOptions", "RepairResult", "apply_repair", "expected_relu", "reestimate_bn",
           "std_ratios", "synthetic_batch"]

REPAIRS = ("none", "moments", "synthetic", "data")
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class RepairOptions:
    """How the pruned model is repaired.

    Attributes
    ----------
    kind : {'none', 'moments', 'synthetic', 'data'}
    synthetic_size : int
        Images in the synthetic batch.
    synthetic_steps : int
        Adam steps (lr ``synthetic_lr``) optimising the synthetic batch.
    synthetic_lr : float
    batch_size : int
        Batch size of the train-mode re-estimation passes.
    seed : int
    cache_dir : str or None
        Where synthetic batches are cached ($INTRAFUSION_CACHE or ~/.cache/intrafusion by default).
    """

    kind: str = "none"
    synthetic_size: int = 256
    synthetic_steps: int = 200
    synthetic_lr: float = 0.1
    batch_size: int = 64
    seed: int = 0
    cache_dir: str | None = None

    def __post_init__(self):
        if self.kind not in REPAIRS:
            raise ValueError(f"unknown repair {self.kind!r}: choose one of {', '.join(REPAIRS)}")
        if self.synthetic_size < 2 or self.synthetic_steps < 0 or self.batch_size < 2:
            raise ValueError("synthetic_size and batch_size must be at least 2 and synthetic_steps non-negative")

    @property
    def uses_data(self) -> bool:
        return self.kind == "data"

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


def expected_relu(mu, sigma):
    """E[relu(a)] for a ~ N(mu, sigma^2): mu Phi(mu / sigma) + sigma phi(mu / sigma) (sigma = 0: relu(mu))."""
    mu = torch.as_tensor(mu, dtype=torch.float64)
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    if bool((sigma < 0).any()) or not bool(torch.isfinite(sigma).all()) or not bool(torch.isfinite(mu).all()):
        raise ValueError("expected_relu needs finite means and non-negative finite stds (got NaN, inf or < 0)")
    safe = sigma.clamp_min(1e-12)
    z = mu / safe
    normal = torch.distributions.Normal(0.0, 1.0)
    out = mu * normal.cdf(z) + sigma * torch.exp(normal.log_prob(z))
    return torch.where(sigma > 0, out, mu.clamp_min(0))


def check_targets(targets: dict) -> None:
    for name, (mean, std) in targets.items():
        if not bool(torch.isfinite(mean).all()) or not bool(torch.isfinite(std).all()) or bool((std < 0).any()):
            raise ValueError(f"BatchNorm '{name}' has NaN/infinite or negative target statistics: "
                             "load a healthy checkpoint (its running_var and affine parameters must be finite)")


def kept_targets(model: nn.Module, targets: dict, records) -> dict:
    """Target (mean, std) of every BatchNorm of the pruned ``model``: the kept channels' original values."""
    out = {name: (m.clone(), s.clone()) for name, (m, s) in targets.items()}
    for rec in records:
        kept = torch.as_tensor(np.asarray(rec.kept), dtype=torch.long)
        for name in rec.group.norms:
            if name in out and len(out[name][0]) != len(kept):
                mean, std = out[name]
                out[name] = (mean[kept], std[kept])
    mods = dict(model.named_modules())
    for name, (mean, _) in out.items():
        if name in mods and mods[name].num_features != len(mean):
            raise RuntimeError(f"repair: BatchNorm '{name}' has {mods[name].num_features} channels but "
                               f"{len(mean)} targets")
    return out


def _hook_stats(model: nn.Module):
    """Forward pre-hooks that store every BatchNorm input's per-channel batch mean and variance."""
    stats, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, _BN):
            def hook(mod, inp, name=name):
                x = inp[0]
                dims = [0] + list(range(2, x.dim()))
                stats[name] = (x.mean(dims), x.var(dims, unbiased=False))
            hooks.append(m.register_forward_pre_hook(hook))
    return stats, hooks


def _model_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def synthetic_batch(model: nn.Module, example_inputs: torch.Tensor, size: int = 256, steps: int = 200,
                    seed: int = 0, cache_dir: str | os.PathLike | None = None, lr: float = 0.1) -> torch.Tensor:
    """Inputs optimised from N(0, 1) noise so that every BatchNorm's batch statistics match its running ones.

    Minimises sum over BatchNorms of ||E[x] - running_mean||^2 + ||Var[x] - running_var||^2 (per channel,
    batch statistics of the BN's input) with Adam. ``model`` is the unpruned, unfolded model (never changed).
    Cached on disk under a key made of the weights' hash and the settings; returns a (size, C, H, W) tensor.
    """
    root = Path(cache_dir or os.environ.get("INTRAFUSION_CACHE") or Path.home() / ".cache" / "intrafusion")
    key = f"synthetic-{_model_hash(model)}-{tuple(example_inputs.shape[1:])}-{size}-{steps}-{seed}-{lr}"
    path = root / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    if not any(isinstance(m, _BN) for m in model.modules()):
        raise ValueError("a synthetic batch needs BatchNorm statistics: this model has no BatchNorm layer")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((size, *example_inputs.shape[1:]), generator=gen).requires_grad_(True)
    was_training = model.training
    model.eval()
    grads = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    stats, hooks = _hook_stats(model)
    bns = {n: m for n, m in model.named_modules() if isinstance(m, _BN)}
    opt = torch.optim.Adam([x], lr=lr)
    try:
        for _ in range(steps):
            opt.zero_grad()
            model(x)
            loss = sum(((stats[n][0] - m.running_mean) ** 2).sum() + ((stats[n][1] - m.running_var) ** 2).sum()
                       for n, m in bns.items())
            loss.backward()
            opt.step()
    finally:
        for h in hooks:
            h.remove()
        for p, g in zip(model.parameters(), grads, strict=True):
            p.requires_grad_(g)
        model.train(was_training)
    out = x.detach().clone()
    root.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def bn_mismatch(model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest |batch mean - running mean| and |batch std - running std|, relative to the running std."""
    stats, hooks = _hook_stats(model)
    try:
        with torch.no_grad():
            model.eval()(inputs)
    finally:
        for h in hooks:
            h.remove()
    worst = 0.0
    for n, m in model.named_modules():
        if isinstance(m, _BN):
            sd = m.running_var.sqrt().clamp_min(1e-6)
            worst = max(worst, float(((stats[n][0] - m.running_mean).abs() / sd).max()),
                        float(((stats[n][1].sqrt() - sd).abs() / sd).max()))
    return worst


@torch.no_grad()
def reestimate_bn(model: nn.Module, inputs: torch.Tensor, targets: dict, batch_size: int = 64) -> None:
    """Set every BatchNorm's affine to its target (beta, |gamma|) and re-estimate its running statistics on
    ``inputs`` (a plain tensor: no labels) in train-mode forward passes with a cumulative average."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError("repair data must be a tensor of unlabelled inputs (N, C, H, W), not a dataset or tuple")
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError("repair data holds NaN or infinite values")
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
def moments_repair(model: nn.Module, targets: dict, records) -> int:
    """Rescale every fused channel to its kept channel's target std (std estimated through the map, with
    correlations from feature cosines) and set its mean to the kept channel's beta. Returns channels changed."""
    mods = dict(model.named_modules())
    changed = 0
    for rec in records:
        if rec.map_out is None or rec.features is None:
            continue
        a = torch.as_tensor(rec.map_out, dtype=torch.float64)  # (m, n)
        x = torch.as_tensor(rec.features, dtype=torch.float64)
        rho = (x @ x.T).clamp(-1, 1)
        kept = torch.as_tensor(np.asarray(rec.kept), dtype=torch.long)
        for name in rec.group.norms:
            bn = mods.get(name)
            if bn is None or not bn.affine or name not in targets:
                continue
            mean, std = (t.double() for t in targets[name])
            if len(std) != a.shape[1]:
                continue
            cov = rho * std[:, None] * std[None, :]
            est = torch.einsum("tj,jl,tl->t", a, cov, a).clamp_min(1e-12).sqrt()
            ratio = std[kept] / est
            # a_t = w z + b has mean mu_t = sum_j A_tj beta_j; make it r (a_t - mu_t) + beta_kept
            mu = a @ mean
            new_bias = ratio * (bn.bias.data.double() - mu) + mean[kept]
            bn.weight.data.mul_(ratio.to(bn.weight.dtype))
            bn.bias.data.copy_(new_bias.to(bn.bias.dtype))
            changed += len(kept)
    return changed


def apply_repair(model: nn.Module, example_inputs: torch.Tensor, original: nn.Module, targets: dict, records,
                 options: RepairOptions, repair_data: torch.Tensor | None = None) -> RepairResult | None:
    """Repair the pruned ``model`` in place (``original`` is the unpruned, unfolded model, never changed)."""
    if options.kind == "none":
        return None
    t0 = time.perf_counter()
    if options.kind == "data" and repair_data is None:
        raise ValueError("repair='data' needs repair_data: a tensor of a few hundred unlabelled training inputs "
                         "(N, C, H, W); use repair='synthetic' or 'moments' for a repair without data")
    check_targets(targets)
    details: dict = {}
    if not any(len(r.pruned) for r in records):
        return RepairResult(options.kind, options.uses_data, time.perf_counter() - t0,
                            {"note": "nothing was pruned: nothing to repair"})
    if options.kind == "moments":
        details["channels"] = moments_repair(model, targets, records)
        details["note"] = "moments repairs only layers with a BatchNorm"
    else:
        if options.kind == "synthetic":
            t1 = time.perf_counter()
            inputs = synthetic_batch(original, example_inputs, options.synthetic_size, options.synthetic_steps,
                                     options.seed, options.cache_dir, options.synthetic_lr)
            details["synthetic_seconds"] = time.perf_counter() - t1
        else:
            inputs = repair_data
        reestimate_bn(model, inputs, kept_targets(model, targets, records), options.batch_size)
        details["inputs"] = len(inputs)
    return RepairResult(options.kind, options.uses_data, time.perf_counter() - t0, details)


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
