"""Export: prune, repair or fine-tune, measure, then download the model (safetensors + config) and a report."""

from __future__ import annotations

import json

import streamlit as st

from intrafusion import views as explore
from intrafusion.core.importance import CRITERIA
from intrafusion.experiments.train import fine_tune
from intrafusion.views.jobs import BackgroundJob
from intrafusion.views.variants import uses_data
from pages import _charts as charts
from pages import _common as common
from pages import _controls as controls
from pages import _jobs as jobs

common.ensure_app()

RESULT = "export_result"
FT_JOB = "export_finetune_job"
#: Losing more accuracy than this (points) gets a warning and the offer to fine-tune before exporting.
WARN_POINTS = 3.0

st.title("Export")
st.caption("One flow: 1. prune the current model, 2. measure it against the original (accuracy, parameters, MACs, "
           "CPU latency), 3. repair or fine-tune it when it lost too much, 4. download it. The safetensors file "
           "carries its architecture config, so `intrafusion.models.checkpoint.load_model(file)` rebuilds it (and "
           "so does the Model page's upload).")

cur = common.require_model()
groups = common.prepared_for(cur.key, cur.loaded).prepared.groups


def _finetuned() -> dict:
    """Fine-tuned models of this model from this page or the fine-tuning page: label -> (model, settings)."""
    out = {}
    for key, prefix in ((FT_JOB, "fine-tuned here"), ("finetune_job", "fine-tuned")):
        job = jobs.get(key)
        if job is None or job.settings.get("model_key") != cur.key:
            continue
        for i, label in enumerate(job.settings["labels"]):
            if i in job.results:
                out[f"{prefix}: {label}"] = (job.results[i], dict(job.settings, label=label))
    return out


finetuned = _finetuned()
sources = ["prune now", *finetuned]
if st.session_state.get("ex_source") not in sources:
    st.session_state["ex_source"] = sources[-1] if st.session_state.pop("ex_prefer_finetuned", False) else sources[0]
source = st.radio("Model to export", sources, horizontal=True, key="ex_source")
now = source == "prune now"

st.markdown("**1. Prune**")
c1, c2, c3, c4 = st.columns(4)
all_groups = c1.toggle("All groups", value=True, key="ex_all", disabled=not now)
chosen = c1.multiselect("Groups", [g.index for g in groups], default=[0], key=common.model_widget_key("ex_groups", cur),
                        disabled=all_groups or not now)
sparsity = c2.select_slider("Sparsity", common.SPARSITIES[1:], value=0.3, key="ex_sparsity", disabled=not now,
                            help="fraction of every chosen group's channels removed")
labels = controls.method_labels()
method = c3.selectbox("Method", [lb for lb in labels if lb != "default"] + ["default"], key="ex_method",
                      disabled=not now)
# moments by default: data-free and cheap, and whole-model pruning without any repair collapses (see the Whole
# model page's per-layer spread)
repair = controls.repair_select("ex_repair", c4, multi=False, default=("moments", "none"))
c1, c2, _ = st.columns([1, 1, 2])
criterion = c1.selectbox("Criterion", CRITERIA, key="ex_criterion", disabled=not now)
measure = c2.toggle("Measure latency", value=True, key="ex_latency")


def _file_stem(settings: dict) -> str:
    """'<model>-<method>-s<sparsity>-<repair>[-ft<epochs>]': the settings readable in the file name."""
    meth = settings["method"].replace("fusion (", "fusion-").replace(")", "").replace(" ", "")
    groups_part = "" if settings["groups"] == "all" else "-g" + "_".join(map(str, settings["groups"]))
    stem = f"{cur.name.removesuffix('.safetensors')}-{meth}-s{settings['sparsity']:g}{groups_part}"
    stem += f"-repair-{settings.get('repair') or 'none'}"
    if settings.get("fine_tuning_epochs"):
        stem += f"-ft{settings['fine_tuning_epochs']}"
    return stem.replace("/", "_").replace(":", "_")


def _settings() -> dict:
    """The export's settings (in the report, the file's header and its name); ``uses_data`` says whether the
    repair read unlabelled training images (``data``, ``refit-data``)."""
    if not now:
        model, s = finetuned[source]
        base, _, rep = s["label"].partition(" + ")  # e.g. 'fusion (paper) + moments repair'
        out = {"model": cur.name, "groups": "all", "sparsity": s["sparsity"], "method": base,
               "criterion": s["criterion"], "repair": rep.removesuffix(" repair") or s.get("repair", "none"),
               "fine_tuning_epochs": s["epochs"]}
    else:
        out = {"model": cur.name, "groups": "all" if all_groups else sorted(chosen), "sparsity": sparsity,
               "method": method, "criterion": criterion, "repair": repair}
    return dict(out, uses_data=uses_data(out["repair"]))


def _pruned_now(settings: dict):
    v = controls.variant_for(method, repair)
    grp = "all" if all_groups else sorted(chosen)
    return _prune_cached(cur.key, cur, grp if grp == "all" else tuple(grp), sparsity, v, criterion,
                         v.uses_data, common.data_root())


@st.cache_resource(show_spinner=False, max_entries=8)
def _prune_cached(model_key, _cur, groups, sparsity, v, criterion, with_data, root):
    from intrafusion.views.variants import prune_variant

    data = charts.repair_images(_cur, root) if with_data else None
    return prune_variant(_cur.loaded.model, _cur.loaded.example_inputs, groups if groups == "all" else list(groups),
                         sparsity, v, criterion, taylor_batches=common.batches_for(_cur, criterion, root),
                         repair_data=data).model


def _request() -> None:
    st.session_state["ex_requested"] = True  # a flag, not the button's value: it survives a rerun


st.button("Prune and measure", type="primary", key="ex_run", on_click=_request,
          disabled=now and not all_groups and not chosen)
if st.session_state.pop("ex_requested", False):
    settings = _settings()
    try:
        with st.spinner("Pruning and measuring…"):
            pruned = _pruned_now(settings) if now else finetuned[source][0]
            x, y = common.eval_set(cur.loaded.dataset, cur.pre_json, None)
            report = explore.before_after_report(cur.loaded.model, pruned, cur.loaded.example_inputs, x, y,
                                                 settings=settings, latency=measure)
            meta = {"dataset": cur.loaded.dataset, "preprocessing": cur.loaded.preprocessing.to_dict(),
                    "test_accuracy": report["after"]["accuracy"], "pruning": settings}
            data, config = explore.export_model(pruned, cur.loaded.config, meta)
        st.session_state[RESULT] = {"key": cur.key, "report": report, "data": data, "config": config,
                                    "name": _file_stem(settings), "model": pruned, "settings": settings}
    except common.ERRORS as exc:
        common.show_error(exc, "Cannot export")

result = st.session_state.get(RESULT)
if result is None or result["key"] != cur.key:
    st.info("Choose the settings and press Prune and measure.")
    st.stop()

st.markdown("**2. Measure**")
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

lost = -(ch["accuracy_points"] or 0.0)
st.markdown("**3. Repair or fine-tune**")
if lost > WARN_POINTS:
    repairs = ", ".join(controls.repair_label(k) for k in controls.available_repairs() if k != "none")
    hint = (f" Try a repair ({repairs}) in step 1," if repairs and result["settings"].get("repair") in (None, "none")
            else "")
    st.warning(f"This model lost **{lost:.1f} points** of accuracy ({b['accuracy']:.2f}% → {a['accuracy']:.2f}%)."
               f"{hint} fine-tune it below, or lower the sparsity before you export it.", icon="⚠️")
else:
    st.success(f"The model kept its accuracy within {WARN_POINTS:g} points ({ch['accuracy_points']:+.2f}).")

ft_epochs = st.slider("Fine-tuning epochs", 1, 10, 2, key="ex_ft_epochs")


def _start_ft() -> None:
    res = st.session_state[RESULT]
    s = res["settings"]
    model, dataset, pre, root = res["model"], cur.loaded.dataset, cur.loaded.preprocessing, common.data_root()
    n, lr_ = int(st.session_state.get("ex_ft_epochs", 2)), 0.01

    def compute(label, emit, should_stop):
        out, _ = fine_tune(model, dataset, pre, n, lr=lr_, root=root, should_stop=should_stop,
                           on_epoch=lambda r: emit((label, r)))
        return out

    label = s["method"] if str(s.get("method", "")).startswith(("fusion", "default", "folding")) else "model"
    settings = {"model_key": cur.key, "sparsity": s["sparsity"], "criterion": s["criterion"], "lr": lr_,
                "epochs": n, "repair": s.get("repair", "none"), "labels": [label]}
    jobs.start(FT_JOB, BackgroundJob([label], compute, settings))
    st.session_state["ex_prefer_finetuned"] = True


st.button(f"Fine-tune this model for {ft_epochs} epoch(s)", key="ex_ft_run", on_click=_start_ft, disabled=not now)


def _draw_ft(job: BackgroundJob) -> None:
    snap = job.snapshot()
    accs = [f"epoch {r.epoch}: {r.test_accuracy:.2f}%" for _, r in snap.rows]
    st.progress(len(snap.rows) / (job.settings["epochs"] + 1), text=job.status("models") + " · " + ", ".join(accs))
    if job.state == "done":
        st.caption("Done: pick 'fine-tuned here: …' under *Model to export*, then Prune and measure again to "
                   "export it.")


if jobs.get(FT_JOB) is not None and jobs.get(FT_JOB).settings.get("model_key") == cur.key:
    jobs.live(FT_JOB, _draw_ft)

st.markdown("**4. Download**")
if lost > WARN_POINTS:
    st.caption(f"Exporting anyway: the files are named after the settings, the report records the {lost:.1f}-point "
               "loss.")
d1, d2, d3 = st.columns(3)
d1.download_button("Pruned model (.safetensors)", result["data"], file_name=f"{result['name']}.safetensors",
                   mime="application/octet-stream", on_click="ignore", key="dl_model")
d2.download_button("Architecture config (.json)", json.dumps(result["config"], indent=2),
                   file_name=f"{result['name']}.config.json", mime="application/json", on_click="ignore",
                   key="dl_config")
d3.download_button("Before/after report (.json)", json.dumps(rep, indent=2, default=float),
                   file_name=f"{result['name']}.report.json", mime="application/json", on_click="ignore",
                   key="dl_report")
st.caption(f"File names: `{result['name']}.*` (model, method, sparsity, repair"
           f"{', fine-tuning epochs' if result['settings'].get('fine_tuning_epochs') else ''}).")
with st.expander("Report"):
    st.json(rep)
