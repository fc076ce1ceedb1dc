"""Training: the bundled zoo's models, and fine-tuning pruned models (the app's recovery curves).

* :func:`train` -- SGD with momentum and weight decay, a cosine (or constant) learning-rate schedule
  stepped every batch, and the exact test accuracy after every epoch. Deterministic given ``seed`` on a
  given machine (same torch version and thread count): the model, data order and any randomness in the
  model are seeded.
* :func:`fine_tune` -- the same loop on a *copy* of a (pruned) model, on the bundled train split, with a
  pre-training "epoch 0" entry so a recovery curve starts where pruning left the model.
* :func:`train_zoo_model` -- what ``python -m intrafusion train`` runs: build, train, save as safetensors
  and upsert the entry in the zoo manifest (see :mod:`intrafusion.models.zoo` for its format).

Zoo models are trained with the augmentation of :data:`ZOO_AUGMENTATION` for their dataset (random
2-pixel shifts; flips for the animals; none for the flattened 8x8 digits), so the one training command
of a manifest entry rebuilds its model. See ``docs/ZOO.md`` for the accuracies reached.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from ..data import ASSETS_DIR, Preprocessing, get_info, load_dataset
from ..evaluate import count_macs_params, evaluate
from ..models.architectures import ArchConfig, build_model
from ..models.checkpoint import save_model, sha256_file, write_atomic

__all__ = [
    "AUGMENTATIONS",
    "SCHEDULES",
    "EpochResult",
    "TrainHistory",
    "ZOO_AUGMENTATION",
    "default_model_id",
    "describe_config",
    "fine_tune",
    "train",
    "train_command",
    "train_zoo_model",
    "zoo_arch_config",
]

#: Learning-rate schedules of :func:`train`.
SCHEDULES = ("cosine", "constant")
#: Data augmentations of :func:`train`: none, random translation by up to 2 pixels, and that plus a random
#: horizontal flip.
AUGMENTATIONS = ("none", "shift", "shift+flip")
_SHIFT = 2
#: Augmentation :func:`train_zoo_model` uses for each dataset (no flips for digits; none for flattened inputs).
ZOO_AUGMENTATION = {
    "mnist5k": "shift",
    "animals10k": "shift+flip",
    "digits8x8": "none",
    "mnist": "shift",
    "fashion_mnist": "shift",
    "cifar10": "shift+flip",
    "cifar100": "shift+flip",
}

_DEFAULT_LR = 0.05
_DEFAULT_BATCH = 128
_MOMENTUM = 0.9
_WEIGHT_DECAY = 5e-4


@dataclass
class EpochResult:
    """One epoch of training.

    Attributes
    ----------
    epoch : int
        1-based epoch number; 0 is the evaluation before any training (see ``eval_before``).
    train_loss : float
        Mean cross-entropy over the epoch's training batches (running, in train mode). For epoch 0: the
        loss of the untouched model on the whole train split, in eval mode.
    train_accuracy : float
        Percent of training samples classified correctly during the epoch (running, in train mode); for
        epoch 0 in eval mode.
    test_accuracy : float
        Exact percent correct on the whole test split after the epoch, in eval mode
        (:func:`intrafusion.evaluate.evaluate`); NaN without a test set.
    seconds : float
        Wall time of the epoch's training pass (excluding the test evaluation); 0 for epoch 0.
    eval_seconds : float
        Wall time of the test evaluation.
    lr : float
        Learning rate of the epoch's last batch.
    samples : int
        Training samples seen in the epoch (fewer than the split if stopped early; 0 for epoch 0).
    """

    epoch: int
    train_loss: float
    train_accuracy: float
    test_accuracy: float
    seconds: float
    eval_seconds: float = 0.0
    lr: float = 0.0
    samples: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainHistory:
    """The epochs of one :func:`train` call, in order.

    Attributes
    ----------
    epochs : list of EpochResult
    stopped_early : bool
        True when ``should_stop`` ended training before the requested number of epochs.
    """

    epochs: list[EpochResult] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def final(self) -> EpochResult | None:
        """The last epoch (None if there is none)."""
        return self.epochs[-1] if self.epochs else None

    @property
    def test_accuracy(self) -> float:
        """Test accuracy after the last epoch (NaN if there is none)."""
        return self.epochs[-1].test_accuracy if self.epochs else float("nan")

    @property
    def seconds_per_epoch(self) -> float:
        """Median training-pass time of the training epochs (epoch 0 excluded; the median ignores epochs
        slowed down by other work on a shared machine)."""
        times = sorted(e.seconds for e in self.epochs if e.epoch > 0)
        if not times:
            return float("nan")
        mid = len(times) // 2
        return float(times[mid] if len(times) % 2 else 0.5 * (times[mid - 1] + times[mid]))

    def to_dict(self) -> dict:
        return {"epochs": [e.to_dict() for e in self.epochs], "stopped_early": self.stopped_early}


# --------------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------------


def _tensors(dataset: Dataset | tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of a TensorDataset, an (x, y) pair, or any map-style dataset of (x, y) items."""
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[0], dataset.tensors[-1]
    elif isinstance(dataset, tuple | list) and len(dataset) == 2 and all(torch.is_tensor(t) for t in dataset):
        x, y = dataset
    else:
        items = [dataset[i] for i in range(len(dataset))]
        if not items:
            raise ValueError("the dataset is empty")
        x = torch.stack([torch.as_tensor(it[0]) for it in items])
        y = torch.as_tensor([int(it[1]) for it in items])
    if len(x) != len(y):
        raise ValueError(f"inputs and labels differ in length: {len(x)} vs {len(y)}")
    return x.float(), y.long()


def _lr_at(step: int, total: int, base: float, schedule: str) -> float:
    if schedule == "constant" or total <= 1:
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * step / total))


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A seeded permutation cut into batches; a trailing batch of one sample is dropped (BatchNorm)."""
    perm = torch.randperm(n, generator=generator)
    out = [perm[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(out) > 1 and len(out[-1]) < 2:
        out.pop()
    return out


@torch.no_grad()
def _augment(xb: torch.Tensor, how: str, fill: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift every image by up to ``_SHIFT`` pixels (background ``fill`` enters), optionally flip it."""
    if how == "none":
        return xb
    n, _, h, w = xb.shape
    s = _SHIFT
    padded = fill.view(1, -1, 1, 1).expand(n, -1, h + 2 * s, w + 2 * s).clone()
    padded[:, :, s : s + h, s : s + w] = xb
    oy = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    out = torch.empty_like(xb)
    for dy in range(2 * s + 1):
        for dx in range(2 * s + 1):
            sel = ((oy == dy) & (ox == dx)).nonzero().flatten()
            if len(sel):
                out[sel] = padded[sel, :, dy : dy + h, dx : dx + w]
    if how == "shift+flip":
        flip = torch.rand(n, generator=generator) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def _eval_loss_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch):
        out = model(x[i : i + batch])
        loss += float(F.cross_entropy(out, y[i : i + batch], reduction="sum"))
        correct += int((out.argmax(1) == y[i : i + batch]).sum())
    return loss / len(x), 100.0 * correct / len(x)


def train(
    model: nn.Module,
    train_set: Dataset | tuple,
    test_set: Dataset | tuple | None,
    epochs: int,
    *,
    lr: float = _DEFAULT_LR,
    momentum: float = _MOMENTUM,
    weight_decay: float = _WEIGHT_DECAY,
    batch_size: int = _DEFAULT_BATCH,
    seed: int = 0,
    schedule: str = "cosine",
    on_epoch: Callable[[EpochResult], None] | None = None,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
    eval_before: bool = False,
    augment: str = "none",
) -> TrainHistory:
    """Train ``model`` in place with SGD and return its per-epoch history.

    Parameters
    ----------
    model : nn.Module
        Trained in place (all its parameters are made trainable); left in eval mode.
    train_set, test_set : Dataset or (inputs, labels)
        Already preprocessed (e.g. :func:`intrafusion.data.load_dataset`). ``test_set`` may be None.
    epochs : int
        Number of passes over ``train_set`` (0 only evaluates).
    lr : float, default 0.05
        Peak learning rate.
    momentum, weight_decay : float
        SGD momentum (0.9) and L2 weight decay (5e-4) on all parameters.
    batch_size : int, default 128
    seed : int, default 0
        Seeds the shuffling (its own generator) and torch's global generator (``torch.manual_seed``).
    schedule : {'cosine', 'constant'}
        ``cosine`` anneals the learning rate from ``lr`` towards 0 over all batches of all epochs.
    on_epoch : callable, optional
        Called with each :class:`EpochResult` as soon as it is known (the app draws live curves with it).
    progress : bool, default False
        Show a tqdm progress bar (on stderr) over all batches.
    should_stop : callable, optional
        Polled after every batch; when it returns True the current epoch ends there, is evaluated and
        recorded (its ``samples`` tell how far it got) and training stops (``stopped_early``).
    eval_before : bool, default False
        Record an epoch-0 entry: the untouched model's loss/accuracy on the train split and its test
        accuracy (reported to ``on_epoch`` too).
    augment : {'none', 'shift', 'shift+flip'}
        Image augmentation of the training batches (image inputs ``(N, C, H, W)`` only): a random
        translation by up to 2 pixels in each direction (the background, the smallest input value of each
        channel, fills in), and with ``shift+flip`` a random horizontal flip.

    Returns
    -------
    TrainHistory

    Raises
    ------
    ValueError
        For a negative number of epochs, a non-positive learning rate or batch size, an unknown schedule,
        or an empty training set.
    """
    if int(epochs) != epochs or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"the learning rate must be positive, got {lr}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    augment = augment or "none"
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augment!r}: choose one of {', '.join(AUGMENTATIONS)}")
    epochs, batch_size = int(epochs), int(batch_size)
    x, y = _tensors(train_set)
    if len(x) == 0:
        raise ValueError("the training set is empty")
    if augment != "none" and x.dim() != 4:
        raise ValueError(f"augmentation {augment!r} needs image inputs (N, C, H, W), got shape {tuple(x.shape)}")
    fill = x.amin(dim=(0, 2, 3)) if augment != "none" else None
    x_test, y_test = _tensors(test_set) if test_set is not None else (None, None)

    def test_accuracy() -> tuple[float, float]:
        if x_test is None:
            return float("nan"), 0.0
        t0 = time.perf_counter()
        acc = evaluate(model, x_test, y_test).accuracy
        return acc, time.perf_counter() - t0

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(list(model.parameters()), lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps_per_epoch = len(_batches(len(x), batch_size, torch.Generator().manual_seed(0)))
    total_steps = epochs * steps_per_epoch
    history = TrainHistory()

    def record(result: EpochResult) -> None:
        history.epochs.append(result)
        if on_epoch is not None:
            on_epoch(result)

    if eval_before:
        loss0, acc0 = _eval_loss_accuracy(model, x, y)
        t_acc, t_sec = test_accuracy()
        record(EpochResult(0, loss0, acc0, t_acc, 0.0, t_sec, 0.0, 0))

    bar = None
    if progress and total_steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, desc="train", unit="batch", leave=True)
    step = 0
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            t0 = time.perf_counter()
            loss_sum, correct, seen, done, current_lr, stop = 0.0, 0, 0, 0, lr, False
            for idx in _batches(len(x), batch_size, generator):
                current_lr = _lr_at(step, total_steps, lr, schedule)
                for group in optimizer.param_groups:
                    group["lr"] = current_lr
                xb, yb = x[idx], y[idx]
                if fill is not None:
                    xb = _augment(xb, augment, fill, generator)
                out = model(xb)
                loss = F.cross_entropy(out, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                done += 1
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((out.detach().argmax(1) == yb).sum())
                seen += len(idx)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{loss_sum / seen:.3f}", acc=f"{100.0 * correct / seen:.1f}")
                if should_stop is not None and should_stop():
                    stop = True
                    break
            seconds = time.perf_counter() - t0
            model.eval()
            t_acc, t_sec = test_accuracy()
            record(EpochResult(epoch, loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1), t_acc, seconds,
                               t_sec, current_lr, seen))
            if bar is not None:
                bar.set_postfix(epoch=epoch, loss=f"{loss_sum / max(seen, 1):.3f}", test=f"{t_acc:.2f}")
            if stop:
                history.stopped_early = epoch < epochs or done < steps_per_epoch
                break
    finally:
        if bar is not None:
            bar.close()
        model.eval()
    return history


def fine_tune(
    model: nn.Module,
    dataset_id: str,
    preprocessing: Preprocessing | Mapping | None,
    epochs: int,
    *,
    lr: float = 0.01,
    momentum: float = _MOMENTUM,
    weight_decay: float = _WEIGHT_DECAY,
    batch_size: int = _DEFAULT_BATCH,
    seed: int = 0,
    schedule: str = "cosine",
    on_epoch: Callable[[EpochResult], None] | None = None,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
    augment: str = "none",
    root: str | os.PathLike | None = None,
) -> tuple[nn.Module, TrainHistory]:
    """Fine-tune a copy of a (pruned) model on its dataset's train split.

    Parameters
    ----------
    model : nn.Module
        Never changed (a deep copy is trained), so a cached zoo model or a pruning result can be passed.
    dataset_id : str
        Dataset the model was trained on (a key of :data:`intrafusion.data.DATASETS`).
    preprocessing : Preprocessing or dict, optional
        The model's input contract (default: the dataset's).
    epochs : int
        Fine-tuning epochs (a few recover most of the accuracy lost to pruning).
    lr : float, default 0.01
        Peak learning rate (lower than from-scratch training).
    momentum, weight_decay, batch_size, seed, schedule, on_epoch, progress, should_stop, augment
        As in :func:`train`.
    root : path, optional
        Data folder for torchvision datasets.

    Returns
    -------
    model : nn.Module
        The fine-tuned copy, in eval mode.
    history : TrainHistory
        Starts with epoch 0 = the copy before any training (its test accuracy is the pruned model's).

    Notes
    -----
    BatchNorm layers train normally (batch statistics, running averages updated). A pruned model has its
    BatchNorms folded (mean 0, variance 1, scale 1): the first batches re-normalise its activations, and
    the running statistics are re-estimated during the first epoch.
    """
    work = copy.deepcopy(model)
    if preprocessing is not None and not isinstance(preprocessing, Preprocessing):
        preprocessing = Preprocessing.from_dict(preprocessing)
    train_set = load_dataset(dataset_id, "train", root=root, preprocessing=preprocessing)
    test_set = load_dataset(dataset_id, "test", root=root, preprocessing=preprocessing)
    history = train(work, train_set, test_set, epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    batch_size=batch_size, seed=seed, schedule=schedule, on_epoch=on_epoch, progress=progress,
                    should_stop=should_stop, eval_before=True, augment=augment)
    return work, history


# --------------------------------------------------------------------------------------------------
# The zoo
# --------------------------------------------------------------------------------------------------


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
    name = "VGG11-BN" if config.arch == "vgg11_bn" else "ResNet18"
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
        Folder of the weights and ``manifest.json`` (default: the bundled zoo, ``assets/models``).
    lr : float, default 0.05
    batch_size : int, default 128
    progress : bool, default True
        tqdm progress bar on stderr.
    augment : {'none', 'shift', 'shift+flip'}, optional
        Default: the dataset's :data:`ZOO_AUGMENTATION`.

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
    out = Path(out_dir) if out_dir is not None else zoo.MODELS_DIR
    aug = augment if augment is not None else ZOO_AUGMENTATION.get(dataset, "none")
    config = zoo_arch_config(arch, width, dataset)
    pre = get_info(dataset).preprocessing
    train_set = load_dataset(dataset, "train", preprocessing=pre)
    test_set = load_dataset(dataset, "test", preprocessing=pre)

    torch.manual_seed(seed)
    model = build_model(config)
    history = train(model, train_set, test_set, epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress,
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
