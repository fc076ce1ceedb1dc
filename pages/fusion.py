"""Fusion vs pruning: a live sweep over groups, sparsities and every pruning option, in the background."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from intrafusion.core.importance import CRITERIA
from intrafusion.views import variants as var
from intrafusion.views.jobs import BackgroundJob
from pages import _charts as charts
from pages import _common as common
from pages import _controls as controls
from pages import _jobs as jobs

common.ensure_app()

JOB = "sweep_job"
START_ERROR = "sweep_start_error"
LIMITS = [200, 500, 1000, 0]
PANELS_PER_ROW = 3

st.title("Fusion vs pruning")
st.caption("Each cell prunes ONE group of a fresh copy at one sparsity (all other groups untouched, no fine-tuning) "
           "with each chosen method and setting, then evaluates it: the paper's data-free experiment. The sweep "
           "runs in the background: curves grow point by point, and you can use other controls and pages "
           "meanwhile. Stop keeps the points already computed and adds none after it.")

cur = common.require_model()
groups = common.prepared_for(cur.key, cur.loaded).prepared.groups
fmt = {g.index: f"{g.index} ({g.n})" for g in groups}

c1, c2 = st.columns(2)
groups_key = common.model_widget_key("fu_groups", cur)
sel_groups = c1.multiselect("Groups", list(fmt), default=[i for i in (0, 1) if i in fmt], key=groups_key,
                            format_func=fmt.__getitem__)
sel_sparsities = c2.multiselect("Sparsities", common.SPARSITIES[1:], default=[0.3, 0.5, 0.7], key="fu_sparsities")
c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
labels_all = controls.method_labels()
c1.multiselect("Methods", labels_all, default=[lb for lb in labels_all if lb != "folding"], key="fu_methods",
               help="default: drop the pruned channels; fusion (paper): sums on both sides; fusion "
                    "(function-preserving): producers averaged, consumers summed")
controls.repair_select("fu_repairs", c2)
c3.selectbox("Criterion", CRITERIA, key="fu_criterion")
c4.selectbox("Test images per evaluation", LIMITS, index=1, key="fu_limit",
             format_func=lambda v: "all" if v == 0 else str(v))
with st.expander("Transport options (setting A) and a second setting B to compare", expanded=False):
    st.caption("Setting A applies to every Intra-Fusion curve. With B on, every Intra-Fusion variant also runs "
               "with setting B, drawn dashed, and the difference B − A is shown below.")
    opts_a = controls.transport_controls("fuA")
    compare = st.toggle("Compare with setting B", key="fu_compare")
    opts_b = controls.transport_controls("fuB") if compare else None


def _variants() -> list[var.Variant]:
    ss = st.session_state
    labels = ss.get("fu_methods") or ["default", "fusion (paper)"]
    repairs = ss.get("fu_repairs") or ["none"]
    a = controls.options_tuple(opts_a)
    out = [controls.variant_for(lb, rp, a, "A" if compare else "") for lb in labels for rp in repairs]
    if compare:
        b = controls.options_tuple(opts_b)
        out += [controls.variant_for(lb, rp, b, "B") for lb in labels if lb.startswith("fusion") for rp in repairs]
    return out


def _start(model_key: str, groups_key: str) -> None:
    ss = st.session_state
    g = sorted(ss.get(groups_key, []))
    s = sorted(ss.get("fu_sparsities", []))
    try:
        variants = _variants()
        tasks = var.cell_tasks(g, s, variants)
        job = jobs.cell_job(model_key, tasks, ss.get("fu_criterion"), ss.get("fu_limit") or None,
                            {"groups": g, "sparsities": s, "compare": compare, "labels": [v.label for v in variants]},
                            keep_distances=True)
    except common.ERRORS as exc:
        ss[START_ERROR] = str(exc)
        return
    ss[START_ERROR] = None
    jobs.start(JOB, job)


job: BackgroundJob | None = jobs.get(JOB)
running = job is not None and job.active
b1, b2, _ = st.columns([1, 1, 4])
b1.button("Run sweep", type="primary", on_click=_start, args=(cur.key, groups_key), key="fu_run",
          disabled=not sel_groups or not sel_sparsities)
b2.button("Stop", on_click=jobs.stop, args=(JOB,), key="fu_stop", disabled=not running)
if st.session_state.get(START_ERROR):
    st.error(f"Cannot start the sweep: {st.session_state[START_ERROR]}")
if not sel_groups or not sel_sparsities:
    st.info("Choose at least one group and one sparsity.")


def _x_range(sparsities) -> list[float]:
    lo, hi = min(sparsities), max(sparsities)
    pad = max(0.05, 0.05 * (hi - lo))
    return [max(0.0, lo - pad), min(1.0, hi + pad)]


def curves_figure(rows, settings: dict, base: float | None) -> go.Figure:
    """One panel per group (at most PANELS_PER_ROW a row), fixed axes: x = the sweep's sparsities, y = 0..100."""
    gs = settings["groups"]
    ncols = min(PANELS_PER_ROW, len(gs))
    nrows = math.ceil(len(gs) / ncols)
    fig = make_subplots(rows=nrows, cols=ncols, shared_yaxes=True, subplot_titles=[f"group {g}" for g in gs],
                        vertical_spacing=0.12 if nrows > 1 else 0.0, horizontal_spacing=0.04)
    labels = settings["labels"]
    for label in labels:  # every trace exists from the start: the chart only gains points
        method = label.removesuffix(" [A]").removesuffix(" [B]").split(" + ")[0]
        dash = "dash" if label.endswith("[B]") else ("longdashdot" if " + " in label else None)
        for gi, g in enumerate(gs):
            pts = sorted((r.sparsity, r.accuracy) for r in rows if r.group == g and r.label == label)
            fig.add_trace(go.Scatter(
                x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=label, legendgroup=label,
                showlegend=gi == 0, line=dict(color=common.method_color(method), dash=dash),
                marker=controls.repair_marker(label),
                hovertemplate="s = %{x}<br>accuracy %{y:.2f}%<extra>" + label + "</extra>"),
                row=gi // ncols + 1, col=gi % ncols + 1)
    if base is not None:
        for gi in range(len(gs)):
            fig.add_hline(y=base, line_dash="dot", line_color=common.COLORS["unpruned"], row=gi // ncols + 1,
                          col=gi % ncols + 1)
    fig.update_xaxes(title="sparsity", range=_x_range(settings["sparsities"]), tickvals=settings["sparsities"])
    fig.update_yaxes(range=[0, 101], autorange=False)
    fig.update_yaxes(title="accuracy %", col=1)
    fig.update_layout(uirevision="sweep")
    return charts.layout(fig, "Accuracy after pruning one group (dotted: unpruned)", 300 + 260 * nrows)


def _draw(job: BackgroundJob) -> None:
    snap = job.snapshot()
    settings = job.settings
    base = charts.cached_base(settings["model_key"], settings["limit"], settings.get("data_root"))
    st.progress(snap.progress, text=job.status())
    st.plotly_chart(curves_figure(snap.rows, settings, base), key="sweep_curves")
    legend = controls.repair_legend(settings["labels"])
    if legend:
        st.caption(legend)


if job is None:
    st.info("Choose groups, sparsities and methods, then Run sweep.")
    st.stop()
if job.settings["model_key"] != cur.key:
    st.info(f"These results are for {common.key_label(job.settings['model_key'])} (the model chosen when the "
            "sweep started).")
jobs.live(JOB, _draw)

rows = job.snapshot().rows
if not rows or running:
    st.stop()  # the results below are drawn once the job has ended (a full rerun)

if job.settings.get("compare"):
    st.subheader("Setting B − setting A")
    diffs = var.setting_differences(rows)
    if diffs:
        dfig = go.Figure()
        keys = sorted({(d["group"], d["method"]) for d in diffs}, key=str)
        for g, label in keys:
            pts = sorted((d["sparsity"], d["B - A"]) for d in diffs if d["group"] == g and d["method"] == label)
            dfig.add_trace(go.Bar(x=[p[0] for p in pts], y=[p[1] for p in pts], name=f"{label}, group {g}",
                                  marker_color=common.method_color(label.split(" + ")[0])))
        dfig.add_hline(y=0, line_color=common.COLORS["unpruned"])
        dfig.update_xaxes(title="sparsity", tickvals=job.settings["sparsities"])
        dfig.update_yaxes(title="accuracy B − A (points)")
        dfig.update_layout(barmode="group")
        st.plotly_chart(charts.layout(dfig, "Accuracy of setting B minus setting A", 360),
                        key="setting_difference")
        st.dataframe(diffs, hide_index=True, key="difference_table")

st.subheader("Results")
st.dataframe(var.rows_table(rows), hide_index=True, key="sweep_table")
name = common.key_label(job.settings["model_key"]).replace(" ", "_").replace(":", "")
st.download_button("Download CSV", var.rows_to_csv(rows), file_name=f"intrafusion_sweep_{name}.csv",
                   mime="text/csv", on_click="ignore", key="sweep_csv")

st.subheader("Output preservation")
st.caption("L2 distance between the pruned and the unpruned model's logits, per test image: the smaller, "
           "the better the pruned model preserves the original function.")
left, right = st.columns(2)
dist = go.Figure()
dashes = ["solid", "dash", "dot", "dashdot"]
for curve in var.variant_curves(rows):
    dist.add_trace(go.Scatter(x=curve.sparsities, y=curve.logit_distances, mode="lines+markers",
                              name=f"{curve.label}, group {curve.group}",
                              line=dict(color=common.method_color(curve.base_label.split(" + ")[0]),
                                        dash=dashes[job.settings["groups"].index(curve.group) % 4])))
dist.update_xaxes(title="sparsity", range=_x_range(job.settings["sparsities"]))
dist.update_yaxes(title="mean logit distance", rangemode="tozero")
left.plotly_chart(charts.layout(dist, "Mean logit distance", 420), key="distance_curves")
cells = sorted({(r.group, r.sparsity) for r in rows})
cell = right.selectbox("Cell", cells, index=len(cells) - 1, key="fu_cell",
                       format_func=lambda c: f"group {c[0]}, s = {c[1]:g}")
box = go.Figure()
for r in rows:
    if (r.group, r.sparsity) == cell and r.distances is not None:
        box.add_trace(go.Box(x=r.distances, name=f"{r.label} (mean {np.mean(r.distances):.2f})", boxmean=True,
                             marker_color=common.method_color(r.base_label.split(" + ")[0]), orientation="h"))
box.update_xaxes(title="logit distance to the unpruned model", rangemode="tozero")
box.update_layout(showlegend=False)
box.update_yaxes(automargin=True)
right.plotly_chart(charts.layout(box, "Distribution at the chosen cell (box: quartiles, dashed: mean)", 340, None),
                   key="distance_hist")
