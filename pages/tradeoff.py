"""Sparsity trade-off: whole-model accuracy against parameters, MACs and latency, one curve per method, live."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from intrafusion.core.importance import CRITERIA
from intrafusion.views import variants as var
from pages import _charts as charts
from pages import _common as common
from pages import _controls as controls
from pages import _jobs as jobs

common.ensure_app()

JOB, GRID_JOB = "tradeoff_job", "tradeoff_grid_job"
STEPS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]

st.title("Sparsity trade-off")
st.caption("Every group pruned at the same sparsity, one curve per method: what the model keeps (accuracy) against "
           "what it costs (parameters, MACs, measured CPU latency at batch 1). Computed in the background; the "
           "grey star is the unpruned model. Below: which single group each method handles better.")

cur = common.require_model()
c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
labels_all = controls.method_labels()
c1.multiselect("Methods", labels_all, default=labels_all, key="to_methods")
controls.repair_select("to_repairs", c2)
c3.selectbox("Criterion", (*CRITERIA, var.AUTO_CRITERION), key="to_criterion", format_func=controls.criterion_label,
             help=controls.CRITERION_HELP)
c4.selectbox("Test images", [500, 1000, 0], key="to_limit", format_func=lambda v: "all" if v == 0 else str(v))
c5, c6 = st.columns([3, 1])
c5.multiselect("Sparsities", common.SPARSITIES[1:], default=STEPS, key="to_sparsities")
c6.selectbox("Refit target", controls.REFIT_TARGETS, key="to_refit_target", help=controls.REFIT_TARGET_HELP)


def _variants() -> list[var.Variant]:
    ss = st.session_state
    target = ss.get("to_refit_target") or "mapped"
    return [controls.variant_for(lb, rp, refit_target=target) for lb in (ss.get("to_methods") or ["default"])
            for rp in (ss.get("to_repairs") or ["none"])]


def _start(model_key: str) -> None:
    ss = st.session_state
    s = sorted(ss.get("to_sparsities") or STEPS)
    vs = _variants()
    try:
        job = jobs.cell_job(model_key, var.cell_tasks(["all"], s, vs), ss.get("to_criterion"),
                            ss.get("to_limit") or None, {"sparsities": s, "labels": [v.label for v in vs]},
                            cost=True, latency=True)
    except common.ERRORS as exc:
        st.session_state["to_error"] = str(exc)
        return
    st.session_state["to_error"] = None
    jobs.start(JOB, job)


job = jobs.get(JOB)
b1, b2, _ = st.columns([1, 1, 4])
b1.button("Compute curves", type="primary", key="to_run", on_click=_start, args=(cur.key,))
b2.button("Stop", key="to_stop", on_click=jobs.stop, args=(JOB,), disabled=not (job is not None and job.active))
if st.session_state.get("to_error"):
    st.error(f"Cannot start: {st.session_state['to_error']}")


@st.cache_data(show_spinner=False, max_entries=16)
def unpruned_point(model_key: str, _cur: common.Current, limit, root: str | None) -> dict:
    row = var.evaluate_cell(_cur.loaded.model, _cur.loaded.example_inputs,
                            *common._eval_set(_cur.loaded.dataset, _cur.pre_json, limit, root), 0, 0.0,
                            var.Variant("default"), cost=True, latency=True)
    return {"accuracy": row.accuracy, "params": row.params, "macs": row.macs, "latency_ms": row.latency_ms}


def tradeoff_figure(rows, settings: dict, base: dict | None) -> go.Figure:
    """Three panels sharing the accuracy axis (0..100); x ranges fixed from the unpruned model."""
    axes = [("params", "parameters"), ("macs", "MACs"), ("latency_ms", "latency, batch 1 (ms)")]
    fig = make_subplots(rows=1, cols=3, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[f"accuracy vs {t}" for _, t in axes])
    for label in settings["labels"]:
        pts = sorted((r for r in rows if r.label == label), key=lambda r: r.sparsity)
        color = common.method_color(label.split(" + ")[0])
        for i, (field, _) in enumerate(axes):
            fig.add_trace(go.Scatter(x=[getattr(r, field) for r in pts], y=[r.accuracy for r in pts],
                                     mode="lines+markers", name=label, legendgroup=label, showlegend=i == 0,
                                     line=dict(color=color, dash="dash" if " + " in label else None),
                                     marker=controls.repair_marker(label),
                                     customdata=[r.sparsity for r in pts],
                                     hovertemplate="s = %{customdata}<br>%{x:,.4g}<br>accuracy %{y:.2f}%<extra>"
                                                   + label + "</extra>"), row=1, col=i + 1)
    for i, (field, title) in enumerate(axes):
        if base is not None:
            fig.add_trace(go.Scatter(x=[base[field]], y=[base["accuracy"]], mode="markers", name="unpruned",
                                     legendgroup="unpruned", showlegend=i == 0,
                                     marker=dict(symbol="star", size=14, color=common.COLORS["unpruned"])),
                          row=1, col=i + 1)
            hi = base[field] * (1.6 if field == "latency_ms" else 1.05)  # latency is noisy: leave headroom
            fig.update_xaxes(range=[0, hi], row=1, col=i + 1)
        fig.update_xaxes(title=title, row=1, col=i + 1)
    fig.update_yaxes(range=[0, 101], title="accuracy %", col=1)
    fig.update_layout(uirevision="tradeoff")
    return charts.layout(fig, "Whole model: accuracy against size and speed, every group pruned", 440)


def _draw(job) -> None:
    snap = job.snapshot()
    st.progress(snap.progress, text=job.status("models"))
    try:
        base = unpruned_point(job.settings["model_key"], common.Current(job.settings["model_key"], common.loaded_for(
            job.settings["model_key"])), job.settings["limit"], job.settings.get("data_root"))
    except common.ERRORS:
        base = None
    st.plotly_chart(tradeoff_figure(snap.rows, job.settings, base), key="tradeoff_chart")
    legend = controls.repair_legend(job.settings["labels"])
    if legend:
        st.caption(legend)


if job is not None and job.settings["model_key"] == cur.key:
    jobs.live(JOB, _draw)
else:
    st.info("Press Compute curves: each point prunes every group of a fresh copy and measures it.")

# ----------------------------------------------------------------------------------- group x sparsity grid

st.subheader("Group × sparsity: Intra-Fusion minus default pruning")
groups = [g.index for g in common.prepared_for(cur.key, cur.loaded).prepared.groups]
g1, g2 = st.columns([2, 1])
g1.selectbox("Method compared with default pruning", [lb for lb in labels_all if lb != "default"], key="to_grid_method")
g2.button("Compute the grid", key="to_grid_run", on_click=lambda: _start_grid(cur.key, groups))


def _start_grid(model_key: str, groups: list[int]) -> None:
    label = st.session_state.get("to_grid_method") or "fusion (paper)"
    vs = [var.Variant("default"), controls.variant_for(label)]
    jobs.start(GRID_JOB, jobs.cell_job(model_key, var.cell_tasks(groups, STEPS, vs), "l1", 200,
                                       {"groups": groups, "labels": [v.label for v in vs], "method": label}))


def _grid_pick() -> None:
    state = st.session_state.get("grid_chart") or {}
    points = state.get("selection", {}).get("points", []) if state else []
    if points and points[0].get("customdata") is not None:
        g, s = points[0]["customdata"][:2]
        st.session_state[common.model_widget_key("tp_group", cur)] = int(g)
        st.session_state["tp_sparsity"] = float(s)
        st.session_state["to_open_plan"] = True


def _draw_grid(job) -> None:
    snap = job.snapshot()
    st.progress(snap.progress, text=job.status())
    gs, label = job.settings["groups"], job.settings["labels"][1]
    grid = var.accuracy_grid(snap.rows, gs, STEPS, label)
    lim = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    gg, ss_ = np.meshgrid(gs, STEPS, indexing="ij")
    fig = go.Figure(go.Heatmap(z=grid, x=STEPS, y=[f"group {g}" for g in gs], zmin=-lim, zmax=lim,
                               colorscale=charts.DIFF_SCALE, colorbar=dict(title="points"),
                               hovertemplate="%{y}, s = %{x}: %{z:+.2f} points<extra></extra>"))
    fig.add_trace(go.Scatter(x=ss_.ravel(), y=[f"group {g}" for g in gg.ravel()], mode="markers", showlegend=False,
                             customdata=np.stack([gg.ravel(), ss_.ravel()], axis=1),
                             marker=dict(size=18, color="rgba(0,0,0,0)", symbol="square"),
                             hovertemplate="click: open the plan of group %{customdata[0]} at s = %{customdata[1]}"
                                           "<extra></extra>"))
    fig.update_xaxes(title="sparsity of the group", tickvals=STEPS)
    fig.update_yaxes(autorange="reversed")
    st.plotly_chart(charts.layout(fig, f"{label} − default (accuracy points, 200 test images); blue: fusion "
                                       "better", 140 + 36 * len(gs), None),
                    key="grid_chart", on_select=_grid_pick, selection_mode="points")


if st.session_state.pop("to_open_plan", False):
    st.switch_page("pages/transport.py")
grid_job = jobs.get(GRID_JOB)
if grid_job is not None and grid_job.settings["model_key"] == cur.key:
    jobs.live(GRID_JOB, _draw_grid)
