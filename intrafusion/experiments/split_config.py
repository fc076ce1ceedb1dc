"""What a split-data run is: the pipelines, the architectures, :class:`SplitDataConfig` and the class-balanced
split of the training set (:mod:`intrafusion.experiments.split_data` runs it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..core.model_fusion import MODES
from ..data import get_info

__all__ = ["ARCHS", "PIPELINES", "SplitDataConfig", "quick_config", "split_indices"]

PIPELINES = ("PaF", "FaP", "whole-data")
#: Architectures the pipeline builds (see :func:`intrafusion.experiments.train_zoo.zoo_arch_config`).
ARCHS = ("vgg11_bn", "resnet18", "mlp")


@dataclass
class SplitDataConfig:
    """What to run (defaults: a run of a few minutes on 2 cores; :func:`quick_config` is smaller).

    Attributes
    ----------
    arch, width, dataset : model and data (see :func:`intrafusion.experiments.train_zoo.zoo_arch_config`).
    parts : int
        k, the number of disjoint training parts (and split models), 2 or 4 in the paper.
    epochs, finetune_epochs : int
        T (training, every model) and F (each fine-tuning stage).
    sparsity : float
        Fraction of every group's channels removed (all groups, one shot, Intra-Fusion).
    criterion, repair : importance criterion and repair step of :func:`intrafusion.core.prune.prune`.
    fusion : {'activation', 'weight'}
        Cost of the model fusion; ``fusion_samples`` training inputs for activations.
    reset_bn : bool
        Re-estimate the fused model's BatchNorm statistics on the fusion samples (see
        :func:`intrafusion.core.model_fusion.fuse_models`).
    train_size, test_size : int, optional
        Class-balanced subsets (None: the whole split).
    lr, finetune_lr, batch_size, augment : training settings (augment None: the dataset's zoo augmentation).
    seed : int
        Data split and the whole-data model; split model i uses ``seed + 1 + i``.
    workers : int
        Parallel tasks (1: in-process, no Ray). ``address``: a Ray cluster (default ``$RAY_ADDRESS``).
    """

    arch: str = "vgg11_bn"
    dataset: str = "mnist5k"
    parts: int = 2
    width: float = 0.125
    epochs: int = 10
    finetune_epochs: int = 4
    sparsity: float = 0.5
    criterion: str = "l1"
    repair: str = "none"
    fusion: str = "activation"
    fusion_samples: int = 200
    reset_bn: bool = True
    train_size: int | None = None
    test_size: int | None = None
    lr: float = 0.05
    finetune_lr: float = 0.01
    batch_size: int = 128
    augment: str | None = None
    seed: int = 0
    workers: int = 1
    address: str | None = None

    def check(self) -> SplitDataConfig:
        if int(self.parts) != self.parts or self.parts < 2:
            raise ValueError(f"parts must be a whole number >= 2 (the paper uses 2 and 4), got {self.parts}")
        if self.epochs < 1 or self.finetune_epochs < 0:
            raise ValueError(f"need epochs >= 1 and finetune_epochs >= 0, got {self.epochs}, {self.finetune_epochs}")
        if not 0 < self.sparsity < 1:
            raise ValueError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if self.fusion not in MODES:
            raise ValueError(f"unknown fusion {self.fusion!r}: choose one of {', '.join(MODES)}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        shape = get_info(self.dataset).preprocessing.input_shape  # names the known datasets when unknown
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}: choose one of {', '.join(ARCHS)}")
        if self.arch != "mlp" and len(shape) != 3:
            raise ValueError(f"{self.arch} needs image inputs but {self.dataset} is flattened {shape}: use the mlp "
                             "architecture for it, or an image dataset (mnist5k, animals10k)")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def quick_config(arch: str = "vgg11_bn", dataset: str = "mnist5k", parts: int = 2, **overrides) -> SplitDataConfig:
    """The ``--quick`` setting: a width-1/16 model (MLP: width 1), at most 4000 training and 500 test images,
    T = 3, F = 2, batches of 64; a minute or two on 2 cores."""
    base = dict(arch=arch, dataset=dataset, parts=parts, width=1.0 if arch == "mlp" else 0.0625, epochs=3,
                finetune_epochs=2, train_size=4000, test_size=500, batch_size=64)
    base.update(overrides)
    return SplitDataConfig(**base)


def split_indices(labels: np.ndarray, parts: int, seed: int = 0) -> list[np.ndarray]:
    """k disjoint, class-balanced parts of ``range(len(labels))`` that cover it (each sorted).

    A seeded permutation is ordered by class (stable), then dealt round-robin: each class is split as evenly
    as possible and the part sizes differ by at most the number of classes.
    """
    labels = np.asarray(labels)
    if parts < 1 or parts > len(labels):
        raise ValueError(f"cannot split {len(labels)} samples into {parts} parts")
    perm = np.random.default_rng(seed).permutation(len(labels))
    order = perm[np.argsort(labels[perm], kind="stable")]
    return [np.sort(order[i::parts]) for i in range(parts)]
