"""The paper's group numbering, computed the way the authors enumerate groups, and its ImageNet ResNet50 tables.

The paper numbers groups from the OUTPUT backwards, the classifier excluded. Its code (an extension of
Torch-Pruning) enumerates them by walking the model's modules (``named_modules()``) in REVERSE and giving the
next number to every conv/linear layer whose output channels are not in an already-numbered group; that layer's
group (every layer that must lose the same channels) takes the number. :func:`paper_indices` does this walk on
our groups, independently of how :mod:`intrafusion.core.groups` sorts them (by the execution order of each
group's last producer), so the two numberings can be checked against each other.

ResNet50 (torchvision's ImageNet layout, 16 bottleneck blocks): 37 groups, numbered

* 0: the stage-4 residual stream (2048 channels: every ``layer4.*.conv3`` and ``layer4.0.downsample.0``,
  read by the next blocks' ``conv1`` and by ``fc``),
* 1-6: inside the stage-4 blocks, from the last block back, ``conv2`` before ``conv1`` (512 channels each):
  1 = ``layer4.2.conv2``, 2 = ``layer4.2.conv1``, ..., 6 = ``layer4.0.conv1``,
* 7: the stage-3 stream (1024), 8-17: ``layer3.5.conv2`` ... ``layer3.1.conv1`` (256 each),
* 18-19: ``layer3.0.conv2``, ``layer3.0.conv1``; 20: the stage-2 stream (512); 21-28 stage 2's blocks (128);
  29: the stage-1 stream (256); 30-35 stage 1's blocks (64); 36: the stem ``conv1`` (64).

The paper's ImageNet tables for ResNet50 (Tables 19-21, one per criterion) report groups 0-17
(:data:`PAPER_TABLE_GROUPS`): the stage-4 and stage-3 streams and the blocks of the two last stages except
``layer3.0``. The reference we work from does not reproduce those tables, only their group range; the numbering
itself follows from the enumeration above, which also gives the paper's CIFAR numbering of VGG11-BN and
ResNet18 (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..core.groups import Group

__all__ = ["PAPER_TABLES", "PAPER_TABLE_GROUPS", "paper_indices", "paper_table_groups", "paper_table_note"]

#: Groups reported in the paper's ImageNet tables, by architecture (ResNet50: Tables 19-21, groups 0-17).
PAPER_TABLE_GROUPS: dict[str, tuple[int, ...]] = {
    "torchvision:resnet50": tuple(range(18)),
}
#: Which of the paper's tables those are.
PAPER_TABLES: dict[str, str] = {
    "torchvision:resnet50": "Tables 19-21 (ImageNet)",
}


def paper_indices(model: nn.Module, groups: Sequence[Group]) -> list[int]:
    """The paper's number of each group in ``groups`` (same order), by the authors' reverse module walk.

    Parameters
    ----------
    model : nn.Module
        The model ``groups`` were listed on (:func:`intrafusion.core.groups.list_groups`).
    groups : sequence of Group

    Returns
    -------
    list of int
        ``out[i]`` is the paper's number of ``groups[i]``. Walking ``model.named_modules()`` from the last module
        to the first, each conv/linear layer that produces the channels of a group not yet numbered gives that
        group the next number; the classifier produces no group and is skipped.

    Raises
    ------
    ValueError
        If some group has no producer among the model's modules (``groups`` is not from ``model``).
    """
    owner = {name: i for i, g in enumerate(groups) for name in g.producers}
    numbers: dict[int, int] = {}
    for name, module in reversed(list(model.named_modules())):
        if not isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            continue
        i = owner.get(name)
        if i is not None and i not in numbers:
            numbers[i] = len(numbers)
    missing = [g.index for i, g in enumerate(groups) if i not in numbers]
    if missing:
        raise ValueError(f"groups {missing} have no producer in this model: list the groups of this model first")
    return [numbers[i] for i in range(len(groups))]


def paper_table_groups(arch: str) -> tuple[int, ...] | None:
    """Groups the paper's tables report for ``arch`` (None when the paper has no per-group table for it)."""
    return PAPER_TABLE_GROUPS.get(arch)


def paper_table_note(arch: str) -> str:
    """One line naming the groups the paper's tables report for ``arch`` ('' when there are none)."""
    groups = paper_table_groups(arch)
    if not groups:
        return ""
    return (f"group numbers are the paper's; its {PAPER_TABLES[arch]} report groups {groups[0]}-{groups[-1]} "
            "of this architecture")
