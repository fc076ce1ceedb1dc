"""What a reproduction run measures: the methods compared, the run settings (:data:`FULL`, :data:`QUICK`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..sweep import method_label

__all__ = ["COLORS", "CRITERION_NAMES", "FULL", "FUSION_LABELS", "LABELS", "METHOD_CELLS", "QUICK", "SHORT",
           "Settings", "TIE", "middle_group", "subset_size"]

#: The three methods of the data-free table: (method, normalization).
METHOD_CELLS = (("default", None), ("fusion", "paper"), ("fusion", "function-preserving"))
LABELS = tuple(method_label(m, n) for m, n in METHOD_CELLS)
FUSION_LABELS = LABELS[1:]
SHORT = {"default": "default", "fusion (paper)": "IF paper", "fusion (function-preserving)": "IF FP"}
COLORS = {"default": "0.35", "fusion (paper)": "tab:blue", "fusion (function-preserving)": "tab:orange"}
CRITERION_NAMES = {"l1": "ℓ1", "taylor": "Taylor", "lamp": "LAMP", "l2": "ℓ2", "random": "random"}
TIE = 0.5  # accuracy differences within +-0.5 points count as ties


@dataclass(frozen=True)
class Settings:
    """What one reproduction run measures (see :data:`FULL` and :data:`QUICK`).

    ``eval_macs`` is the budget of multiply-accumulates of one evaluation: the eval subset of a model has
    ``eval_macs / macs_per_sample`` samples (rounded down to 100), clipped to ``[min_eval, max_eval]`` and to the
    test split. ``finetune_train_macs`` likewise sets the training images seen per fine-tuning epoch.

    ``device`` is where the transport costs, the evaluations and the fine-tuning run (``cpu``, or a resolved
    ``cuda`` device: :func:`.run.run_reproduction` resolves ``auto``); the weights are pruned and repaired on the
    CPU. It is written with the other settings to ``summary.json``, so results say which device made them.
    """

    name: str
    sparsities: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    criteria: tuple[str, ...] = ("l1", "taylor", "lamp")
    all_groups: bool = True
    eval_macs: float = 1e10
    min_eval: int = 300
    max_eval: int | None = None
    preservation_sparsities: tuple[float, ...] = (0.3, 0.5, 0.7)
    ablation_sparsities: tuple[float, ...] = (0.3, 0.5, 0.7)
    ablation_input_group: bool = True
    ablation_normalizations: tuple[str, ...] = ("paper", "function-preserving")
    sinkhorn_regs: tuple[float, ...] = (0.01, 0.05, 0.2)
    finetune_ratios: tuple[float, ...] = (0.4, 0.6, 0.7)
    finetune_labels: tuple[str, ...] = LABELS
    finetune_epochs: int = 4
    finetune_train_macs: float = 1e12
    finetune_min_train: int = 1000
    finetune_full_test: bool = True
    finetune_lr: float = 0.01
    speed_sparsity: float = 0.5
    speed_repeats: int = 5
    taylor_batches: int = 4
    taylor_batch_size: int = 64
    device: str = "cpu"

    def to_dict(self) -> dict:
        return asdict(self)


#: The full run: every group, 7 sparsities, 3 criteria, 3 methods, for every bundled model.
FULL = Settings(name="full")

#: ``--quick``: the default model, its middle and input-side groups, a few sparsities, one short fine-tuning.
QUICK = Settings(
    name="quick",
    sparsities=(0.3, 0.5, 0.7),
    all_groups=False,
    min_eval=1000,
    max_eval=1000,
    preservation_sparsities=(0.5, 0.7),
    ablation_sparsities=(0.5,),
    ablation_input_group=False,
    ablation_normalizations=("paper",),
    sinkhorn_regs=(0.05,),
    finetune_ratios=(0.6,),
    finetune_labels=("default", "fusion (paper)"),
    finetune_epochs=1,
    speed_repeats=1,
)


def subset_size(budget: float, macs: int, minimum: int, maximum: int | None, total: int, step: int = 100) -> int:
    """Evaluation-subset size: ``budget // macs`` rounded down to ``step``, clipped to the bounds and ``total``."""
    n = int(budget // max(macs, 1)) // step * step
    n = max(minimum, n)
    if maximum is not None:
        n = min(maximum, n)
    return min(total, n)


def middle_group(count: int) -> int:
    """The group in the middle of the network (paper numbering): 3 of VGG11's 8, 5 of ResNet18's 12."""
    return (count - 1) // 2
