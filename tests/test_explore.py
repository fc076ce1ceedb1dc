"""The explorer's computations (intrafusion.views), checked with numbers."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
from nets import TinyConv, TinyResNet, randomize_bn

from intrafusion import views as explore
from intrafusion.core.groups import Group
from intrafusion.core.prune import TransportOptions, plan_group, prepare, prune
from intrafusion.experiments.sweep import SweepRow, sweep
from intrafusion.models.architectures import ArchConfig, build_model
from intrafusion.models.checkpoint import load_model

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def conv():
    torch.manual_seed(0)
    model = randomize_bn(TinyConv(c1=12, c2=10))
    return model, torch.randn(2, 3, 8, 8)


@pytest.fixture(scope="module")
def prepared(conv):
    model, x = conv
    return prepare(model, x)


# ----------------------------------------------------------------------------------------------- models


def test_groups_table_and_dot():
    g = Group(index=3, n=64, producers=("layer1.0.conv2", "conv1"), consumers=("layer1.1.conv1", "linear"),
              norms=("bn1", "layer1.0.bn2"), residual=True)
    (row,) = explore.groups_table([g])
    assert row == {"group": 3, "channels": 64, "producers": "layer1.0.conv2, conv1",
                   "consumers": "layer1.1.conv1, linear", "batchnorms": "bn1, layer1.0.bn2", "residual": True,
                   "layers": 4}
    dot = explore.group_dot(g)
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    assert "residual stream" in dot and "64" in dot
    for name in g.producers:
        assert f'"out:{name}" -> center' in dot
    for name in g.consumers:
        assert f'center -> "in:{name}"' in dot
    assert "layer1.0.bn2" in dot


def test_dot_of_real_residual_group():
    torch.manual_seed(0)
    pm = prepare(TinyResNet(), torch.randn(1, 3, 8, 8))
    stream = next(g for g in pm.groups if g.residual)
    dot = explore.group_dot(stream)
    assert dot.count("-> center") == len(stream.producers) >= 2


# ------------------------------------------------------------------------------------------- importance


@pytest.mark.parametrize("criterion", ["l1", "l2", "lamp", "random"])
def test_importance_matches_plan_group(prepared, criterion):
    for g in range(len(prepared.groups)):
        rec = plan_group(prepared, g, 0.5, criterion)
        imp = explore.importance_scores(prepared, g, criterion)
        np.testing.assert_allclose(imp, rec.importance)
        kept, pruned = explore.select_kept(imp, 0.5)
        np.testing.assert_array_equal(kept, rec.kept)
        np.testing.assert_array_equal(pruned, rec.pruned)


def test_taylor_importance_matches_and_clears_gradients(conv, prepared):
    model, x = conv
    batches = [(torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,)))]
    rec = plan_group(prepared, 0, 0.5, "taylor", taylor_batches=batches)
    imp = explore.importance_scores(prepared, 0, "taylor", taylor_batches=batches)
    np.testing.assert_allclose(imp, rec.importance)
    assert all(p.grad is None for p in prepared.model.parameters())
    with pytest.raises(ValueError, match="taylor"):
        explore.importance_scores(prepared, 0, "taylor")
    with pytest.raises(ValueError, match="unknown importance criterion"):
        explore.importance_scores(prepared, 0, "bogus")


def test_select_kept_ties_and_order():
    imp = np.array([1.0, 3.0, 2.0, 3.0, 0.5])
    np.testing.assert_array_equal(explore.importance_order(imp), [1, 3, 2, 0, 4])
    kept, pruned = explore.select_kept(imp, 0.5)  # m = int(5 * 0.5) = 2: the two 3.0s
    np.testing.assert_array_equal(kept, [1, 3])
    np.testing.assert_array_equal(pruned, [0, 2, 4])
    kept, _ = explore.select_kept(np.ones(4), 0.5)  # all tied: lower indices win
    np.testing.assert_array_equal(kept, [0, 1])


def test_spearman():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 40).astype(float)  # ties
    b = a + rng.normal(0, 1, 40)
    assert explore.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert explore.spearman(b, b) == pytest.approx(1.0)
    assert explore.spearman(b, -b) == pytest.approx(-1.0)
    assert np.isnan(explore.spearman(np.ones(5), b[:5]))


def test_criteria_agreement_numbers():
    n = 10
    a = np.arange(n, 0, -1, dtype=float)  # keeps 0..4
    b = a.copy()
    b[[3, 4, 5, 6]] = [1.5, 1.2, 20.0, 30.0]  # keeps 5, 6, 0, 1, 2: 3 of 5 in common with a
    ag = explore.criteria_agreement({"a": a, "a2": a.copy(), "b": b}, 0.5)
    assert ag.m == 5 and ag.n == 10
    np.testing.assert_allclose(np.diag(ag.overlap), 100.0)
    assert ag.overlap[0, 1] == 100.0  # identical criteria agree completely
    assert ag.overlap[0, 2] == pytest.approx(60.0)
    np.testing.assert_allclose(ag.overlap, ag.overlap.T)
    assert ag.rank_correlation[0, 1] == pytest.approx(1.0)
    assert ag.kept_by_all == 3  # 0, 1, 2
    assert ag.kept_by_none == 3  # 7, 8, 9
    with pytest.raises(ValueError):
        explore.criteria_agreement({"a": a, "c": a[:5]}, 0.5)


# -------------------------------------------------------------------------------------------- transport


@pytest.fixture(scope="module")
def record(prepared):
    return plan_group(prepared, 1, 0.5, "l1", keep_features=True)


def test_neuron_flows_sum_to_plan_row(record):
    for s in range(record.n):
        flows = explore.neuron_flows(record, s)
        assert sum(f.mass for f in flows) == pytest.approx(record.plan[s].sum())
        assert sum(f.share for f in flows) == pytest.approx(100.0)
        assert [f.mass for f in flows] == sorted((f.mass for f in flows), reverse=True)
        for f in flows:
            assert f.cost == pytest.approx(record.cost[s, f.target])
            assert f.coefficient == pytest.approx(record.map_out[f.target, s])
            assert f.cost_rank == 1 + int((record.cost[s] < record.cost[s, f.target]).sum())
    kept0 = int(record.kept[0])
    (self_flow,) = explore.neuron_flows(record, kept0)  # s = .5, uniform: a kept channel stays whole
    assert self_flow.label == f"→#{kept0}" and self_flow.cost == pytest.approx(0.0) and self_flow.cost_rank == 1
    with pytest.raises(IndexError):
        explore.neuron_flows(record, record.n)


def test_labels_and_target_order(record):
    labels = explore.source_labels(record)
    assert len(labels) == record.n
    assert all(labels[c].endswith("✂") for c in record.pruned)
    assert not any(labels[c].endswith("✂") for c in record.kept)
    assert explore.target_labels(record) == [f"→#{c}" for c in record.kept]
    order = explore.importance_order(record.importance)
    cols = explore.target_order(record)
    top = record.plan[order][:, cols][: record.m]
    np.testing.assert_allclose(top, np.diag(np.diag(top)))  # kept channels keep their own mass: a diagonal
    np.testing.assert_allclose(np.diag(top), 1.0 / record.n)


def test_projection_of_known_points():
    t = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    direction = np.array([1.0, 1.0, 0.0]) / np.sqrt(2)
    x = t[:, None] * direction + np.array([5.0, -3.0, 1.0])
    proj = explore.projection_2d(x, x[[0, 4]])
    assert proj.explained[0] == pytest.approx(1.0)
    np.testing.assert_allclose(proj.sources[:, 0], t, atol=1e-9)  # sign fixed: the direction is positive
    np.testing.assert_allclose(proj.sources[:, 1], 0.0, atol=1e-9)
    np.testing.assert_allclose(proj.targets, proj.sources[[0, 4]], atol=1e-12)
    # a plane: two axes, distances preserved
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(20, 2)) @ np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0]])
    pr = explore.projection_2d(pts)
    assert pr.explained.sum() == pytest.approx(1.0)
    d = lambda a: np.linalg.norm(a[:, None] - a[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(d(pr.sources), d(pts), atol=1e-9)
    assert pr.targets.shape == (0, 2)
    # fewer points than dimensions (the Gram-matrix branch): still exact in the plane
    few = rng.normal(size=(6, 2)) @ rng.normal(size=(2, 50))
    pf = explore.projection_2d(few, few[:2])
    assert pf.explained.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(d(pf.sources), d(few), atol=1e-8)
    np.testing.assert_allclose(pf.targets, pf.sources[:2], atol=1e-10)
    single = explore.projection_2d(np.ones((3, 4)))  # no variance at all
    np.testing.assert_allclose(single.sources, 0.0)


def test_projection_of_record_and_flow_segments(record):
    proj = explore.projection_2d(record.features, record.target_features)
    np.testing.assert_allclose(proj.targets, proj.sources[record.kept], atol=1e-6)
    xs, ys, masses = explore.flow_segments(record, proj, min_share=0.0)
    expected = int((record.plan[record.pruned] > 0).sum())
    assert len(masses) == expected and len(xs) == len(ys) == 3 * expected
    assert sum(masses) == pytest.approx(record.plan[record.pruned].sum())
    assert xs[2] is None and ys[2] is None


@pytest.mark.parametrize("options", [
    TransportOptions(),
    TransportOptions(p=2.0, normalization="function-preserving"),
    TransportOptions(source_marginal="importance", target_marginal="importance", p=1.5),
    TransportOptions(solver="sinkhorn", reg=0.1),
])
@pytest.mark.parametrize("sparsity", [0.3, 0.7])
def test_kept_plan_matches_plan_group(prepared, options, sparsity):
    for g in range(len(prepared.groups)):
        ref = plan_group(prepared, g, sparsity, "l2", options, keep_features=True)
        feats = explore.channel_features(prepared, g)
        np.testing.assert_array_equal(feats, ref.features)
        full = explore.pairwise_cost(feats, options.p)
        assert full.shape == (ref.n, ref.n)
        np.testing.assert_allclose(np.diag(full), 0.0, atol=1e-3)  # p = 2 uses the GEMM form: ~1e-4 off
        rec = explore.kept_plan(prepared.groups[g], ref.importance, sparsity, "l2", options, full)
        np.testing.assert_array_equal(rec.kept, ref.kept)
        np.testing.assert_array_equal(rec.pruned, ref.pruned)
        # equal up to float32 rounding; p = 2 (GEMM form) puts self-distances at ~3e-4 instead of 0 in one of them
        np.testing.assert_allclose(rec.cost, ref.cost, rtol=1e-5, atol=1e-3 if options.p == 2 else 1e-6)
        np.testing.assert_allclose(rec.mu, ref.mu)
        np.testing.assert_allclose(rec.nu, ref.nu)
        np.testing.assert_allclose(rec.plan, ref.plan, atol=1e-9)
        np.testing.assert_allclose(rec.map_out, ref.map_out, atol=1e-7)
        np.testing.assert_allclose(rec.map_in, ref.map_in, atol=1e-7)
        assert rec.group == ref.group and rec.options == options
    with pytest.raises(ValueError, match="kept targets"):
        explore.kept_plan(prepared.groups[0], ref.importance, 0.5, "l2", TransportOptions(target="centroids"), full)


def test_options_key_is_hashable_and_round_trips():
    opts = TransportOptions(normalization="function-preserving", solver="sinkhorn", p=2.0)
    key = explore.options_key(opts)
    hash(key)
    assert TransportOptions(**dict(key)) == opts


# ------------------------------------------------------------------------------------------------ sweeps


def _row(g, s, method, norm, acc=50.0, distances=None):
    return SweepRow(group=g, n=10, sparsity=s, kept=int(10 * (1 - s)), method=method, normalization=norm,
                    criterion="l1", accuracy=acc, logit_distance=1.0, agreement=90.0, params=100, seconds=0.1,
                    eval_seconds=0.01, distances=distances)


def test_sweep_job_stops_between_rows_and_resumes():
    cells = [(0, s, m, n) for s in (0.3, 0.5) for m, n in (("default", None), ("fusion", "paper"))]
    job = explore.SweepJob(cells, "l1")
    computed = []

    def compute(cell):
        computed.append(cell)
        return _row(*cell)

    def on_row(row):
        if len(job.rows) == 2:
            job.stop()

    assert explore.run_job(job, compute, on_row) == 2
    assert len(job.rows) == 2 and computed == cells[:2] and job.stopped and not job.active
    assert "stopped after 2 of 4" in job.status
    assert explore.run_job(job, compute) == 0  # stopped: nothing more
    job.stopped = False
    assert explore.run_job(job, compute, max_rows=1) == 1
    assert explore.run_job(job, compute) == 1
    assert job.done and job.progress == 1.0 and computed == cells
    assert [(r.group, r.sparsity, r.method, r.normalization) for r in job.rows] == cells


def test_sweep_job_keeps_rows_on_errors():
    cells = [(0, 0.3, "default", None), (0, 0.5, "default", None), (0, 0.7, "default", None)]
    job = explore.SweepJob(cells, "l1")

    def compute(cell):
        if cell[1] == 0.5:
            raise ValueError("boom")
        return _row(*cell)

    with pytest.raises(ValueError):
        explore.run_job(job, compute)
    assert len(job.rows) == 1 and job.error == "boom" and not job.active

    class Interrupt(BaseException):  # what Streamlit raises to rerun a page
        pass

    job2 = explore.SweepJob(cells, "l1")

    def on_row(row):
        raise Interrupt

    with pytest.raises(Interrupt):
        explore.run_job(job2, lambda c: _row(*c), on_row)
    assert len(job2.rows) == 1 and job2.active  # the row is kept; the job resumes on the next run
    explore.run_job(job2, lambda c: _row(*c))
    assert job2.done


def test_sweep_cell_matches_sweep():
    torch.manual_seed(0)
    model = randomize_bn(TinyConv())
    ex = torch.randn(1, 3, 8, 8)
    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 4, (64,))
    rows = list(sweep(model, ex, x, y, [0, 1], [0.5], normalizations=("paper", "function-preserving"),
                      keep_distances=True))
    for r in rows:
        one = explore.sweep_cell(model, ex, x, y, (r.group, r.sparsity, r.method, r.normalization))
        assert one.label == r.label and one.accuracy == r.accuracy
        assert one.logit_distance == pytest.approx(r.logit_distance)
        np.testing.assert_allclose(one.distances, r.distances)


def test_curves_csv_and_distances():
    rows = [_row(0, 0.5, "default", None, 40.0, np.array([1.0, 2.0])),
            _row(0, 0.3, "default", None, 60.0), _row(0, 0.3, "fusion", "paper", 70.0),
            _row(1, 0.3, "fusion", "paper", 80.0), _row(0, 0.5, "fusion", "paper", 65.0, np.array([0.5, 0.7]))]
    curves = {(c.group, c.label): c for c in explore.sweep_curves(rows)}
    assert set(curves) == {(0, "default"), (0, "fusion (paper)"), (1, "fusion (paper)")}
    assert curves[0, "default"].sparsities == [0.3, 0.5] and curves[0, "default"].accuracies == [60.0, 40.0]
    text = explore.rows_to_csv(rows)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert len(parsed) == len(rows)
    assert parsed[0]["label"] == "default" and parsed[0]["normalization"] == ""
    assert float(parsed[2]["accuracy"]) == 70.0 and parsed[2]["label"] == "fusion (paper)"
    assert "distances" not in parsed[0]
    d = explore.distances_by_label(rows, 0, 0.5)
    assert set(d) == {"default", "fusion (paper)"}
    np.testing.assert_allclose(d["fusion (paper)"], [0.5, 0.7])


# ---------------------------------------------------------------------------------------------- training


class _Epoch:
    def __init__(self, epoch, acc):
        self.epoch, self.test_accuracy = epoch, acc


def test_finetune_job_stop_and_restart():
    job = explore.FineTuneJob(["default", "fusion (paper)"], epochs=2)
    seen = []

    def fake(label, on_epoch, should_stop):
        for e in range(3):
            on_epoch(_Epoch(e, 50.0 + e))
            if should_stop():
                break
        return f"model {label}", None

    def stop_after_first(label, result):
        seen.append((label, result.epoch))
        if label == "fusion (paper)" and result.epoch == 1:
            job.stop()

    job.run(fake, stop_after_first)
    assert job.finished == {"default", "fusion (paper)"}  # the stopped one ends with what it has
    assert [e.epoch for e in job.histories["fusion (paper)"]] == [0, 1]
    assert len(job.histories["default"]) == 3 and job.models["default"] == "model default"
    assert not job.active

    class Interrupt(BaseException):
        pass

    job2 = explore.FineTuneJob(["default", "fusion (paper)"], epochs=2)

    def interrupt(label, result):
        if label == "fusion (paper)" and result.epoch == 1 and not getattr(interrupt, "done", False):
            interrupt.done = True
            raise Interrupt

    with pytest.raises(Interrupt):
        job2.run(fake, interrupt)
    assert job2.finished == {"default"} and job2.active
    job2.run(fake)  # the interrupted model starts again from epoch 0
    assert [e.epoch for e in job2.histories["fusion (paper)"]] == [0, 1, 2]
    assert job2.progress == 1.0


def test_catch_up():
    fusion = [90.0, 92.0, 93.0]
    default = [40.0, 85.0, 91.0, 93.5]
    assert explore.catch_up(fusion, default) == [2, 3, 3]
    assert explore.catch_up([80.0, 95.0], default) == [1, None]


def test_recovery_summary():
    text = explore.recovery_summary([40.0, 85.0, 91.0], [92.0, 93.0, 94.0], "fusion (paper)")
    assert "default pruning does not reach that within 2 epoch(s) (best 91.00%)" in text
    assert "After 2 epoch(s): default 91.00%, fusion (paper) 94.00%" in text
    assert "needs 2 epoch(s)" in explore.recovery_summary([40.0, 85.0, 91.0], [88.0], "IF")
    worse = explore.recovery_summary([90.0, 92.0], [74.0, 89.0])
    assert "default pruning starts higher (90.00% vs 74.00%" in worse and "does not catch up within 1" in worse
    assert "fusion needs 1 epoch" in explore.recovery_summary([90.0, 92.0], [74.0, 95.0])
    assert explore.recovery_summary([], [1.0]) == ""


# ------------------------------------------------------------------------------------------------ export


def test_latency_and_report():
    torch.manual_seed(0)
    model = randomize_bn(TinyConv(c1=16, c2=12))
    ex = torch.randn(1, 3, 8, 8)
    lat = explore.measure_latency(model, ex, batch_size=4, repeats=5, warmup=1)
    assert lat["batch_size"] == 4 and 3 <= lat["repeats"] <= 5
    assert 0 < lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"]
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 4, (32,))
    pruned = prune(model, ex, "all", 0.5, method="fusion").model
    rep = explore.before_after_report(model, pruned, ex, x, y, settings={"sparsity": 0.5}, batch_sizes=(1,))
    assert rep["settings"] == {"sparsity": 0.5}
    assert rep["after"]["params"] < rep["before"]["params"]
    assert rep["change"]["params_ratio"] == pytest.approx(rep["after"]["params"] / rep["before"]["params"])
    assert rep["change"]["macs_ratio"] < 1
    assert rep["change"]["accuracy_points"] == pytest.approx(rep["after"]["accuracy"] - rep["before"]["accuracy"])
    assert "logit_distance" in rep["after"] and rep["after"]["test_samples"] == 32
    assert rep["after"]["latency"]["batch_1"]["median_ms"] > 0
    quick = explore.model_report(model, ex, latency=False)
    assert quick["accuracy"] is None and "latency" not in quick


@pytest.mark.parametrize("arch", ["mlp", "vgg11_bn"])
def test_export_round_trip(arch):
    torch.manual_seed(0)
    if arch == "mlp":
        config = ArchConfig(arch="mlp", in_features=64, hidden=(16, 8))
        ex = torch.randn(1, 64)
    else:
        config = ArchConfig(arch="vgg11_bn", width=0.0625, in_channels=1)
        ex = torch.randn(1, 1, 32, 32)
    model = randomize_bn(build_model(config)) if arch != "mlp" else build_model(config).eval()
    pruned = prune(model, ex, "all", 0.5, method="fusion").model
    data, stored = explore.export_model(pruned, config, {"dataset": "digits8x8", "note": "test"})
    assert isinstance(data, bytes) and stored["arch"] == arch
    loaded, cfg, meta = load_model(data)
    assert meta["note"] == "test" and cfg.to_dict() == stored
    with torch.no_grad():
        torch.testing.assert_close(loaded(ex), pruned.eval()(ex), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------- toy


def test_toy_twins_sum_doubles_average_preserves():
    net = explore.toy_network(3, copies=2, jitter=0.0, seed=0)
    assert net.names == ["A", "A'", "B", "B'", "C", "C'"]
    np.testing.assert_array_equal(net.w[0], net.w[1])
    keep = [0, 2, 4]
    xs = explore.toy_grid(2.0, 21)
    pair = net.contributions(xs)[:, [0, 1]].sum(axis=1)  # what A and A' contribute together
    default = explore.toy_prune(net, 0.5, "default", keep=keep)
    paper = explore.toy_prune(net, 0.5, "fusion", "paper", keep=keep)
    fp = explore.toy_prune(net, 0.5, "fusion", "function-preserving", keep=keep)
    np.testing.assert_allclose(default.net.contributions(xs)[:, 0], pair / 2)  # dropping A' loses half
    np.testing.assert_allclose(paper.net.contributions(xs)[:, 0], 2 * pair)  # sum/sum doubles the pair
    np.testing.assert_allclose(fp.net.contributions(xs)[:, 0], pair)  # average in, sum out: exact
    np.testing.assert_allclose(fp.net(xs), net(xs), atol=1e-12)
    # the plan sends every twin entirely to its partner, at zero cost
    for i, k in enumerate(keep):
        assert paper.plan[k + 1, i] == pytest.approx(1 / 6) and paper.cost[k + 1, i] == pytest.approx(0, abs=1e-6)
    np.testing.assert_allclose(paper.map_out.sum(axis=1), 2.0)  # n / m = 2: sums
    np.testing.assert_allclose(fp.map_out.sum(axis=1), 1.0)  # averages
    errors = explore.toy_errors(net, [default, paper, fp], xs)
    assert errors["fusion (function-preserving)"] == pytest.approx(0.0, abs=1e-12)
    assert errors["default"] > 0 and errors["fusion (paper)"] > errors["default"]


def test_toy_random_neurons_and_noisy_twins():
    net = explore.toy_network(8, copies=1, seed=3)
    assert net.n == 8 and np.isclose(net.importance().mean(), 1.0)
    res = explore.toy_prune(net, 0.5, "fusion")
    kept, _ = explore.select_kept(net.importance(), 0.5)
    np.testing.assert_array_equal(res.kept, kept)
    assert res.net.n == 4 and res.plan.shape == (8, 4)
    np.testing.assert_allclose(res.plan.sum(axis=1), 1 / 8)
    np.testing.assert_allclose(res.plan.sum(axis=0), 1 / 4)
    noisy = explore.toy_network(3, copies=2, jitter=0.1, seed=0)
    keep = [0, 2, 4]
    errs = explore.toy_errors(noisy, [explore.toy_prune(noisy, 0.5, "default", keep=keep),
                                      explore.toy_prune(noisy, 0.5, "fusion", "function-preserving", keep=keep)])
    assert errs["fusion (function-preserving)"] < errs["default"]  # fusing near-twins beats dropping them
    with pytest.raises(ValueError):
        explore.toy_prune(net, 0.5, "bogus")
    with pytest.raises(ValueError):
        explore.toy_prune(net, 0.5, keep=[99])

