"""Layer-wise least-squares reconstruction: refit every layer of a pruned model to the original's outputs.

After pruning, fusion or folding, layer l of the pruned model sees inputs x' (the pruned network's own
activations) and should produce, for each of its m output channels t, what the method meant channel t to carry
in the original network: the map-weighted average of the original channels it was made from,

    y_t = sum_j Abar_tj y_j        (``target='mapped'``; Abar = the producer map, rows rescaled to sum to 1)
    y_t = y_kept(t)                (``target='kept'``, and for default pruning),

where y_j is the original layer's output after its BatchNorm (a layer whose outputs were not pruned, like
the classifier, has y_t = y_t). On a batch of inputs (synthetic: no real data; or unlabelled real images),
layers are refitted one at a time in execution order, each on the inputs the already-refitted layers before
it produce, by ridge regression pulled towards the method's own weights W0:

    W = argmin_W ||X W - Y||^2 + lam ||W - W0||^2,   lam = ridge * trace(X^T X) / k,

    W = (X^T X + lam I)^-1 (X^T Y + lam W0),

with X the layer's inputs (for a conv: its k = C_in kh kw input patches, one row per output position) plus a
column of ones for the bias. The pulled-towards-W0 term keeps a layer with more weights than rows (the
classifier on a few hundred inputs) close to what the method gave it. The layer's BatchNorm is set to the
identity, the refitted weights and bias carry the whole affine map. No gradient step, no label: one pass per
layer, closed form. With nothing pruned, the method's weights already solve the fit exactly, so the model is
unchanged (the sparsity-0 oracle). Depthwise and grouped convolutions are left as they are (their BatchNorm
statistics are still re-estimated by the repair that calls this).

This is the classical layer-wise reconstruction of channel pruning (ThiNet, "channel pruning" by regression)
run on the repair's inputs and towards the targets of the map, not on labelled data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["averaging_map", "changed_layers", "layer_targets", "reconstruct_layers"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer of interest has been seen."""


def averaging_map(map_out) -> torch.Tensor:
    """A producer map with its rows rescaled to sum to 1 (Abar: each target as an average of its sources)."""
    a = torch.as_tensor(map_out, dtype=torch.float64)
    rows = a.sum(1, keepdim=True)
    return a / torch.where(rows > 0, rows, torch.ones_like(rows))


def layer_targets(records, target: str = "mapped") -> dict[str, torch.Tensor]:
    """{producer layer name: (m, n) matrix taking the original layer's n outputs to the m targets}.

    Layers absent from the result keep all their outputs (identity target)."""
    out = {}
    for rec in records:
        if not len(rec.pruned):
            continue
        n = rec.n
        if rec.map_out is None or target == "kept":
            sel = torch.zeros(len(rec.kept), n, dtype=torch.float64)
            sel[torch.arange(len(rec.kept)), torch.as_tensor(np.asarray(rec.kept), dtype=torch.long)] = 1.0
            mat = sel
        else:
            mat = averaging_map(rec.map_out)
        for name in rec.group.producers:
            out[name] = mat
    return out


def _plain_layers(model: nn.Module, inputs: torch.Tensor) -> list[str]:
    """Names of the dense conv/linear layers of ``model`` in the order of their first call."""
    names = {m: n for n, m in model.named_modules()}
    order: list[str] = []

    def hook(mod, args):
        n = names[mod]
        if n not in order:
            order.append(n)

    hooks = [m.register_forward_pre_hook(hook) for m in model.modules()
             if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1
                                            and m.padding_mode == "zeros")]
    try:
        model(inputs[:2])
    finally:
        for h in hooks:
            h.remove()
    return order


def _followers(model: nn.Module, inputs: torch.Tensor) -> dict[str, str]:
    """{layer name: name of the BatchNorm that takes exactly its output}, from one traced forward pass."""
    names = {m: n for n, m in model.named_modules()}
    last: dict[int, tuple[str, torch.Tensor]] = {}  # the tensor is held so that its id is not reused
    pairs: dict[str, str] = {}

    def out_hook(mod, args, res):
        last[id(res)] = (names[mod], res)

    def bn_hook(mod, args):
        src = last.get(id(args[0]))
        if src is not None and src[1] is args[0]:
            pairs.setdefault(src[0], names[mod])

    hooks = [m.register_forward_hook(out_hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    hooks += [m.register_forward_pre_hook(bn_hook) for m in model.modules() if isinstance(m, _BN)]
    try:
        model(inputs[:2])
    finally:
        for h in hooks:
            h.remove()
    return pairs


def _rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's inputs as regression rows (conv: unfolded patches), float64, with a column of ones."""
    if isinstance(layer, nn.Conv2d):
        cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
        x = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    else:
        x = x.reshape(-1, x.shape[-1])
    x = x.double()
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)


def _outputs(y: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) or (..., C) outputs as (rows, C) in the same row order as :func:`_rows`."""
    if y.dim() == 4:
        return y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]).double()
    return y.reshape(-1, y.shape[-1]).double()


def _capture(model: nn.Module, module: nn.Module, chunk: torch.Tensor, kind: str) -> torch.Tensor:
    """Input (``kind='in'``) or output of ``module`` when ``model`` runs on ``chunk``; stops the pass there."""
    box = []

    def pre(mod, args):
        box.append(args[0].detach().clone())
        raise _Stop

    def post(mod, args, res):
        box.append(res.detach().clone())  # clone: an in-place ReLU or residual add would change it
        raise _Stop

    h = module.register_forward_pre_hook(pre) if kind == "in" else module.register_forward_hook(post)
    try:
        model(chunk)
    except _Stop:
        pass
    finally:
        h.remove()
    return box[0]


def changed_layers(records) -> set[str]:
    """The layers a pruning changed: producers and consumers of every group that lost channels."""
    out: set[str] = set()
    for rec in records:
        if len(rec.pruned):
            out.update(rec.group.producers)
            out.update(rec.group.consumers)
    return out


@torch.no_grad()
def reconstruct_layers(pruned: nn.Module, original: nn.Module, inputs: torch.Tensor, records,
                       target: str = "mapped", ridge: float = 1e-2, batch_size: int = 64,
                       layers: set[str] | None = None) -> dict:
    """Refit the dense layers of ``pruned`` (in place) by ridge regression on ``inputs`` (see module doc).

    Parameters
    ----------
    pruned : nn.Module
        The pruned model (BatchNorm folded, as :func:`intrafusion.core.prune.prune` returns it).
    original : nn.Module
        The unpruned, unfolded model (never changed). Layers are matched by name.
    inputs : torch.Tensor
        Unlabelled inputs (N, ...): a synthetic batch or real images.
    records : list of GroupRecord
        What the pruning did (kept channels and maps).
    target : {'mapped', 'kept'}
    ridge : float
        Pull towards the method's weights, relative to the mean diagonal of X^T X.
    batch_size : int
        Inputs per forward pass (memory only: the normal equations are summed over chunks).
    layers : set of str, optional
        Which layers to refit (None: :func:`changed_layers`, the producers and consumers of the pruned groups;
        a layer whose inputs and outputs were not pruned already matches the original).

    Returns
    -------
    dict
        ``layers`` (refitted count), ``relative_error`` {layer: ||XW - Y|| / ||Y|| after the fit}.
    """
    if ridge < 0:
        raise ValueError(f"the reconstruction ridge must be non-negative, got {ridge}")
    pruned.eval()
    original.eval()
    maps = layer_targets(records, target)
    mods, orig = dict(pruned.named_modules()), dict(original.named_modules())
    follow_p, follow_o = _followers(pruned, inputs), _followers(original, inputs)
    errors = {}
    todo = changed_layers(records) if layers is None else set(layers)
    for name in _plain_layers(pruned, inputs):
        layer = mods[name]
        if name not in orig or name not in todo:
            continue
        src = orig[follow_o[name]] if name in follow_o else orig[name]
        bn = mods[follow_p[name]] if name in follow_p else None
        k = layer.weight[0].numel() + 1
        gram = torch.zeros(k, k, dtype=torch.float64)
        cross = None
        ss = 0.0
        mat = maps.get(name)
        for i in range(0, len(inputs), batch_size):
            chunk = inputs[i : i + batch_size]
            x = _rows(layer, _capture(pruned, layer, chunk, "in"))
            y = _outputs(_capture(original, src, chunk, "out"))
            if mat is not None:
                y = y @ mat.T
            gram += x.T @ x
            cross = x.T @ y if cross is None else cross + x.T @ y
            ss += float((y * y).sum())
        w0 = layer.weight.reshape(len(layer.weight), -1).double()
        b0 = layer.bias.double() if layer.bias is not None else torch.zeros(len(w0), dtype=torch.float64)
        if bn is not None:  # the folded BatchNorm is a per-channel scale and shift in eval mode
            scale = (bn.weight.double() if bn.affine else 1.0) / torch.sqrt(bn.running_var.double() + bn.eps)
            shift = (bn.bias.double() if bn.affine else 0.0) - scale * bn.running_mean.double()
            w0, b0 = w0 * scale[:, None], b0 * scale + shift
        theta0 = torch.cat([w0, b0[:, None]], 1).T  # (k, m)
        lam = ridge * float(torch.diagonal(gram).mean())
        theta = torch.linalg.solve(gram + lam * torch.eye(k, dtype=torch.float64), cross + lam * theta0)
        resid = float(torch.trace(theta.T @ gram @ theta) - 2 * torch.trace(theta.T @ cross) + ss)
        errors[name] = (max(resid, 0.0) / max(ss, 1e-30)) ** 0.5
        layer.weight.copy_(theta[:-1].T.reshape(layer.weight.shape).to(layer.weight.dtype))
        if bn is not None:  # the whole affine map now lives in the layer; its BatchNorm is the identity
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            if bn.affine:
                bn.weight.data.fill_(1.0)
                bn.bias.data.zero_()
        if layer.bias is not None:
            layer.bias.copy_(theta[-1].to(layer.bias.dtype))
        elif bn is not None and bn.affine:
            bn.bias.data.copy_(theta[-1].to(bn.bias.dtype))
        else:
            layer.bias = nn.Parameter(theta[-1].to(layer.weight.dtype))
    return {"layers": len(errors), "relative_error": errors}
