"""Whole model and fine-tuning: prune every group at one ratio with each method, then watch them recover."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from intrafusion import views as explore
from intrafusion.core.importance import CRITERIA
from intrafusion.experiments.train import fine_tune
from intrafusion.views import variants as var
from intrafusion.views.jobs import BackgroundJob
from pages import _charts as charts
from pages import _common as common
from pages import _controls as controls
from pages import _jobs as jobs

common.ensure_app()

JOB = "finetune_job"
WHOLE_JOB = "whole_model_job"

st.title("Whole model and fine-tuning")
st.caption("Prune EVERY group at the same sparsity with each chosen method (and repair), then fine-tune each pruned "
           "model for a few epochs on the model's training data, in the background. The curves show how much "
           "training each needs to recover (epoch 0 = right after pruning).")

cur = common.require_model()
c1, c2, c3, c4 = st.columns([1, 1, 2, 2])
sparsity = c1.select_slider("Sparsity of every group", common.SPARSITIES[1:], value=0.5, key="ft_sparsity")
criterion = c2.selectbox("Criterion", CRITERIA, key="ft_criterion")
all_labels = controls.method_labels()
labels = c3.multiselect("Methods", all_labels, default=["default", "fusion (paper)"], key="ft_methods") or ["default"]
repairs = controls.repair_select("ft_repairs", c4, default=("none", "moments")) or ["none"]
c1, c2, _ = st.columns(3)
epochs = c1.slider("Fine-tuning epochs", 1, 10, 3, key="ft_epochs")
lr = c2.select_slider("Learning rate", [0.001, 0.003, 0.01, 0.03, 0.05], value=0.01, key="ft_lr")


def variant(label: str, repair: str) -> var.Variant:
    return controls.variant_for(label, repair)


def whole_job(model_key: str, variants: list, sparsity: float, criterion: str) -> BackgroundJob:
    """A background job pruning every group with each variant (a task each); rows are WholeModelRow.

    The data (evaluation set, reference logits, Taylor batches, repair images) is fetched here on the script
    thread; finished rows are memoised by request (with the data folder), so coming back redraws at once."""
    jcur = common.Current(model_key, common.loaded_for(model_key))
    root = common.data_root()
    x, y = common.eval_set(jcur.loaded.dataset, jcur.pre_json, None)
    ref = common.reference_logits(model_key, jcur.loaded, None)
    batches = common.batches_for(jcur, criterion, root)
    images = charts.repair_images(jcur, root) if any(v.uses_data for v in variants) else None
    model, example, rows_memo = jcur.loaded.model, jcur.loaded.example_inputs, jobs.model_memo()

    def compute(v, emit, should_stop):
        key = ("whole", model_key, root, v, sparsity, criterion)
        row = rows_memo.get(key)
        if row is None:
            row = explore.whole_model_row(model, example, x, y, v, sparsity, criterion, reference_logits=ref,
                                          taylor_batches=batches, repair_data=images)
            rows_memo.put(key, row)
        emit(row)
        return row

    request = (model_key, root, tuple(variants), sparsity, criterion)
    return BackgroundJob(variants, compute, {"request": request, "model_key": model_key, "sparsity": sparsity,
                                             "labels": [v.label for v in variants]})


def std_ratio_figure(ratios: dict[str, dict]) -> go.Figure:
    """One line per variant over the BatchNorm layers (log scale, 1 = the unpruned spread), min-max band dotted."""
    fig = go.Figure()
    layers = list(next(r for r in ratios.values() if r))
    for label, prof in ratios.items():
        method = label.split(" + ")[0]
        dash = "dot" if " + " in label else None
        fig.add_trace(go.Scatter(x=layers, y=[prof[n][0] for n in layers], mode="lines+markers", name=label,
                                 line=dict(color=common.method_color(method), dash=dash),
                                 marker=controls.repair_marker(label),
                                 customdata=[[prof[n][1], prof[n][2]] for n in layers],
                                 hovertemplate="%{x}: mean ratio %{y:.2f} (channels %{customdata[0]:.2f} to "
                                               "%{customdata[1]:.2f})<extra>" + label + "</extra>"))
    fig.add_hline(y=1.0, line_color=common.COLORS["unpruned"], line_dash="dash",
                  annotation_text="unpruned", annotation_position="top left")
    ticks = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]
    fig.update_yaxes(title="std after / std before (log)", type="log", tickvals=ticks,
                     ticktext=[f"{v:g}" for v in ticks])
    fig.update_xaxes(title="BatchNorm layer (input → classifier)", tickangle=-30)
    return charts.layout(fig, f"Per-layer spread after pruning every group at s = {sparsity:g} "
                              "(dotted: with repair)", 420)


def _start(key: str) -> None:
    ss = st.session_state
    wjob = jobs.get(WHOLE_JOB)
    if wjob is None or wjob.state != "done" or wjob.settings["model_key"] != key:
        return  # the button is disabled until the pruned models exist
    s, crit, lr_, n_epochs = ss.get("ft_sparsity"), ss.get("ft_criterion"), ss.get("ft_lr"), int(ss.get("ft_epochs"))
    jcur = common.Current(key, common.loaded_for(key))
    dataset, pre, root = jcur.loaded.dataset, jcur.loaded.preprocessing, common.data_root()
    models = {row.label: row.result.model for row in wjob.snapshot().rows}
    rps = ss.get("ft_repairs") or ["none"]

    def compute(label, emit, should_stop):
        model, _ = fine_tune(models[label], dataset, pre, n_epochs, lr=lr_, root=root, should_stop=should_stop,
                             on_epoch=lambda result: emit((label, result)))
        return model

    settings = {"model_key": key, "sparsity": s, "criterion": crit, "lr": lr_, "epochs": n_epochs, "repairs": rps,
                "labels": list(models)}
    jobs.start(JOB, BackgroundJob(list(models), compute, settings))


st.subheader("1. Prune every group")
chosen = [variant(lb, rp) for lb in labels for rp in repairs]
request = (cur.key, common.data_root(), tuple(chosen), sparsity, criterion)
wjob = jobs.get(WHOLE_JOB)
if wjob is None or wjob.settings.get("request") != request:
    try:
        wjob = jobs.start(WHOLE_JOB, whole_job(cur.key, chosen, sparsity, criterion))
    except common.ERRORS as exc:
        common.show_error(exc, "Cannot prune the whole model")
        st.stop()
try:
    stats = common.model_stats(cur.key, cur.loaded, common.data_root())
except common.ERRORS as exc:
    common.show_error(exc, "Cannot measure the model")
    st.stop()
unpruned = {"method": "unpruned", "uses data": False, "accuracy %": stats["accuracy"], "parameters": stats["params"],
            "MACs": stats["macs"], "logit distance": 0.0, "prune seconds": 0.0, "repair seconds": 0.0}


def _draw_whole(job: BackgroundJob) -> None:
    """The table and the per-layer spread, growing as each variant is pruned (in the background)."""
    snap = job.snapshot()
    if job.active:
        st.progress(snap.progress, text=job.status("variants"))
    if snap.error:
        st.error(f"Cannot prune the whole model: {snap.error}")
    st.dataframe([unpruned] + [r.table for r in snap.rows], hide_index=True, key="whole_table")
    st.markdown("##### Why it collapses: the spread of every layer, after pruning over before")
    st.caption("For every BatchNorm layer (input side left, classifier right): the standard deviation of each "
               "channel's output after pruning divided by the same channel's before, averaged over the layer's "
               "channels, on 128 test images. Below 1 the signal collapses (dropped channels, averaged weights), "
               "above 1 it overshoots (the paper's summed map); the errors compound layer after layer. A repair "
               "moves the curve back towards 1. The refit repairs (refit-synthetic, refit-data) also refit every "
               "layer's weights to the original's outputs, which corrects what merged or dropped channels did to "
               "the next layer and shows in the accuracy column more than in this spread.")
    profiles = {r.label: r.profile for r in snap.rows}
    if any(profiles.values()):
        st.plotly_chart(std_ratio_figure(profiles), key="std_ratio_chart")
        legend = controls.repair_legend(list(profiles))
        if legend:
            st.caption(legend)
    elif snap.rows:
        st.info("This model has no BatchNorm layers: the per-layer spread is measured at BatchNorm outputs.")


jobs.live(WHOLE_JOB, _draw_whole)

st.subheader("2. Fine-tune each pruned model")
job: BackgroundJob | None = jobs.get(JOB)
b1, b2, _ = st.columns([1, 1, 4])
b1.button("Fine-tune", type="primary", on_click=_start, args=(cur.key,), key="ft_run",
          disabled=wjob.state != "done", help="available once every variant above is pruned")
b2.button("Stop", on_click=jobs.stop, args=(JOB,), key="ft_stop", disabled=not (job is not None and job.active))


def histories(rows) -> dict[str, list]:
    out: dict[str, list] = {}
    for label, result in rows:
        out.setdefault(label, []).append(result)
    return out


def figure(rows, settings: dict, base: float | None) -> go.Figure:
    fig = go.Figure()
    hist = histories(rows)
    for label in settings["labels"]:
        h = hist.get(label, [])
        fig.add_trace(go.Scatter(x=[e.epoch for e in h], y=[e.test_accuracy for e in h], mode="lines+markers",
                                 name=label, line=dict(color=common.method_color(label.split(" + ")[0]),
                                                       dash="dot" if " + " in label else None),
                                 marker=controls.repair_marker(label)))  # dotted: repaired; marker: which repair
    if base is not None:
        fig.add_hline(y=base, line_dash="dot", line_color=common.COLORS["unpruned"],
                      annotation_text="unpruned", annotation_position="bottom right")
    fig.update_xaxes(title="fine-tuning epoch (0 = right after pruning)", dtick=1,
                     range=[-0.2, settings["epochs"] + 0.2])
    fig.update_yaxes(title="test accuracy %", range=[0, 101])
    fig.update_layout(uirevision="recovery")
    return charts.layout(fig, f"Recovery, every group pruned at s = {settings['sparsity']:g}", 420)


def _draw(job: BackgroundJob) -> None:
    snap = job.snapshot()
    total = len(job.settings["labels"]) * (job.settings["epochs"] + 1)
    st.progress(min(1.0, len(snap.rows) / total) if total else 1.0,
                text=job.status("models") + f" · {len(snap.rows)} of {total} epochs recorded")
    base = common.model_stats(job.settings["model_key"], common.loaded_for(job.settings["model_key"]),
                              common.data_root())["accuracy"]
    st.plotly_chart(figure(snap.rows, job.settings, base), key="recovery_curves")


if job is None:
    st.info("Press Fine-tune to train the pruned models for a few epochs and compare their recovery.")
    st.stop()
try:
    jobs.live(JOB, _draw)
except common.ERRORS as exc:
    common.show_error(exc, "Cannot fine-tune")
    st.stop()
if job.error:
    st.error(f"Fine-tuning failed: {job.error}")
hist = histories(job.snapshot().rows)
d = [e.test_accuracy for e in hist.get("default", [])]
for lb in job.settings["labels"]:
    if lb != "default" and not job.active:
        text = explore.recovery_summary(d, [e.test_accuracy for e in hist.get(lb, [])], lb)
        if text:
            st.info(text)
