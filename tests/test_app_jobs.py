"""Background jobs of the explorer (intrafusion.views.jobs) and the sweep variants (views.variants)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from intrafusion.views import variants as var
from intrafusion.views.jobs import BackgroundJob, BoundedMemo


def test_job_runs_every_task_in_order():
    job = BackgroundJob(list(range(5)), lambda t, emit, stop: emit(t * t) and t).start()
    assert job.wait(10)
    assert job.rows == [0, 1, 4, 9, 16] and job.state == "done" and job.progress == 1.0
    assert job.results == {0: 0, 1: 1, 2: 2, 3: 3, 4: 4}
    assert "done: 5 cells" in job.status()


def test_no_row_after_stop_even_when_the_current_task_finishes_later():
    started, release = threading.Event(), threading.Event()

    def compute(t, emit, should_stop):
        if t == 2:
            started.set()
            release.wait(10)  # the task being computed when Stop is pressed
        emit(t)

    job = BackgroundJob(list(range(6)), compute).start()
    assert started.wait(10)
    job.stop()
    assert job.state == "stopped" and not job.active and job.stopped_rows == 2
    release.set()  # the cell in flight finishes after the stop: its row must be dropped
    assert job.wait(10)
    assert job.rows == [0, 1] and job.done_tasks == 2
    time.sleep(0.05)
    assert len(job.snapshot().rows) == 2


def test_stop_reaches_a_long_task_through_should_stop():
    seen = []

    def compute(t, emit, should_stop):
        while not should_stop():
            time.sleep(0.01)
        seen.append(t)
        emit(t)  # dropped: the job is stopped

    job = BackgroundJob([0, 1], compute).start()
    time.sleep(0.1)
    t0 = time.perf_counter()
    job.stop()
    assert job.wait(1.0) and time.perf_counter() - t0 < 1.0
    assert seen == [0] and job.rows == []


def test_errors_end_the_job_visibly():
    def compute(t, emit, should_stop):
        if t == 1:
            raise ValueError("sparsity 1.0 would remove all channels")
        emit(t)

    job = BackgroundJob([0, 1, 2], compute).start()
    assert job.wait(10)
    assert job.state == "failed" and job.rows == [0] and "remove all channels" in job.status()
    with pytest.raises(RuntimeError):
        job.start()


def test_bounded_memo_drops_the_oldest():
    memo = BoundedMemo(2)
    for i in range(3):
        memo.put(i, i)
    assert memo.get(0) is None and memo.get(2) == 2 and len(memo) == 2


def _row(group, s, label, setting, acc):
    base = label
    return var.CellRow(group, 8, s, 4, f"{label} [{setting}]" if setting else label, base, setting, "fusion",
                       "paper", "none", "l1", acc, 0.0, 100.0, 10, None, None, 0.0, 0.0)


def test_setting_differences_and_grid():
    rows = [_row(0, 0.5, "fusion (paper)", "A", 80.0), _row(0, 0.5, "fusion (paper)", "B", 70.0),
            _row(1, 0.5, "fusion (paper)", "A", 60.0)]
    diffs = var.setting_differences(rows)
    assert diffs == [{"group": 0, "sparsity": 0.5, "method": "fusion (paper)", "A": 80.0, "B": 70.0, "B - A": -10.0}]
    grid_rows = [_row(0, 0.5, "default", "", 50.0), _row(0, 0.5, "fusion (paper)", "", 65.0)]
    g = var.accuracy_grid(grid_rows, [0, 1], [0.5, 0.7], "fusion (paper)")
    assert g[0, 0] == pytest.approx(15.0) and np.isnan(g[1, 0]) and np.isnan(g[0, 1])
    assert var.rows_to_csv(grid_rows).count("\n") == 3


def test_cell_tasks_run_by_sparsity_and_labels():
    v = [var.Variant("default"), var.Variant("fusion", "paper", (), "none", "B")]
    tasks = var.cell_tasks([0, 1], [0.3, 0.6], v)
    assert [t[1] for t in tasks] == [0.3] * 4 + [0.6] * 4
    assert [x.label for x in v] == ["default", "fusion (paper) [B]"]
    assert var.available_repairs()[0] == "none" and "default" in var.available_methods()


def test_evaluate_cell_sparsity_zero_changes_nothing():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    x = torch.randn(64, 6)
    with torch.no_grad():
        ref = model(x)
    y = ref.argmax(1)
    for v in (var.Variant("default"), var.Variant("fusion", "function-preserving")):
        row = var.evaluate_cell(model, x[:2], x, y, 0, 0.0, v, reference_logits=ref, cost=True)
        assert row.accuracy == 100.0 and row.logit_distance == pytest.approx(0.0, abs=1e-5)
    row = var.evaluate_cell(model, x[:2], x, y, "all", 0.5, var.Variant("fusion", "paper"), reference_logits=ref)
    assert row.group == "all" and row.kept == 8 + 6 and row.params < sum(p.numel() for p in model.parameters())


def test_evaluate_cell_with_the_label_free_choices():
    """criterion 'auto' and the refit's 'closest' target in a cell: the row names the criterion chosen, the label
    names the target, and the accuracy is the one of pruning with the choices the library reports."""
    import torch
    from nets import TinyConv, randomize_bn

    from intrafusion.core.prune import prune
    from intrafusion.core.repair import RepairOptions
    from pages import _controls as controls

    torch.manual_seed(0)
    model = randomize_bn(TinyConv(6, 5), 0).eval()
    x = torch.randn(96, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    y = ref.argmax(1)
    v = controls.variant_for("fusion (paper)", "refit-data", refit_target="closest")
    assert v.label == "fusion (paper) + refit-data (closest) repair"
    assert controls.repair_of(v.label + " [A]") == "refit-data"
    assert controls.repair_marker(v.label) == controls.repair_marker("fusion (paper) + refit-data repair")
    row = var.evaluate_cell(model, x[:2], x, y, "all", 0.5, v, var.AUTO_CRITERION, reference_logits=ref,
                            repair_data=x[:48])
    res = var.prune_variant(model, x[:2], "all", 0.5, v, var.AUTO_CRITERION, repair_data=x[:48])
    chosen, target = res.choices["criterion"], res.repair.details["refit_target"]
    assert row.criterion == f"{chosen} (auto)" and chosen in var.AUTO_CANDIDATES
    again = prune(model, x[:2], "all", 0.5, criterion=chosen, repair=RepairOptions("refit-data", target=target),
                  repair_data=x[:48])
    with torch.no_grad():
        acc = 100.0 * float((again.model(x).argmax(1) == y).float().mean())
    assert row.accuracy == pytest.approx(acc, abs=1e-9)
