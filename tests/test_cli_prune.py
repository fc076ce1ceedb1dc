"""`python -m intrafusion prune`: before/after numbers, a checkpoint that reloads to the same numbers, repairs,
and one clear line for every bad input."""

from __future__ import annotations

import contextlib
import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from intrafusion import data as data_module
from intrafusion.cli import main
from intrafusion.cli._common import eval_data
from intrafusion.cli.prune import repair_images
from intrafusion.evaluate import evaluate
from intrafusion.models.architectures import VGG, ArchConfig
from intrafusion.models.checkpoint import load_model, save_model
from intrafusion.models.zoo import load_zoo_model, resolve_model

MODEL = "vgg11_bn-mnist5k"
LIMIT = "200"


def _run_json(capsys, *args) -> dict:
    code = main(["prune", MODEL, "--limit", LIMIT, "--threads", "1", "--json", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One whole-model Intra-Fusion + data repair, written to a file (shared by the checks below)."""
    out = tmp_path_factory.mktemp("pruned") / "pruned.safetensors"
    buf = io.StringIO()  # capsys is function-scoped: capture the module-scoped run by hand
    with contextlib.redirect_stdout(buf):
        code = main(["prune", MODEL, "--groups", "all", "--sparsity", "0.3", "--method", "fusion",
                     "--normalization", "paper", "--repair", "data", "--limit", LIMIT, "--threads", "1",
                     "--out", str(out), "--json"])
    assert code == 0
    return out, json.loads(buf.getvalue())


def test_written_checkpoint_reloads_with_the_printed_accuracy(written):
    path, report = written
    loaded = resolve_model(str(path))  # dataset and preprocessing come from the header
    assert loaded.dataset == "mnist5k"
    x, y = eval_data(loaded, SimpleNamespace(data=None), int(LIMIT))
    ev = evaluate(loaded.model, x, y)
    assert ev.n_correct == report["after"]["correct"]
    assert ev.accuracy == pytest.approx(report["after"]["accuracy"], abs=1e-9)
    assert sum(p.numel() for p in loaded.model.parameters()) == report["after"]["params"]
    # the pruned widths round-trip through the stored config
    model, config, meta = load_model(path)
    assert config.to_dict() == report["config"]
    original = load_zoo_model(MODEL).model
    widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    orig_widths = [m.out_channels for m in original.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(widths) == len(orig_widths) and all(w < o for w, o in zip(widths, orig_widths))
    assert meta["pruning"]["repair"] == "data" and meta["pruning"]["uses_data"] is True


def test_json_report_has_real_values(written):
    _, r = written
    b, a = r["before"], r["after"]
    assert r["uses_data"] is True and r["repair"] == "data" and r["repair_details"]["inputs"] == 512
    assert r["test_samples"] == int(LIMIT) and r["pruned_groups"] == list(range(8))
    assert r["channels"]["after"] < r["channels"]["before"]
    assert b["accuracy"] == pytest.approx(98.0, abs=3)  # the bundled model on a 200-image subset
    assert 0 < a["logit_distance"] < math.inf and 0 < a["agreement"] <= 100
    assert a["params"] < b["params"] and a["macs"] < b["macs"]
    assert r["change"]["params_ratio"] == pytest.approx(a["params"] / b["params"])
    assert r["change"]["accuracy_points"] == pytest.approx(a["accuracy"] - b["accuracy"])
    # the label-free data repair at s = 0.3 keeps far more than chance (the reference: 93.7% on 1000 images)
    assert a["accuracy"] > 80


@pytest.mark.parametrize("repair", ["none", "moments", "synthetic", "data", "refit-synthetic", "refit-data"])
def test_sparsity_zero_reports_the_original_accuracy(capsys, repair):
    r = _run_json(capsys, "--sparsity", "0", "--repair", repair)
    assert r["after"]["correct"] == r["before"]["correct"]
    assert r["after"]["logit_distance"] < 1e-4 and r["after"]["agreement"] == 100.0
    assert r["after"]["params"] == r["before"]["params"] and r["uses_data"] is (repair in ("data", "refit-data"))


def test_refit_data_repair_on_the_whole_model(capsys):
    """refit-data reads 512 unlabelled training images, refits every dense layer and keeps far more accuracy
    than the unrepaired paper Intra-Fusion of every group at s = 0.5 (which collapses)."""
    plain = _run_json(capsys, "--sparsity", "0.5", "--repair", "none")
    r = _run_json(capsys, "--sparsity", "0.5", "--repair", "refit-data")
    assert r["repair"] == "refit-data" and r["uses_data"] is True and r["repair_details"]["inputs"] == 512
    assert r["repair_details"]["refit_layers"] == 9  # 8 convs and the classifier of VGG11
    assert r["after"]["params"] == plain["after"]["params"]
    assert r["after"]["accuracy"] > 90 > plain["after"]["accuracy"] + 10


def test_default_pruning_of_one_group_and_the_table(capsys):
    assert main(["prune", MODEL, "--groups", "3", "--sparsity", "0.5", "--method", "default", "--limit", LIMIT,
                 "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "default, group(s) 3 at sparsity 0.5 (64 -> 32 channels)" in lines[0]
    rows = {line[:16].strip(): line[16:].split() for line in lines[2:7]}
    assert set(rows) == {"accuracy %", "logit distance", "agreement %", "parameters", "MACs"}
    before, after = (int(v.replace(",", "")) for v in rows["parameters"][:2])
    assert after < before


def test_folding_checkpoint_round_trips(capsys, tmp_path):
    out = tmp_path / "folded.safetensors"
    r = _run_json(capsys, "--sparsity", "0.5", "--method", "folding", "--folding", "ar", "--out", str(out))
    assert r["method"] == "folding" and r["folding"] == "ar" and r["normalization"] is None
    assert r["after"]["params"] < r["before"]["params"] and r["uses_data"] is False
    loaded = resolve_model(str(out))
    x, y = eval_data(loaded, SimpleNamespace(data=None), int(LIMIT))
    assert evaluate(loaded.model, x, y).n_correct == r["after"]["correct"]


def test_data_repair_reads_no_label(monkeypatch):
    class Poison:  # any use of the training labels fails the test
        def __getattr__(self, name):
            raise AssertionError(f"the data repair touched the labels ({name})")

        def __len__(self):
            raise AssertionError("the data repair touched the labels (len)")

        def __getitem__(self, item):
            raise AssertionError("the data repair touched the labels (indexing)")

    real = data_module.load_arrays

    def load_arrays(dataset_id, split="test", root=None, download=True):
        images, labels = real(dataset_id, split, root=root, download=download)
        return (images, Poison()) if split == "train" else (images, labels)

    monkeypatch.setattr(data_module, "load_arrays", load_arrays)
    pre = load_zoo_model(MODEL).preprocessing
    a, b = repair_images("mnist5k", pre, 64, seed=3), repair_images("mnist5k", pre, 64, seed=3)
    c = repair_images("mnist5k", pre, 64, seed=4)
    assert a.shape == (64, 1, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    raw = real("mnist5k", "train")[0]
    idx = np.sort(np.random.default_rng(3).permutation(len(raw))[:64])
    assert torch.equal(a, data_module.preprocess(raw[idx], pre))


def test_choose_criterion_and_closest_refit(capsys):
    """--choose-criterion prunes once per criterion and reports the chosen one with both logit gaps; the refit's
    closest target reports which target it kept and both gaps; the numbers match a run with those choices."""
    args = ("--sparsity", "0.5", "--target-marginal", "nearest", "--repair", "refit-data", "--repair-samples", "128")
    r = _run_json(capsys, *args, "--repair-target", "closest", "--choose-criterion", "l1", "l1-raw")
    d = r["repair_details"]
    assert r["choices"]["criterion"] == r["criterion"]
    assert r["choices"]["criterion_logit_gaps"] == d["criterion_logit_gaps"]
    assert set(d["criterion_logit_gaps"]) == {"l1", "l1-raw"} and set(d["refit_logit_gaps"]) == {"mapped", "kept"}
    assert r["criterion"] == min(d["criterion_logit_gaps"], key=d["criterion_logit_gaps"].get)
    assert d["refit_target"] == min(d["refit_logit_gaps"], key=d["refit_logit_gaps"].get)
    again = _run_json(capsys, *args, "--criterion", r["criterion"], "--repair-target", d["refit_target"])
    assert again["after"]["correct"] == r["after"]["correct"]
    assert again["after"]["logit_distance"] == pytest.approx(r["after"]["logit_distance"], rel=1e-5)
    assert main(["prune", MODEL, "--limit", LIMIT, "--threads", "1", *args, "--repair-target", "closest",
                 "--choose-criterion", "l1", "l1-raw"]) == 0
    table = capsys.readouterr().out
    assert f"criterion chosen: {r['criterion']} (logit gap" in table
    assert f"refit target chosen: {d['refit_target']} (logit gap" in table


@pytest.fixture()
def cifar_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "cifar_vgg.safetensors"
    config = ArchConfig(arch="vgg11_bn", width=0.125, num_classes=10, in_channels=3)
    save_model(VGG(width=0.125, in_channels=3).eval(), config, path, {"dataset": "cifar10"})
    return str(path)


def _one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("args,message", [
    (["--sparsity", "1.0"], "sparsity must be in [0, 1)"),
    (["--sparsity", "-0.1"], "sparsity must be in [0, 1)"),
    (["--sparsity", "0.3", "--method", "magic"], "unknown method 'magic': choose one of default, fusion"),
    (["--sparsity", "0.3", "--repair", "prayer"], "unknown repair 'prayer': choose one of none, "),
    (["--sparsity", "0.3", "--method", "folding", "--folding", "xx"], "unknown folding variant 'xx'"),
    (["--sparsity", "0.3", "--normalization", "l2"], "unknown normalization 'l2'"),
    (["--sparsity", "0.3", "--groups", "one"], "--groups takes 'all' or group indices"),
    (["--sparsity", "0.3", "--groups", "42"], "group 42 does not exist"),
    (["--sparsity", "0.3", "--repair", "synthetic", "--repair-target", "closest"], "chooses between the refit's"),
])
def test_bad_input_is_one_clear_line(capsys, args, message):
    assert main(["prune", MODEL, "--limit", "50", *args]) == 2
    assert message in _one_error_line(capsys)


def test_data_repair_without_the_dataset_says_so(capsys, monkeypatch, tmp_path, cifar_checkpoint):
    import torchvision.datasets as tvd

    def offline(self):
        raise OSError("no network")

    monkeypatch.setattr(tvd.CIFAR10, "download", offline)
    assert main(["prune", cifar_checkpoint, "--sparsity", "0.3", "--repair", "data",
                 "--data", str(tmp_path / "nowhere")]) == 2
    line = _one_error_line(capsys)
    assert "the data repair needs unlabelled CIFAR-10 training images" in line
    assert "--repair moments or synthetic" in line and str(tmp_path / "nowhere") in line
