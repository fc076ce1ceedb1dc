"""The Streamlit explorer, page by page, with Streamlit's AppTest (no browser).

Each test drives a page's widgets and checks that no exception is shown and that its charts hold the expected
data (plotly figures are read from their JSON). The smallest bundled model (mlp-digits8x8) keeps this fast.
"""

from __future__ import annotations

import base64
import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from intrafusion import views as explore
from intrafusion.core.prune import kept_count
from intrafusion.models.architectures import ArchConfig, build_model
from intrafusion.models.checkpoint import load_model
from intrafusion.models.zoo import DEFAULT_MODEL, list_models
from intrafusion.views import variants as var

torch.set_num_threads(2)
pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = str(Path(__file__).resolve().parent.parent / "app.py")
SMALL = "mlp-digits8x8"
IDS = [e.id for e in list_models()]
pytestmark = pytest.mark.skipif(
    SMALL not in IDS,
    reason=f"bundled model {SMALL} missing (assets/models): train the zoo first (see docs/ZOO.md)",
)


@pytest.fixture(scope="module")
def sizes() -> list[int]:
    """Channels per group of the small model (group 0 first)."""
    from intrafusion.core.groups import list_groups
    from intrafusion.models.zoo import load_zoo_model

    loaded = load_zoo_model(SMALL)
    return [g.n for g in list_groups(copy.deepcopy(loaded.model), loaded.example_inputs)]


# --------------------------------------------------------------------------------------------- helpers


def _arr(v) -> np.ndarray:
    """A plotly JSON array: a list, or (plotly >= 6) a base64 typed array {'dtype', 'bdata', 'shape'}."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        if "shape" in v:
            shape = v["shape"]
            a = a.reshape([int(s) for s in (shape.split(",") if isinstance(shape, str) else shape)])
        return a
    return np.asarray(v, dtype=object if v and isinstance(v[0], list | str | type(None)) else None)


def _title(fig: dict) -> str:
    t = fig.get("layout", {}).get("title")
    return (t.get("text") if isinstance(t, dict) else t) or ""


def charts(at: AppTest) -> dict[str, dict]:
    """Plotly figures on the page, by key (for keyed charts) and by title."""
    out = {}
    for el in at.get("plotly_chart"):
        fig = json.loads(el.proto.spec)
        if "-" in el.proto.id:
            out[el.proto.id.rsplit("-", 1)[-1]] = fig
        out[_title(fig)] = fig
    return out


def chart(at: AppTest, name: str) -> dict:
    found = charts(at)
    for key, fig in found.items():
        if key == name or key.startswith(name):
            return fig
    raise AssertionError(f"no chart {name!r} on the page; charts: {list(found)}")


def mk(key: str, model: str = SMALL) -> str:
    """Key of a widget whose options depend on the model (kept per model)."""
    return f"{key}@zoo:{model}"


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def app(model: str = SMALL) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["model_key"] = f"zoo:{model}"
    return at.run()


def page(name: str, model: str = SMALL) -> AppTest:
    at = app(model)
    at.switch_page(f"pages/{name}.py")
    return at.run()


# ------------------------------------------------------------------------------------------------ model


@pytest.mark.skipif(DEFAULT_MODEL not in IDS, reason=f"default model {DEFAULT_MODEL} not bundled")
def test_model_page_default_model():
    at = ok(AppTest.from_file(APP, default_timeout=120).run())
    assert at.selectbox(key="model_key").value == f"zoo:{DEFAULT_MODEL}"
    fig = chart(at, "groups_chart")
    table = at.dataframe[0].value
    assert list(_arr(fig["data"][0]["x"])) == list(table["group"])
    assert list(_arr(fig["data"][0]["y"])) == list(table["channels"])
    assert len(table) == 8  # VGG11: 8 conv groups
    assert {m.label for m in at.metric} >= {"Test accuracy", "Parameters", "MACs (one input)", "Pruning groups"}
    assert "digraph" in at.get("graphviz_chart")[0].proto.spec


def test_model_page_switch_model_and_group_diagram(sizes):
    at = ok(app())
    table = at.dataframe[0].value
    assert list(table["channels"]) == sizes  # MLP: group 0 is the last hidden layer
    assert len(sizes) == 2 and not table["residual"].any()
    at.selectbox(key=mk("model_group")).set_value(1).run()
    ok(at)
    dot = at.get("graphviz_chart")[0].proto.spec
    assert "group 1" in dot and f"{sizes[1]} channels" in dot


def _upload(at: AppTest, data: bytes, name: str, arch: str = "infer", dataset: str = "digits8x8") -> AppTest:
    at.selectbox(key="upload_arch").set_value(arch)
    at.selectbox(key="upload_dataset").set_value(dataset)
    at.file_uploader(key="upload_file").set_value((name, data, "application/octet-stream"))
    at.run()
    at.button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


class _Evil:
    def __reduce__(self):  # would run a shell command if unpickled
        import os

        return (os.system, ("echo pwned",))


def test_upload_errors_and_a_good_upload(tmp_path, monkeypatch, sizes):
    monkeypatch.setenv("INTRAFUSION_DATA", str(tmp_path))
    at = app()
    at = _upload(at, b"\x00not a checkpoint at all" * 10, "junk.pt")
    assert "junk.pt" in at.error[0].value and at.selectbox(key="model_key").value == f"zoo:{SMALL}"
    at = _upload(at, pickle.dumps({"model": _Evil()}), "evil.pt")
    assert "refus" in at.error[0].value.lower() or "not allowed" in at.error[0].value.lower()
    sd = build_model(ArchConfig(arch="mlp", in_features=64)).state_dict()
    buf = __import__("io").BytesIO()
    torch.save(sd, buf)
    at = _upload(at, buf.getvalue(), "mlp.pt", arch="resnet18")
    assert "mlp.pt" in at.error[0].value  # mismatched architecture: named, not a crash
    assert at.dataframe[0].value["channels"].tolist() == sizes  # the current model is still usable

    torch.manual_seed(0)
    data, _ = explore.export_model(build_model(ArchConfig(arch="mlp", in_features=64, hidden=(16, 8))).eval(),
                                   ArchConfig(arch="mlp", in_features=64, hidden=(16, 8)))
    at = _upload(at, data, "mine.safetensors")
    ok(at)
    key = at.selectbox(key="model_key").value
    assert key.startswith("upload:") and "uploaded: mine.safetensors" in at.selectbox(key="model_key").options
    assert at.dataframe[0].value["channels"].tolist() == [8, 16]

    # an upload for a dataset that is not there: the model loads, the page names the missing data
    vgg = ArchConfig(arch="vgg11_bn", width=0.0625, in_channels=3)
    data, _ = explore.export_model(build_model(vgg).eval(), vgg)
    at = _upload(at, data, "cifar.safetensors", dataset="cifar10")
    assert not at.exception
    assert any("CIFAR-10" in e.value and "INTRAFUSION_DATA" in e.value for e in at.error)
    assert at.dataframe[0].value["channels"].tolist()[0] == 32  # groups still shown

    # a second session does not see these uploads
    other = ok(app())
    assert not any(o.startswith("uploaded") for o in other.selectbox(key="model_key").options)


def test_unsupported_layer_is_named_and_the_app_stays_usable(sizes):
    from torch import nn

    from intrafusion.data import get_info
    from intrafusion.models.zoo import LoadedModel

    weird = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 10)).eval()
    key = "upload:0000:custom:mnist5k:weird.pt"
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["uploaded_models"] = {
        key: LoadedModel(weird, ArchConfig(arch="mlp"), "mnist5k", get_info("mnist5k").preprocessing, "weird.pt")}
    at.session_state["model_key"] = key
    at.run()
    assert not at.exception
    # a grouped conv that is not depthwise makes only its own groups unprunable, shown with the reason
    prunable = at.dataframe[0].value["prunable"].tolist()
    assert all(p.startswith("no:") and "grouped conv" in p for p in prunable), prunable
    at.selectbox(key="model_key").set_value(f"zoo:{SMALL}").run()  # switch back: everything works again
    ok(at)
    assert at.dataframe[0].value["channels"].tolist() == sizes


# ------------------------------------------------------------------------------------------- importance


def test_importance_page_bars_and_agreement(sizes):
    at = ok(page("importance"))
    at.selectbox(key=mk("imp_group")).set_value(1)
    at.select_slider(key="imp_sparsity").set_value(0.25)
    at.selectbox(key="imp_criterion").set_value("l2").run()
    ok(at)
    fig = chart(at, "importance_chart")
    kept, pruned = fig["data"]
    n, m = sizes[1], kept_count(sizes[1], 0.25)
    assert len(_arr(kept["y"])) == m and len(_arr(pruned["y"])) == n - m
    assert _arr(kept["y"]).min() >= _arr(pruned["y"]).max()
    ranks = np.concatenate([_arr(kept["x"]), _arr(pruned["x"])])
    assert sorted(ranks.tolist()) == list(range(1, n + 1))
    overlap = _arr(chart(at, "overlap_chart")["data"][0]["z"])
    assert overlap.shape == (3, 3) and np.allclose(np.diag(overlap.astype(float)), 100.0)
    strip = _arr(chart(at, "membership_chart")["data"][0]["z"])
    assert strip.shape == (3, n) and np.allclose(strip.astype(float).sum(axis=1), m)
    assert list(chart(at, "overlap_chart")["data"][0]["x"])[0] == "l2"  # the criterion chosen at the top
    at.multiselect(key="imp_compare").set_value([]).run()
    ok(at)
    assert any("at least one other" in i.value for i in at.info)


# -------------------------------------------------------------------------------------------- transport


def test_transport_page_heatmaps_flows_and_options(sizes):
    at = ok(page("transport"))
    at.selectbox(key=mk("tp_group")).set_value(1).run()
    ok(at)
    heat = chart(at, "plan_heatmap")["data"][0]
    z = _arr(heat["z"])
    n, m = sizes[1], kept_count(sizes[1], 0.5)
    assert z.shape == (n, m)
    assert np.isclose(z.astype(float).sum(), 1.0, atol=1e-5)  # a transport plan
    assert sum(str(lbl).endswith("✂") for lbl in heat["y"]) == n - m
    assert all(not str(lbl).endswith("✂") for lbl in heat["y"][:m])  # pruned sources at the bottom
    cells = chart(at, "plan_heatmap")["data"][1]  # invisible clickable markers, one per cell of a small plan
    assert len(_arr(cells["x"])) == n * m
    proj = chart(at, "projection_chart")
    names = [t.get("name", "") for t in proj["data"]]
    assert "kept" in names and "pruned" in names
    assert len(_arr(proj["data"][names.index("pruned")]["x"])) == n - m
    assert len(at.dataframe[0].value) >= 1  # the selected (pruned) neuron's flows
    sankey = chart(at, "flows_sankey")["data"][0]
    assert sum(_arr(sankey["link"]["value"]).astype(float)) <= 100.0 + 1e-6
    at.selectbox(key="tp_zoom").set_value("pruned rows").run()
    ok(at)
    assert _arr(chart(at, "plan_heatmap")["data"][0]["z"]).shape[0] == n - m
    at.selectbox(key="tp_order").set_value("target")
    at.toggle(key="tp_log").set_value(True).run()
    ok(at)
    at.segmented_control(key="tp_view").set_value("Cost C")
    at.selectbox(key="tp_zoom").set_value("all rows").run()
    ok(at)
    assert _arr(chart(at, "plan_heatmap")["data"][0]["z"]).shape == (n, m)
    # a kept neuron selected (as a click on its bar, cell or point does): what merged into it, coefficients
    at.session_state["tp_pick"] = {"where": (f"zoo:{SMALL}", 1), "channel": int(at.session_state["tp_pick"]["channel"])
                                   if "tp_pick" in at.session_state else 0}
    rec_kept = chart(at, "tp_importance")["data"][0]
    first_kept = int(_arr(rec_kept["customdata"])[0])
    at.session_state["tp_pick"] = {"where": (f"zoo:{SMALL}", 1), "channel": first_kept}
    at.run()
    ok(at)
    merged = at.dataframe[0].value
    assert merged["source"].iloc[0].startswith("#") and merged["share of target %"].sum() == pytest.approx(100.0)
    at.selectbox(key="tp_solver").set_value("sinkhorn")
    at.selectbox(key="tp_target").set_value("centroids")
    at.selectbox(key="tp_p").set_value(2.0)
    at.radio(key="tp_norm").set_value("function-preserving").run()
    ok(at)
    assert _arr(chart(at, "plan_heatmap")["data"][0]["z"]).shape == (n, m)
    names = [t.get("name", "") for t in chart(at, "projection_chart")["data"]]
    assert "centroids" in names


def test_transport_accuracy_job_and_play(sizes):
    at = ok(page("transport"))
    at.toggle(key="tp_accuracy").set_value(True).run()
    job = at.session_state["tp_accuracy_job"]
    assert job.wait(120) and job.state == "done" and len(job.rows) == 2 * 9
    at.run()
    ok(at)
    acc = chart(at, "tp_accuracy_chart")
    lines = [t for t in acc["data"] if t.get("mode") == "lines+markers"]
    assert [len(_arr(t["x"])) for t in lines] == [9, 9]
    assert acc["layout"]["yaxis"]["range"] == [0, 101]
    at.button(key="tp_play").click().run()
    ok(at)
    assert at.session_state["tp_playing"]
    at.session_state["tp_advance"] = True
    at.session_state["tp_advanced_at"] = 0.0
    at.run()
    # at least one step of the play button (on a loaded machine its 1.2 s tick may fire again during the run)
    value = at.select_slider(key="tp_sparsity").value
    assert value > 0.5 and any(value == pytest.approx(s) for s in (0.6, 0.7, 0.8, 0.9))


# --------------------------------------------------------------------------------------- fusion vs pruning


def _run_sweep(at: AppTest, groups, sparsities) -> AppTest:
    at.multiselect(key=mk("fu_groups")).set_value(groups)
    at.multiselect(key="fu_sparsities").set_value(sparsities)
    at.selectbox(key="fu_limit").set_value(200).run()
    at.button(key="fu_run").click().run()
    return at


def test_fusion_page_sweep_curves_table_and_csv():
    at = _run_sweep(ok(page("fusion")), [0, 1], [0.3, 0.6])
    ok(at)
    job = at.session_state["sweep_job"]
    assert job.wait(120) and job.state == "done"
    at.run()
    ok(at)
    assert len(job.rows) == 2 * 2 * 3  # groups x sparsities x (default + 2 normalisations)
    fig = chart(at, "sweep_curves")
    curves = [t for t in fig["data"] if t.get("mode") == "lines+markers"]
    assert len(curves) == 2 * 3
    assert sum(len(_arr(t["x"])) for t in curves) == 12  # one point per cell
    assert fig["layout"]["yaxis"]["range"] == [0, 101]  # fixed axes: the chart never rescales
    labels = {t["name"] for t in curves}
    assert labels == {"default", "fusion (paper)", "fusion (function-preserving)"}
    rows = at.dataframe[0].value
    assert len(rows) == 12 and set(rows["label"]) == labels
    assert at.get("download_button")
    assert var.rows_to_csv(job.rows).count("\n") == 13
    assert len(chart(at, "distance_hist")["data"]) == 3
    assert at.button(key="fu_stop").disabled


def test_fusion_page_compares_two_settings():
    at = ok(page("fusion"))
    at.multiselect(key="fu_methods").set_value(["default", "fusion (paper)"])
    at.toggle(key="fu_compare").set_value(True).run()
    at.selectbox(key="fuB_solver").set_value("sinkhorn")
    at = _run_sweep(at, [0], [0.5])
    job = at.session_state["sweep_job"]
    assert job.wait(120) and job.state == "done"
    at.run()
    ok(at)
    assert sorted(r.label for r in job.rows) == ["default [A]", "fusion (paper) [A]", "fusion (paper) [B]"]
    diff = at.dataframe[0].value
    a = next(r.accuracy for r in job.rows if r.label == "fusion (paper) [A]")
    b = next(r.accuracy for r in job.rows if r.label == "fusion (paper) [B]")
    assert diff["B - A"].iloc[0] == pytest.approx(b - a)


def test_fusion_page_stop_adds_no_cell_after_it():
    at = _run_sweep(ok(page("fusion")), [0, 1], common_sparsities())
    at.button(key="fu_stop").click().run()
    ok(at)
    job = at.session_state["sweep_job"]
    count = job.stopped_rows
    assert job.state == "stopped" and count is not None and count < job.total
    assert job.wait(60)
    at.run()
    assert len(job.rows) == count  # nothing appeared after Stop
    assert any(f"stopped after {count}" in (p.proto.text or "") for p in at.get("progress"))


def common_sparsities() -> list[float]:
    return [round(0.05 * i, 2) for i in range(1, 19)]


# ------------------------------------------------------------------------------------------ fine-tuning


def _whole_model(at: AppTest) -> AppTest:
    """Wait for the Whole model page's background pruning of every variant, then redraw."""
    job = at.session_state["whole_model_job"]
    assert job.wait(300) and job.state == "done", job.status()
    return ok(at.run())


def test_finetune_page_prunes_all_and_fine_tunes():
    at = ok(page("finetune"))
    assert at.button(key="ft_run").disabled  # until every variant is pruned (in the background)
    at.multiselect(key="ft_repairs").set_value(["none"]).run()
    at = _whole_model(ok(at))
    table = at.dataframe[0].value
    assert list(table["method"]) == ["unpruned", "default", "fusion (paper)"]
    assert (table["parameters"][1:] < table["parameters"][0]).all()
    at.slider(key="ft_epochs").set_value(1).run()
    at.button(key="ft_run").click().run()
    ok(at)
    assert at.session_state["finetune_job"].wait(120)
    at.run()
    ok(at)
    assert at.get("header") is not None and any("Fine-tune each" in h.value for h in at.subheader)
    fig = chart(at, "recovery_curves")
    assert [t["name"] for t in fig["data"]] == ["default", "fusion (paper)"]
    for t in fig["data"]:
        assert list(_arr(t["x"])) == [0, 1]  # epoch 0 (right after pruning) and 1
    job = at.session_state["finetune_job"]
    first = next(r for label, r in job.rows if label == "default")
    assert job.state == "done" and first.test_accuracy == pytest.approx(table["accuracy %"][1])


@pytest.mark.skipif("vgg11_bn-mnist5k" not in IDS, reason="bundled model vgg11_bn-mnist5k missing")
def test_finetune_page_std_ratio_profile_and_repairs():
    """Whole model: a row per (method, repair) with uses_data, and the per-layer std ratio of every BatchNorm."""
    model = "vgg11_bn-mnist5k"
    at = page("finetune", model)
    at.multiselect(key="ft_methods").set_value(["default", "fusion (paper)"])
    at.multiselect(key="ft_repairs").set_value(["none", "moments"]).run()
    at = _whole_model(ok(at))
    table = at.dataframe[0].value
    assert list(table["method"]) == ["unpruned", "default", "default + moments repair", "fusion (paper)",
                                     "fusion (paper) + moments repair"]
    assert not table["uses data"].any()
    fig = chart(at, "std_ratio_chart")
    lines = {t["name"]: _arr(t["y"]).astype(float) for t in fig["data"]}
    assert set(lines) == set(table["method"][1:])
    assert all(len(v) == 8 and np.isfinite(v).all() and (v > 0).all() for v in lines.values())  # 8 BatchNorms
    assert lines["default"][-1] < 0.9  # dropping half of every layer's channels shrinks the deepest spread
    assert fig["layout"]["yaxis"]["type"] == "log"
    if "data" in var.available_repairs():
        at.multiselect(key="ft_repairs").set_value(["data"]).run()
        at = _whole_model(ok(at))
        assert at.dataframe[0].value["uses data"][1:].all()


@pytest.mark.skipif("vgg11_bn-mnist5k" not in IDS, reason="bundled model vgg11_bn-mnist5k missing")
@pytest.mark.skipif("refit-synthetic" not in var.available_repairs(), reason="no refit repair in this library")
def test_finetune_page_refit_repairs_beat_the_unrepaired_collapse():
    """Whole model, paper Intra-Fusion at s = 0.5: refit-synthetic (no data) and refit-data (marked uses data)
    both lift the collapsed unrepaired model, each row says which repair ran and whether it read data."""
    model = "vgg11_bn-mnist5k"
    at = page("finetune", model)
    options = at.multiselect(key="ft_repairs").options
    assert "refit-synthetic" in options and "refit-data (uses data)" in options  # the labels the control shows
    at.multiselect(key="ft_methods").set_value(["fusion (paper)"])
    at.multiselect(key="ft_repairs").set_value(["none", "refit-synthetic", "refit-data"]).run()
    at = _whole_model(ok(at))
    table = at.dataframe[0].value
    rows = {r["method"]: r for _, r in table.iterrows()}
    none, syn = rows["fusion (paper)"], rows["fusion (paper) + refit-synthetic repair"]
    dat = rows["fusion (paper) + refit-data repair"]
    assert [bool(r["uses data"]) for r in (none, syn, dat)] == [False, False, True]
    assert none["repair seconds"] == 0 and syn["repair seconds"] > 0 and dat["repair seconds"] > 0
    # measured: 24.5% unrepaired, 90.2% refit-synthetic, 95.6% refit-data (the 1000 test images)
    assert none["accuracy %"] < 50 and syn["accuracy %"] > 80 and dat["accuracy %"] > 80
    assert syn["parameters"] == dat["parameters"] == none["parameters"]  # a repair never changes the widths
    fig = chart(at, "std_ratio_chart")
    symbols = {t["name"]: t["marker"]["symbol"] for t in fig["data"]}
    assert symbols == {"fusion (paper)": "circle", "fusion (paper) + refit-synthetic repair": "star",
                       "fusion (paper) + refit-data repair": "star-open"}  # open marker: the repair used data
    assert any("☆ refit-data (uses data)" in c.value for c in at.caption)


def test_repair_controls_describe_every_kind():
    """Every repair the library offers has a one-line description and a marker; those that read training images
    (and only those) are labelled 'uses data' and drawn with an open marker."""
    from intrafusion.core.repair import REPAIRS, RepairOptions
    from pages import _controls as controls

    for kind in REPAIRS:
        data = RepairOptions(kind).uses_data
        assert controls.REPAIR_HELP[kind] and controls.REPAIR_HELP[kind].startswith("USES DATA") == data, kind
        assert controls.repair_label(kind) == (f"{kind} (uses data)" if data else kind)
        assert controls.REPAIR_SYMBOLS[kind].endswith("-open") == data, kind
    assert controls.repair_of("fusion (paper) + refit-synthetic repair [B]") == "refit-synthetic"
    assert controls.repair_of("folding [A]") == "none" and controls.repair_legend(["default", "folding"]) is None
    assert "★ refit-synthetic" in controls.repair_legend(["default", "default + refit-synthetic repair"])


# ------------------------------------------------------------------------------------------------ learn


def test_learn_page_twins_and_random():
    at = ok(page("learn"))
    errors = chart(at, "toy_errors")["data"][0]
    values = dict(zip(errors["x"], _arr(errors["y"]).astype(float)))
    assert values["fusion (function-preserving)"] == pytest.approx(0.0, abs=1e-9)
    assert values["fusion (paper)"] > values["default"] > 0
    points = chart(at, "toy_points")
    assert len(_arr(next(t for t in points["data"] if t.get("name") == "kept")["x"])) == 3
    assert any("Sum or average" in m.value for m in at.markdown)
    at.slider(key="learn_jitter").set_value(0.2).run()
    ok(at)
    at.radio(key="learn_scenario").set_value("Random neurons").run()
    at.slider(key="learn_n").set_value(10).run()
    ok(at)
    outputs = chart(at, "toy_outputs")
    assert [t["name"] for t in outputs["data"]] == ["original", "default", "fusion (paper)",
                                                   "fusion (function-preserving)"]


def _toy_error(at: AppTest, method: str) -> float:
    errors = chart(at, "toy_errors")["data"][0]
    return dict(zip(errors["x"], _arr(errors["y"]).astype(float)))[method]


def test_learn_page_says_when_duplicates_are_exact():
    """Defect 8: exact only when the kept set holds one copy of each pair; with l1 ties both copies can stay."""
    at = ok(page("learn"))
    claim = "exactly only when the kept set holds one copy of each pair"
    assert any(claim in i.value for i in at.info)
    at.radio(key="learn_kept_by").set_value("the m largest by l1 importance")
    at.number_input(key="learn_seed_twins").set_value(3).run()  # l1 keeps A, A' and C: B and B' must merge
    ok(at)
    kept = _arr(next(t for t in chart(at, "toy_points")["data"] if t.get("name") == "kept")["text"])
    assert sorted(kept) == ["A", "A'", "C"]
    assert _toy_error(at, "fusion (function-preserving)") > 0.1
    text = next(i.value for i in at.info if claim in i.value)
    assert "both copies of A were kept" in text and "merge different neurons" in text
    assert not any("Sum or average" in m.value for m in at.markdown)  # that lesson assumes one copy of each


def test_learn_page_repair_lesson():
    """Sums overshoot (std ratio 2 with twins), averages keep it (1), moment matching undoes the doubling."""
    at = ok(page("learn"))
    ratios = {t["name"]: _arr(t["y"]).astype(float) for t in chart(at, "toy_std_ratios")["data"]}
    np.testing.assert_allclose(ratios["fusion (paper)"], 2.0)
    np.testing.assert_allclose(ratios["fusion (function-preserving)"], 1.0)
    table = next(d.value for d in at.dataframe if "RMS error" in d.value.columns)
    err = {(r["map"], r["repair"]): r["RMS error"] for _, r in table.iterrows()}
    assert err[("fusion (paper)", "none")] > 0.5 and err[("fusion (paper)", "moments")] == pytest.approx(0, abs=1e-6)
    refit = next(m.value for m in at.markdown if "Refitting repairs what the next layer reads" in m.value)
    assert "W = (XᵀX + λI)⁻¹(XᵀY + λW₀)" in refit and "`refit-synthetic`" in refit and "`refit-data`" in refit
    at.radio(key="learn_scenario").set_value("Random neurons").run()
    ok(at)
    ratios = {t["name"]: _arr(t["y"]).astype(float) for t in chart(at, "toy_std_ratios")["data"]}
    assert ratios["fusion (function-preserving)"].min() < 1.0  # averaging different directions collapses


# ----------------------------------------------------------------------------------------------- export


def test_export_page_report_and_downloads(sizes):
    at = ok(page("export"))
    at.toggle(key="ex_latency").set_value(False)
    at.select_slider(key="ex_sparsity").set_value(0.5).run()
    at.button(key="ex_run").click().run()
    ok(at)
    result = at.session_state["export_result"]
    rep = result["report"]
    assert rep["after"]["params"] < rep["before"]["params"] and rep["change"]["macs_ratio"] < 1
    assert len(at.get("download_button")) == 3
    model, config, meta = load_model(result["data"])
    assert config.to_dict() == result["config"]
    assert config.hidden == (kept_count(sizes[1], 0.5), kept_count(sizes[0], 0.5))  # hidden layers, input first
    assert sum(p.numel() for p in model.parameters()) == rep["after"]["params"]
    assert meta["pruning"]["method"] == "fusion (paper)" and meta["dataset"] == "digits8x8"
    repair = "moments" if "moments" in var.available_repairs() else "none"  # the default: data-free, cheap
    assert at.selectbox(key="ex_repair").value == repair
    assert result["name"] == f"{SMALL}-fusion-paper-s0.5-repair-{repair}"  # settings in the file names
    assert len(at.dataframe[0].value) == 2
    lost = -rep["change"]["accuracy_points"]
    assert any("lost" in w.value for w in at.warning) == (lost > 3.0)


def test_data_folder_option_reads_a_torchvision_dataset(tmp_path, monkeypatch):
    """The Model page's data-folder box points this session at a folder of torchvision datasets."""
    import struct

    import numpy as np

    monkeypatch.setenv("INTRAFUSION_DATA", str(tmp_path / "elsewhere"))
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem, n in (("train", 30), ("t10k", 20)):
        for kind, arr in (("images-idx3", rng.integers(0, 256, (n, 28, 28))), ("labels-idx1", np.arange(n) % 10)):
            head = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
            (raw / f"{stem}-{kind}-ubyte").write_bytes(head + arr.astype(np.uint8).tobytes())
    vgg = ArchConfig(arch="vgg11_bn", width=0.0625, in_channels=1)
    data, _ = explore.export_model(build_model(vgg).eval(), vgg)
    at = _upload(app(), data, "mnist.safetensors", dataset="mnist")
    assert any("MNIST" in e.value for e in at.error)  # not in $INTRAFUSION_DATA: named
    _folder_box(at).set_value(str(tmp_path))
    at = _upload(at.run(), data, "mnist.safetensors", dataset="mnist")
    ok(at)
    assert at.selectbox(key="model_key").value.startswith("upload:")


# ------------------------------------------------------------------------------------------- trade-off


def test_tradeoff_page_curves_and_grid(sizes):
    at = ok(page("tradeoff"))
    at.multiselect(key="to_methods").set_value(["default", "fusion (paper)"])
    at.multiselect(key="to_sparsities").set_value([0.3, 0.6]).run()
    at.button(key="to_run").click().run()
    ok(at)
    job = at.session_state["tradeoff_job"]
    assert job.wait(120) and job.state == "done" and len(job.rows) == 4
    at.run()
    ok(at)
    fig = chart(at, "tradeoff_chart")
    curves = [t for t in fig["data"] if t.get("mode") == "lines+markers"]
    assert len(curves) == 2 * 3  # two methods x (params, MACs, latency)
    star = next(t for t in fig["data"] if t.get("name") == "unpruned")
    params = [r.params for r in job.rows]
    assert max(params) < _arr(star["x"]).astype(float)[0]  # pruning shrinks the model
    assert all(r.group == "all" and r.macs and r.latency_ms > 0 for r in job.rows)
    at.button(key="to_grid_run").click().run()
    grid_job = at.session_state["tradeoff_grid_job"]
    assert grid_job.wait(120) and grid_job.state == "done"
    at.run()
    ok(at)
    z = _arr(chart(at, "grid_chart")["data"][0]["z"]).astype(float)
    assert z.shape == (len(sizes), 7) and np.isfinite(z).all()


# --------------------------------------------------------------------------------------- data folder (defect 1)


def _mnist_folder(root: Path, labels: np.ndarray, images: np.ndarray) -> Path:
    """A torchvision MNIST folder (raw idx files) holding ``images`` with ``labels`` in both splits."""
    import struct

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for stem in ("train", "t10k"):
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            head = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
            (raw / f"{stem}-{kind}-ubyte").write_bytes(head + arr.astype(np.uint8).tobytes())
    return root


def _folder_box(at: AppTest):
    return next(w for w in at.text_input if w.label.startswith("Folder of torchvision datasets"))


def _sweep_base_line(at: AppTest) -> float:
    """The unpruned accuracy drawn as the dotted line of the sweep chart."""
    shapes = chart(at, "sweep_curves")["layout"]["shapes"]
    return float(shapes[0]["y0"])


def test_data_folder_survives_other_pages_and_keys_every_cached_result(tmp_path, monkeypatch):
    """Defect 1: the folder typed on the Model page is kept when the page is left (not a widget key), and two
    sessions with the same uploaded model but different data folders never share a cached result."""
    from intrafusion.data import get_info, load_dataset

    monkeypatch.setenv("INTRAFUSION_DATA", str(tmp_path / "elsewhere"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 28, 28))
    probe = _mnist_folder(tmp_path / "probe", np.zeros(20, dtype=int), images)
    vgg = ArchConfig(arch="vgg11_bn", width=0.0625, in_channels=1)
    torch.manual_seed(0)
    model = build_model(vgg).eval()
    data, _ = explore.export_model(model, vgg)
    x, _ = load_dataset("mnist", "test", root=str(probe), preprocessing=get_info("mnist").preprocessing,
                        download=False).tensors
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    right = _mnist_folder(tmp_path / "right", pred, images)  # labels = the model's answers: 100 %
    wrong = _mnist_folder(tmp_path / "wrong", (pred + 1) % 10, images)  # never the model's answer: 0 %

    bases, rows = [], []
    for root in (right, wrong):  # two sessions, the same file (so the same model key), different folders
        at = app()
        _folder_box(at).set_value(str(root)).run()
        at = ok(_upload(at, data, "mnist.safetensors", dataset="mnist"))
        key = at.session_state["model_key"]
        assert key.startswith("upload:")
        at.switch_page("pages/fusion.py").run()  # the Model page's widgets are gone from here on
        assert at.session_state["data_root"] == str(root)
        at.multiselect(key=f"fu_groups@{key}").set_value([0])
        at.multiselect(key="fu_sparsities").set_value([0.5])
        at.multiselect(key="fu_methods").set_value(["default"])
        at.selectbox(key="fu_limit").set_value(0).run()
        at.button(key="fu_run").click().run()
        ok(at)
        job = at.session_state["sweep_job"]
        assert job.wait(120) and job.state == "done", job.status()
        at.run()
        ok(at)
        bases.append(_sweep_base_line(at))
        rows.append(job.rows[0])
        at.switch_page("pages/model.py").run()  # back on the Model page the box shows the session's folder
        assert _folder_box(at).value == str(root)
    assert bases == [pytest.approx(100.0), pytest.approx(0.0)]
    assert rows[0].accuracy + rows[1].accuracy <= 100.0 + 1e-9  # computed on each folder's labels
    assert rows[0].accuracy != rows[1].accuracy or rows[0].accuracy == 0.0


# -------------------------------------------------------------------------------------- navigation (ensure_app)


@pytest.mark.parametrize("page_file", ["pages/learn.py", "pages/importance.py"])
def test_a_page_url_on_a_fresh_server_goes_through_app_py(monkeypatch, page_file):
    """A bookmarked page URL as the first request of a fresh server must run through app.py's st.navigation.

    Streamlit (1.67) decides once per process, in ``PagesManager.__init__``, that an entry point next to a
    ``pages/`` folder is a legacy (v1) multipage app, and until some run calls ``st.navigation`` it executes the
    requested page file alone (``script_runner._mpa_v1``), without app.py's page config and sidebar.
    ``pages/_common.ensure_app`` ends that mode and reruns. If an upgrade changes this, this test fails: then
    look again at how Streamlit picks the script of a first request.
    """
    from streamlit.runtime.pages_manager import PagesManager

    monkeypatch.setattr(PagesManager, "uses_pages_directory", None)  # as in a new server process
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["model_key"] = f"zoo:{SMALL}"
    at.switch_page(page_file)
    ok(at.run())
    assert at.selectbox(key="model_key").value == f"zoo:{SMALL}"  # app.py's sidebar was drawn: app.py ran
    assert PagesManager.uses_pages_directory is False
    assert at.title[0].value.startswith({"pages/learn.py": "Learn", "pages/importance.py": "Importance"}[page_file])


def test_a_clicked_heatmap_cell_names_its_source():
    """The browser sends a marker's numeric customdata row as a typed array: {"0": source, "1": target, ...}."""
    from pages._transport_views import _channel_of

    assert _channel_of({"customdata": {"0": 4, "1": 19, "2": 0.0}}) == 4  # a heatmap cell (typed-array row)
    assert _channel_of({"customdata": [7, 2, 0.5]}) == 7
    assert _channel_of({"customdata": 3}) == 3  # a projection point or an importance bar
    assert _channel_of({"x": 1}) is None
