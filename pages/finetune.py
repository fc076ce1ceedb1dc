"""Whole model and fine-tuning: prune every group at one ratio with both methods, then watch them recover."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from intrafusion import views as explore
from intrafusion.core.importance import CRITERIA
from intrafusion.core.prune import TransportOptions
from intrafusion.core.transport import NORMALIZATIONS
from intrafusion.experiments.sweep import method_label
from intrafusion.experiments.train import fine_tune
from pages import _common as common

common.ensure_app()

JOB = "finetune_job"

st.title("Whole model and fine-tuning")
st.caption("Prune EVERY group at the same sparsity with default pruning and with Intra-Fusion, then fine-tune "
           "each pruned model for a few epochs on the model's training data. The curves show how much training "
           "each needs to recover (epoch 0 = right after pruning).")

cur = common.require_model()
c1, c2, c3 = st.columns(3)
sparsity = c1.select_slider("Sparsity of every group", common.SPARSITIES[1:], value=0.5, key="ft_sparsity")
criterion = c2.selectbox("Criterion", CRITERIA, key="ft_criterion")
norms = c3.multiselect("Intra-Fusion normalisations", NORMALIZATIONS, default=["paper"], key="ft_norms")
c1, c2, _ = st.columns(3)
epochs = c1.slider("Fine-tuning epochs", 1, 10, 3, key="ft_epochs")
lr = c2.select_slider("Learning rate", [0.001, 0.003, 0.01, 0.03, 0.05], value=0.01, key="ft_lr")

labels = ["default"] + [method_label("fusion", nm) for nm in (norms or ["paper"])]


def _request(label: str) -> tuple[str, tuple]:
    if label == "default":
        return "default", explore.options_key(TransportOptions())
    norm = label[len("fusion (") : -1]
    return "fusion", explore.options_key(TransportOptions(normalization=norm))


def _pruned(cur: common.Current, label: str, sparsity: float, criterion: str):
    method, opts = _request(label)
    return common.pruned_model(cur.key, cur, "all", sparsity, method, criterion, opts)


@st.cache_data(show_spinner=False, max_entries=64)
def _evaluate_pruned(model_key: str, _cur: common.Current, label: str, sparsity: float, criterion: str) -> dict:
    res = _pruned(_cur, label, sparsity, criterion)
    x, y = common.eval_set(_cur.loaded.dataset, _cur.pre_json, None)
    ref = common.reference_logits(model_key, _cur.loaded, None)
    rep = explore.model_report(res.model, _cur.loaded.example_inputs, x, y, latency=False, reference_logits=ref)
    return {"method": label, "accuracy %": rep["accuracy"], "parameters": rep["params"], "MACs": rep["macs"],
            "logit distance": rep["logit_distance"], "prune seconds": res.timings.get("total", 0.0)}


def _start(key: str) -> None:
    ns = st.session_state.get("ft_norms") or ["paper"]
    lbs = ["default"] + [method_label("fusion", nm) for nm in ns]
    settings = {"model_key": key, "sparsity": st.session_state.get("ft_sparsity"),
                "criterion": st.session_state.get("ft_criterion"), "lr": st.session_state.get("ft_lr"),
                "epochs": st.session_state.get("ft_epochs")}
    st.session_state[JOB] = explore.FineTuneJob(lbs, int(settings["epochs"]), settings)


def _stop() -> None:
    job = st.session_state.get(JOB)
    if job is not None:
        job.stop()


st.subheader("1. Prune every group")
try:
    with st.spinner("Pruning every group with each method and evaluating…"):
        table = [_evaluate_pruned(cur.key, cur, lb, sparsity, criterion) for lb in labels]
    stats = common.model_stats(cur.key, cur.loaded, common.data_root())
except common.ERRORS as exc:
    common.show_error(exc, "Cannot prune the whole model")
    st.stop()
table.insert(0, {"method": "unpruned", "accuracy %": stats["accuracy"], "parameters": stats["params"],
                 "MACs": stats["macs"], "logit distance": 0.0, "prune seconds": 0.0})
st.dataframe(table, hide_index=True, key="whole_table")

st.subheader("2. Fine-tune both")
job: explore.FineTuneJob | None = st.session_state.get(JOB)
b1, b2, _ = st.columns([1, 1, 4])
b1.button("Fine-tune", type="primary", on_click=_start, args=(cur.key,), key="ft_run")
b2.button("Stop", on_click=_stop, key="ft_stop", disabled=not (job is not None and job.active))
progress_ph = st.empty()
chart_ph = st.empty()
_draws: list[int] = []


def _figure(job: explore.FineTuneJob, base: float | None) -> go.Figure:
    fig = go.Figure()
    for label in job.labels:
        hist = job.histories.get(label, [])
        fig.add_trace(go.Scatter(x=[e.epoch for e in hist], y=[e.test_accuracy for e in hist], mode="lines+markers",
                                 name=label, line=dict(color=common.method_color(label))))
    if base is not None:
        fig.add_hline(y=base, line_dash="dot", line_color=common.COLORS["unpruned"],
                      annotation_text="unpruned", annotation_position="bottom right")
    fig.update_xaxes(title="fine-tuning epoch (0 = right after pruning)", dtick=1, range=[-0.2, job.epochs + 0.2])
    fig.update_yaxes(title="test accuracy %")
    return common.figure_layout(fig, f"Recovery, every group pruned at s = {job.settings['sparsity']:g}", 420)


def _status(job: explore.FineTuneJob) -> str:
    if job.error:
        return f"failed: {job.error}"
    if job.stopped:
        return "stopped"
    if not job.pending:
        return "done"
    return f"fine-tuning {job.pending[0]}"


def _draw(job: explore.FineTuneJob, base: float | None) -> None:
    progress_ph.progress(job.progress, text=_status(job))
    _draws.append(1)  # every redraw in one run needs its own element key
    chart_ph.plotly_chart(_figure(job, base), key=f"recovery_curves_{len(_draws)}")


if job is None:
    st.info("Press Fine-tune to train the pruned models for a few epochs and compare their recovery.")
else:
    jkey = job.settings["model_key"]
    try:
        jcur = common.Current(jkey, common.loaded_for(jkey))
        base = common.model_stats(jkey, jcur.loaded, common.data_root())["accuracy"]
    except common.ERRORS as exc:
        common.show_error(exc, "Cannot fine-tune")
        st.stop()
    s = job.settings

    def run_one(label, on_epoch, should_stop):
        res = _pruned(jcur, label, s["sparsity"], s["criterion"])
        return fine_tune(res.model, jcur.loaded.dataset, jcur.loaded.preprocessing, job.epochs, lr=s["lr"],
                         on_epoch=on_epoch, should_stop=should_stop)

    _draw(job, base)
    if job.active:
        try:
            job.run(run_one, on_epoch=lambda label, result: _draw(job, base))
        except common.ERRORS as exc:
            common.show_error(exc, "Fine-tuning failed")
        else:
            st.rerun()  # finished: redraw with the Stop button disabled
    d = [e.test_accuracy for e in job.histories.get("default", [])]
    for lb in job.labels[1:]:
        text = explore.recovery_summary(d, [e.test_accuracy for e in job.histories.get(lb, [])], lb)
        if text:
            st.info(text)
