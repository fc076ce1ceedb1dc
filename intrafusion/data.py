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
Preprocessing is done on whole arrays with torch (no per-sample PIL transforms). The catalogue
(:class:`Preprocessing`, :class:`DatasetInfo`, :data:`DATASETS`) is :mod:`intrafusion.datasets`, re-exported here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .datasets import DATASETS, IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, Preprocessing, get_info

__all__ = [
    "ASSETS_DIR",
    "DATA_ENV",
    "DATASETS",
    "DatasetInfo",
    "DatasetUnavailable",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
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


class DatasetUnavailable(ValueError):
    """A torchvision dataset is neither in the data folder nor downloadable; the message says what to do."""


_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte")  # fmt: skip


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


def _first_missing(path: Path) -> Path | None:
    """The outermost folder on the way to ``path`` that does not exist yet (None if ``path`` exists)."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


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
        created = _first_missing(Path(root) / info.folder)
        try:
            ds = cls(root, train=train, download=True)
        except Exception as exc2:  # URLError, RuntimeError, OSError, ...: no network, disk, mirror down
            # torchvision makes the folders before it fetches anything: a failed attempt leaves no trace
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
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
