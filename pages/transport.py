"""Transport plan: one group's plan, cost and maps, linked: click a cell, a bar or a point to follow a neuron."""

from __future__ import annotations

import time

import streamlit as st

from intrafusion import views as explore
from intrafusion.core.importance import CRITERIA
from intrafusion.core.prune import TransportOptions
from intrafusion.views import selection as sel
from intrafusion.views import variants as var
from pages import _charts as charts
from pages import _common as common
from pages import _controls as controls
from pages import _jobs as jobs
from pages import _transport_views as views

common.ensure_app()

PLAY_STEPS = [round(0.1 * i, 2) for i in range(1, 10)]
ACC_JOB = "tp_accuracy_job"
PLAY_TICK_S = 1.2
ss = st.session_state

# The play button's tick (a fragment below) asks for this full rerun; the sparsity moves before its slider exists.
if ss.pop("tp_advance", False) and ss.get("tp_playing"):
    ss["tp_advanced_at"] = time.monotonic()
    s_now = ss.get("tp_sparsity", 0.5)
    nxt = [s for s in PLAY_STEPS if s > s_now + 1e-9]
    if nxt:
        ss["tp_sparsity"] = nxt[0]
    else:
        ss["tp_playing"] = False

st.title("Transport plan")
st.caption("Intra-Fusion moves the mass of ALL n channels (sources) onto m targets along an optimal-transport plan "
           "P (n × m) that minimises Σ P·C, where C is the distance between the channels' feature vectors. "
           "The map T = Pᵀ diag(1/μ) then writes every target as a weighted combination of the sources. "
           "**Click** a heatmap cell, an importance bar or a point of the projection to select that neuron "
           "everywhere on the page.")

cur = common.require_model()
c1, c2, c3, c4 = st.columns([3, 3, 2, 1])
with c1:
    group = common.group_select(cur, "tp_group")
sparsity = c2.select_slider("Sparsity s", common.SPARSITIES[1:], value=0.5, key="tp_sparsity")
criterion = c3.selectbox("Criterion", CRITERIA, key="tp_criterion")


def _toggle_play() -> None:
    playing = not ss.get("tp_playing", False)
    ss["tp_playing"] = playing
    if playing:
        ss["tp_accuracy"] = True  # the accuracy marker moves with the plan
        ss["tp_advanced_at"] = time.monotonic()
        if ss.get("tp_sparsity", 0.5) >= PLAY_STEPS[-1] - 1e-9:
            ss["tp_sparsity"] = PLAY_STEPS[0]


c4.button("⏸ Pause" if ss.get("tp_playing") else "▶ Play", on_click=_toggle_play, key="tp_play",
          help="step the sparsity from 0.1 to 0.9: the plan, the kept/pruned bars and the accuracy move together")
with st.expander("Optimal-transport options", expanded=True):
    opts = controls.transport_controls("tp", normalization=True)

try:
    options = TransportOptions(**opts)
    record, proj = common.plan_view(cur.key, cur, group, sparsity, criterion, explore.options_key(options))
except common.ERRORS as exc:
    common.show_error(exc, "Cannot compute the plan")
    st.stop()

n, m = record.n, record.plan.shape[1]
order = explore.importance_order(record.importance)
tgt_labels = explore.target_labels(record)
col_order = explore.target_order(record)
selected = views.selected_neuron(cur.key, group, record, order)
st.caption(f"Group {group}: n = {n} sources, m = {m} targets, {len(record.pruned)} pruned (✂). "
           f"Transport cost Σ P·C = {float((record.plan * record.cost).sum()):.4f}; the plan has "
           f"{int((record.plan > 1e-12).sum())} non-zero entries (an exact plan has at most n + m − 1 = {n + m - 1}).")

# The matrix picker gets a row of its own: four long labels do not fit a column next to the other controls.
view = st.segmented_control("Matrix", views.MATRICES, default="Plan P", key="tp_view") or "Plan P"
d = st.columns([3, 3, 3, 2])
zoom = d[0].selectbox("Rows", sel.ZOOMS, key="tp_zoom",
                      help="all rows, only the pruned neurons (with the targets they feed), or the first k rows")
row_order = d[1].selectbox("Order rows by", sel.ORDERS, key="tp_order",
                           help="importance: kept first, pruned below; target: each neuron next to the target it "
                                "feeds most, so the neurons fused into one target form a band")
k = d[2].slider("k (top-k rows)", 8, 128, 32, step=8, key="tp_k", disabled=zoom != "top-k rows")
log = d[3].toggle("Log scale", key="tp_log", help="log10 of the values: makes small (e.g. Sinkhorn) mass visible")

left, right = st.columns([3, 2])
with left:
    heat = views.heatmap_figure(record, order, col_order, tgt_labels, view, zoom, row_order, k, log, selected)
    st.plotly_chart(heat, key="plan_heatmap", on_select=views.on_pick("plan_heatmap", cur.key, group),
                    selection_mode="points")
with right:
    views.selected_panel(cur, record, tgt_labels, selected, group)

bars_col, acc_col = st.columns(2)
with bars_col:
    st.plotly_chart(views.importance_figure(record, order, selected, criterion), key="tp_importance",
                    on_select=views.on_pick("tp_importance", cur.key, group), selection_mode="points")
with acc_col:
    a1, a2 = st.columns([3, 1])
    want_acc = a1.toggle("Accuracy over sparsity", key="tp_accuracy",
                         help="prunes this group at s = 0.1 … 0.9 in the background, default vs Intra-Fusion")
    repair = controls.repair_select("tp_repair", a2, multi=False)
    if want_acc:
        v_default = var.Variant("default", repair=repair)
        v_fusion = var.Variant("fusion", options.normalization, controls.options_tuple(opts), repair)
        acc_key = (cur.key, common.data_root(), group, criterion, v_default, v_fusion)
        job = jobs.get(ACC_JOB)
        if job is None or job.settings.get("request") != acc_key:
            try:
                tasks = var.cell_tasks([group], PLAY_STEPS, [v_default, v_fusion])
                jobs.start(ACC_JOB, jobs.cell_job(cur.key, tasks, criterion, 200,
                                                  {"request": acc_key, "labels": [v_default.label, v_fusion.label]}))
            except common.ERRORS as exc:
                common.show_error(exc, "Cannot evaluate the group")
        if jobs.get(ACC_JOB) is not None:
            jobs.live(ACC_JOB, lambda j: st.plotly_chart(views.accuracy_figure(j, sparsity, charts.cached_base(
                cur.key, 200, j.settings.get("data_root"))), key="tp_accuracy_chart"))
    else:
        st.caption("Turn on to see this group's accuracy (200 test images) against sparsity, default pruning vs "
                   "Intra-Fusion with the options above; ▶ Play turns it on.")

proj_col, sankey_col = st.columns(2)
with proj_col:
    st.plotly_chart(views.projection_figure(record, proj, selected, opts["target"]), key="projection_chart",
                    on_select=views.on_pick("projection_chart", cur.key, group), selection_mode="points")
with sankey_col:
    st.plotly_chart(views.sankey_figure(record, tgt_labels, selected), key="flows_sankey")


@st.fragment(run_every=PLAY_TICK_S if ss.get("tp_playing") else None)
def _player():
    """Ticks while playing: each tick (not the full run that draws the page) asks for the next sparsity."""
    st.caption(f"▶ playing: s = {ss.get('tp_sparsity', sparsity):g}")
    if ss.get("tp_playing") and time.monotonic() - ss.get("tp_advanced_at", 0.0) >= 0.8 * PLAY_TICK_S:
        ss["tp_advance"] = True
        st.rerun()


if ss.get("tp_playing"):
    _player()
