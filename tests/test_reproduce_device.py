"""``reproduce --device auto|cpu|cuda`` (issue 12): the CPU gives the rows of a run without the option, CUDA is
refused where torch sees no GPU (in the other commands' words), ``--workers`` tasks run on the run's device, and
where a GPU exists its rows equal the CPU's within float tolerance.

Every run is ``reproduce --quick --model mlp-digits8x8``, the quickest reproduction the tests make (as in
``tests/test_parallel.py``), without the plots (they are drawn from the rows and are not compared): a few seconds.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from intrafusion.cli import main
from intrafusion.experiments.reproduce import QUICK, run_reproduction
from intrafusion.experiments.reproduce import run as run_module
from intrafusion.experiments.reproduce import workers as workers_module
from intrafusion.experiments.reproduce.sections import SECTIONS
from intrafusion.models.zoo import list_models

MODEL = "mlp-digits8x8"
needs_model = pytest.mark.skipif(MODEL not in {e.id for e in list_models()}, reason=f"bundled {MODEL} not built")
NO_GPU = "device 'cuda' was asked for but torch sees no CUDA GPU here: use --device cpu or auto"


def _no_plots(mp) -> None:
    mp.setattr(run_module, "make_plots", lambda out, tables, infos: [])


def _reproduce(out: Path, *extra: str) -> None:
    assert main(["reproduce", "--quick", "--model", MODEL, "--out", str(out), "--quiet", *extra]) == 0


def _tables(out: Path) -> dict[str, list[dict]]:
    """Every row table of a run, timing columns left out (the speed table is timings only)."""
    tables = {}
    for name in [n for s in SECTIONS for n in s.csv if n != "speed"]:
        with (out / f"{name}.csv").open(newline="") as fh:
            tables[name] = [{k: v for k, v in r.items() if "second" not in k} for r in csv.DictReader(fh)]
    return tables


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce_device") / "cpu"
    with pytest.MonkeyPatch.context() as mp:
        _no_plots(mp)
        _reproduce(out, "--device", "cpu")
    return out


@needs_model
def test_device_cpu_gives_the_rows_of_a_run_without_the_option(cpu_run, tmp_path, monkeypatch):
    _no_plots(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no option = auto = the CPU, on any machine
    _reproduce(tmp_path)
    a, b = _tables(cpu_run), _tables(tmp_path)
    assert a == b
    counts = {name: len(rows) for name, rows in a.items()}
    assert counts["datafree"] == 54 and counts["ablations"] == 8 and counts["finetune"] == 4, counts
    assert json.loads((cpu_run / "output_preservation.json").read_text()) == json.loads(
        (tmp_path / "output_preservation.json").read_text())
    for out in (cpu_run, tmp_path):
        summary = _summary(out)
        assert summary["settings"]["device"] == "cpu" and summary["models"][0]["device"] == "cpu"
        assert summary["command"] == f"python -m intrafusion reproduce --quick --model {MODEL}"
        assert ", device cpu): " in (out / "RESULTS.md").read_text()
    # the exact downstream-only evaluation stays on for CPU runs
    assert all(v["enabled"] for v in _summary(cpu_run)["models"][0]["fast_eval"].values())


@needs_model
def test_cuda_without_a_gpu_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "never"
    assert main(["reproduce", "--quick", "--model", MODEL, "--out", str(out), "--device", "cuda"]) == 2
    assert capsys.readouterr().err == f"error: {NO_GPU}\n"
    assert not out.exists()
    # the same sentence as the commands that already took --device
    assert main(["sweep", MODEL, "--groups", "0", "--limit", "20", "--device", "cuda", "--quiet"]) == 2
    assert capsys.readouterr().err == f"error: {NO_GPU}\n"
    with pytest.raises(ValueError, match="no CUDA GPU here"):
        run_reproduction(models=[MODEL], out_dir=out, quick=True, progress=False, device="cuda")
    assert not out.exists()
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--quick", "--device", "tpu"])
    assert exc.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err


@needs_model
def test_workers_run_on_the_run_device(cpu_run, tmp_path, monkeypatch):
    """``--workers``: the tasks get the device in the settings they share, and reserve a GPU share only on
    CUDA (the Ray pool is replaced by an in-process loop here; its equality with Ray is tests/test_parallel.py's)."""
    calls = []

    def serial_map_tasks(fn, items, **kwargs):
        calls.append(kwargs)
        for i, item in enumerate(items):
            yield i, fn(item, kwargs["shared"])

    _no_plots(monkeypatch)
    monkeypatch.setattr(workers_module, "map_tasks", serial_map_tasks)
    run_reproduction(models=[MODEL], out_dir=tmp_path, quick=True, progress=False, workers=2, device="cpu")
    assert len(calls) == 1 and calls[0]["gpus_per_task"] == 0.0 and calls[0]["workers"] == 2
    assert calls[0]["shared"]["settings"].device == "cpu"
    assert _tables(tmp_path) == _tables(cpu_run)
    assert workers_module.gpus_per_task(replace(QUICK, device="cuda"), 4) == 0.25
    assert workers_module.gpus_per_task(replace(QUICK, device="cuda:0"), 1) == 1.0
    assert workers_module.gpus_per_task(QUICK, 4) == 0.0


# Columns compared within tolerance on CUDA; every other column (ids, counts, sizes) must be equal.
_PERCENT = {"accuracy", "agreement", "test_accuracy", "train_accuracy", "base_accuracy"}
_FRACTION = {"closer_than_default"}  # a share of samples, 0..1
_RELATIVE = {"logit_distance", "mean", "median", "p10", "p90", "max", "min", "mean_log2", "train_loss"}


def _close(name: str, row: dict, col: str, a: str, b: str) -> None:
    if a == b:
        return
    x, y = float(a), float(b)
    if col in _PERCENT:
        # accuracy within 0.5 points; after SGD epochs (a different float path for every step) within 1 point
        tol = 1.0 if row.get("stage") == "fine-tuned" else 0.5
        assert abs(x - y) <= tol, (name, col, row, a, b)
    elif col in _FRACTION:
        assert abs(x - y) <= 0.005, (name, col, row, a, b)
    elif col in _RELATIVE:
        # 1e-3 relative; 1e-4 absolute for the CSV's rounding (5 decimals) and values near 0
        rel = 2e-2 if col == "train_loss" else 1e-3
        assert abs(x - y) <= rel * max(abs(x), abs(y)) + 1e-4, (name, col, row, a, b)
    else:
        raise AssertionError((name, col, row, a, b))


@needs_model
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: CUDA rows cannot be compared")
def test_cuda_rows_equal_cpu_rows_within_float_tolerance(cpu_run, tmp_path, monkeypatch):
    _no_plots(monkeypatch)
    _reproduce(tmp_path, "--device", "cuda")
    summary = _summary(tmp_path)
    assert summary["settings"]["device"].startswith("cuda") and summary["command"].endswith(" --device cuda")
    assert ", device cuda" in (tmp_path / "RESULTS.md").read_text()
    cpu, gpu = _tables(cpu_run), _tables(tmp_path)
    assert {k: len(v) for k, v in gpu.items()} == {k: len(v) for k, v in cpu.items()}
    compared = 0
    for name, rows in cpu.items():
        for ra, rb in zip(rows, gpu[name], strict=True):
            assert ra.keys() == rb.keys()
            for col in ra:
                if col != "fast_eval":  # the downstream-only shortcut is a CPU one
                    _close(name, ra, col, ra[col], rb[col])
            compared += 1
    assert compared > 60
