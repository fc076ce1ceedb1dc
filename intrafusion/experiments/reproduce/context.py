"""One bundled model under test: its data, evaluation subset, groups, importance scores and single-cell pruning."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager

import numpy as np

from ...core.importance import accumulate_gradients, group_importance
from ...core.prune import TransportOptions, prepare, prune
from ...data import load_dataset, sample_batches, subset
from ...device import compute_on
from ...evaluate import count_macs_params, predict_logits
from ...models.zoo import load_zoo_model
from .common import n_params
from .evaluator import GroupEvaluator, scores
from .settings import Settings, middle_group, subset_size

__all__ = ["ModelContext"]


class ModelContext:
    """What every section measures one model with.

    The evaluation subset (``x_eval``, ``y_eval``) has a size set by ``settings.eval_macs``; ``reference`` are
    the unpruned logits on it. Which groups each section prunes is decided here, from the paper numbering
    (0 = nearest the classifier): the middle group and the input-side group always, every group for a full run.
    ``timing`` collects each section's timing (written to ``summary.json``); sections may leave results for
    later sections as attributes (the data-free section leaves ``distances``).

    ``device`` (``settings.device``) is where evaluations, transport costs (inside :meth:`compute`) and
    fine-tuning run; the model, its data and the pruned weights stay on the CPU, and logits come back to it.
    """

    def __init__(self, model_id: str, settings: Settings, progress: bool):
        self.id, self.settings, self.progress = model_id, settings, progress
        self.device = settings.device
        self.loaded = load_zoo_model(model_id)
        self.model, self.ex = self.loaded.model, self.loaded.example_inputs
        self.arch = self.loaded.config.arch
        self.dataset = self.loaded.dataset
        pre = self.loaded.preprocessing
        test = load_dataset(self.dataset, "test", preprocessing=pre)
        train_set = load_dataset(self.dataset, "train", preprocessing=pre)
        self.x_test, self.y_test = test.tensors
        self.x_train, self.y_train = train_set.tensors
        self.macs, self.params = count_macs_params(self.model, self.ex)
        s = settings
        self.n_eval = subset_size(s.eval_macs, self.macs, s.min_eval, s.max_eval, len(self.x_test))
        self.x_eval, self.y_eval = subset(test, self.n_eval, seed=0).tensors
        self.reference = predict_logits(self.model, self.x_eval, device=self.device)
        self.base_accuracy = 100.0 * float((predict_logits(self.model, self.x_test, device=self.device).argmax(1)
                                            == self.y_test).float().mean())
        self.base_eval_accuracy = 100.0 * float((self.reference.argmax(1) == self.y_eval).float().mean())
        self.prepared = prepare(self.model, self.ex)
        self.groups = self.prepared.groups
        count = len(self.groups)
        self.middle, self.input_side = middle_group(count), count - 1
        if s.all_groups:
            self.datafree_groups = list(range(count))
        else:
            self.datafree_groups = sorted({self.middle, self.input_side})
        self.preservation_groups = sorted({0, self.middle, self.input_side} & set(self.datafree_groups))
        self.ablation_groups = sorted({self.middle, self.input_side} if s.ablation_input_group else {self.middle})
        self.taylor = sample_batches(self.x_train, self.y_train, s.taylor_batches, s.taylor_batch_size)
        self.fast_eval = {}
        self.timing: dict[str, dict] = {}
        self.importance: dict[str, dict[int, np.ndarray]] = {}
        self.importance_seconds: dict[str, float] = {}
        self.distances: dict[tuple[int, float, str], np.ndarray] = {}

    def compute(self) -> AbstractContextManager:
        """``with ctx.compute():`` transport costs on the run's device (on the CPU: left as they are)."""
        return compute_on(None if self.device == "cpu" else self.device)

    def group_evaluator(self, g: int) -> GroupEvaluator:
        """A :class:`GroupEvaluator` of the eval subset for models that differ in group ``g`` only."""
        return GroupEvaluator(self.prepared.model, self.changed(g), self.x_eval, device=self.device)

    def changed(self, g: int) -> set[str]:
        """The layers pruning group ``g`` changes."""
        grp = self.groups[g]
        return set(grp.producers) | set(grp.consumers) | set(grp.norms)

    def compute_importance(self) -> None:
        """Importance of every group for every criterion of the settings and l1 (computed once, then shared)."""
        model, graph = self.prepared.model, self.prepared.graph
        for crit in dict.fromkeys((*self.settings.criteria, "l1")):  # l1 also drives ablations and speed
            if crit in self.importance:
                continue
            t0 = time.perf_counter()
            if crit == "taylor":
                accumulate_gradients(model, self.taylor)
            if crit == "l1-raw" and self.prepared.raw_l1 is not None:  # scored before folding (prepare)
                self.importance[crit] = {g.index: self.prepared.raw_l1[g.index] for g in self.groups}
            else:
                self.importance[crit] = {g.index: group_importance(graph.tp_group(g.index), crit).numpy()
                                         for g in self.groups}
            if crit == "taylor":
                model.zero_grad(set_to_none=True)
            self.importance_seconds[crit] = time.perf_counter() - t0

    def cell(self, evaluator: GroupEvaluator, g: int, s: float, method: str, criterion: str,
             options: TransportOptions, check: bool) -> tuple[dict, np.ndarray, float]:
        """Prune group ``g`` alone at sparsity ``s`` and score it on the eval subset.

        Returns the row's numbers, the per-sample logit distances and the OT solve time.
        """
        t0 = time.perf_counter()
        with self.compute():
            res = prune(self.model, self.ex, g, s, method=method, criterion=criterion, options=options,
                        importance={g: self.importance[criterion][g]})
        t1 = time.perf_counter()
        logits = evaluator.logits(res.model, check=check)
        t2 = time.perf_counter()
        acc, dist, agree, per_sample = scores(logits, self.y_eval, self.reference)
        rec = res.records[0]
        row = {"accuracy": round(acc, 3), "logit_distance": round(dist, 5), "agreement": round(agree, 3),
               "params": n_params(res.model), "seconds": round(t1 - t0, 5), "eval_seconds": round(t2 - t1, 5),
               "n": rec.n, "kept": rec.m}
        return row, per_sample, rec.timings.get("solve", 0.0)

    def info(self) -> dict:
        """The model and its run, as written to ``summary.json``."""
        e = self.loaded.entry
        return {"id": self.id, "arch": self.arch, "width": e.width if e else None, "dataset": self.dataset,
                "sha256": e.sha256 if e else None, "device": self.device,
                "params": self.params, "macs": self.macs, "test_samples": len(self.x_test),
                "train_samples": len(self.x_train), "eval_samples": self.n_eval,
                "base_accuracy": round(self.base_accuracy, 3), "base_eval_accuracy": round(self.base_eval_accuracy, 3),
                "groups": [g.to_dict() for g in self.groups], "middle_group": self.middle,
                "input_group": self.input_side, "datafree_groups": self.datafree_groups,
                "preservation_groups": self.preservation_groups, "ablation_groups": self.ablation_groups,
                "fast_eval": {str(k): v for k, v in self.fast_eval.items()},
                "importance_seconds": self.importance_seconds, "timing": self.timing}
