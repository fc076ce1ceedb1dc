"""Export: download a pruned model (safetensors + architecture config) and a before/after report."""

from __future__ import annotations

import json

import streamlit as st

from intrafusion import views as explore
from intrafusion.core.importance import CRITERIA
from intrafusion.core.prune import TransportOptions
from intrafusion.core.transport import NORMALIZATIONS
from pages import _common as common

common.ensure_app()

RESULT = "export_result"

st.title("Export")
st.caption("Prune the current model, measure it against the original (accuracy, parameters, MACs, CPU latency) "
           "and download it. The safetensors file carries its architecture config, so "
           "`intrafusion.models.checkpoint.load_model(file)` rebuilds it (and so does the Model page's upload).")

cur = common.require_model()
groups = common.prepared_for(cur.key, cur.loaded).prepared.groups
finetuned = st.session_state.get("finetune_job")
sources = ["prune now"]
if finetuned is not None and finetuned.models and finetuned.settings.get("model_key") == cur.key:
    sources += [f"fine-tuned: {lb}" for lb in finetuned.models]
source = st.radio("Model to export", sources, horizontal=True, key="ex_source")

c1, c2, c3 = st.columns(3)
all_groups = c1.toggle("All groups", value=True, key="ex_all", disabled=source != "prune now")
chosen = c1.multiselect("Groups", [g.index for g in groups], default=[0], key=common.model_widget_key("ex_groups", cur),
                        disabled=all_groups or source != "prune now")
sparsity = c2.select_slider("Sparsity", common.SPARSITIES[1:], value=0.5, key="ex_sparsity",
                            disabled=source != "prune now")
method = c3.radio("Method", ["fusion", "default"], horizontal=True, key="ex_method", disabled=source != "prune now",
                  format_func=lambda m: "Intra-Fusion" if m == "fusion" else "default pruning")
c1, c2, c3 = st.columns(3)
criterion = c1.selectbox("Criterion", CRITERIA, key="ex_criterion", disabled=source != "prune now")
normalization = c2.selectbox("Normalisation", NORMALIZATIONS, key="ex_norm",
                             disabled=source != "prune now" or method != "fusion")
measure = c3.toggle("Measure latency", value=True, key="ex_latency")


def _settings() -> dict:
    if source != "prune now":
        s = dict(finetuned.settings)
        s.update(model=cur.name, method=source.split(": ", 1)[1], groups="all",
                 fine_tuning_epochs=len(finetuned.histories.get(source.split(": ", 1)[1], [])) - 1)
        return s
    return {"model": cur.name, "groups": "all" if all_groups else sorted(chosen), "sparsity": sparsity,
            "method": method, "criterion": criterion,
            "normalization": normalization if method == "fusion" else None}


def _request() -> None:
    st.session_state["ex_requested"] = True  # a flag, not the button's value: it survives a rerun


st.button("Prune and measure", type="primary", key="ex_run", on_click=_request,
          disabled=source == "prune now" and not all_groups and not chosen)
if st.session_state.pop("ex_requested", False):
    settings = _settings()
    try:
        with st.spinner("Pruning and measuring…"):
            if source == "prune now":
                opts = explore.options_key(TransportOptions(normalization=normalization))
                grp = "all" if all_groups else tuple(sorted(chosen))
                pruned = common.pruned_model(cur.key, cur, grp, sparsity, method, criterion, opts).model
            else:
                pruned = finetuned.models[settings["method"]]
            x, y = common.eval_set(cur.loaded.dataset, cur.pre_json, None)
            report = explore.before_after_report(cur.loaded.model, pruned, cur.loaded.example_inputs, x, y,
                                                 settings=settings, latency=measure)
            meta = {"dataset": cur.loaded.dataset, "preprocessing": cur.loaded.preprocessing.to_dict(),
                    "test_accuracy": report["after"]["accuracy"], "pruning": settings}
            data, config = explore.export_model(pruned, cur.loaded.config, meta)
        st.session_state[RESULT] = {"key": cur.key, "report": report, "data": data, "config": config,
                                    "name": f"{cur.name.removesuffix('.safetensors')}-pruned"}
    except common.ERRORS as exc:
        common.show_error(exc, "Cannot export")

result = st.session_state.get(RESULT)
if result is None or result["key"] != cur.key:
    st.info("Choose the settings and press Prune and measure.")
    st.stop()

rep = result["report"]
b, a, ch = rep["before"], rep["after"], rep["change"]
c = st.columns(4)
c[0].metric("Accuracy", f"{a['accuracy']:.2f} %", f"{ch['accuracy_points']:+.2f} points")
c[1].metric("Parameters", f"{a['params']:,}", f"{100 * (ch['params_ratio'] - 1):+.1f} %", delta_color="inverse")
c[2].metric("MACs", f"{a['macs']:,}", f"{100 * (ch['macs_ratio'] - 1):+.1f} %", delta_color="inverse")
if "latency" in a:
    lat = a["latency"]["batch_1"]["median_ms"]
    c[3].metric("Latency (batch 1)", f"{lat:.2f} ms", f"{100 * (ch['latency_batch_1_ratio'] - 1):+.1f} %",
                delta_color="inverse")
rows = [{"": "before", "accuracy %": b["accuracy"], "parameters": b["params"], "MACs": b["macs"]},
        {"": "after", "accuracy %": a["accuracy"], "parameters": a["params"], "MACs": a["macs"]}]
if "latency" in a:
    for r, side in zip(rows, (b, a)):
        for k, v in side["latency"].items():
            r[f"latency {k.replace('_', ' ')} (ms)"] = v["median_ms"]
st.dataframe(rows, hide_index=True, key="report_table")
if "latency" in a:
    st.caption(f"Latency: median of repeated CPU forward passes with {a['latency']['batch_1']['threads']} torch "
               "thread(s), batch of 1 and of 64; expect noise on a shared machine.")

d1, d2, d3 = st.columns(3)
d1.download_button("Pruned model (.safetensors)", result["data"], file_name=f"{result['name']}.safetensors",
                   mime="application/octet-stream", on_click="ignore", key="dl_model")
d2.download_button("Architecture config (.json)", json.dumps(result["config"], indent=2),
                   file_name=f"{result['name']}.config.json", mime="application/json", on_click="ignore",
                   key="dl_config")
d3.download_button("Before/after report (.json)", json.dumps(rep, indent=2, default=float),
                   file_name=f"{result['name']}.report.json", mime="application/json", on_click="ignore",
                   key="dl_report")
with st.expander("Report"):
    st.json(rep)
