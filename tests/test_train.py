"""Training and fine-tuning (intrafusion.experiments.train): accuracy, determinism, callbacks, the zoo writer."""

from __future__ import annotations

import json
import math
import shlex
import shutil

import pytest
import torch

from intrafusion.core.prune import default_pruning
from intrafusion.data import load_dataset
from intrafusion.evaluate import evaluate
from intrafusion.experiments.train import EpochResult, TrainHistory, fine_tune, train, train_zoo_model, zoo_arch_config
from intrafusion.models import zoo
from intrafusion.models.architectures import ArchConfig, build_model
from intrafusion.models.checkpoint import load_model, sha256_file

DS = "digits8x8"


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DS, "train"), load_dataset(DS, "test")


def _mlp(seed: int = 0, width: float = 1.0):
    torch.manual_seed(seed)
    return build_model(zoo_arch_config("mlp", width, DS))


@pytest.fixture(scope="module")
def trained(digits):
    """An MLP 64-64-32-10 trained 3 epochs (batch 64) and its history."""
    model = _mlp()
    history = train(model, *digits, 3, lr=0.1, batch_size=64, seed=0)
    return model, history


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_mlp_learns_digits_in_three_epochs(trained, digits):
    model, history = trained
    assert isinstance(history, TrainHistory)
    assert [e.epoch for e in history.epochs] == [1, 2, 3]
    x, y = digits[1].tensors
    acc = evaluate(model, x, y).accuracy
    assert acc > 80.0, acc  # measured 94.2 %
    assert history.test_accuracy == pytest.approx(acc, abs=1e-9)  # exact accuracy, not an estimate
    assert not model.training
    # the loss goes down and the history is complete
    losses = [e.train_loss for e in history.epochs]
    assert losses[-1] < losses[0]
    assert all(e.seconds > 0 and e.samples == 1438 for e in history.epochs)
    assert history.epochs[-1].lr < 0.1 * 0.05  # cosine annealing ends near 0
    assert not history.stopped_early


def test_same_seed_gives_identical_weights(digits):
    a, b, c = _mlp(0), _mlp(0), _mlp(0)
    train(a, *digits, 1, batch_size=128, seed=3)
    train(b, *digits, 1, batch_size=128, seed=3)
    train(c, *digits, 1, batch_size=128, seed=4)  # other data order
    assert _same_weights(a, b)
    assert not _same_weights(a, c)


def test_on_epoch_called_once_per_epoch_in_order(digits):
    seen: list[EpochResult] = []
    history = train(_mlp(), *digits, 3, batch_size=256, on_epoch=seen.append)
    assert [e.epoch for e in seen] == [1, 2, 3]
    assert seen == history.epochs
    assert all(0 <= e.test_accuracy <= 100 and math.isfinite(e.train_loss) for e in seen)


def test_should_stop_ends_training_early(digits):
    calls = {"n": 0}

    def stop() -> bool:  # polled after every batch: stop in the 2nd epoch (12 batches of 128 per epoch)
        calls["n"] += 1
        return calls["n"] >= 15

    seen = []
    history = train(_mlp(), *digits, 10, batch_size=128, should_stop=stop, on_epoch=seen.append)
    assert history.stopped_early
    assert [e.epoch for e in history.epochs] == [1, 2]
    assert history.epochs[0].samples == 1438
    assert history.epochs[1].samples == 3 * 128  # the partial epoch is recorded with what it saw
    assert len(seen) == 2
    assert not train(_mlp(), *digits, 1, should_stop=lambda: False).stopped_early


def test_train_validates_arguments(digits):
    with pytest.raises(ValueError, match="schedule"):
        train(_mlp(), *digits, 1, schedule="step")
    with pytest.raises(ValueError, match="epochs"):
        train(_mlp(), *digits, -1)
    with pytest.raises(ValueError, match="learning rate"):
        train(_mlp(), *digits, 1, lr=0)


def test_fine_tune_copies_and_starts_with_epoch_zero(trained):
    model, _ = trained
    pruned = default_pruning(model, torch.zeros(1, 64), 1, 0.75).model  # 64 -> 16 hidden neurons
    for p in pruned.parameters():  # like a cached zoo model
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    x, y = load_dataset(DS, "test").tensors
    acc_pruned = evaluate(pruned, x, y).accuracy
    seen = []
    tuned, history = fine_tune(pruned, DS, None, 2, lr=0.01, batch_size=128, on_epoch=seen.append)
    assert tuned is not pruned
    assert all(torch.equal(before[k], v) for k, v in pruned.state_dict().items())  # input untouched
    assert not any(p.requires_grad for p in pruned.parameters())
    assert [e.epoch for e in history.epochs] == [0, 1, 2] == [e.epoch for e in seen]
    assert history.epochs[0].test_accuracy == pytest.approx(acc_pruned, abs=1e-9)
    assert history.epochs[0].seconds == 0 and history.epochs[0].samples == 0
    assert history.epochs[-1].test_accuracy == pytest.approx(evaluate(tuned, x, y).accuracy, abs=1e-9)
    assert history.epochs[-1].test_accuracy >= acc_pruned - 1.0
    assert tuned.layers[0].out_features == 16  # the pruned shape is kept


def test_train_zoo_model_writes_weights_and_manifest(tmp_path, monkeypatch):
    entry = train_zoo_model("mlp", 0.5, DS, 2, seed=1, out_dir=tmp_path, lr=0.1, batch_size=96, progress=False)
    path = tmp_path / "mlp-digits8x8.safetensors"
    assert entry["id"] == "mlp-digits8x8" and entry["file"] == path.name
    assert entry["sha256"] == sha256_file(path)
    assert entry["size_bytes"] == path.stat().st_size
    model, config, meta = load_model(path)
    assert config == ArchConfig(arch="mlp", width=0.5, num_classes=10, in_channels=1, in_features=64)
    assert model.hidden == (32, 16)
    assert meta["dataset"] == DS and meta["test_accuracy"] == entry["test_accuracy"]
    x, y = load_dataset(DS, "test").tensors
    assert evaluate(model, x, y).accuracy == pytest.approx(entry["test_accuracy"], abs=1e-9)
    assert entry["params"] == sum(p.numel() for p in model.parameters()) and entry["macs"] > 0
    assert entry["epochs"] == 2 and entry["seed"] == 1 and entry["optimizer"]["lr"] == 0.1

    cmd = entry["command"]
    assert cmd.startswith("python -m intrafusion train ")
    for arg in ("--arch mlp", "--width 0.5", f"--dataset {DS}", "--epochs 2", "--seed 1", "--lr 0.1",
                "--batch-size 96", f"--out {tmp_path}"):
        assert arg in cmd, arg
    from intrafusion.cli import build_parser

    args = build_parser().parse_args(shlex.split(cmd)[3:])  # the CLI reads back exactly these arguments
    assert (args.arch, args.width, args.dataset, args.epochs, args.seed, args.lr, args.batch_size) == (
        "mlp", 0.5, DS, 2, 1, 0.1, 96)

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [m["id"] for m in manifest["models"]] == ["mlp-digits8x8"]
    assert manifest["models"][0] == json.loads(json.dumps(entry))
    # a second model is appended, and re-training an id replaces its entry
    train_zoo_model("mlp", 0.25, DS, 1, model_id="tiny", out_dir=tmp_path, batch_size=256, progress=False)
    train_zoo_model("mlp", 0.25, DS, 1, seed=2, model_id="tiny", out_dir=tmp_path, batch_size=256, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [m["id"] for m in manifest["models"]] == ["mlp-digits8x8", "tiny"]
    assert manifest["models"][1]["seed"] == 2 and "--id tiny" in manifest["models"][1]["command"]

    # the zoo reads the manifest written here
    monkeypatch.setattr(zoo, "MODELS_DIR", tmp_path)
    zoo._load_verified.cache_clear()
    try:
        loaded = zoo.load_zoo_model("mlp-digits8x8")
        assert loaded.dataset == DS and loaded.entry.test_accuracy == entry["test_accuracy"]
        assert evaluate(loaded.model, x, y).accuracy == pytest.approx(entry["test_accuracy"], abs=1e-9)
    finally:
        zoo._load_verified.cache_clear()



@pytest.fixture
def fake_zoo(tmp_path, monkeypatch):
    """A copy of the zoo's manifest and MLP standing in for assets/models: a regression cannot damage the real one."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    shutil.copy(zoo.MODELS_DIR / "manifest.json", folder)
    shutil.copy(zoo.MODELS_DIR / "mlp-digits8x8.safetensors", folder)
    monkeypatch.setattr(zoo, "MODELS_DIR", folder)
    return folder


def _hashes(folder):
    return {p.name: sha256_file(p) for p in folder.iterdir()}


def test_train_defaults_to_a_user_folder(tmp_path, monkeypatch, fake_zoo):
    """Defect 7: without --out, training writes to ./my_models, not to the bundled assets/models."""
    from intrafusion.cli import main
    from intrafusion.experiments.train_zoo import DEFAULT_TRAIN_DIR

    before = _hashes(fake_zoo)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["train", "--arch", "mlp", "--width", "0.25", "--dataset", DS, "--epochs", "1", "--quiet",
                 "--batch-size", "256"]) == 0
    assert (work / DEFAULT_TRAIN_DIR / "mlp-digits8x8.safetensors").is_file()
    assert (work / DEFAULT_TRAIN_DIR / "manifest.json").is_file()
    assert _hashes(fake_zoo) == before  # the zoo is untouched


def test_train_refuses_to_overwrite_a_bundled_checkpoint(fake_zoo, capsys):
    from intrafusion.cli import main

    before = _hashes(fake_zoo)
    with pytest.raises(ValueError, match="refused: .* is the bundled model 'mlp-digits8x8'"):
        train_zoo_model("mlp", 0.5, DS, 1, out_dir=fake_zoo, progress=False)
    assert main(["train", "--arch", "mlp", "--width", "0.5", "--dataset", DS, "--epochs", "1", "--quiet",
                 "--out", str(fake_zoo)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: refused") and "--out" in err
    assert _hashes(fake_zoo) == before
