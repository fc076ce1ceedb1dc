"""Computations behind the explorer app's views (plain functions and dataclasses, no Streamlit).

The app's pages only draw; everything they show is computed here or elsewhere in :mod:`intrafusion`, one module
per page:

- :mod:`.models` (Model):            :func:`groups_table`, :func:`group_dot` (which layers a group couples)
- :mod:`.importance` (Importance):   :func:`importance_scores`, :func:`select_kept`, :func:`importance_order`,
  :func:`criteria_agreement`, :func:`spearman`
- :mod:`.plans` (Transport plan):    :func:`channel_features`, :func:`pairwise_cost`, :func:`kept_plan` (fast
  redraws), :func:`source_labels`, :func:`target_labels`, :func:`target_order`, :func:`neuron_flows`,
  :func:`projection_2d`, :func:`flow_segments`; :mod:`.selection` (linked selection, Sankey, filters)
- :mod:`.sweeps` (Fusion vs pruning): :class:`SweepJob` and :func:`run_job` (resumable, stoppable between rows),
  :func:`sweep_cell`, :func:`sweep_curves`, :func:`rows_to_csv`, :func:`distances_by_label`;
  :mod:`.variants` (every method, repair and setting as one sweep; trade-off rows); :mod:`.jobs` (background
  worker threads)
- :mod:`.recovery` (Whole model & fine-tuning): :class:`FineTuneJob`, :func:`catch_up`, :func:`recovery_summary`
- :mod:`.export` (Export):           :func:`measure_latency`, :func:`model_report`, :func:`before_after_report`,
  :func:`export_model`
- :mod:`.toy` (Learn):               :class:`ToyNet`, :func:`toy_network`, :func:`toy_prune`, :func:`toy_errors`
"""

from __future__ import annotations

from .export import (
    before_after_report,
    export_model,
    measure_latency,
    model_report,
)
from .importance import (
    Agreement,
    criteria_agreement,
    importance_order,
    importance_scores,
    select_kept,
    spearman,
)
from .models import (
    group_dot,
    groups_table,
)
from .plans import (
    Flow,
    Projection,
    channel_features,
    flow_segments,
    kept_plan,
    neuron_flows,
    options_key,
    pairwise_cost,
    projection_2d,
    source_labels,
    target_labels,
    target_order,
    warm_up,
)
from .recovery import (
    FineTuneJob,
    WholeModelRow,
    catch_up,
    recovery_summary,
    whole_model_row,
)
from .sweeps import (
    Cell,
    Curve,
    SweepJob,
    distances_by_label,
    rows_table,
    rows_to_csv,
    run_job,
    sweep_cell,
    sweep_curves,
)
from .toy import (
    ToyNet,
    ToyResult,
    toy_errors,
    toy_grid,
    toy_moment_match,
    toy_network,
    toy_preactivations,
    toy_prune,
    toy_std_ratios,
)

__all__ = [
    "Agreement",
    "Cell",
    "Curve",
    "FineTuneJob",
    "Flow",
    "Projection",
    "SweepJob",
    "ToyNet",
    "ToyResult",
    "before_after_report",
    "catch_up",
    "channel_features",
    "criteria_agreement",
    "distances_by_label",
    "export_model",
    "flow_segments",
    "group_dot",
    "groups_table",
    "importance_order",
    "importance_scores",
    "kept_plan",
    "measure_latency",
    "model_report",
    "neuron_flows",
    "options_key",
    "pairwise_cost",
    "projection_2d",
    "recovery_summary",
    "rows_table",
    "rows_to_csv",
    "run_job",
    "select_kept",
    "source_labels",
    "spearman",
    "sweep_cell",
    "sweep_curves",
    "target_labels",
    "target_order",
    "toy_errors",
    "warm_up",
    "whole_model_row",
    "WholeModelRow",
    "toy_grid",
    "toy_network",
    "toy_moment_match",
    "toy_preactivations",
    "toy_prune",
    "toy_std_ratios",
]
