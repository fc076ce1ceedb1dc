"""Sweeps: rows equal one prune() + evaluate() per cell bit for bit (the reused prepared model changes nothing),
whole-model rows, several methods and repairs, bad settings named."""

import numpy as np
import pytest
import torch

from intrafusion.core.prune import METHODS, prepare, prune
from intrafusion.data import load_dataset, subset
from intrafusion.evaluate import evaluate, predict_logits
from intrafusion.experiments.sweep import clone_prepared, sweep, sweep_cells
from intrafusion.models.zoo import resolve_model

TIMING = ("seconds", "eval_seconds")


@pytest.fixture(scope="module")
def small():
    loaded = resolve_model("vgg11_bn-mnist5k")
    test = subset(load_dataset(loaded.dataset, "test", preprocessing=loaded.preprocessing), 120, seed=0)
    xs, ys = zip(*[test[i] for i in range(len(test))])
    return loaded, torch.stack(xs), torch.stack(ys)


def _strip(row):
    d = row.to_dict()
    for k in TIMING:
        d.pop(k)
    return d


def test_rows_equal_fresh_prune_per_cell(small):
    loaded, x, y = small
    rows = list(sweep(loaded.model, loaded.example_inputs, x, y, [1, 4], [0.3, 0.6],
                      normalizations=("paper", "function-preserving"), repairs=("none", "moments")))
    assert len(rows) == 2 * 2 * 3 * 2
    ref = predict_logits(loaded.model, x)
    for r in rows:
        res = prune(loaded.model, loaded.example_inputs, [r.group], r.sparsity, method=r.method,
                    options=None if r.normalization is None else _opts(r.normalization), repair=r.repair)
        ev = evaluate(res.model, x, y, ref)
        assert (r.accuracy, r.logit_distance, r.agreement) == (ev.accuracy, ev.logit_distance, ev.agreement)
        assert r.params == sum(p.numel() for p in res.model.parameters())
        assert r.uses_data is False
    # fusion differs from default somewhere: the rows are not all the same model
    assert len({r.logit_distance for r in rows}) > len(rows) // 2


def _opts(norm):
    from intrafusion.core.prune import TransportOptions

    return TransportOptions(normalization=norm)


def test_clone_prepared_is_independent(small):
    loaded, x, _ = small
    template = prepare(loaded.model, loaded.example_inputs)
    before = {k: v.clone() for k, v in template.model.state_dict().items()}
    clone = clone_prepared(template)
    assert clone.graph.model is clone.model
    assert not set(map(id, clone.model.parameters())) & set(map(id, template.model.parameters()))
    clone.graph.prune(2, list(range(0, clone.graph.channels(2), 2)))  # prune the clone in place
    assert clone.graph.channels(2) < template.graph.channels(2)
    for k, v in template.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [g.to_dict() for g in clone.graph.groups] == [g.to_dict() for g in template.graph.groups]


def test_whole_model_rows(small):
    loaded, x, y = small
    rows = list(sweep(loaded.model, loaded.example_inputs, x, y, "all", [0.0, 0.3], methods=("default", "fusion")))
    assert [(r.group, r.sparsity, r.method) for r in rows] == [
        ("all", 0.0, "default"), ("all", 0.0, "fusion"), ("all", 0.3, "default"), ("all", 0.3, "fusion")]
    full = sum(p.numel() for p in loaded.model.parameters())
    assert rows[0].params == rows[1].params == full and rows[0].logit_distance < 1e-4  # s = 0 changes nothing
    assert rows[2].params == rows[3].params < full
    assert rows[2].n == rows[0].n == rows[0].kept > rows[2].kept
    res = prune(loaded.model, loaded.example_inputs, "all", 0.3, method="fusion")
    ev = evaluate(res.model, x, y, predict_logits(loaded.model, x))
    assert rows[3].accuracy == ev.accuracy and rows[3].logit_distance == ev.logit_distance
    d = rows[3].to_dict()
    for key in ("method", "normalization", "repair", "uses_data", "accuracy", "logit_distance", "seconds"):
        assert key in d
    assert d["group"] == "all"


def test_data_repair_rows_say_uses_data(small):
    loaded, x, y = small
    images = x[:64]  # unlabelled inputs only
    rows = list(sweep(loaded.model, loaded.example_inputs, x, y, [2], [0.5], methods=("default",),
                      repairs=("none", "data"), repair_data=images))
    assert [(r.repair, r.uses_data) for r in rows] == [("none", False), ("data", True)]
    assert rows[0].logit_distance != rows[1].logit_distance


@pytest.mark.parametrize("kwargs,message", [
    (dict(methods=("bogus",)), "unknown method 'bogus'"),
    (dict(repairs=("bogus",)), "unknown repair 'bogus'"),
    (dict(repairs=("data",)), "needs? repair_data"),
    (dict(normalizations=()), "normalizations is empty"),
])
def test_bad_settings_named(small, kwargs, message):
    loaded, x, y = small
    with pytest.raises(ValueError, match=message):
        next(sweep(loaded.model, loaded.example_inputs, x, y, [0], [0.5], **kwargs))


def test_folding_named_until_the_core_has_it():
    if "folding" in METHODS:
        assert sweep_cells([0], [0.5], ["folding"], ["paper"]) == [(0, 0.5, "folding", None, "none")]
    else:
        with pytest.raises(ValueError, match="folding"):
            sweep_cells([0], [0.5], ["folding"], ["paper"])


def test_cells_order():
    cells = sweep_cells([3], [0.5], ["default", "fusion"], ["paper", "function-preserving"], ["none", "moments"])
    assert cells == [(3, 0.5, "default", None, "none"), (3, 0.5, "default", None, "moments"),
                     (3, 0.5, "fusion", "paper", "none"), (3, 0.5, "fusion", "paper", "moments"),
                     (3, 0.5, "fusion", "function-preserving", "none"),
                     (3, 0.5, "fusion", "function-preserving", "moments")]
    assert np.all([c[0] == "all" for c in sweep_cells("all", [0.1, 0.2], ["default"], [])])
