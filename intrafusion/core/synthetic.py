"""Synthetic inputs from a model's own BatchNorm statistics (no real data): ZeroQ and DeepInversion style.

A batch x (N, C, H, W) starts as N(0, 1) noise and is optimised with Adam so that, at every BatchNorm layer l,
the batch statistics of the layer's input match its stored running statistics (mean r_l, variance v_l):

    L_bn(x) = sum_l w_l mean_c [ ((mean_lc(x) - r_lc) / s_lc)^2 + ((std_lc(x) - s_lc) / s_lc)^2 ],  s = sqrt(v)

(relative errors, so every layer counts the same whatever its scale; ``loss='squared'`` is ZeroQ's plain
sum of squared differences of means and variances). Optional DeepInversion priors:

- a class prior: cross-entropy of the logits against balanced pseudo-labels 0, 1, ..., K-1, 0, ... (the
  model's own classes; no real label is involved), weight ``class_prior``;
- a smoothness prior: the mean squared difference of neighbouring pixels (total variation), weight ``tv``;
- random jitter: the batch is rolled by up to ``jitter`` pixels each step, so it cannot overfit one alignment.

The learning rate follows a cosine schedule from ``lr`` to 0. Batches are cached on disk under a key made of
the weights' hash and every setting, so the cost (seconds, reported by the repair) is paid once per model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["SYNTHETIC_LOSSES", "SyntheticOptions", "bn_mismatch", "synthetic_batch", "synthetic_batch_info"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
SYNTHETIC_LOSSES = ("relative", "squared")


@dataclass(frozen=True)
class SyntheticOptions:
    """How a synthetic batch is made (defaults: the recipe the repair study found best).

    Attributes
    ----------
    size : int
        Number of synthetic inputs.
    steps : int
        Adam steps.
    lr : float
        Initial learning rate (cosine decay to 0).
    loss : {'relative', 'squared'}
        BatchNorm matching loss (see the module docstring).
    first_weight : float
        Weight of the first BatchNorm layer (the one closest to the pixels); the others weigh 1.
    class_prior : float
        Weight of the cross-entropy against balanced pseudo-labels (0: none, as ZeroQ).
    tv : float
        Weight of the smoothness prior.
    jitter : int
        Largest random roll in pixels per step (0: none).
    seed : int
    """

    size: int = 256
    steps: int = 200
    lr: float = 0.1
    loss: str = "relative"
    first_weight: float = 1.0
    class_prior: float = 1.0
    tv: float = 0.1
    jitter: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.loss not in SYNTHETIC_LOSSES:
            raise ValueError(f"unknown synthetic loss {self.loss!r}: choose one of {', '.join(SYNTHETIC_LOSSES)}")
        if self.size < 2 or self.steps < 0 or not self.lr > 0:
            raise ValueError("a synthetic batch needs size >= 2, steps >= 0 and a positive learning rate")
        if min(self.first_weight, self.class_prior, self.tv) < 0 or self.jitter < 0:
            raise ValueError("synthetic prior weights and jitter must be non-negative")


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


def _bn_loss(stats: dict, bns: dict, opts: SyntheticOptions) -> torch.Tensor:
    total = 0.0
    for i, (n, m) in enumerate(bns.items()):
        mean, var = stats[n]
        w = opts.first_weight if i == 0 else 1.0
        if opts.loss == "squared":
            total = total + w * (((mean - m.running_mean) ** 2).sum() + ((var - m.running_var) ** 2).sum())
        else:
            sd = m.running_var.clamp_min(1e-8).sqrt()
            rel_mean = (mean - m.running_mean) / sd
            rel_std = (var.clamp_min(1e-12).sqrt() - sd) / sd
            total = total + w * (rel_mean.pow(2).mean() + rel_std.pow(2).mean())
    return total


def _tv(x: torch.Tensor) -> torch.Tensor:
    if x.dim() < 4:
        return x.new_zeros(())
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()


def synthetic_batch(model: nn.Module, example_inputs: torch.Tensor, options: SyntheticOptions | None = None,
                    cache_dir: str | os.PathLike | None = None, **overrides) -> torch.Tensor:
    """The batch of :func:`synthetic_batch_info` (see there)."""
    return synthetic_batch_info(model, example_inputs, options, cache_dir, **overrides)[0]


def synthetic_batch_info(model: nn.Module, example_inputs: torch.Tensor, options: SyntheticOptions | None = None,
                         cache_dir: str | os.PathLike | None = None, **overrides) -> tuple[torch.Tensor, dict]:
    """Inputs optimised from N(0, 1) noise so that every BatchNorm's batch statistics match its running ones.

    Parameters
    ----------
    model : nn.Module
        The unpruned, unfolded model (never changed; its parameters are frozen while the batch is optimised).
    example_inputs : torch.Tensor
        One input or a batch: gives the shape (C, H, W) of the synthetic inputs.
    options : SyntheticOptions, optional
        The recipe; keyword ``overrides`` replace single fields (``size=64``).
    cache_dir : path, optional
        Where batches are cached ($INTRAFUSION_CACHE or ~/.cache/intrafusion by default).

    Returns
    -------
    torch.Tensor
        (size, C, H, W), float32, detached. Read back from the cache when made before with the same settings.
    dict
        ``cached`` (bool) and ``made_seconds``: the seconds its optimisation took when it was made (None if
        the cache has no record of it).
    """
    opts = options or SyntheticOptions()
    if overrides:
        opts = SyntheticOptions(**{**asdict(opts), **overrides})
    root = Path(cache_dir or os.environ.get("INTRAFUSION_CACHE") or Path.home() / ".cache" / "intrafusion")
    key = json.dumps([_model_hash(model), list(example_inputs.shape[1:]), asdict(opts)], sort_keys=True)
    path = root / f"synthetic-{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
    meta = path.with_suffix(".json")
    if path.is_file():
        out = torch.load(path, weights_only=True)
        if isinstance(out, torch.Tensor) and out.shape == (opts.size, *example_inputs.shape[1:]):
            made = json.loads(meta.read_text()).get("seconds") if meta.is_file() else None
            return out, {"cached": True, "made_seconds": made}
    bns = {n: m for n, m in model.named_modules() if isinstance(m, _BN)}
    if not bns:
        raise ValueError("a synthetic batch needs BatchNorm statistics: this model has no BatchNorm layer; "
                         "use repair='data' or 'refit-data' (unlabelled real inputs) instead")
    for n, m in bns.items():
        if m.running_var is None or not bool(torch.isfinite(m.running_var).all()) or bool((m.running_var < 0).any()):
            raise ValueError(f"BatchNorm '{n}' has missing, NaN or negative running statistics: load a healthy "
                             "checkpoint (its running_var must be finite and non-negative)")
    t0 = time.perf_counter()
    x = _optimise(model, example_inputs, bns, opts)
    seconds = time.perf_counter() - t0
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(x, tmp)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none
    meta.write_text(json.dumps({"seconds": seconds, "options": asdict(opts)}))
    return x, {"cached": False, "made_seconds": seconds}


def _optimise(model: nn.Module, example_inputs: torch.Tensor, bns: dict, opts: SyntheticOptions) -> torch.Tensor:
    gen = torch.Generator().manual_seed(opts.seed)
    x = torch.randn((opts.size, *example_inputs.shape[1:]), generator=gen).requires_grad_(True)
    was_training = model.training
    model.eval()
    grads = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    stats, hooks = _hook_stats(model)
    opt = torch.optim.Adam([x], lr=opts.lr)
    labels = None
    try:
        for step in range(opts.steps):
            for group in opt.param_groups:
                group["lr"] = opts.lr * 0.5 * (1 + math.cos(math.pi * step / max(opts.steps, 1)))
            opt.zero_grad()
            inp = x
            if opts.jitter and x.dim() == 4:
                dx, dy = torch.randint(-opts.jitter, opts.jitter + 1, (2,), generator=gen).tolist()
                inp = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
            logits = model(inp)
            loss = _bn_loss(stats, bns, opts)
            if opts.class_prior > 0:
                if labels is None:
                    labels = torch.arange(len(x)) % logits.shape[1]
                loss = loss + opts.class_prior * nn.functional.cross_entropy(logits, labels)
            if opts.tv > 0:
                loss = loss + opts.tv * _tv(x)
            loss.backward()
            opt.step()
    finally:
        for h in hooks:
            h.remove()
        for p, g in zip(model.parameters(), grads, strict=True):
            p.requires_grad_(g)
        model.train(was_training)
    return x.detach().clone()


@torch.no_grad()
def bn_mismatch(model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest |batch mean - running mean| and |batch std - running std| over all BatchNorm channels,
    relative to the running std (0: the batch reproduces every stored statistic)."""
    stats, hooks = _hook_stats(model)
    was_training = model.training
    try:
        model.eval()(inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    worst = 0.0
    for n, m in model.named_modules():
        if isinstance(m, _BN):
            sd = m.running_var.sqrt().clamp_min(1e-6)
            worst = max(worst, float(((stats[n][0] - m.running_mean).abs() / sd).max()),
                        float(((stats[n][1].sqrt() - sd).abs() / sd).max()))
    return worst

