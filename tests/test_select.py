"""Label-free choices: the ``l1-raw`` criterion, the refit's ``closest`` target and ``prune_closest``.

Oracles:
- ``l1-raw`` is ``l1`` of the unfolded weights: the scores ``prepare`` keeps equal ``l1`` on a graph built
  without folding, differ from the folded ``l1`` when BatchNorm scales channels unevenly, equal it on a model
  without BatchNorm, and prune exactly as those scores passed in by hand;
- ``logit_gap`` of a model to itself is 0, and of a classifier with every logit shifted by c it is c sqrt(k);
- ``closest`` keeps the refit with the smaller gap: the result is the same model as the refit with that target,
  and its gap is the minimum of the two it reports; with nothing pruned the model does not change;
- ``prune_closest`` returns the result of the criterion with the smallest gap, the same as pruning with it.
"""

import numpy as np
import pytest
import torch
from nets import TinyConv, TinyMLP, TinyResNet, outputs, seeded

from intrafusion.core.prune import TransportOptions, prepare, prune
from intrafusion.core.repair import RepairOptions
from intrafusion.core.select import logit_gap, prune_closest, repair_inputs


@pytest.mark.parametrize("cls,args", [(TinyConv, (6, 5)), (TinyResNet, (6, 4))])
def test_l1_raw_is_l1_before_folding(cls, args):
    model = seeded(cls, *args)
    x = torch.randn(2, 3, 8, 8)
    folded, raw = prepare(model, x), prepare(model, x, fold=False)
    from intrafusion.core.importance import group_importance

    assert raw.raw_l1 is None  # a model prepared unfolded is its own raw model
    differs = False
    for g in range(len(folded.graph)):
        on_raw = group_importance(raw.graph.tp_group(g), "l1").numpy()
        on_folded = group_importance(folded.graph.tp_group(g), "l1").numpy()
        np.testing.assert_allclose(folded.raw_l1[g], on_raw, rtol=1e-12)
        differs |= not np.allclose(on_folded, on_raw, rtol=1e-3)
    assert differs  # randomized BatchNorm statistics rescale channels: the two criteria must disagree somewhere


def test_l1_raw_equals_l1_without_batchnorm_and_prunes_as_its_scores():
    mlp = seeded(TinyMLP, 6)
    plain = TinyMLP(6, bn=False)
    plain.load_state_dict({k: v for k, v in mlp.state_dict().items() if k.startswith("fc")})
    prep = prepare(plain, torch.randn(2, 8))
    from intrafusion.core.importance import group_importance

    np.testing.assert_allclose(prep.raw_l1[0], group_importance(prep.graph.tp_group(0), "l1").numpy())
    conv = seeded(TinyConv, 6, 5)
    x = torch.randn(2, 3, 8, 8)
    scores = prepare(conv, x).raw_l1
    a = prune(conv, x, "all", 0.5, method="default", criterion="l1-raw")
    b = prune(conv, x, "all", 0.5, method="default", importance={g: scores[g] for g in scores})
    assert [r.kept.tolist() for r in a.records] == [r.kept.tolist() for r in b.records]
    c = prune(conv, x, "all", 0.5, method="default", criterion="l1")
    assert [r.kept.tolist() for r in a.records] != [r.kept.tolist() for r in c.records]


def test_logit_gap_has_closed_forms():
    model = seeded(TinyMLP, 6)
    x = torch.randn(20, 8)
    assert logit_gap(model, model, x) == 0.0
    shifted = seeded(TinyMLP, 6)
    with torch.no_grad():
        shifted.fc2.bias.add_(0.5)  # 5 logits, each +0.5
    assert logit_gap(shifted, model, x, batch_size=7) == pytest.approx(0.5 * np.sqrt(5), rel=1e-6)


def test_closest_target_keeps_the_refit_nearer_the_original():
    model = seeded(TinyConv, 6, 5)
    x = torch.randn(48, 3, 8, 8)
    opts = TransportOptions(target_marginal="nearest")
    runs = {t: prune(model, x[:1], "all", 0.5, options=opts, repair=RepairOptions("refit-data", target=t),
                     repair_data=x) for t in ("mapped", "kept", "closest")}
    gaps = runs["closest"].repair.details["refit_logit_gaps"]
    chosen = runs["closest"].repair.details["refit_target"]
    assert chosen == min(gaps, key=gaps.get)
    for t in ("mapped", "kept"):  # the reported gaps are those of the two refits
        assert gaps[t] == pytest.approx(logit_gap(runs[t].model, model, x), rel=1e-6)
    assert gaps["mapped"] != pytest.approx(gaps["kept"])  # the two targets must give different models here
    assert (outputs(runs["closest"].model, x) - outputs(runs[chosen].model, x)).abs().max().item() < 1e-6
    same = prune(model, x[:1], "all", 0.0, repair=RepairOptions("refit-data", target="closest"), repair_data=x)
    assert (outputs(same.model, x) - outputs(model, x)).abs().max().item() < 1e-5


def test_closest_needs_a_refit_and_prune_closest_compares_on_the_synthetic_batch(tmp_path):
    with pytest.raises(ValueError, match="refit"):
        RepairOptions("synthetic", target="closest")
    model = seeded(TinyConv, 6, 5)
    x = torch.randn(8, 3, 8, 8)
    with pytest.raises(ValueError, match="at least one"):
        prune_closest(model, x[:1], "all", 0.5, criteria=(), repair="refit-data", repair_data=x)
    with pytest.raises(ValueError, match="needs repair_data"):
        prune_closest(model, x[:1], "all", 0.5, repair="data")
    # a repair without inputs (here none): the candidates are compared on the synthetic batch, no data read
    rep = RepairOptions("none", synthetic_size=16, synthetic_steps=3, cache_dir=str(tmp_path))
    res = prune_closest(model, x[:1], "all", 0.5, repair=rep)
    batch = repair_inputs(model, x[:1], rep)
    assert batch.shape == (16, 3, 8, 8) and res.repair is None
    gaps = res.choices["criterion_logit_gaps"]
    assert res.choices["criterion"] == min(gaps, key=gaps.get) == res.records[0].criterion
    for c in gaps:
        assert gaps[c] == pytest.approx(logit_gap(prune(model, x[:1], "all", 0.5, criterion=c).model, model, batch),
                                        rel=1e-6)


def test_prune_closest_returns_the_criterion_with_the_smallest_gap():
    model = seeded(TinyConv, 6, 5)
    x = torch.randn(48, 3, 8, 8)
    rep = RepairOptions("refit-data")
    res = prune_closest(model, x[:1], "all", 0.5, criteria=("l1", "l1-raw", "l2"), repair=rep, repair_data=x)
    gaps = res.repair.details["criterion_logit_gaps"]
    assert set(gaps) == {"l1", "l1-raw", "l2"}
    best = res.repair.details["criterion"]
    assert best == min(gaps, key=gaps.get)
    again = prune(model, x[:1], "all", 0.5, criterion=best, repair=rep, repair_data=x)
    assert (outputs(res.model, x) - outputs(again.model, x)).abs().max().item() < 1e-6
    assert gaps[best] == pytest.approx(logit_gap(again.model, model, x), rel=1e-6)
