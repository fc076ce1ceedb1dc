"""Layer-wise least-squares refit (``refit-synthetic``, ``refit-data``): oracles.

- nothing pruned: the method's weights already solve the fit, so the model does not change;
- a dropped hidden unit that is exactly the sum of two kept ones: the refit (no ridge) recovers the unpruned
  function exactly, which dropping alone does not;
- duplicate neurons fused by the function-preserving map stay exact after the refit;
- on a random network the refit brings the pruned logits closer to the unpruned ones on its inputs;
- clear errors for a negative ridge and a data refit without data.
"""

import numpy as np
import pytest
import torch
from nets import DUPLICATE_CASES, TinyConv, TinyMLP, TinyResNet, duplicate_oracle, outputs, seeded

from intrafusion.core.prune import TransportOptions, prune
from intrafusion.core.reconstruct import layer_targets, reconstruct_layers
from intrafusion.core.repair import RepairOptions


@pytest.mark.parametrize("cls,args", [(TinyConv, (6, 5)), (TinyResNet, (6, 4)), (TinyMLP, (6,))])
def test_refit_of_an_unpruned_model_changes_nothing(cls, args):
    model = seeded(cls, *args)
    x = torch.randn(32, 8) if cls is TinyMLP else torch.randn(32, 3, 8, 8)
    res = prune(model, x[:1], "all", 0.0, method="fusion")  # nothing pruned; BatchNorm folded
    before = outputs(res.model, x)
    assert reconstruct_layers(res.model, model, x, res.records)["layers"] == 0  # by default: changed layers only
    every = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)}
    info = reconstruct_layers(res.model, model, x, res.records, ridge=1e-2, layers=every)  # refit them all anyway
    assert info["layers"] == len(every)
    assert max(info["relative_error"].values()) < 1e-5
    assert (outputs(res.model, x) - before).abs().max().item() < 1e-5
    assert (outputs(res.model, x) - outputs(model, x)).abs().max().item() < 1e-5


def _dependent_mlp() -> TinyMLP:
    """Hidden unit 2 = unit 0 + unit 1 exactly (pre-activations always positive, so also after the ReLU)."""
    torch.manual_seed(0)
    m = TinyMLP(3, bn=False)
    with torch.no_grad():
        m.fc1.weight.mul_(0.1)
        m.fc1.weight[2] = m.fc1.weight[0] + m.fc1.weight[1]
        m.fc1.bias.copy_(torch.tensor([10.0, 10.0, 20.0]))
    return m.eval()


def test_refit_recovers_a_dropped_unit_that_the_kept_ones_span():
    model = _dependent_mlp()
    x = torch.randn(64, 8)
    imp = {0: np.array([2.0, 2.0, 1.0])}  # unit 2 is the one dropped
    dropped = prune(model, x[:1], 0, 0.3, method="default", importance=imp)
    assert dropped.records[0].pruned.tolist() == [2]
    gap = (outputs(dropped.model, x) - outputs(model, x)).abs().max().item()
    assert gap > 0.1  # dropping alone loses the unit's contribution
    res = prune(model, x[:1], 0, 0.3, method="default", importance=imp,
                repair=RepairOptions("refit-data", ridge=0.0), repair_data=x)
    assert res.repair.uses_data and res.repair.details["refit_layers"] == 2
    assert (outputs(res.model, x) - outputs(model, x)).abs().max().item() < 1e-4
    x_new = torch.randn(16, 8)  # exact beyond the refit's own inputs: the consumer absorbed the unit
    assert (outputs(res.model, x_new) - outputs(model, x_new)).abs().max().item() < 1e-4


@pytest.mark.parametrize("case", DUPLICATE_CASES)
def test_duplicates_fused_function_preserving_stay_exact_after_the_refit(case):
    base, wide, group, x, imp = duplicate_oracle(case, inputs=32)
    res = prune(wide, x[:1], group, 0.5, method="fusion", options=TransportOptions(normalization="function-preserving"),
                importance=imp, repair=RepairOptions("refit-data"), repair_data=x)
    assert res.repair.details["refit_worst_error"] < 1e-4
    assert (outputs(res.model, x) - outputs(base, x)).abs().max().item() < 1e-4


@pytest.mark.parametrize("method", ["default", "fusion", "folding"])
def test_refit_brings_a_pruned_network_closer_to_the_original(method):
    model = seeded(TinyConv, 8, 8)
    x = torch.randn(64, 3, 8, 8)
    plain = prune(model, x[:1], "all", 0.5, method=method, repair="data", repair_data=x)
    refit = prune(model, x[:1], "all", 0.5, method=method, repair="refit-data", repair_data=x)
    ref = outputs(model, x)
    d_plain = (outputs(plain.model, x) - ref).norm().item()
    d_refit = (outputs(refit.model, x) - ref).norm().item()
    assert d_refit < 0.5 * d_plain
    assert refit.repair.details["refit_seconds"] >= 0 and refit.repair.details["inputs"] == 64


def test_layer_targets_are_the_averaging_map_or_the_kept_selection():
    model = seeded(TinyConv, 6, 5)
    x = torch.randn(4, 3, 8, 8)
    res = prune(model, x[:1], 1, 0.5, method="fusion")
    rec = res.records[0]
    mapped = layer_targets(res.records, "mapped")["conv1"]
    assert mapped.shape == (rec.m, rec.n) and torch.allclose(mapped.sum(1), torch.ones(rec.m, dtype=torch.float64))
    kept = layer_targets(res.records, "kept")["conv1"]
    assert kept.sum().item() == rec.m and kept.argmax(1).tolist() == rec.kept.tolist()
    assert "conv2" not in layer_targets(res.records)  # outputs not pruned: identity target


def test_refit_errors_are_clear():
    model = seeded(TinyConv, 6, 5)
    x = torch.randn(4, 3, 8, 8)
    with pytest.raises(ValueError, match="ridge must be non-negative"):
        RepairOptions("refit-synthetic", ridge=-1.0)
    with pytest.raises(ValueError, match="repair='refit-data' needs repair_data"):
        prune(model, x[:1], "all", 0.5, repair="refit-data")
    with pytest.raises(ValueError, match="ridge must be non-negative"):
        reconstruct_layers(model, model, x, [], ridge=-1.0)
