"""Split-data training with fusion: PaF and FaP against the whole-data model (paper section 6, Fig. 22, Table 6).

The training set is split into k disjoint, class-balanced parts and one model is trained on each part, the k
trainings running in parallel (one task each, :func:`intrafusion.parallel.map_tasks`: Ray when ``workers > 1``
or a cluster address is given, an in-process loop otherwise). Then, with T training and F fine-tuning epochs:

* **PaF** (prune, then fuse): prune each model with Intra-Fusion (optionally with a repair step), fine-tune each
  on its own part for F epochs (in parallel again), fuse the k pruned models into one
  (:func:`intrafusion.core.model_fusion.fuse_models`), fine-tune it on all the data for F epochs.
* **FaP** (fuse, then prune): fuse the k models, fine-tune on all the data for F epochs, prune, fine-tune F.
* **whole-data**: one model trained on all the data for T epochs, pruned alike, fine-tuned for 2F epochs:
  every pipeline gets T + 2F epochs in all (a split model's epoch covers 1/k of the data).

Every single-model step (the whole-data training, fusion, pruning, the fine-tuning on all the data) runs with
the torch threads of ONE task, so each model gets the same compute and the speedups measure the parallelism.
Wall-clock seconds are split into training, fusion, pruning and fine-tuning; training speedup = whole-data
training / split training (wall), overall speedup = whole-data total / pipeline total. The Ray start-up
(once per process; an existing cluster has none) is reported separately as ``startup`` and is in no total.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..core.model_fusion import average_models, fuse_models
from ..core.prune import prune
from ..core.repair import RepairOptions, reestimate_bn
from ..data import get_info, load_dataset, subset
from ..evaluate import evaluate
from ..models.architectures import build_model
from ..parallel import default_threads, map_tasks, ray_address
from .split_config import ARCHS, PIPELINES, SplitDataConfig, quick_config, split_indices
from .train import ZOO_AUGMENTATION, train
from .train_zoo import zoo_arch_config

__all__ = ["ARCHS", "PIPELINES", "PipelineResult", "SplitDataConfig", "SplitDataResult", "Stopped", "quick_config",
           "run_split_data", "split_indices"]

Event = Callable[[dict], None]


class Stopped(RuntimeError):
    """The caller's ``should_stop`` became True: the pipeline ended between two steps."""


@dataclass
class PipelineResult:
    """One pipeline: accuracy after each stage, final widths, wall-clock seconds per step and speedups.

    ``times`` has ``training``, ``fusion``, ``pruning``, ``fine_tuning`` and ``total`` (their sum).
    ``stages`` is a list of ``{"stage", "accuracy"}`` (test accuracy in percent) in order.
    """

    name: str
    stages: list[dict] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("training", "fusion", "pruning", "fine_tuning"), 0.0))
    widths: list[int] = field(default_factory=list)
    params: int = 0
    training_speedup: float = float("nan")
    overall_speedup: float = float("nan")

    @property
    def final_accuracy(self) -> float:
        return self.stages[-1]["accuracy"] if self.stages else float("nan")

    @property
    def total(self) -> float:
        return sum(self.times[k] for k in ("training", "fusion", "pruning", "fine_tuning"))

    def to_dict(self) -> dict:
        return dict(asdict(self), final_accuracy=self.final_accuracy, times=dict(self.times, total=self.total))


@dataclass
class SplitDataResult:
    """Everything a run measured (JSON-safe through :meth:`to_dict`).

    Attributes
    ----------
    config : SplitDataConfig
    part_sizes : list of int
    split_models : list of dict
        Per split model: ``part``, ``seed``, ``accuracy``, ``seconds`` (its own training time).
    naive_average_accuracy : float
        The k models averaged WITHOUT alignment (what fusion must beat; BatchNorm statistics re-estimated
        as for the fusion when ``config.reset_bn``).
    pipelines : dict of PipelineResult
        ``PaF``, ``FaP``, ``whole-data``.
    curves : dict of list of dict
        Per-epoch records (``epoch``, ``test_accuracy``, ``train_loss``, ...) of every training and
        fine-tuning run, by label.
    fusion : dict
        Mode, seconds, and per-group channels moved by the alignment of each fusion.
    environment : dict
        Cores, threads per task, workers, whether Ray ran, start-up seconds, torch version.
    """

    config: SplitDataConfig
    part_sizes: list[int]
    split_models: list[dict]
    naive_average_accuracy: float
    pipelines: dict[str, PipelineResult]
    curves: dict[str, list[dict]]
    fusion: dict
    environment: dict

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "part_sizes": self.part_sizes, "split_models": self.split_models,
                "naive_average_accuracy": self.naive_average_accuracy,
                "pipelines": {k: v.to_dict() for k, v in self.pipelines.items()}, "curves": self.curves,
                "fusion": self.fusion, "environment": self.environment}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=_jsonable)


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


# ------------------------------------------------------------------------------------------------ tasks


def _train_task(item: dict, shared: dict, on_epoch=None) -> dict:
    """One model on one part: ``item`` = {model, part (index or None = all), epochs, lr, seed}; a module-level
    function so that Ray can run it. Returns the trained model, its history and its seconds."""
    x, y = shared["x"], shared["y"]
    if item["part"] is not None:
        idx = torch.tensor(np.asarray(shared["parts"][item["part"]]))  # a copy: Ray's arrays are read-only
        x, y = x[idx], y[idx]
    model = copy.deepcopy(item["model"])
    # Pin the task's threads: importing numba (the pruning cost kernel) was seen to raise torch's count to
    # all cores, which made training 10x slower on a busy 2-core machine.
    torch.set_num_threads(shared["threads"])
    t0 = time.perf_counter()
    history = train(model, (x, y), (shared["x_test"], shared["y_test"]), item["epochs"], lr=item["lr"],
                    batch_size=shared["batch_size"], seed=item["seed"], augment=shared["augment"],
                    on_epoch=on_epoch, should_stop=shared.get("should_stop"))
    return {"model": model, "history": history.to_dict(), "seconds": time.perf_counter() - t0}


def _warm_task(_item) -> int:
    """Start a Ray worker and import torch and the training code there (start-up kept out of the timings)."""
    from . import train as _  # noqa: F401

    return os.getpid()


def _widths(model: nn.Module) -> list[int]:
    return [int(m.weight.shape[0]) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


class _Run:
    """State of one run: data, thread budget, timers, events."""

    def __init__(self, config: SplitDataConfig, on_event: Event | None, should_stop, progress: bool):
        self.config, self.on_event, self.should_stop = config, on_event, should_stop
        info = get_info(config.dataset)
        train_set = load_dataset(config.dataset, "train", preprocessing=info.preprocessing)
        test_set = load_dataset(config.dataset, "test", preprocessing=info.preprocessing)
        if config.train_size:
            train_set = subset(train_set, config.train_size, seed=config.seed)
        if config.test_size:
            test_set = subset(test_set, config.test_size, seed=config.seed)
        self.x, self.y = train_set.tensors
        self.x_test, self.y_test = test_set.tensors
        self.parts = split_indices(self.y.numpy(), config.parts, config.seed)
        self.example = self.x[:2]
        gen = torch.Generator().manual_seed(config.seed)
        self.fusion_data = self.x[torch.randperm(len(self.x), generator=gen)[: config.fusion_samples]]
        self.repair_data = self.x[torch.randperm(len(self.x), generator=gen)[:256]]
        self.in_process = config.workers == 1 and not ray_address(config.address)
        self.threads = torch.get_num_threads() if self.in_process else default_threads(config.workers, config.address)
        augment = config.augment or (ZOO_AUGMENTATION.get(config.dataset, "none") if self.x.dim() == 4 else "none")
        self.shared = {"x": self.x, "y": self.y, "x_test": self.x_test, "y_test": self.y_test, "parts": self.parts,
                       "batch_size": config.batch_size, "augment": augment, "threads": self.threads}
        self.curves: dict[str, list[dict]] = {}
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=9, desc="split-data", unit="step", file=sys.stderr)

    def step(self, text: str) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Stopped("stopped")
        if self.bar is not None:
            self.bar.set_postfix_str(text)
            self.bar.update(1)

    def emit(self, **event) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def accuracy(self, model: nn.Module) -> float:
        return evaluate(model, self.x_test, self.y_test).accuracy

    def stage(self, pipe: PipelineResult, stage: str, model: nn.Module | list[nn.Module]) -> float:
        """Record the test accuracy of ``model`` (of a list: the mean over its models) after ``stage``."""
        models = model if isinstance(model, list) else [model]
        acc = float(np.mean([self.accuracy(m) for m in models]))
        pipe.stages.append({"stage": stage, "accuracy": acc})
        self.emit(kind="stage", pipeline=pipe.name, stage=stage, accuracy=acc)
        return acc

    def _epoch_callback(self, label: str):
        self.curves[label] = []

        def on_epoch(e):
            self.curves[label].append(e.to_dict())
            self.emit(kind="epoch", curve=label, **e.to_dict())
        return on_epoch

    def train_many(self, labels: list[str], items: list[dict]) -> tuple[list[dict], float]:
        """Train ``items`` as parallel tasks; returns their outputs and the wall-clock seconds."""
        t0 = time.perf_counter()
        if self.in_process:  # live per-epoch events (the app); Ray tasks report when they end
            shared = dict(self.shared, should_stop=self.should_stop)
            outs = [_train_task(it, shared, self._epoch_callback(lb)) for lb, it in zip(labels, items)]
        else:
            outs = list(map_tasks(_train_task, items, workers=self.config.workers, address=self.config.address,
                                  shared=self.shared, threads=self.threads))
            for lb, out in zip(labels, outs):
                self.curves[lb] = out["history"]["epochs"]
                for e in out["history"]["epochs"]:
                    self.emit(kind="epoch", curve=lb, **e)
        return outs, time.perf_counter() - t0

    def train_one(self, label: str, model: nn.Module, part, epochs: int, lr: float, seed: int) -> tuple:
        """Train in this process with one task's threads (the same compute as each parallel model)."""
        shared = dict(self.shared, should_stop=self.should_stop)
        out = _train_task(dict(model=model, part=part, epochs=epochs, lr=lr, seed=seed), shared,
                          self._epoch_callback(label))
        return out["model"], out["seconds"]

    def prune(self, model: nn.Module) -> tuple[nn.Module, float]:
        c = self.config
        t0 = time.perf_counter()
        data = self.repair_data if RepairOptions.coerce(c.repair).uses_data else None
        res = prune(model, self.example, "all", c.sparsity, method="fusion", criterion=c.criterion, repair=c.repair,
                    repair_data=data, seed=c.seed)
        return res.model, time.perf_counter() - t0

    def fuse(self, models: list[nn.Module]) -> tuple[nn.Module, float, dict]:
        """OT fusion, then BatchNorm statistics re-estimated on the fusion samples (both timed as fusion)."""
        t0 = time.perf_counter()
        res = fuse_models(models, self.example, mode=self.config.fusion, data=self.fusion_data,
                          reset_bn=self.config.reset_bn)
        seconds = time.perf_counter() - t0
        moved = {}
        for r in res.records:
            moved.setdefault(str(r.group), []).append(r.moved)
        info = {"seconds": seconds, "moved": moved, "timings": res.timings}
        if self.config.reset_bn:  # what the BatchNorm re-estimation adds (evaluated outside the timer)
            info["accuracy_without_bn_reset"] = self.accuracy(average_models(res.aligned))
        return res.model, seconds, info


# ------------------------------------------------------------------------------------------------ pipeline


def run_split_data(config: SplitDataConfig, *, on_event: Event | None = None, progress: bool = True,
                   should_stop: Callable[[], bool] | None = None) -> SplitDataResult:
    """Run the split-data experiment (see the module docstring) and return what it measured.

    Parameters
    ----------
    config : SplitDataConfig
    on_event : callable, optional
        Called with a dict per event: ``kind='epoch'`` (``curve`` label and the epoch's record: live
        training curves; per epoch in-process, all at once when a Ray task ends) and ``kind='stage'``
        (``pipeline``, ``stage``, ``accuracy``).
    progress : bool
        A tqdm bar of the steps on stderr.
    should_stop : callable, optional
        Polled between steps and every training batch (in-process); when True, :class:`Stopped` is raised.
    """
    c = config.check()
    run = _Run(c, on_event, should_stop, progress)
    env = {"cores": os.cpu_count(), "threads_per_task": run.threads, "workers": c.workers,
           "ray": not run.in_process, "startup": 0.0, "torch": torch.__version__.split("+")[0],
           "python": platform.python_version()}
    before = torch.get_num_threads()
    try:
        t0 = time.perf_counter()
        _warm_up(run)
        torch.set_num_threads(run.threads)  # every single-model step: one task's threads
        if not run.in_process:  # start Ray and its workers before any timer
            list(map_tasks(_warm_task, range(c.workers), workers=c.workers, address=c.address, threads=run.threads))
        env["startup"] = time.perf_counter() - t0
        return _pipelines(run, c, env)
    finally:
        torch.set_num_threads(before)
        if run.bar is not None:
            run.bar.close()


def _warm_up(run: _Run) -> None:
    """First calls pay one-off costs (imports of POT and numba, torch's first autograd pass); pay them here,
    on a throwaway model, so that no step's time includes them."""
    model = build_model(zoo_arch_config(run.config.arch, run.config.width, run.config.dataset))
    few = dict(run.shared, x=run.x[:8], y=run.y[:8], x_test=run.x_test[:8], y_test=run.y_test[:8], batch_size=4)
    _train_task(dict(model=model, part=None, epochs=1, lr=0.01, seed=0), few)
    fuse_models([model, model], run.example, mode=run.config.fusion, data=run.fusion_data[:8])
    prune(model, run.example, "all", run.config.sparsity, method="fusion", criterion=run.config.criterion)


def _pipelines(run: _Run, c: SplitDataConfig, env: dict) -> SplitDataResult:
    config = zoo_arch_config(c.arch, c.width, c.dataset)
    paf, fap, whole = (PipelineResult(n) for n in PIPELINES)

    # whole-data model: T epochs on everything
    run.step("whole-data training")
    torch.manual_seed(c.seed)
    whole_model, whole.times["training"] = run.train_one("whole-data", build_model(config), None, c.epochs, c.lr,
                                                         c.seed)
    run.stage(whole, "trained", whole_model)

    # k split models in parallel, one per part
    run.step(f"training {c.parts} split models")
    items = []
    for i in range(c.parts):
        torch.manual_seed(c.seed + 1 + i)
        items.append(dict(model=build_model(config), part=i, epochs=c.epochs, lr=c.lr, seed=c.seed + 1 + i))
    outs, split_wall = run.train_many([f"part {i}" for i in range(c.parts)], items)
    models = [o["model"] for o in outs]
    split = [{"part": i, "seed": c.seed + 1 + i, "accuracy": run.accuracy(m), "seconds": o["seconds"]}
             for i, (m, o) in enumerate(zip(models, outs))]
    env["split_training_sum"] = float(sum(o["seconds"] for o in outs))
    naive_model = average_models(models)
    if c.reset_bn:
        reestimate_bn(naive_model, run.fusion_data, {})
    naive = run.accuracy(naive_model)
    for pipe in (paf, fap):
        pipe.times["training"] = split_wall

    fap_model, fusion_fap = _fap(run, c, models, fap)
    paf_model, fusion_paf = _paf(run, c, models, paf)

    # whole-data: prune, fine-tune 2F
    run.step("whole-data: prune, fine-tune")
    pruned, whole.times["pruning"] = run.prune(whole_model)
    run.stage(whole, "pruned", pruned)
    whole_final, whole.times["fine_tuning"] = run.train_one("whole-data pruned, fine-tuned", pruned, None,
                                                            2 * c.finetune_epochs, c.finetune_lr, c.seed)
    run.stage(whole, "final", whole_final)

    for pipe, model in ((paf, paf_model), (fap, fap_model), (whole, whole_final)):
        pipe.widths, pipe.params = _widths(model), int(sum(p.numel() for p in model.parameters()))
        pipe.training_speedup = _ratio(whole.times["training"], pipe.times["training"])
        pipe.overall_speedup = _ratio(whole.total, pipe.total)
    fusion = {"mode": c.fusion, "samples": int(len(run.fusion_data)), "FaP": fusion_fap, "PaF": fusion_paf}
    return SplitDataResult(c, [len(p) for p in run.parts], split, naive, {p.name: p for p in (paf, fap, whole)},
                           run.curves, fusion, env)


def _fap(run: _Run, c: SplitDataConfig, models: list[nn.Module], fap: PipelineResult) -> tuple[nn.Module, dict]:
    """FaP: fuse the k models, fine-tune on all the data, prune, fine-tune on all the data."""
    run.step("FaP: fuse")
    fused, fap.times["fusion"], info = run.fuse(models)
    run.stage(fap, "fused", fused)
    run.step("FaP: fine-tune, prune, fine-tune")
    fused, t = run.train_one("FaP fused, fine-tuned", fused, None, c.finetune_epochs, c.finetune_lr, c.seed)
    fap.times["fine_tuning"] += t
    run.stage(fap, "fine-tuned", fused)
    pruned, fap.times["pruning"] = run.prune(fused)
    run.stage(fap, "pruned", pruned)
    model, t = run.train_one("FaP pruned, fine-tuned", pruned, None, c.finetune_epochs, c.finetune_lr, c.seed)
    fap.times["fine_tuning"] += t
    run.stage(fap, "final", model)
    return model, info


def _paf(run: _Run, c: SplitDataConfig, models: list[nn.Module], paf: PipelineResult) -> tuple[nn.Module, dict]:
    """PaF: prune each model, fine-tune each on its part (in parallel), fuse them, fine-tune on all the data."""
    run.step("PaF: prune each")
    pruned = []
    for m in models:
        p, t = run.prune(m)
        pruned.append(p)
        paf.times["pruning"] += t
    run.stage(paf, "pruned (mean of parts)", pruned)
    run.step("PaF: fine-tune each")
    items = [dict(model=p, part=i, epochs=c.finetune_epochs, lr=c.finetune_lr, seed=c.seed + 1 + i)
             for i, p in enumerate(pruned)]
    outs, t = run.train_many([f"PaF part {i} fine-tuned" for i in range(c.parts)], items)
    pruned = [o["model"] for o in outs]
    paf.times["fine_tuning"] += t
    run.stage(paf, "fine-tuned (mean of parts)", pruned)
    run.step("PaF: fuse")
    fused, paf.times["fusion"], info = run.fuse(pruned)
    run.stage(paf, "fused", fused)
    run.step("PaF: fine-tune")
    model, t = run.train_one("PaF fused, fine-tuned", fused, None, c.finetune_epochs, c.finetune_lr, c.seed)
    paf.times["fine_tuning"] += t
    run.stage(paf, "final", model)
    return model, info


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b > 0 and math.isfinite(a) else float("nan")
