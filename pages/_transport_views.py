"""The Transport plan page's charts and its linked selection (one neuron selected everywhere on the page)."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from intrafusion import views as explore
from intrafusion.core.prune import GroupRecord
from intrafusion.views import selection as sel
from pages import _charts as charts
from pages import _common as common

PICK = "tp_pick"
MATRICES = ["Plan P", "Cost C", "Map T (producer side)", "Map T (consumer side)"]
ORANGE = "#ff7f0e"
#: Narrow numeric columns, so a flows table fits the side panel without hiding its right-hand columns.
NARROW = {name: {"width": "small"} for name in ("mass", "share %", "coefficient", "cost", "nearness rank",
                                                  "share of target %")}


# ------------------------------------------------------------------------------------------- selection


def selected_neuron(model_key: str, group: int, record: GroupRecord, order: np.ndarray) -> int:
    """The neuron selected on this page for this model and group (default: the most important pruned one)."""
    pick = st.session_state.get(PICK)
    if pick and pick.get("where") == (model_key, group) and 0 <= pick.get("channel", -1) < record.n:
        return int(pick["channel"])
    pruned = set(record.pruned.tolist())
    first = next((int(c) for c in order if c in pruned), None)
    return first if first is not None else int(order[0])


def _channel_of(point: dict) -> int | None:
    """The channel in a selected point's customdata: a number, a list whose first item is it, or (a typed array
    row, as the browser serialises plotly's numeric customdata) a dict ``{"0": channel, "1": ...}``."""
    cd = point.get("customdata")
    if cd is None:
        return None
    if isinstance(cd, dict):
        cd = cd.get("0", cd.get(0))
    elif isinstance(cd, list | tuple):
        cd = cd[0] if cd else None
    try:
        return int(cd)
    except (TypeError, ValueError):
        return None


def on_pick(chart_key: str, model_key: str, group: int):
    """An ``on_select`` callback: the clicked point's channel becomes the page's selected neuron."""

    def callback():
        state = st.session_state.get(chart_key)
        points = (state or {}).get("selection", {}).get("points", []) if state else []
        for p in points:
            c = _channel_of(p)
            if c is not None:
                st.session_state[PICK] = {"where": (model_key, group), "channel": c}
                return

    return callback


# ---------------------------------------------------------------------------------------------- heatmap


def _matrix(record: GroupRecord, view: str) -> tuple[np.ndarray, str]:
    if view == "Cost C":
        return record.cost, "cost"
    if view == "Map T (producer side)":
        return record.map_out.T, "coefficient"
    if view == "Map T (consumer side)":
        return record.map_in.T, "coefficient"
    return record.plan, "mass"


def heatmap_figure(record: GroupRecord, order, col_order, tgt_labels, view: str, zoom: str, row_order: str, k: int,
                   log: bool, selected: int) -> go.Figure:
    """The chosen matrix (rows = sources, columns = targets) with invisible clickable markers over its cells."""
    rows = sel.display_rows(record, order, row_order, zoom, k)
    cols = sel.display_columns(record, rows, col_order, zoom)
    z_full, what = _matrix(record, view)
    z = np.asarray(z_full, dtype=np.float64)[np.ix_(rows, cols)]
    labels = explore.source_labels(record)
    ylab = [labels[r] for r in rows]
    xlab = [tgt_labels[c] for c in cols]
    if log:
        positive = z[z > 0]
        floor = positive.min() if len(positive) else 1.0
        zc = np.where(z > 0, np.log10(np.maximum(z, floor)), np.nan)  # zeros: transparent gaps
        scale, ctitle = charts.DENSE_SCALE, f"log₁₀ {what}"
    else:
        zc = z
        scale, ctitle = (charts.DENSE_SCALE if view == "Cost C" else charts.MASS_SCALE), what
    fig = go.Figure(go.Heatmap(z=zc.astype(np.float32), x=xlab, y=ylab, colorscale=scale, hoverongaps=False,
                               colorbar=dict(title=dict(text=ctitle, side="right"), thickness=12),
                               hoverinfo="skip"))  # the clickable markers above carry the hover (and the click)
    rr, cc = sel.selectable_cells(z, 20000)
    scatter = go.Scattergl if len(rr) > 4000 else go.Scatter
    px_row = _row_px(len(rows))
    fig.add_trace(scatter(
        x=[xlab[c] for c in cc], y=[ylab[r] for r in rr], mode="markers", name="cells", showlegend=False,
        customdata=np.stack([rows[rr], cols[cc], z[rr, cc]], axis=1),
        marker=dict(size=max(4, min(14, px_row)), color="rgba(0,0,0,0)", symbol="square"),
        selected=dict(marker=dict(color=ORANGE)), unselected=dict(marker=dict(opacity=0)),
        hovertemplate="source #%{customdata[0]}<br>target %{x}<br>" + what + " %{customdata[2]:.4g}"
                      "<br>click: select this neuron<extra></extra>"))
    if row_order == "importance" and zoom != "pruned rows":
        m_shown = int(np.isin(rows, record.kept).sum())
        if 0 < m_shown < len(rows):
            fig.add_hline(y=m_shown - 0.5, line_color="#d62728", line_width=2)
    hit = np.flatnonzero(rows == selected)
    if len(hit):
        fig.add_shape(type="rect", xref="paper", x0=0, x1=1, y0=hit[0] - 0.5, y1=hit[0] + 0.5,
                      line=dict(color=ORANGE, width=2), fillcolor="rgba(255,127,14,0.12)")
    fig.update_yaxes(autorange="reversed", title="sources", type="category", tickfont=dict(size=10),
                     nticks=min(len(rows), 64))
    fig.update_xaxes(title="targets", type="category", tickfont=dict(size=10), nticks=min(len(cols), 48),
                     tickangle=-60)
    fig.update_layout(uirevision=f"heat-{record.group.index}-{zoom}-{row_order}", dragmode="zoom")
    title = f"{view}: {len(rows)} of {record.n} sources × {len(cols)} of {record.plan.shape[1]} targets"
    return charts.layout(fig, title, int(min(1400, max(360, 140 + px_row * len(rows)))), None)


def _row_px(rows: int) -> int:
    return int(max(3, min(18, 1100 // max(rows, 1))))


# ------------------------------------------------------------------------------------------ side panel


def selected_panel(cur: common.Current, record: GroupRecord, tgt_labels, selected: int, group: int) -> None:
    """What the selected neuron does: where a pruned one goes, or what merged into a kept one."""
    rank = int(np.flatnonzero(explore.importance_order(record.importance) == selected)[0]) + 1
    pruned = selected in set(record.pruned.tolist())
    st.markdown(f"#### Neuron #{selected} {'✂ pruned' if pruned else '(kept)'}")
    st.caption(f"importance {record.importance[selected]:.3f} (rank {rank} of {record.n}). Click another cell, bar "
               "or point to select another neuron.")
    if pruned:
        flows = explore.neuron_flows(record, selected)
        nearest = int(np.argmin(record.cost[selected]))
        wcost = sum(f.mass * f.cost for f in flows) / max(sum(f.mass for f in flows), 1e-300)
        st.markdown(f"Feeds **{len(flows)}** target(s). Nearest target: **{tgt_labels[nearest]}** "
                    f"(cost {record.cost[selected, nearest]:.3f}); mass-weighted cost of its flows: "
                    f"**{wcost:.3f}**.")
        st.dataframe([f.to_dict() for f in flows], hide_index=True, key="flows_table", column_config=NARROW,
                     column_order=("target", "share %", "coefficient", "cost", "nearness rank"),  # fits the panel
                     height=min(300, 40 + 35 * len(flows)))
        target = flows[0].target if flows else None
    else:
        target = sel.target_of(record, selected)
        if target is None:  # centroid targets: a kept channel is a source like the others
            flows = explore.neuron_flows(record, selected)
            st.dataframe([f.to_dict() for f in flows], hide_index=True, key="flows_table")
            target = flows[0].target if flows else None
        else:
            merges = sel.merged_into(record, target)
            others = [mg for mg in merges if mg.source != selected]
            st.markdown(f"Fused target **{tgt_labels[target]}** = Σ coefficient × source: itself and "
                        f"**{len(others)}** other neuron(s), {sum(mg.pruned for mg in others)} of them pruned.")
            st.dataframe([mg.to_dict() for mg in merges], hide_index=True, key="merged_table", column_config=NARROW,
                         height=min(300, 40 + 35 * len(merges)))
    if target is not None:
        fv = sel.first_layer_filters(common.prepared_for(cur.key, cur.loaded).prepared, record, target)
        if fv is not None:
            st.plotly_chart(filters_figure(fv, tgt_labels[target]), key="filters_chart")


def filters_figure(fv: sel.FilterView, target_label: str) -> go.Figure:
    """Kernels of the sources of one fused target (top row) and the fused kernel (bottom), one colour range."""
    k = len(fv.sources)
    fig = make_subplots(rows=2, cols=max(k, 1), vertical_spacing=0.18, horizontal_spacing=0.02,
                        subplot_titles=[f"#{s} × {c:.2f}" for s, c in zip(fv.sources, fv.coefficients)] +
                                       [f"fused {target_label}"] + [""] * (k - 1))
    lim = float(max(np.abs(fv.before).max(), np.abs(fv.after).max(), 1e-12))
    for i in range(k):
        fig.add_trace(go.Heatmap(z=fv.before[i].mean(axis=0), zmin=-lim, zmax=lim, colorscale="RdBu",
                                 showscale=False, hovertemplate="%{z:.3f}<extra></extra>"), row=1, col=i + 1)
    fig.add_trace(go.Heatmap(z=fv.after.mean(axis=0), zmin=-lim, zmax=lim, colorscale="RdBu", showscale=False,
                             hovertemplate="%{z:.3f}<extra></extra>"), row=2, col=1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed", scaleanchor="x")
    fig.update_annotations(font_size=10)
    return charts.layout(fig, f"First-layer filters ({fv.layer}): before (top) and after fusion", 300, None)


# -------------------------------------------------------------------------------------- other charts


def importance_figure(record: GroupRecord, order, selected: int, criterion: str) -> go.Figure:
    """Importance by rank, kept and pruned; click a bar to select its neuron."""
    is_kept = np.zeros(record.n, dtype=bool)
    is_kept[record.kept] = True
    fig = go.Figure()
    ranks = np.arange(1, record.n + 1)
    for name, mask in (("kept", is_kept[order]), ("pruned", ~is_kept[order])):
        fig.add_trace(go.Bar(x=ranks[mask], y=record.importance[order][mask], name=f"{name} ({int(mask.sum())})",
                             marker_color=common.COLORS[name], customdata=order[mask],
                             hovertemplate="rank %{x}<br>#%{customdata}<br>importance %{y:.3f}<extra></extra>"))
    r = int(np.flatnonzero(order == selected)[0])
    fig.add_trace(go.Bar(x=[r + 1], y=[record.importance[selected]], name=f"selected #{selected}",
                         marker_color=ORANGE, customdata=[selected], width=max(1.0, record.n / 80),
                         hovertemplate="#%{customdata} (selected)<extra></extra>"))
    fig.update_layout(barmode="overlay", bargap=0.05, uirevision="imp")
    fig.update_xaxes(title="rank (most important first)", range=[0.5, record.n + 0.5])
    fig.update_yaxes(title=f"{criterion} importance (mean 1)", range=[0, float(record.importance.max()) * 1.05])
    return charts.layout(fig, f"Importance: keep {record.m} of {record.n} at s = {record.sparsity:g}", 340)


def accuracy_figure(job, sparsity: float, base: float | None) -> go.Figure:
    """This group's accuracy over sparsity (the job's points so far) with a marker at the current sparsity."""
    snap = job.snapshot()
    fig = go.Figure()
    for label in job.settings["labels"]:
        pts = sorted((r.sparsity, r.accuracy) for r in snap.rows if r.label == label)
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=label,
                                 line=dict(color=common.method_color(label.split(" + ")[0]))))
        here = [a for s, a in pts if math.isclose(s, sparsity)]
        fig.add_trace(go.Scatter(x=[sparsity] * len(here), y=here, mode="markers", showlegend=False,
                                 marker=dict(size=14, color=common.method_color(label.split(" + ")[0]),
                                             line=dict(width=2, color=ORANGE)),
                                 hovertemplate=f"{label} at s = {sparsity:g}: " + "%{y:.2f}%<extra></extra>"))
    fig.add_vline(x=sparsity, line_color=ORANGE, line_dash="dash")
    if base is not None:
        fig.add_hline(y=base, line_dash="dot", line_color=common.COLORS["unpruned"])
    fig.update_xaxes(title="sparsity of this group", range=[0.05, 0.95], dtick=0.1)
    fig.update_yaxes(title="accuracy % (200 test images)", range=[0, 101])
    fig.update_layout(uirevision="acc")
    return charts.layout(fig, f"Accuracy when only this group is pruned ({job.status()})", 340)


def projection_figure(record: GroupRecord, proj, selected: int, target: str) -> go.Figure:
    fig = go.Figure()
    xs, ys, _ = explore.flow_segments(record, proj)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="rgba(127,127,127,0.35)", width=1),
                             name="flows of pruned neurons", hoverinfo="skip"))
    kept_mask = np.zeros(record.n, dtype=bool)
    kept_mask[record.kept] = True
    for name, mask, symbol in (("kept", kept_mask, "circle"), ("pruned", ~kept_mask, "x")):
        idx = np.flatnonzero(mask)
        fig.add_trace(go.Scatter(x=proj.sources[idx, 0], y=proj.sources[idx, 1], mode="markers", name=name,
                                 marker=dict(color=common.COLORS[name], symbol=symbol, size=7), customdata=idx,
                                 hovertemplate="#%{customdata}<extra>" + name + " (click: select)</extra>"))
    if target == "centroids":
        fig.add_trace(go.Scatter(x=proj.targets[:, 0], y=proj.targets[:, 1], mode="markers", name="centroids",
                                 marker=dict(color=ORANGE, symbol="diamond-open", size=9)))
    t = sel.target_of(record, selected)
    srcs = [selected] if t is None else [int(s) for s in np.flatnonzero(record.plan[:, t] > 1e-12)]
    sx, sy, _ = explore.flow_segments(record, proj, srcs, min_share=0.0)
    fig.add_trace(go.Scatter(x=sx, y=sy, mode="lines", line=dict(color=ORANGE, width=3),
                             name=f"flows {'of' if t is None else 'into'} #{selected}", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=[proj.sources[selected, 0]], y=[proj.sources[selected, 1]], mode="markers",
                             marker=dict(color=ORANGE, size=15, symbol="circle-open", line=dict(width=3)),
                             name=f"selected #{selected}", customdata=[selected], hoverinfo="skip"))
    ex = proj.explained
    fig.update_xaxes(title=f"PC 1 ({100 * ex[0]:.0f}% of variance)")
    fig.update_yaxes(title=f"PC 2 ({100 * ex[1]:.0f}%)", scaleanchor="x", scaleratio=1)
    fig.update_layout(uirevision=f"proj-{record.group.index}")
    return charts.layout(fig, "Feature vectors in 2-D (PCA): pruned neurons flow to their targets", 480)


def sankey_figure(record: GroupRecord, tgt_labels, selected: int, k: int = 25) -> go.Figure:
    sd = sel.sankey_flows(record, tgt_labels, k=k, focus=selected)
    colors = ["rgba(255,127,14,0.75)" if h else "rgba(127,127,127,0.35)" for h in sd.highlighted]
    fig = go.Figure(go.Sankey(
        arrangement="snap", valueformat=".3f", valuesuffix=" % of the mass",
        node=dict(label=sd.labels, pad=6, thickness=12, color=["#d62728" if "✂" in lb else "#1f77b4"
                                                               for lb in sd.labels]),
        link=dict(source=sd.sources, target=sd.targets, value=sd.values, color=colors)))
    return charts.layout(fig, f"The {k} largest flows out of pruned neurons (orange: #{selected}'s)",
                         max(360, 14 * len(sd.labels) // 2 + 120), None)
