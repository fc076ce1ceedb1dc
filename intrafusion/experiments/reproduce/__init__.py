"""Reproduce the paper's claims on the bundled zoo: ``python -m intrafusion reproduce [--quick]``.

For every bundled model (``--quick``: the default model and a few cells) :func:`run_reproduction` runs five
experiments and writes CSV/JSON tables, PNG plots and a generated ``RESULTS.md`` to the output folder:

1. **Data-free table** (the paper's Tables 10-13): every group pruned alone at sparsities 0.1-0.7 with the
   l1, Taylor and LAMP criteria; default pruning vs Intra-Fusion with the ``paper`` map vs Intra-Fusion with
   the ``function-preserving`` map. No data is used except Taylor's few gradient batches.
2. **Output preservation**: per-sample distances between pruned and unpruned logits for a few cells.
3. **Ablations** of Intra-Fusion's choices: marginals, targets, solver (exact / Sinkhorn), cost exponent.
4. **Whole-model pruning with fine-tuning** (the paper's Table 1): every group at neuron sparsity 0.4/0.6/0.7,
   a short fine-tuning budget, test accuracy after every epoch.
5. **Speed**: pruning time per group for both methods, and where the time of the whole run goes.

How the run fits its time budget (30 minutes on 2 cores for the whole zoo), all of it written to the outputs:

* importance is computed once per (criterion, group) and shared by the three methods and all sparsities
  (``prune(..., importance=...)`` gives exactly what the criterion would);
* each cell is evaluated on a fixed, class-balanced subset of the test split whose size follows from a budget
  of multiply-accumulates per evaluation (small models use their whole test split);
* when a group is pruned alone, everything upstream of its layers is unchanged: the activations entering the
  group are computed once per group (on the BatchNorm-folded unpruned model) and only the layers downstream of
  the group are re-run per cell (exact: checked against a full forward pass on the first cell of every group,
  with a fallback to full evaluation if the check fails or the model cannot be traced).

The package is split by claim: one module per section (:mod:`.datafree`, :mod:`.preservation`,
:mod:`.ablations`, :mod:`.finetune`, :mod:`.speed`), each a :class:`.common.Section` listed in
:data:`.sections.SECTIONS`; :mod:`.run` runs them on a :class:`.context.ModelContext` per model and
:mod:`.report` writes the Markdown. A new claim is one new module plus one line in ``SECTIONS``; a new named set
of models is one entry in :data:`.run.MODEL_SETS`.

:func:`write_results_markdown` turns a results folder into the report, and :func:`publish` copies the report
and the plots it shows into ``docs/`` (keeping the hand-written annotations there):
``python -m intrafusion.experiments.reproduce {report,publish} RESULTS_DIR [DOCS_DIR]``.
"""

from __future__ import annotations

from .ablations import ABLATION_COLUMNS, ablation_variants
from .common import Report, Section, read_csv
from .context import ModelContext
from .datafree import DATAFREE_COLUMNS
from .evaluator import GroupEvaluator
from .finetune import FINETUNE_COLUMNS, recalibrate_batchnorm
from .paper import PAPER_FINETUNE, PAPER_UNPRUNED, paper_datafree
from .preservation import PRESERVATION_COLUMNS
from .report import ANNOTATIONS_END, ANNOTATIONS_START, publish, terminal_summary, write_results_markdown
from .run import MODEL_SETS, SWEEP_TIMING_COLUMNS, resolve_models, run_reproduction
from .sections import SECTIONS, make_plots, summarise
from .settings import FULL, FUSION_LABELS, LABELS, QUICK, SHORT, TIE, Settings, middle_group, subset_size
from .speed import SPEED_COLUMNS

# Names of the single-module version, kept for callers that used them.
_ablation_variants = ablation_variants
_subset_size = subset_size

__all__ = [
    "ABLATION_COLUMNS", "ANNOTATIONS_END", "ANNOTATIONS_START", "DATAFREE_COLUMNS", "FINETUNE_COLUMNS", "FULL",
    "FUSION_LABELS", "GroupEvaluator", "LABELS", "MODEL_SETS", "ModelContext", "PAPER_FINETUNE", "PAPER_UNPRUNED",
    "PRESERVATION_COLUMNS", "QUICK", "Report", "SECTIONS", "SHORT", "SPEED_COLUMNS", "SWEEP_TIMING_COLUMNS",
    "Section", "Settings", "TIE", "make_plots", "middle_group", "paper_datafree", "publish", "read_csv",
    "recalibrate_batchnorm", "resolve_models", "run_reproduction", "subset_size", "summarise", "terminal_summary",
    "write_results_markdown",
]
