"""Fusion vs pruning: a live sweep of default pruning and Intra-Fusion over groups and sparsities."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from intrafusion import views as explore
from intrafusion.core.importance import CRITERIA
from intrafusion.core.prune import TransportOptions
from intrafusion.core.transport import NORMALIZATIONS
from intrafusion.experiments.sweep import sweep_cells
from pages import _common as common

common.ensure_app()

JOB = "sweep_job"
START_ERROR = "sweep_start_error"
LIMITS = [200, 500, 1000, 0]

st.title("Fusion vs pruning")
st.caption("Each cell prunes ONE group of a fresh copy at one sparsity (all other groups untouched, no fine-tuning) "
           "with default pruning and with Intra-Fusion, then evaluates it: the paper's data-free experiment. "
           "Curves grow point by point while the sweep runs; Stop keeps the points already computed.")

cur = common.require_model()
groups = common.prepared_for(cur.key, cur.loaded).prepared.groups
fmt = {g.index: f"{g.index} ({g.n})" for g in groups}

c1, c2 = st.columns(2)
groups_key = common.model_widget_key("fu_groups", cur)
sel_groups = c1.multiselect("Groups", list(fmt), default=[i for i in (0, 1) if i in fmt], key=groups_key,
                            format_func=fmt.__getitem__)
sel_sparsities = c2.multiselect("Sparsities", common.SPARSITIES[1:], default=[0.3, 0.5, 0.7], key="fu_sparsities")
c1, c2, c3 = st.columns(3)
criterion = c1.selectbox("Criterion", CRITERIA, key="fu_criterion")
normalizations = c2.multiselect("Intra-Fusion normalisations", NORMALIZATIONS, default=list(NORMALIZATIONS),
                                key="fu_norms", help="paper: sums on both sides; function-preserving: producers "
                                                     "averaged, consumers summed")
limit = c3.selectbox("Test images per evaluation", LIMITS, index=1, key="fu_limit",
                     format_func=lambda v: "all" if v == 0 else str(v))


def _start(model_key: str, groups_key: str) -> None:
    g = sorted(st.session_state.get(groups_key, []))
    s = sorted(st.session_state.get("fu_sparsities", []))
    norms = list(st.session_state.get("fu_norms", [])) or ["paper"]
    settings = {"model_key": model_key, "groups": g, "sparsities": s,
                "criterion": st.session_state.get("fu_criterion"), "normalizations": norms,
                "limit": st.session_state.get("fu_limit") or None}
    try:
        cells = sweep_cells(g, s, ("default", "fusion"), norms)
    except ValueError as exc:
        st.session_state[START_ERROR] = str(exc)
        return
    st.session_state[START_ERROR] = None
    st.session_state[JOB] = explore.SweepJob(cells, settings["criterion"], settings)


def _stop() -> None:
    job = st.session_state.get(JOB)
    if job is not None:
        job.stop()


job: explore.SweepJob | None = st.session_state.get(JOB)
running = job is not None and job.active
b1, b2, _ = st.columns([1, 1, 4])
b1.button("Run sweep", type="primary", on_click=_start, args=(cur.key, groups_key), key="fu_run",
          disabled=not sel_groups or not sel_sparsities)
if st.session_state.get(START_ERROR):
    st.error(f"Cannot start the sweep: {st.session_state[START_ERROR]}")
b2.button("Stop", on_click=_stop, key="fu_stop", disabled=not running)
if not sel_groups or not sel_sparsities:
    st.info("Choose at least one group and one sparsity.")

progress_ph = st.empty()
chart_ph = st.empty()
_draws: list[int] = []


def _curves_figure(job: explore.SweepJob, base: float | None) -> go.Figure:
    gs = job.settings["groups"]
    fig = make_subplots(rows=1, cols=len(gs), shared_yaxes=True, subplot_titles=[f"group {g}" for g in gs])
    seen = set()
    for curve in explore.sweep_curves(job.rows):
        col = gs.index(curve.group) + 1
        fig.add_trace(go.Scatter(x=curve.sparsities, y=curve.accuracies, mode="lines+markers", name=curve.label,
                                 legendgroup=curve.label, showlegend=curve.label not in seen,
                                 line=dict(color=common.method_color(curve.label)),
                                 hovertemplate="s = %{x}<br>accuracy %{y:.2f}%<extra>" + curve.label + "</extra>"),
                      row=1, col=col)
        seen.add(curve.label)
    if base is not None:
        for col in range(1, len(gs) + 1):
            fig.add_hline(y=base, line_dash="dot", line_color=common.COLORS["unpruned"], row=1, col=col)
    fig.update_xaxes(title="sparsity", range=[0, 1])
    fig.update_yaxes(title="accuracy %", row=1, col=1)
    return common.figure_layout(fig, "Accuracy after pruning one group (dotted: unpruned)", 420)


def _draw(job: explore.SweepJob, base: float | None) -> None:
    progress_ph.progress(job.progress, text=job.status)
    _draws.append(1)  # every redraw in one run needs its own element key
    chart_ph.plotly_chart(_curves_figure(job, base), key=f"sweep_curves_{len(_draws)}")


if job is not None:
    key = job.settings["model_key"]
    try:
        job_cur = common.Current(key, common.loaded_for(key))
        limit_job = job.settings["limit"]
        base = common.base_accuracy(key, job_cur.loaded, limit_job)
    except common.ERRORS as exc:
        common.show_error(exc, "Cannot run the sweep")
        st.stop()
    if job_cur.key != cur.key:
        st.info(f"These results are for {common.key_label(key)} (the model chosen when the sweep started).")
    opts = explore.options_key(TransportOptions())

    def compute(cell):
        return common.sweep_row(key, job_cur, cell, job.criterion, opts, limit_job)

    _draw(job, base)
    if job.active:
        try:
            explore.run_job(job, compute, on_row=lambda row: _draw(job, base))
        except common.ERRORS as exc:
            common.show_error(exc, f"The sweep stopped at cell {job.next_cell}")
        else:
            st.rerun()  # finished: redraw the page with the Stop button disabled and the results below

    if job.rows:
        st.subheader("Results")
        st.dataframe(explore.rows_table(job.rows), hide_index=True, key="sweep_table")
        st.download_button("Download CSV", explore.rows_to_csv(job.rows), file_name="intrafusion_sweep.csv",
                           mime="text/csv", on_click="ignore", key="sweep_csv")

        st.subheader("Output preservation")
        st.caption("L2 distance between the pruned and the unpruned model's logits, per test image: the smaller, "
                   "the better the pruned model preserves the original function.")
        left, right = st.columns(2)
        dist = go.Figure()
        for curve in explore.sweep_curves(job.rows):
            dist.add_trace(go.Scatter(x=curve.sparsities, y=curve.logit_distances, mode="lines+markers",
                                      name=f"{curve.label}, group {curve.group}",
                                      line=dict(color=common.method_color(curve.label),
                                                dash=["solid", "dash", "dot", "dashdot"][
                                                    job.settings["groups"].index(curve.group) % 4])))
        dist.update_xaxes(title="sparsity", range=[0, 1])
        dist.update_yaxes(title="mean logit distance")
        left.plotly_chart(common.figure_layout(dist, "Mean logit distance", 380, legend="right"),
                          key="distance_curves")
        cells = sorted({(r.group, r.sparsity) for r in job.rows})
        cell = right.selectbox("Cell", cells, index=len(cells) - 1, key="fu_cell",
                               format_func=lambda c: f"group {c[0]}, s = {c[1]:g}")
        hist = go.Figure()
        for label, d in explore.distances_by_label(job.rows, *cell).items():
            hist.add_trace(go.Histogram(x=d, name=f"{label} (mean {np.mean(d):.2f})", opacity=0.6, nbinsx=40,
                                        marker_color=common.method_color(label)))
        hist.update_layout(barmode="overlay")
        hist.update_xaxes(title="logit distance to the unpruned model")
        hist.update_yaxes(title="test images")
        right.plotly_chart(common.figure_layout(hist, "Distribution at the chosen cell", 330, legend="right"),
                           key="distance_hist")
else:
    st.info("Choose groups and sparsities, then Run sweep.")
