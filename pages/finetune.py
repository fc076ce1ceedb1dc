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

st.title("Whole model and fine-tuning")
st.caption("Prune EVERY group at the same sparsity with each chosen method (and repair), then fine-tune each pruned "
           "model for a few epochs on the model's training data, in the background. The curves show how much "
           "training each needs to recover (epoch 0 = right after pruning).")

cur = common.require_model()
c1, c2, c3, c4 = st.columns([1, 1, 2, 1])
sparsity = c1.select_slider("Sparsity of every group", common.SPARSITIES[1:], value=0.5, key="ft_sparsity")
criterion = c2.selectbox("Criterion", CRITERIA, key="ft_criterion")
all_labels = controls.method_labels()
labels = c3.multiselect("Methods", all_labels, default=["default", "fusion (paper)"], key="ft_methods") or ["default"]
repair = controls.repair_select("ft_repair", c4, multi=False)
c1, c2, _ = st.columns(3)
epochs = c1.slider("Fine-tuning epochs", 1, 10, 3, key="ft_epochs")
lr = c2.select_slider("Learning rate", [0.001, 0.003, 0.01, 0.03, 0.05], value=0.01, key="ft_lr")


def variant(label: str, repair: str) -> var.Variant:
    return controls.variant_for(label, repair)


@st.cache_resource(show_spinner=False, max_entries=24)
def pruned(model_key: str, _cur: common.Current, v: var.Variant, sparsity: float, criterion: str):
    """Every group pruned with one variant (a PruneResult shared read-only)."""
    batches = common.batches_for(_cur, criterion)
    data = charts.repair_images(_cur) if v.repair == "data" else None
    return var.prune_variant(_cur.loaded.model, _cur.loaded.example_inputs, "all", sparsity, v, criterion,
                             taylor_batches=batches, repair_data=data)


@st.cache_data(show_spinner=False, max_entries=64)
def evaluate_pruned(model_key: str, _cur: common.Current, v: var.Variant, sparsity: float, criterion: str) -> dict:
    res = pruned(model_key, _cur, v, sparsity, criterion)
    x, y = common.eval_set(_cur.loaded.dataset, _cur.pre_json, None)
    ref = common.reference_logits(model_key, _cur.loaded, None)
    rep = explore.model_report(res.model, _cur.loaded.example_inputs, x, y, latency=False, reference_logits=ref)
    return {"method": v.label, "accuracy %": rep["accuracy"], "parameters": rep["params"], "MACs": rep["macs"],
            "logit distance": rep["logit_distance"], "prune seconds": res.timings.get("total", 0.0)}


def _start(key: str) -> None:
    ss = st.session_state
    jcur = common.Current(key, common.loaded_for(key))
    lbs = ss.get("ft_methods") or ["default"]
    rp = ss.get("ft_repair") or "none"
    s, crit, lr_, n_epochs = ss.get("ft_sparsity"), ss.get("ft_criterion"), ss.get("ft_lr"), int(ss.get("ft_epochs"))
    variants = [variant(lb, rp) for lb in lbs]
    models = {v.label: pruned(key, jcur, v, s, crit).model for v in variants}  # cached: computed above
    dataset, pre, root = jcur.loaded.dataset, jcur.loaded.preprocessing, common.data_root()

    def compute(label, emit, should_stop):
        model, _ = fine_tune(models[label], dataset, pre, n_epochs, lr=lr_, root=root, should_stop=should_stop,
                             on_epoch=lambda result: emit((label, result)))
        return model

    settings = {"model_key": key, "sparsity": s, "criterion": crit, "lr": lr_, "epochs": n_epochs, "repair": rp,
                "labels": list(models)}
    jobs.start(JOB, BackgroundJob(list(models), compute, settings))


st.subheader("1. Prune every group")
try:
    with st.spinner("Pruning every group with each method and evaluating…"):
        table = [evaluate_pruned(cur.key, cur, variant(lb, repair), sparsity, criterion) for lb in labels]
    stats = common.model_stats(cur.key, cur.loaded, common.data_root())
except common.ERRORS as exc:
    common.show_error(exc, "Cannot prune the whole model")
    st.stop()
table.insert(0, {"method": "unpruned", "accuracy %": stats["accuracy"], "parameters": stats["params"],
                 "MACs": stats["macs"], "logit distance": 0.0, "prune seconds": 0.0})
st.dataframe(table, hide_index=True, key="whole_table")

st.subheader("2. Fine-tune each pruned model")
job: BackgroundJob | None = jobs.get(JOB)
b1, b2, _ = st.columns([1, 1, 4])
b1.button("Fine-tune", type="primary", on_click=_start, args=(cur.key,), key="ft_run")
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
                                 name=label, line=dict(color=common.method_color(label.split(" + ")[0]))))
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
