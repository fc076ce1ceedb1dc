"""Issue 8, defects 2-5: bad checkpoints, models that do not fit the dataset, and small bad inputs.

Each test fails on the code before the fix: the bad input used to pass silently, end in a raw traceback, or give a
misleading message.
"""

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from intrafusion.cli import main
from intrafusion.core.prune import prune
from intrafusion.core.transport import solve
from intrafusion.evaluate import evaluate
from intrafusion.experiments.sweep import sweep
from intrafusion.models.architectures import ArchConfig, build_model
from intrafusion.models.checkpoint import CheckpointError, read_state_dict
from intrafusion.models.zoo import check_fits, load_zoo_model, resolve_model


def _vgg_file(tmp_path, name="my.pt", **cfg) -> str:
    torch.manual_seed(0)
    model = build_model(ArchConfig("vgg11_bn", width=0.125, in_channels=cfg.pop("in_channels", 1), **cfg))
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return str(path)


# ----------------------------------------------------------------------------- defect 2: corrupt BN / OT plan


@pytest.mark.parametrize("value,words", [(-0.5, "negative BatchNorm variances"), (float("nan"), "non-finite")])
def test_bad_batchnorm_variance_is_refused_naming_the_tensor(tmp_path, value, words):
    torch.manual_seed(0)
    sd = build_model(ArchConfig("vgg11_bn", width=0.125, in_channels=1)).state_dict()
    sd["features.5.running_var"][3] = value
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=words) as info:
        read_state_dict(path)
    assert "features.5.running_var" in str(info.value)


def test_solve_refuses_a_plan_whose_marginals_do_not_hold(monkeypatch):
    import ot

    mu, nu = np.full(4, 0.25), np.full(2, 0.5)
    cost = np.ones((4, 2))
    assert np.allclose(solve(mu, nu, cost).sum(1), mu)  # the check passes a correct plan
    monkeypatch.setattr(ot, "emd", lambda a, b, m, **kw: np.zeros((len(a), len(b))))  # what NaN costs give
    with pytest.raises(ValueError, match="emd transport plan does not hold its marginals"):
        solve(mu, nu, cost)
    monkeypatch.undo()
    cost[1, 0] = np.nan  # folding a negative variance gives NaN costs
    for solver in ("emd", "sinkhorn"):
        with pytest.raises(ValueError, match="1 NaN/inf entries"):
            solve(mu, nu, cost, solver=solver)


# ----------------------------------------------------------------------------- defects 3 and 4: does it fit?


def test_groups_cli_with_wrong_dataset_names_the_fitting_ones(tmp_path, capsys):
    path = _vgg_file(tmp_path)  # takes 1x32x32 images
    assert main(["groups", path, "--arch", "vgg11_bn", "--dataset", "digits8x8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the model does not take 8x8 digits (bundled) inputs (shape (64,))")
    assert "It seems to fit mnist5k, animals10k" in err and "Traceback" not in err
    assert main(["groups", path, "--arch", "vgg11_bn", "--dataset", "mnist5k", "--json"]) == 0


@pytest.mark.parametrize("classes", [5, 100])
def test_number_of_classes_is_checked_against_the_dataset(tmp_path, capsys, classes):
    path = _vgg_file(tmp_path, num_classes=classes)
    with pytest.raises(CheckpointError, match=f"has {classes} outputs but MNIST 5k .* has 10 classes"):
        resolve_model(path, arch="vgg11_bn", dataset="mnist5k")
    assert main(["groups", path, "--arch", "vgg11_bn", "--dataset", "mnist5k"]) == 2
    assert "fits none of the known datasets" in capsys.readouterr().err
    rgb100 = _vgg_file(tmp_path, "rgb.pt", num_classes=100, in_channels=3)
    with pytest.raises(CheckpointError, match="It seems to fit cifar100:"):
        resolve_model(rgb100, arch="vgg11_bn", dataset="cifar10")


def test_check_fits_accepts_the_bundled_mlp():
    loaded = load_zoo_model("mlp-digits8x8")
    check_fits(loaded.model, "digits8x8")
    with pytest.raises(CheckpointError, match="It seems to fit digits8x8"):
        check_fits(loaded.model, "mnist5k")
    assert not loaded.model.training


# ----------------------------------------------------------------------------- defect 5: small ones


def test_groups_true_is_not_group_one():
    loaded = load_zoo_model("mlp-digits8x8")
    with pytest.raises(TypeError, match="integer index, got True"):
        prune(loaded.model, loaded.example_inputs, True, 0.5)
    with pytest.raises(TypeError, match="integer index, got False"):
        prune(loaded.model, loaded.example_inputs, [0, False], 0.5)


def test_model_without_groups_says_so():
    model = nn.Sequential(nn.Linear(64, 10)).eval()
    with pytest.raises(ValueError, match="no prunable groups") as info:
        prune(model, torch.zeros(1, 64), 0, 0.5)
    assert "-1" not in str(info.value)


@pytest.mark.parametrize("limit", ["-5", "0", "ten"])
def test_negative_limit_is_a_cli_message(capsys, limit):
    with pytest.raises(SystemExit) as info:
        main(["sweep", "mlp-digits8x8", "--groups", "0", "--limit", limit])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--limit" in err and "n must be" not in err


def test_empty_evaluation_set_is_a_clear_error():
    loaded = load_zoo_model("mlp-digits8x8")
    with pytest.raises(ValueError, match="the evaluation set is empty"):
        evaluate(loaded.model, torch.zeros(0, 64), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="3 inputs but 2 labels"):
        evaluate(loaded.model, torch.zeros(3, 64), torch.zeros(2, dtype=torch.long))


def test_sweep_without_normalizations_refuses_to_skip_fusion():
    loaded = load_zoo_model("mlp-digits8x8")
    x, y = torch.randn(8, 64), torch.arange(8) % 10
    with pytest.raises(ValueError, match="normalizations is empty"):
        next(sweep(loaded.model, loaded.example_inputs, x, y, [0], [0.5], normalizations=[]))
    rows = list(sweep(loaded.model, loaded.example_inputs, x, y, [0], [0.5], methods=("default",),
                      normalizations=[]))
    assert [r.method for r in rows] == ["default"]


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_named_safetensors_is_refused_as_a_pickle(tmp_path, capsys):
    evil = tmp_path / "model.safetensors"
    evil.write_bytes(pickle.dumps({"w": _RunsCode()}, protocol=4))
    with pytest.raises(CheckpointError, match="refused: this file is a pickle") as info:
        read_state_dict(evil)
    assert "truncated" not in str(info.value)
    assert "must never run" not in capsys.readouterr().out
    plain = tmp_path / "plain.safetensors"  # weights saved with torch.save under the wrong extension: read safely
    torch.save({"w": torch.ones(2)}, plain)
    assert torch.equal(read_state_dict(plain)[0]["w"], torch.ones(2))
