"""Training: the bundled zoo's models, and fine-tuning pruned models (the app's recovery curves).

* :func:`train` -- SGD with momentum and weight decay, a cosine (or constant) learning-rate schedule
  stepped every batch, and the exact test accuracy after every epoch. Deterministic given ``seed`` on a
  given machine (same torch version and thread count): the model, data order and any randomness in the
  model are seeded.
* :func:`fine_tune` -- the same loop on a *copy* of a (pruned) model, on the bundled train split, with a
  pre-training "epoch 0" entry so a recovery curve starts where pruning left the model.
* :func:`~.train_zoo.train_zoo_model` (in :mod:`.train_zoo`, importable from here too) -- what
  ``python -m intrafusion train`` runs: build, train, save as safetensors and upsert the entry in a manifest
  (see :mod:`intrafusion.models.zoo` for its format).

Zoo models are trained with the augmentation of :data:`ZOO_AUGMENTATION` for their dataset (random
2-pixel shifts; flips for the animals; none for the flattened 8x8 digits), so the one training command
of a manifest entry rebuilds its model. See ``docs/ZOO.md`` for the accuracies reached.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from ..data import Preprocessing, load_dataset
from ..device import model_device, resolve_device
from ..evaluate import evaluate

__all__ = [
    "AUGMENTATIONS",
    "SCHEDULES",
    "EpochResult",
    "TrainHistory",
    "ZOO_AUGMENTATION",
    "fine_tune",
    "train",
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
            sel = ((oy == dy) & (ox == dx)).nonzero().flatten().to(xb.device)
            if len(sel):
                out[sel] = padded[sel, :, dy : dy + h, dx : dx + w]
    if how == "shift+flip":
        flip = (torch.rand(n, generator=generator) < 0.5).to(xb.device)
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
    device: str | torch.device | None = "cpu",
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
    device : {'cpu', 'cuda', 'auto'} or torch.device, default 'cpu'
        Where the batches run (``auto``: CUDA when torch sees one); the model is moved back to its own
        device before returning.

    Returns
    -------
    TrainHistory

    Raises
    ------
    ValueError
        For a negative number of epochs, a non-positive learning rate or batch size, an unknown schedule,
        or an empty training set.
    """
    augment = _check_train_args(epochs, lr, batch_size, schedule, augment)
    epochs, batch_size = int(epochs), int(batch_size)
    x, y = _tensors(train_set)
    if len(x) == 0:
        raise ValueError("the training set is empty")
    if augment != "none" and x.dim() != 4:
        raise ValueError(f"augmentation {augment!r} needs image inputs (N, C, H, W), got shape {tuple(x.shape)}")
    x_test, y_test = _tensors(test_set) if test_set is not None else (None, None)
    # Train where asked (``auto``: CUDA when present); the model goes back to its own device at the end, so a
    # caller that saves or prunes it afterwards never sees GPU tensors it did not ask for.
    dev, home = resolve_device(device), model_device(model)
    model.to(dev)
    x, y = x.to(dev), y.to(dev)
    if x_test is not None:
        x_test, y_test = x_test.to(dev), y_test.to(dev)

    def test_accuracy() -> tuple[float, float]:
        if x_test is None:
            return float("nan"), 0.0
        t0 = time.perf_counter()
        acc = evaluate(model, x_test, y_test).accuracy
        return acc, time.perf_counter() - t0

    torch.manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(list(model.parameters()), lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps_per_epoch = len(_batches(len(x), batch_size, torch.Generator().manual_seed(0)))
    loop = _Loop(model, optimizer, x, y, x.amin(dim=(0, 2, 3)) if augment != "none" else None, augment,
                 torch.Generator().manual_seed(seed), lr, schedule, batch_size, epochs * steps_per_epoch,
                 should_stop)
    history = TrainHistory()

    def record(result: EpochResult) -> None:
        history.epochs.append(result)
        if on_epoch is not None:
            on_epoch(result)

    if eval_before:
        loss0, acc0 = _eval_loss_accuracy(model, x, y)
        t_acc, t_sec = test_accuracy()
        record(EpochResult(0, loss0, acc0, t_acc, 0.0, t_sec, 0.0, 0))
    if progress and loop.total_steps:
        from tqdm.auto import tqdm

        loop.bar = tqdm(total=loop.total_steps, desc="train", unit="batch", leave=True)
    try:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            loss_sum, correct, seen, done, current_lr, stop = _one_epoch(loop, epoch)
            seconds = time.perf_counter() - t0
            model.eval()
            t_acc, t_sec = test_accuracy()
            record(EpochResult(epoch, loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1), t_acc, seconds,
                               t_sec, current_lr, seen))
            if loop.bar is not None:
                loop.bar.set_postfix(epoch=epoch, loss=f"{loss_sum / max(seen, 1):.3f}", test=f"{t_acc:.2f}")
            if stop:
                history.stopped_early = epoch < epochs or done < steps_per_epoch
                break
    finally:
        if loop.bar is not None:
            loop.bar.close()
        model.eval()
        model.to(home)
    return history


def _check_train_args(epochs, lr: float, batch_size, schedule: str, augment: str | None) -> str:
    """ValueError for a bad argument of :func:`train`; returns the augmentation (``None`` means ``'none'``)."""
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
    return augment


@dataclass
class _Loop:
    """What the epochs of one :func:`train` call share; ``step`` counts batches over all epochs (the schedule)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    fill: torch.Tensor | None  # background value per channel for shifted images; None without augmentation
    augment: str
    generator: torch.Generator  # shuffling and augmentation, seeded once per call
    lr: float
    schedule: str
    batch_size: int
    total_steps: int
    should_stop: Callable[[], bool] | None
    bar: Any = None
    step: int = 0


def _one_epoch(loop: _Loop, epoch: int) -> tuple[float, int, int, int, float, bool]:
    """One pass of SGD over the shuffled batches: ``(loss sum, correct, samples seen, batches done, last lr,
    stopped)``; the learning rate follows the schedule per batch."""
    loop.model.train()
    loss_sum, correct, seen, done, current_lr = 0.0, 0, 0, 0, loop.lr
    for idx in _batches(len(loop.x), loop.batch_size, loop.generator):
        current_lr = _lr_at(loop.step, loop.total_steps, loop.lr, loop.schedule)
        for group in loop.optimizer.param_groups:
            group["lr"] = current_lr
        idx = idx.to(loop.x.device)
        xb, yb = loop.x[idx], loop.y[idx]
        if loop.fill is not None:
            xb = _augment(xb, loop.augment, loop.fill, loop.generator)
        out = loop.model(xb)
        loss = F.cross_entropy(out, yb)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
        loop.step += 1
        done += 1
        loss_sum += float(loss.detach()) * len(idx)
        correct += int((out.detach().argmax(1) == yb).sum())
        seen += len(idx)
        if loop.bar is not None:
            loop.bar.update(1)
            loop.bar.set_postfix(epoch=epoch, loss=f"{loss_sum / seen:.3f}", acc=f"{100.0 * correct / seen:.1f}")
        if loop.should_stop is not None and loop.should_stop():
            return loss_sum, correct, seen, done, current_lr, True
    return loss_sum, correct, seen, done, current_lr, False


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
    device: str | torch.device | None = "cpu",
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
    momentum, weight_decay, batch_size, seed, schedule, on_epoch, progress, should_stop, augment, device
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
                    should_stop=should_stop, eval_before=True, augment=augment, device=device)
    return work, history


# The zoo writer (train_zoo_model and its helpers) lives in .train_zoo; these names stay importable from here.
_ZOO_NAMES = frozenset({"DEFAULT_TRAIN_DIR", "default_model_id", "describe_config", "train_command",
                        "train_zoo_model", "zoo_arch_config", "_write_manifest"})


def __getattr__(name: str):
    if name in _ZOO_NAMES:
        from . import train_zoo

        return getattr(train_zoo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
