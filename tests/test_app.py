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
    assert at.select_slider(key="tp_sparsity").value == pytest.approx(0.6)  # one step of the play button


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


def test_finetune_page_prunes_all_and_fine_tunes():
    at = ok(page("finetune"))
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
    assert result["name"] == f"{SMALL}-fusion-paper-s0.5-repair-none"  # settings in the file names
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
    at.text_input(key="data_root").set_value(str(tmp_path))
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
