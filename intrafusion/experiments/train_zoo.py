"""The zoo writer: what ``python -m intrafusion train`` runs (build, train, save as safetensors, register it).

Without ``--out`` the model goes to :data:`DEFAULT_TRAIN_DIR` (``./my_models``), a folder of the user's; a
bundled checkpoint is never overwritten unless the caller says so (``scripts/build_zoo.py`` rebuilding the zoo).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shlex
import time
from pathlib import Path

import torch
from torch import nn

from ..data import ASSETS_DIR, get_info, load_dataset
from ..evaluate import count_macs_params, evaluate
from ..models.architectures import ArchConfig, build_model
from ..models.checkpoint import save_model, sha256_file, write_atomic
from .train import _DEFAULT_BATCH, _DEFAULT_LR, _MOMENTUM, _WEIGHT_DECAY, ZOO_AUGMENTATION, train

__all__ = ["DEFAULT_TRAIN_DIR", "default_model_id", "describe_config", "train_command", "train_zoo_model",
           "zoo_arch_config"]

#: Where ``python -m intrafusion train`` writes without ``--out``: a folder of the user's (relative to the current
#: folder), never the bundled zoo.
DEFAULT_TRAIN_DIR = Path("my_models")


def default_model_id(arch: str, dataset: str) -> str:
    """``f"{arch}-{dataset}"``, e.g. ``vgg11_bn-mnist5k``."""
    return f"{arch}-{dataset}"


def zoo_arch_config(arch: str, width: float, dataset: str) -> ArchConfig:
    """The architecture of a zoo model of ``arch`` at ``width`` for ``dataset``.

    VGG11-BN and ResNet18 get the dataset's classes and input channels; ``width`` scales every conv layer
    (VGG11 at width 0.25: 16, 32, 64, 64, 128, 128, 128, 128 channels). The MLP takes the flattened
    input (``in_features`` = channels x size x size of the preprocessing: 64 for ``digits8x8``) and has
    two hidden layers of ``(64, 32)`` scaled by ``width`` (width 2: 128 and 64 neurons), no BatchNorm.
    """
    info = get_info(dataset)
    pre = info.preprocessing
    if arch == "mlp":
        return ArchConfig(arch="mlp", width=width, num_classes=info.num_classes, in_channels=pre.channels,
                          in_features=int(math.prod(pre.input_shape)))
    return ArchConfig(arch=arch, width=width, num_classes=info.num_classes, in_channels=pre.channels)


def describe_config(config: ArchConfig) -> str:
    """One line, e.g. 'VGG11-BN, width 0.25 (conv channels 16-128)'."""
    model = build_model(config)
    if config.arch == "mlp":
        return (f"MLP {config.in_features or 64}-{'-'.join(str(h) for h in model.hidden)}-{config.num_classes}, "
                f"width {config.width:g}")
    name = {"vgg11_bn": "VGG11-BN", "resnet18": "ResNet18", "mobilenet_v2": "MobileNetV2"}.get(config.arch, config.arch)
    chans = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    return f"{name}, width {config.width:g} (conv channels {min(chans)}-{max(chans)})"


def train_command(arch: str, width: float, dataset: str, epochs: int, seed: int = 0, model_id: str | None = None,
                  out_dir: str | os.PathLike | None = None, lr: float = _DEFAULT_LR,
                  batch_size: int = _DEFAULT_BATCH, augment: str | None = None) -> str:
    """The ``python -m intrafusion train ...`` line that runs :func:`train_zoo_model` with these arguments.

    ``--id`` appears only for a non-default id, ``--out`` only outside the bundled zoo folder, ``--augment``
    only when it differs from the dataset's :data:`ZOO_AUGMENTATION`.
    """
    from ..models.zoo import MODELS_DIR

    cmd = (f"python -m intrafusion train --arch {arch} --width {width:g} --dataset {dataset} --epochs {epochs} "
           f"--seed {seed} --lr {lr:g} --batch-size {batch_size}")
    if model_id is not None and model_id != default_model_id(arch, dataset):
        cmd += f" --id {model_id}"
    if augment is not None and augment != ZOO_AUGMENTATION.get(dataset, "none"):
        cmd += f" --augment {augment}"
    if out_dir is not None and Path(out_dir).resolve() != MODELS_DIR.resolve():
        cmd += f" --out {shlex.quote(str(Path(out_dir)))}"
    return cmd


def _split_text(dataset: str) -> str:
    info = get_info(dataset)
    if info.source != "bundled":
        return f"torchvision train/test ({info.train_size} / {info.test_size})"
    seed = ""
    try:
        seed = json.loads((ASSETS_DIR / "manifest.json").read_text())["split"]["seed"]
    except (OSError, KeyError, ValueError):
        pass
    return (f"bundled stratified 80/20 split: train {info.train_size} / test {info.test_size}"
            + (f" (numpy default_rng({seed}))" if seed != "" else ""))


def _write_manifest(out_dir: Path, entry: dict) -> Path:
    """Insert or replace ``entry`` (by id) in ``out_dir/manifest.json``; sorted keys, indent 2, atomic."""
    path = out_dir / "manifest.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    models = list(data.get("models", []))
    for i, m in enumerate(models):
        if m.get("id") == entry["id"]:
            models[i] = entry
            break
    else:
        models.append(entry)
    data["models"] = models
    data.setdefault("about", "Bundled Intra-Fusion Explorer models; `command` rebuilds each file "
                             "(see docs/ZOO.md). Checksums (sha256) are verified on load.")
    write_atomic(path, (json.dumps(data, sort_keys=True, indent=2) + "\n").encode())
    return path


def _bundled_id(path: Path) -> str | None:
    """The id of the bundled model stored at ``path``, or None if ``path`` is not a bundled checkpoint."""
    from ..models import zoo

    if path.parent.resolve() != zoo.MODELS_DIR.resolve():
        return None
    return next((e.id for e in zoo.list_models() if e.file == path.name), None)


def _best_eval_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        evaluate(model, x, y)
        best = min(best, time.perf_counter() - t0)
    return best


def train_zoo_model(
    arch: str,
    width: float,
    dataset: str,
    epochs: int,
    seed: int = 0,
    model_id: str | None = None,
    out_dir: str | os.PathLike | None = None,
    lr: float = _DEFAULT_LR,
    batch_size: int = _DEFAULT_BATCH,
    progress: bool = True,
    augment: str | None = None,
    overwrite_bundled: bool = False,
    device: str | None = "cpu",
) -> dict:
    """Train a model from scratch, save it as safetensors and register it in the zoo manifest.

    This is ``python -m intrafusion train --arch A --width W --dataset D --epochs N --seed S``.

    Parameters
    ----------
    arch : {'vgg11_bn', 'resnet18', 'mlp'}
    width : float
        Width multiplier, see :func:`zoo_arch_config`.
    dataset : str
        A key of :data:`intrafusion.data.DATASETS`; the model uses its default preprocessing.
    epochs : int
    seed : int, default 0
        Seeds the initialisation (``torch.manual_seed`` before building) and the training order.
    model_id : str, optional
        Default ``f"{arch}-{dataset}"``; the file is ``{model_id}.safetensors``.
    out_dir : path, optional
        Folder of the weights and ``manifest.json`` (default: :data:`DEFAULT_TRAIN_DIR`, ``./my_models``).
    lr : float, default 0.05
    batch_size : int, default 128
    progress : bool, default True
        tqdm progress bar on stderr.
    augment : {'none', 'shift', 'shift+flip'}, optional
        Default: the dataset's :data:`ZOO_AUGMENTATION`.
    overwrite_bundled : bool, default False
        Allow replacing a bundled checkpoint (``scripts/build_zoo.py`` rebuilding the zoo); otherwise a target
        file that is a bundled model raises ``ValueError`` before any training.

    Returns
    -------
    dict
        The manifest entry written (fields of :class:`intrafusion.models.zoo.ZooEntry`).
    """
    from ..models import zoo

    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    model_id = model_id or default_model_id(arch, dataset)
    if not model_id or any(c in model_id for c in "/\\ ") or model_id.startswith("."):
        raise ValueError(f"invalid model id {model_id!r}: use letters, digits, '-', '_' and '.'")
    out = Path(out_dir) if out_dir is not None else DEFAULT_TRAIN_DIR
    bundled = _bundled_id(out / f"{model_id}.safetensors")
    if bundled is not None and not overwrite_bundled:
        raise ValueError(
            f"refused: {out / f'{model_id}.safetensors'} is the bundled model {bundled!r}, and training would "
            f"overwrite it; give another --out (default: {DEFAULT_TRAIN_DIR}) or --id. To rebuild the bundled zoo, "
            "run scripts/build_zoo.py")
    aug = augment if augment is not None else ZOO_AUGMENTATION.get(dataset, "none")
    config = zoo_arch_config(arch, width, dataset)
    pre = get_info(dataset).preprocessing
    train_set = load_dataset(dataset, "train", preprocessing=pre)
    test_set = load_dataset(dataset, "test", preprocessing=pre)

    torch.manual_seed(seed)
    model = build_model(config)
    history = train(model, train_set, test_set, epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress,
                    device=device,
                    augment=aug)
    x_test, y_test = test_set.tensors
    accuracy = evaluate(model, x_test, y_test).accuracy
    eval_seconds = _best_eval_seconds(model, x_test, y_test)
    macs, params = count_macs_params(copy.deepcopy(model), torch.zeros((1, *pre.input_shape)))

    file = out / f"{model_id}.safetensors"
    save_model(model, config, file, metadata={"dataset": dataset, "preprocessing": pre.to_dict(),
                                              "test_accuracy": accuracy, "id": model_id})
    info = get_info(dataset)
    entry = {
        "id": model_id,
        "file": file.name,
        "sha256": sha256_file(file),
        "arch_config": config.to_dict(),
        "dataset": dataset,
        "preprocessing": pre.to_dict(),
        "split": _split_text(dataset),
        "epochs": int(epochs),
        "seed": int(seed),
        "optimizer": {"name": "SGD", "lr": lr, "momentum": _MOMENTUM, "weight_decay": _WEIGHT_DECAY,
                      "nesterov": False, "schedule": "cosine (per batch)", "batch_size": batch_size,
                      "augmentation": aug, "loss": "cross-entropy"},
        "test_accuracy": accuracy,
        "params": params,
        "macs": macs,
        "size_bytes": file.stat().st_size,
        "train_seconds_per_epoch": round(history.seconds_per_epoch, 3),
        "eval_seconds": round(eval_seconds, 4),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__.split("+")[0],
        "command": train_command(arch, width, dataset, epochs, seed, model_id, out_dir, lr, batch_size, aug),
        "description": f"{describe_config(config)}, trained {epochs} epochs from scratch on {info.name} "
                       f"({info.train_size} train images); {accuracy:.2f}% on its {info.test_size} test images",
    }
    out.mkdir(parents=True, exist_ok=True)
    _write_manifest(out, entry)
    zoo._load_verified.cache_clear()
    return entry
