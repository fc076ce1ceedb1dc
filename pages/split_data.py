"""Split data: train k models on k parts of the data, then PaF and FaP against the whole-data model, live."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from intrafusion.experiments.split_data import PIPELINES, Stopped, quick_config, run_split_data
from intrafusion.experiments.split_data_report import STEPS, command_line
from intrafusion.views.jobs import BackgroundJob
from pages import _charts as charts
from pages import _common as common
from pages import _jobs as jobs

common.ensure_app()

JOB = "split_data_job"
DATASETS = {"mlp": ["digits8x8"], "vgg11_bn": ["mnist5k", "animals10k"], "resnet18": ["mnist5k", "animals10k"]}
PIPE_COLORS = {"PaF": "#1f77b4", "FaP": "#ff7f0e", "whole-data": "#7f7f7f"}

st.title("Split data")
st.caption("The paper's second use of fusion (section 6): split the training set into k disjoint parts, train one "
           "model per part (in parallel on a cluster), then **PaF** (prune each with Intra-Fusion, fine-tune each "
           "on its part, fuse them with OT model fusion, fine-tune on all) or **FaP** (fuse, fine-tune, prune, "
           "fine-tune), against the **whole-data** model trained and pruned with the same epochs. This page runs "
           "a --quick-sized pipeline in this process (one model after the other, so no speedup here: the "
           "command line runs the models in parallel with `--workers`).")

c1, c2, c3, c4, c5 = st.columns(5)
arch = c1.selectbox("Architecture", list(DATASETS), key="sd_arch",
                    help="mlp on 8x8 digits takes seconds; the convnets (width 1/16) a minute or two")
dataset = c2.selectbox("Dataset", DATASETS[arch], key=f"sd_dataset_{arch}")
parts = c3.selectbox("Parts (models)", [2, 4], key="sd_parts")
sparsity = c4.select_slider("Sparsity", [0.3, 0.5, 0.7], value=0.5, key="sd_sparsity")
fusion = c5.selectbox("Model fusion cost", ["activation", "weight"], key="sd_fusion",
                      help="activation: neurons matched by their outputs on 200 training images; weight: by their "
                           "incoming weights")
config = quick_config(arch, dataset, int(parts), sparsity=float(sparsity), fusion=fusion)
st.caption(f"Setting: width {config.width:g}, T = {config.epochs} training epochs, F = {config.finetune_epochs} "
           f"per fine-tuning stage, {config.train_size or 'all'} training and {config.test_size} test images. The "
           f"same run from the command line (with the models in parallel: add `--workers {config.parts}`):")
st.code(command_line(config.to_dict(), quick=True) + f" --sparsity {config.sparsity:g} --fusion {config.fusion}",
        language="bash")


def make_job(cfg) -> BackgroundJob:
    def compute(task, emit, should_stop):
        try:
            return run_split_data(task, on_event=emit, should_stop=should_stop, progress=False)
        except Stopped:
            return None

    return BackgroundJob([cfg], compute, {"config": cfg.to_dict()})


b1, b2, _ = st.columns([1, 1, 4])
job = jobs.get(JOB)
b1.button("Run", type="primary", key="sd_run", disabled=job is not None and job.active,
          on_click=lambda: jobs.start(JOB, make_job(config)))
b2.button("Stop", key="sd_stop", disabled=job is None or not job.active, on_click=jobs.stop, args=(JOB,))


def curves_figure(rows: list[dict]) -> go.Figure:
    """Test accuracy after every epoch of every training and fine-tuning run, one line each."""
    fig = go.Figure()
    lines: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("kind") == "epoch":
            lines.setdefault(r["curve"], []).append(r)
    for label, epochs in lines.items():
        dash = "dot" if "fine-tuned" in label else None
        fig.add_trace(go.Scatter(x=[e["epoch"] for e in epochs], y=[e["test_accuracy"] for e in epochs],
                                 mode="lines+markers", name=label, line=dict(dash=dash)))
    fig.update_xaxes(title="epoch")
    fig.update_yaxes(title="test accuracy (%)", range=[0, 100])
    return charts.layout(fig, "Training and fine-tuning curves (dotted: fine-tuning)", 420)


def stages_figure(rows: list[dict]) -> go.Figure:
    """Accuracy after each stage of each pipeline, in the order they happened."""
    fig = go.Figure()
    for name in PIPELINES:
        st_rows = [r for r in rows if r.get("kind") == "stage" and r["pipeline"] == name]
        if st_rows:
            fig.add_trace(go.Scatter(x=[r["stage"] for r in st_rows], y=[r["accuracy"] for r in st_rows],
                                     mode="lines+markers", name=name, line=dict(color=PIPE_COLORS[name])))
    fig.update_yaxes(title="test accuracy (%)", range=[0, 100])
    return charts.layout(fig, "Each pipeline, stage by stage (pruned: every group, no data)", 380)


def draw_live(j: BackgroundJob) -> None:
    snap = j.snapshot()
    if snap.error:
        st.error(f"The run failed: {snap.error}")
    running = snap.state == "running"
    stages = [r for r in snap.rows if r.get("kind") == "stage"]
    text = f"{snap.state}: {len(stages)} stage(s) measured" if running else snap.state
    st.progress(min(1.0, len(stages) / 11.0), text=text)
    st.plotly_chart(curves_figure(snap.rows), key="sd_curves")
    st.plotly_chart(stages_figure(snap.rows), key="sd_stages")


def draw_result(result: dict) -> None:
    pipes = result["pipelines"]
    names = list(pipes)
    fig = go.Figure(go.Bar(x=names, y=[pipes[n]["final_accuracy"] for n in names],
                           marker_color=[PIPE_COLORS[n] for n in names],
                           text=[f"{pipes[n]['final_accuracy']:.1f}" for n in names], textposition="outside"))
    fig.update_yaxes(title="final test accuracy (%)", range=[0, 105])
    st.plotly_chart(charts.layout(fig, "Final accuracy (all pruned to the same widths)", 360, legend=None),
                    key="sd_final")
    fig = go.Figure([go.Bar(name=s.replace("_", "-"), x=names, y=[pipes[n]["times"][s] for n in names])
                     for s in STEPS])
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title="wall-clock seconds")
    st.plotly_chart(charts.layout(fig, "Time per step (in this process: the k models one after the other)", 360),
                    key="sd_times")
    st.dataframe([{"pipeline": n, "final accuracy %": round(pipes[n]["final_accuracy"], 2),
                   "final widths": str(pipes[n]["widths"]), "parameters": pipes[n]["params"],
                   **{f"{s} s": round(pipes[n]["times"][s], 2) for s in (*STEPS, "total")},
                   "training speedup": round(pipes[n]["training_speedup"], 2),
                   "overall speedup": round(pipes[n]["overall_speedup"], 2)} for n in names],
                 hide_index=True, key="sd_table")
    split = ", ".join(f"{m['accuracy']:.1f}%" for m in result["split_models"])
    fa = result["fusion"]["FaP"]
    st.caption(f"Split models: {split}. The same models averaged without alignment: "
               f"{result['naive_average_accuracy']:.1f}%; fused with OT: {pipes['FaP']['stages'][0]['accuracy']:.1f}%"
               + (f" ({fa['accuracy_without_bn_reset']:.1f}% before re-estimating BatchNorm statistics)"
                  if "accuracy_without_bn_reset" in fa else "") + ".")


if job is None:
    st.info("Press Run to train the models and watch the curves grow; the results of a full run with its "
            "command are in docs/RESULTS.md ('Split-data training').")
else:
    jobs.live(JOB, draw_live)
    if job.state == "done" and job.results.get(0) is not None:
        draw_result(job.results[0].to_dict())
