"""Transport plan: cost, plan and map of one group as heatmaps; where a pruned neuron's mass goes."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from intrafusion import views as explore
from intrafusion.core.importance import CRITERIA
from intrafusion.core.prune import TransportOptions
from intrafusion.core.transport import MARGINALS, NORMALIZATIONS, SOLVERS, TARGETS
from pages import _common as common

common.ensure_app()

st.title("Transport plan")
st.caption("Intra-Fusion moves the mass of ALL n channels (sources) onto m targets along an optimal-transport plan "
           "P (n × m) that minimises Σ P·C, where C is the distance between the channels' feature vectors. "
           "The map T = Pᵀ diag(1/μ) then writes every target as a weighted combination of the sources.")

cur = common.require_model()
c1, c2, c3 = st.columns(3)
with c1:
    group = common.group_select(cur, "tp_group")
sparsity = c2.select_slider("Sparsity s", common.SPARSITIES[1:], value=0.5, key="tp_sparsity")
criterion = c3.selectbox("Criterion", CRITERIA, key="tp_criterion")
with st.expander("Optimal-transport options", expanded=True):
    o = st.columns(6)
    solver = o[0].selectbox("Solver", SOLVERS, key="tp_solver", help="emd: exact (the paper); sinkhorn: entropic")
    reg = o[1].number_input("Sinkhorn reg", 0.001, 10.0, 0.05, step=0.01, format="%.3f", key="tp_reg",
                            disabled=solver != "sinkhorn", help="relative to the largest cost")
    source_marginal = o[2].selectbox("Source marginal μ", MARGINALS, key="tp_mu")
    target_marginal = o[3].selectbox("Target marginal ν", MARGINALS, key="tp_nu")
    target = o[4].selectbox("Targets", TARGETS, key="tp_target",
                            help="kept: the m kept channels (the paper); centroids: m k-means centroids")
    p = o[5].selectbox("Cost exponent p", [1.0, 2.0, 0.5, 3.0], key="tp_p", help="C = ‖x − y‖_p")
    normalization = st.radio("Map normalisation", NORMALIZATIONS, horizontal=True, key="tp_norm",
                             help="paper: fused channels are SUMS on both sides; function-preserving: producers "
                                  "averaged, consumers summed")

try:
    options = TransportOptions(normalization=normalization, target=target, source_marginal=source_marginal,
                               target_marginal=target_marginal, solver=solver, reg=float(reg), p=float(p))
    record, proj = common.plan_view(cur.key, cur, group, sparsity, criterion, explore.options_key(options))
except common.ERRORS as exc:
    common.show_error(exc, "Cannot compute the plan")
    st.stop()

n, m = record.n, record.plan.shape[1]
order = explore.importance_order(record.importance)
src_labels = np.array(explore.source_labels(record))[order]
tgt_labels = explore.target_labels(record)
cols = explore.target_order(record)  # kept targets in the sources' order: the kept block is a diagonal
st.caption(f"Group {group}: n = {n} sources, m = {m} targets, {len(record.pruned)} pruned (✂, below the red line). "
           f"Transport cost Σ P·C = {float((record.plan * record.cost).sum()):.4f}; the plan has "
           f"{int((record.plan > 1e-12).sum())} non-zero entries (an exact plan has at most n + m − 1 = {n + m - 1}).")

view = st.segmented_control("Matrix", ["Plan P", "Cost C", "Map T (producer side)", "Map T (consumer side)"],
                            default="Plan P", key="tp_view") or "Plan P"
if view == "Cost C":
    z, scale, what = record.cost, "Viridis", "cost"
elif view == "Plan P":
    z, scale, what = record.plan, "Blues", "mass"
elif view == "Map T (producer side)":
    z, scale, what = record.map_out.T, "Blues", "coefficient"
else:
    z, scale, what = record.map_in.T, "Blues", "coefficient"
heat = go.Figure(go.Heatmap(z=z[order][:, cols].astype(np.float32), x=[tgt_labels[c] for c in cols], y=src_labels,
                            colorscale=scale,
                            hovertemplate="source %{y}<br>target %{x}<br>" + what + " %{z:.4g}<extra></extra>"))
heat.add_hline(y=len(record.kept) - 0.5, line_color="#d62728", line_width=2)
heat.update_yaxes(autorange="reversed", title="sources (by importance)", type="category")
heat.update_xaxes(title="targets", type="category")
st.plotly_chart(common.figure_layout(heat, f"{view}: sources ordered by importance, pruned below the red line",
                                     min(900, 320 + 2 * n)), key="plan_heatmap")

st.subheader("Where does a pruned neuron go?")
if len(record.pruned) == 0:
    st.info("Nothing is pruned at this sparsity.")
    st.stop()
pruned_set = set(record.pruned.tolist())
pruned_by_imp = [int(c) for c in order if c in pruned_set]
chosen = st.selectbox("Pruned neuron", pruned_by_imp, key="tp_neuron",
                      format_func=lambda c: f"#{c} (importance {record.importance[c]:.3f})")
flows = explore.neuron_flows(record, chosen)
nearest = int(np.argmin(record.cost[chosen]))
c1, c2, c3 = st.columns(3)
c1.metric("Targets it feeds", len(flows))
c2.metric("Nearest target", f"{tgt_labels[nearest]} (cost {record.cost[chosen, nearest]:.3f})")
wcost = sum(f.mass * f.cost for f in flows) / max(sum(f.mass for f in flows), 1e-300)
c3.metric("Mass-weighted cost of its flows", f"{wcost:.3f}")
st.dataframe([f.to_dict() for f in flows], hide_index=True, key="flows_table")

fig = go.Figure()
xs, ys, _ = explore.flow_segments(record, proj)
fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="rgba(120,120,120,0.35)", width=1),
                         name="flows of pruned neurons", hoverinfo="skip"))
kept_mask = np.zeros(n, dtype=bool)
kept_mask[record.kept] = True
for name, mask, symbol in (("kept", kept_mask, "circle"), ("pruned", ~kept_mask, "x")):
    idx = np.flatnonzero(mask)
    fig.add_trace(go.Scatter(x=proj.sources[idx, 0], y=proj.sources[idx, 1], mode="markers", name=name,
                             marker=dict(color=common.COLORS[name], symbol=symbol, size=7),
                             customdata=idx, hovertemplate="#%{customdata}<extra>" + name + "</extra>"))
if target == "centroids":
    fig.add_trace(go.Scatter(x=proj.targets[:, 0], y=proj.targets[:, 1], mode="markers", name="centroids",
                             marker=dict(color="#ff7f0e", symbol="diamond-open", size=9)))
sx, sy, masses = explore.flow_segments(record, proj, [chosen], min_share=0.0)
fig.add_trace(go.Scatter(x=sx, y=sy, mode="lines", line=dict(color="#ff7f0e", width=3), name=f"flows of #{chosen}"))
fig.add_trace(go.Scatter(x=[proj.sources[chosen, 0]], y=[proj.sources[chosen, 1]], mode="markers",
                         marker=dict(color="#ff7f0e", size=14, symbol="x"), name=f"#{chosen}"))
ex = proj.explained
fig.update_xaxes(title=f"PC 1 ({100 * ex[0]:.0f}% of variance)")
fig.update_yaxes(title=f"PC 2 ({100 * ex[1]:.0f}%)", scaleanchor="x", scaleratio=1)
st.plotly_chart(common.figure_layout(fig, "Feature vectors in 2-D (PCA): pruned neurons flow to their targets", 520),
                key="projection_chart")
