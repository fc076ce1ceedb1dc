"""Groups: the layers that must lose the same channel together.

Torch-Pruning's ``DependencyGraph`` finds them; this module only describes them as data and numbers them
the way the paper does: from the OUTPUT backwards, the classifier excluded, so group 0 is the group nearest
the classifier (VGG11-BN: 0 = conv8 ... 7 = conv1; ResNet18: 0 = stage-4 residual stream ... 11 =
layer1.0.conv1).

A group's channels are addressed through *slices*: for every parametrised layer of the group, an integer
matrix ``index`` of shape (n, k) such that group channel ``c`` is the layer's rows (``side='out'``) or
columns (``side='in'``) ``index[c]``. ``k`` is 1 except behind a flatten, where one channel feeds k inputs
of a linear layer.

A depthwise conv (one k x k kernel per channel, ``groups`` = channels) lies INSIDE a group: in an inverted
residual the expand conv's out-rows, the depthwise kernels and the project conv's in-columns all belong to
channel c; the kernel is transported like a producer row. A layer Intra-Fusion cannot transport (a grouped
conv that is not depthwise, LayerNorm, GroupNorm, an uneven reshape) makes only the groups it belongs to
unprunable (``Group.prunable`` False, with ``Group.reason``); every other group can still be pruned.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

__all__ = ["Group", "LayerSlice", "PruningGraph", "UnsupportedLayerError", "list_groups"]

_OUT_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
_IN_FNS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
_NORM_FNS = (tp.prune_batchnorm_out_channels,)
_SUPPORTED = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)


class UnsupportedLayerError(ValueError):
    """A layer in a group that Intra-Fusion cannot transport (the message names it and says what works)."""


@dataclass(frozen=True)
class Group:
    """A pruning group, as data.

    Attributes
    ----------
    index : int
        Paper numbering: 0 is nearest the classifier.
    n : int
        Cardinality: channels shared by every layer of the group.
    producers : tuple of str
        Layers whose OUTPUT channels are the group's channels (conv/linear rows).
    consumers : tuple of str
        Layers whose INPUT channels are the group's channels (conv/linear columns).
    norms : tuple of str
        BatchNorm layers on the group's channels (folded before pruning).
    residual : bool
        True when several producers write into the same channels through additions (a residual stream).
    depthwise : tuple of str
        Depthwise convs on the group's channels (``groups`` = channels): channel c's kernel is ``weight[c]``,
        so it travels with the channel and is transported like a producer row (their slices have
        ``side='out'`` and ``depthwise=True``; they are not counted as producers).
    prunable : bool
        False when a layer of the group cannot be transported (a grouped conv that is not depthwise,
        LayerNorm, GroupNorm, an uneven reshape, ...): only this group is then left alone.
    reason : str
        Why the group is not prunable ('' when it is).
    """

    index: int
    n: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    norms: tuple[str, ...] = ()
    residual: bool = False
    depthwise: tuple[str, ...] = ()
    prunable: bool = True
    reason: str = ""

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "n": self.n,
            "producers": list(self.producers),
            "consumers": list(self.consumers),
            "norms": list(self.norms),
            "residual": self.residual,
            "depthwise": list(self.depthwise),
            "prunable": self.prunable,
            "reason": self.reason,
        }


@dataclass
class LayerSlice:
    """One parametrised layer of a group: which rows ('out'), columns ('in') or norm entries hold channel c."""

    name: str
    module: nn.Module
    side: str  # 'out' | 'in' | 'norm'
    index: torch.Tensor = field(repr=False)  # (n, k) long
    depthwise: bool = False  # a depthwise conv: side 'out' (its kernel per channel moves like a producer row)


def _index_matrix(idxs, root_idxs, n: int, name: str) -> torch.Tensor:
    idxs = torch.as_tensor(list(idxs), dtype=torch.long)
    roots = torch.as_tensor(list(root_idxs), dtype=torch.long)
    order = torch.argsort(roots * (int(idxs.max()) + 1 if len(idxs) else 1) + idxs)
    idxs, roots = idxs[order], roots[order]
    counts = torch.bincount(roots, minlength=n)
    if len(roots) == 0 or bool((counts != counts[0]).any()) or int(counts[0]) == 0:
        raise UnsupportedLayerError(
            f"layer '{name}' maps the group's channels unevenly (a reshape Intra-Fusion cannot transport); "
            "supported are plain conv/linear/BatchNorm chains, residual additions and flatten before a linear"
        )
    return idxs.view(n, int(counts[0]))


class PruningGraph:
    """A model's dependency graph, its groups in paper order, and their slices.

    Built once per model copy; group identities survive pruning (each group is re-read from its root
    layer, so shapes are always current).

    Parameters
    ----------
    model : nn.Module
        The model the graph is built on (it is the object that later gets pruned).
    example_inputs : torch.Tensor
        One batch of inputs of the right shape, for tracing.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor):
        self.model = model
        self.example_inputs = example_inputs
        self._names = {m: name for name, m in model.named_modules()}
        order = _execution_order(model, example_inputs)
        was_training = model.training
        frozen = [p for p in model.parameters() if not p.requires_grad]
        model.eval()
        try:  # torch-pruning traces through autograd: frozen (cached, shared) models need grads for a moment
            for p in frozen:
                p.requires_grad_(True)
            with torch.enable_grad():
                self.dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
        finally:
            for p in frozen:
                p.requires_grad_(False)
            model.train(was_training)
        classifier = _last_linear(model, order)
        roots: list[tuple[int, nn.Module, list]] = []
        for g in self.dg.get_all_groups(root_module_types=(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            producers = [it.dep.target.module for it in g if it.dep.handler in _OUT_FNS]
            if classifier is not None and any(p is classifier for p in producers):
                continue  # the classifier's outputs are the logits: never pruned
            last = max(order.get(p, -1) for p in producers)
            roots.append((last, g[0].dep.target.module, producers))
        roots.sort(key=lambda r: -r[0])  # output backwards
        self._roots = [r[1] for r in roots]
        self.groups: list[Group] = [self._describe(i) for i in range(len(self._roots))]

    # -- reading groups -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._roots)

    def check_index(self, index: int) -> int:
        if isinstance(index, bool):
            raise TypeError(f"group index must be an int, got {index!r}")
        index = operator.index(index)
        if not 0 <= index < len(self._roots):
            raise IndexError(
                f"group {index} does not exist: this model has {len(self._roots)} groups, "
                f"numbered 0 (nearest the classifier) to {len(self._roots) - 1}"
            )
        return index

    def tp_group(self, index: int):
        """The torch-pruning group of ``index`` with all current channels."""
        root = self._roots[self.check_index(index)]
        n = root.out_channels if hasattr(root, "out_channels") else root.out_features
        pruner = self.dg.get_pruner_of_module(root)
        return self.dg.get_pruning_group(root, pruner.prune_out_channels, list(range(n)))

    def channels(self, index: int) -> int:
        root = self._roots[self.check_index(index)]
        return root.out_channels if hasattr(root, "out_channels") else root.out_features

    def slices(self, index: int, tp_group=None) -> list[LayerSlice]:
        """The parametrised layers of group ``index`` with their channel index matrices."""
        self.check_prunable(index)
        g = self.tp_group(index) if tp_group is None else tp_group
        n = self.channels(index)
        out: list[LayerSlice] = []
        seen_depthwise: set[nn.Module] = set()
        for item in g:
            module, fn = item.dep.target.module, item.dep.handler
            name = self._names.get(module, type(module).__name__)
            if _is_depthwise(module):
                # One kernel per channel (in = out = groups): torch-pruning lists it once or twice (in and
                # out side); its rows go with the channel exactly like a producer's out-rows.
                if module not in seen_depthwise:
                    seen_depthwise.add(module)
                    out.append(LayerSlice(name, module, "out", _index_matrix(item.idxs, item.root_idxs, n, name),
                                          depthwise=True))
                continue
            if isinstance(module, nn.Conv1d | nn.Conv2d) and module.groups != 1:
                raise UnsupportedLayerError(_unsupported_message(
                    name, module, f"grouped conv, groups={module.groups}, not depthwise"))
            if fn in _OUT_FNS or fn in _IN_FNS or fn in _NORM_FNS:
                if not isinstance(module, _SUPPORTED):
                    raise UnsupportedLayerError(_unsupported_message(name, module))
                side = "out" if fn in _OUT_FNS else ("in" if fn in _IN_FNS else "norm")
                out.append(LayerSlice(name, module, side, _index_matrix(item.idxs, item.root_idxs, n, name)))
            elif isinstance(module, nn.Module) and any(True for _ in module.parameters(recurse=False)):
                raise UnsupportedLayerError(_unsupported_message(name, module))
        return out

    def _describe(self, index: int) -> Group:
        try:
            sl = self.slices(index)
        except UnsupportedLayerError as exc:
            # Only this group is unprunable: describe it from torch-pruning's items, say why.
            return self._describe_unprunable(index, str(exc))
        producers = tuple(s.name for s in sl if s.side == "out" and not s.depthwise)
        return Group(
            index=index,
            n=self.channels(index),
            producers=producers,
            consumers=tuple(s.name for s in sl if s.side == "in"),
            norms=tuple(s.name for s in sl if s.side == "norm"),
            residual=len(producers) > 1,
            depthwise=tuple(s.name for s in sl if s.depthwise),
        )

    def _describe_unprunable(self, index: int, reason: str) -> Group:
        sides: dict[str, list[str]] = {"out": [], "in": [], "norm": []}
        for item in self.tp_group(index):
            module, fn = item.dep.target.module, item.dep.handler
            if not isinstance(module, nn.Module) or not any(True for _ in module.parameters(recurse=False)):
                continue
            name = self._names.get(module, type(module).__name__)
            side = "in" if fn in _IN_FNS else ("norm" if isinstance(module, _NORM_TYPES) else "out")
            if name not in sides[side]:
                sides[side].append(name)
        return Group(index=index, n=self.channels(index), producers=tuple(sides["out"]),
                     consumers=tuple(sides["in"]), norms=tuple(sides["norm"]), residual=len(sides["out"]) > 1,
                     prunable=False, reason=reason)

    def check_prunable(self, index: int) -> int:
        """``index`` if group ``index`` can be pruned, else UnsupportedLayerError with the group's reason."""
        index = self.check_index(index)
        group = self.groups[index] if hasattr(self, "groups") else None
        if group is not None and not group.prunable:
            raise UnsupportedLayerError(f"group {index} cannot be pruned: {group.reason}. The other groups can.")
        return index

    def prune(self, index: int, pruned: list[int]) -> None:
        """Remove channels ``pruned`` from every layer of group ``index`` (torch-pruning's index selection)."""
        if not pruned:
            return
        root = self._roots[self.check_prunable(index)]
        pruner = self.dg.get_pruner_of_module(root)
        self.dg.get_pruning_group(root, pruner.prune_out_channels, sorted(int(i) for i in pruned)).prune()


def _is_depthwise(module: nn.Module) -> bool:
    """A depthwise conv: one kernel per channel (groups = in = out channels > 1)."""
    return (isinstance(module, nn.Conv1d | nn.Conv2d) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


def _unsupported_message(name: str, module: nn.Module, what: str | None = None) -> str:
    kind = what or type(module).__name__
    return (
        f"layer '{name}' ({kind}) is in this pruning group but Intra-Fusion cannot transport it; "
        "supported layers are Conv1d/Conv2d (groups=1 or depthwise), Linear and BatchNorm1d/2d"
    )


def _execution_order(model: nn.Module, example_inputs: torch.Tensor) -> dict[nn.Module, int]:
    """Position of each leaf module's first call in one forward pass (defines 'nearest the output')."""
    order: dict[nn.Module, int] = {}
    def record(mod, inputs, output):  # a hook that returned a value would replace the output
        order.setdefault(mod, len(order))

    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return order


def _last_linear(model: nn.Module, order: dict[nn.Module, int]) -> nn.Module | None:
    """The classifier: the last conv/linear layer to run."""
    layers = [m for m in order if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]
    return max(layers, key=order.__getitem__) if layers else None


def list_groups(model: nn.Module, example_inputs: torch.Tensor) -> list[Group]:
    """The groups of ``model`` in paper order (group 0 nearest the classifier)."""
    return PruningGraph(model, example_inputs).groups
