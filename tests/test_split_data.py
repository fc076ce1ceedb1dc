"""Split-data training (PaF, FaP, whole-data) through the library, the command line and the app page."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from intrafusion import parallel
from intrafusion.core.prune import kept_count
from intrafusion.experiments.split_data import (
    PIPELINES,
    SplitDataConfig,
    Stopped,
    quick_config,
    run_split_data,
    split_indices,
)
from intrafusion.experiments.split_data_report import command_line, plot, table

# The smallest real setting: the MLP (64-64-32-10) on the bundled 8x8 digits, a few epochs (seconds).
TINY = dict(arch="mlp", dataset="digits8x8", parts=2, width=1.0, epochs=6, finetune_epochs=1, sparsity=0.5,
            test_size=300)


def test_parts_are_disjoint_cover_the_set_and_are_class_balanced():
    labels = np.random.default_rng(0).integers(0, 10, size=1001)
    for k in (2, 4):
        parts = split_indices(labels, k, seed=3)
        joined = np.concatenate(parts)
        assert len(joined) == len(labels) and len(np.unique(joined)) == len(labels)  # disjoint, covering
        assert max(map(len, parts)) - min(map(len, parts)) <= 10
        for c in range(10):
            counts = [int((labels[p] == c).sum()) for p in parts]
            assert max(counts) - min(counts) <= 1, (k, c, counts)
    assert [p.tolist() for p in split_indices(labels, 2, 3)] == [p.tolist() for p in split_indices(labels, 2, 3)]
    assert split_indices(labels, 2, 3)[0].tolist() != split_indices(labels, 2, 4)[0].tolist()


@pytest.fixture(scope="module")
def tiny_run():
    events = []
    real = parallel._import_ray

    def no_ray():  # workers=1 must run in this process without touching Ray
        raise AssertionError("workers=1 tried to import ray")

    parallel._import_ray = no_ray
    had_ray = "ray" in sys.modules
    try:
        result = run_split_data(SplitDataConfig(**TINY), on_event=events.append, progress=False)
    finally:
        parallel._import_ray = real
    if not had_ray:
        assert "ray" not in sys.modules
    return result, events


def test_accuracies_are_real_and_fusion_beats_chance(tiny_run):
    result, _ = tiny_run
    assert result.part_sizes == [719, 719]  # 1438 training digits, two class-balanced halves
    for m in result.split_models:
        assert 30 < m["accuracy"] <= 100
    pipes = result.pipelines
    assert list(pipes) == list(PIPELINES)
    for p in pipes.values():
        for s in p.stages:
            assert 0 <= s["accuracy"] <= 100
        assert p.final_accuracy > 30  # ten classes: chance is 10 %
    fused = pipes["FaP"].stages[0]
    assert fused["stage"] == "fused" and fused["accuracy"] > 30
    assert [s["stage"] for s in pipes["PaF"].stages] == ["pruned (mean of parts)", "fine-tuned (mean of parts)",
                                                         "fused", "final"]


def test_times_add_up_and_speedups_follow_from_them(tiny_run):
    result, _ = tiny_run
    pipes = result.pipelines
    for p in pipes.values():
        d = p.to_dict()
        assert d["times"]["total"] == pytest.approx(sum(d["times"][k] for k in ("training", "fusion", "pruning",
                                                                                "fine_tuning")))
        assert all(d["times"][k] >= 0 for k in d["times"])
        assert p.overall_speedup == pytest.approx(pipes["whole-data"].total / p.total)
    assert pipes["PaF"].times["training"] == pipes["FaP"].times["training"] > 0
    assert pipes["PaF"].times["fusion"] > 0 and pipes["FaP"].times["fusion"] > 0
    assert pipes["whole-data"].times["fusion"] == 0
    assert pipes["whole-data"].training_speedup == 1.0
    # in-process the split models train one after the other: the wall is their sum
    assert pipes["PaF"].times["training"] >= result.environment["split_training_sum"]
    assert result.environment["ray"] is False


def test_final_widths_are_the_pruned_widths(tiny_run):
    result, _ = tiny_run
    expected = [kept_count(64, 0.5), kept_count(32, 0.5), 10]  # hidden layers pruned, classifier kept
    for p in result.pipelines.values():
        assert p.widths == expected
    assert result.pipelines["PaF"].params == result.pipelines["whole-data"].params


def test_events_curves_and_json(tiny_run):
    result, events = tiny_run
    epochs = [e for e in events if e["kind"] == "epoch"]
    assert {e["curve"] for e in epochs} >= {"whole-data", "part 0", "part 1", "FaP fused, fine-tuned"}
    assert len([e for e in epochs if e["curve"] == "part 1"]) == TINY["epochs"]
    stages = [e for e in events if e["kind"] == "stage"]
    assert len(stages) == sum(len(p.stages) for p in result.pipelines.values())
    data = json.loads(result.to_json())
    assert data["pipelines"]["FaP"]["final_accuracy"] == result.pipelines["FaP"].final_accuracy
    assert data["config"]["parts"] == 2 and len(data["curves"]["part 0"]) == TINY["epochs"]
    assert "| PaF |" in table(data) and "speedup" in table(data)


def test_plot_writes_a_png(tiny_run, tmp_path):
    result, _ = tiny_run
    path = plot(result.to_dict(), tmp_path / "split.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stop_ends_the_run():
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Stopped):
        run_split_data(SplitDataConfig(**TINY), progress=False, should_stop=should_stop)


@pytest.mark.parametrize("bad, match", [(dict(parts=1), "parts"), (dict(sparsity=1.0), "sparsity"),
                                        (dict(fusion="x"), "fusion"), (dict(dataset="nope"), "nope"),
                                        (dict(arch="vgg11_bn"), "use the mlp"), (dict(arch="lenet"), "lenet")])
def test_bad_settings_name_the_problem(bad, match):
    with pytest.raises(ValueError, match=match):
        run_split_data(SplitDataConfig(**dict(TINY, **bad)), progress=False)


def test_cli_json_and_out(tmp_path, capsys):
    from intrafusion.cli import main

    out = tmp_path / "res"
    assert main(["split-data", "mlp", "--dataset", "digits8x8", "--parts", "2", "--quick", "--epochs", "3",
                 "--finetune-epochs", "1", "--test-size", "200", "--json", "--quiet", "--out", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["epochs"] == 3 and data["config"]["train_size"] == quick_config("mlp").train_size
    assert set(data["pipelines"]) == set(PIPELINES)
    assert all(not math.isnan(p["final_accuracy"]) for p in data["pipelines"].values())
    assert (out / "split_data.png").exists() and json.loads((out / "split_data.json").read_text())["part_sizes"]
    assert command_line(data["config"], quick=True).startswith("python -m intrafusion split-data mlp")


def test_cli_rejects_an_unknown_dataset(capsys):
    from intrafusion.cli import main

    assert main(["split-data", "mlp", "--dataset", "nope", "--quick", "--quiet"]) == 2
    assert "nope" in capsys.readouterr().err


def test_app_page_renders_and_runs_live():
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    app = str(Path(__file__).resolve().parent.parent / "app.py")
    at = AppTest.from_file(app, default_timeout=180)
    at.session_state["model_key"] = "zoo:mlp-digits8x8"
    at.run()
    at.switch_page("pages/split_data.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("split-data mlp --dataset digits8x8" in c.value for c in at.code)
    at.button(key="sd_run").click().run()
    job = at.session_state["split_data_job"]
    assert job.wait(150) and job.state == "done", job.error
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    figs = {el.proto.id.rsplit("-", 1)[-1]: json.loads(el.proto.spec) for el in at.get("plotly_chart")}
    assert {"sd_curves", "sd_stages", "sd_final", "sd_times"} <= set(figs)
    final = figs["sd_final"]["data"][0]
    assert list(final["x"]) == list(PIPELINES)
    assert len(figs["sd_curves"]["data"]) >= 2 + 1  # the whole-data model and both part models at least
