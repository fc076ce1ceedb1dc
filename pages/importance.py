"""Importance: a group's sorted importance scores, kept/pruned at a sparsity; how much criteria agree."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from intrafusion import views as explore
from intrafusion.core.importance import CRITERIA
from intrafusion.core.prune import kept_count
from pages import _common as common

common.ensure_app()

st.title("Importance")
st.caption("Both default pruning and Intra-Fusion score every channel of a group with the same criterion and keep "
           "the m = int(n (1 − s)) most important ones. Scores are averaged over the group's layers and divided "
           "by their mean.")

cur = common.require_model()
c1, c2, c3 = st.columns(3)
with c1:
    group = common.group_select(cur, "imp_group")
criterion = c2.selectbox("Criterion", CRITERIA, key="imp_criterion")
sparsity = c3.select_slider("Sparsity s", common.SPARSITIES, value=0.5, key="imp_sparsity")

try:
    scores = common.importance(cur.key, cur, group, criterion)
except common.ERRORS as exc:
    common.show_error(exc, "Cannot score the group")
    st.stop()

n = len(scores)
m = kept_count(n, sparsity)
order = explore.importance_order(scores)
kept, pruned = explore.select_kept(scores, sparsity)
is_kept = np.zeros(n, dtype=bool)
is_kept[kept] = True
fig = go.Figure()
for name, mask in (("kept", is_kept[order]), ("pruned", ~is_kept[order])):
    ranks = np.flatnonzero(mask)
    fig.add_trace(go.Bar(x=ranks + 1, y=scores[order][mask], name=f"{name} ({mask.sum()})",
                         marker_color=common.COLORS[name], customdata=order[mask],
                         hovertemplate="rank %{x}<br>channel #%{customdata}<br>importance %{y:.3f}<extra></extra>"))
fig.update_layout(bargap=0.05, barmode="overlay")
fig.update_xaxes(title="rank (most important first)")
fig.update_yaxes(title=f"{criterion} importance (mean 1)")
st.plotly_chart(common.figure_layout(fig, f"Group {group}: {n} channels, keep {m} at s = {sparsity:g}"),
                key="importance_chart")

st.subheader("Do criteria agree on what to keep?")
others = st.multiselect("Compare with", [c for c in CRITERIA if c != criterion],
                        default=[c for c in ("l1", "taylor", "lamp") if c != criterion][:2], key="imp_compare",
                        help=f"the criterion chosen at the top ({criterion}) is always compared, and orders the strip")
chosen = [criterion, *others]
if len(chosen) >= 2:
    try:
        all_scores = {c: common.importance(cur.key, cur, group, c) for c in chosen}
    except common.ERRORS as exc:
        common.show_error(exc, "Cannot score the group")
        st.stop()
    ag = explore.criteria_agreement(all_scores, sparsity)
    c1, c2, c3 = st.columns(3)
    c1.metric("Kept by every criterion", f"{ag.kept_by_all} of {ag.m}")
    c2.metric("Kept by none", f"{ag.kept_by_none} of {ag.n - ag.m} pruned")
    off = ag.overlap[~np.eye(len(chosen), dtype=bool)]
    c3.metric("Mean pairwise overlap", f"{off.mean():.1f} %")
    left, right = st.columns(2)
    heat = go.Figure(go.Heatmap(z=ag.overlap, x=chosen, y=chosen, zmin=0, zmax=100, colorscale="Viridis",
                                text=np.round(ag.overlap, 1), texttemplate="%{text}%",
                                hovertemplate="%{y} ∩ %{x}: %{z:.1f}% of kept<extra></extra>"))
    heat.update_yaxes(autorange="reversed")
    left.plotly_chart(common.figure_layout(heat, "Kept-set overlap (% of the m kept)", 340), key="overlap_chart")
    corr = go.Figure(go.Heatmap(z=ag.rank_correlation, x=chosen, y=chosen, zmin=-1, zmax=1, colorscale="RdBu",
                                text=np.round(ag.rank_correlation, 2), texttemplate="%{text}",
                                hovertemplate="%{y} vs %{x}: ρ = %{z:.2f}<extra></extra>"))
    corr.update_yaxes(autorange="reversed")
    right.plotly_chart(common.figure_layout(corr, "Spearman rank correlation of the scores", 340),
                       key="correlation_chart")
    first = chosen[0]
    ordered = explore.importance_order(all_scores[first])
    member = np.array([np.isin(ordered, ag.kept[c]).astype(float) for c in chosen])
    strip = go.Figure(go.Heatmap(z=member, y=chosen, x=np.arange(1, n + 1),
                                 colorscale=[[0, "#f2c4c4"], [1, common.COLORS["kept"]]], showscale=False,
                                 customdata=np.tile(ordered, (len(chosen), 1)),
                                 hovertemplate="%{y}: channel #%{customdata} %{z}<extra>1 = kept</extra>"))
    strip.update_xaxes(title=f"channels ordered by {first} importance")
    strip.update_yaxes(autorange="reversed")
    st.plotly_chart(common.figure_layout(strip, "Which channels each criterion keeps (blue) or prunes", 60 + 40 *
                                         len(chosen) + 60), key="membership_chart")
else:
    st.info("Pick at least one other criterion to compare with.")
