"""The command line, end to end on a checkpoint made in the test (numbers and messages, not 'it ran')."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from intrafusion.cli import main
from intrafusion.models.architectures import VGG


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "vgg.pt"
    torch.save(VGG(width=0.125, in_channels=1).eval().state_dict(), path)
    return str(path)


def test_groups_json(checkpoint, capsys):
    assert main(["groups", checkpoint, "--arch", "vgg11_bn", "--dataset", "mnist5k", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in rows] == list(range(8))
    assert [r["n"] for r in rows] == [64, 64, 64, 64, 32, 32, 16, 8]
    assert rows[0]["producers"] == ["features.25"] and rows[0]["consumers"] == ["classifier"]


def test_sweep_json_rows(checkpoint, capsys):
    code = main(["sweep", checkpoint, "--arch", "vgg11_bn", "--dataset", "mnist5k", "--groups", "1", "3",
                 "--sparsities", "0.5", "0.7", "--normalization", "paper", "function-preserving", "--limit", "200",
                 "--json", "--quiet"])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 * 2 * 3  # groups x sparsities x (default, paper, function-preserving)
    for key in ("group", "sparsity", "method", "accuracy", "logit_distance", "seconds"):
        assert all(key in r for r in rows)
    assert {r["label"] for r in rows} == {"default", "fusion (paper)", "fusion (function-preserving)"}
    assert {r["kept"] for r in rows if r["sparsity"] == 0.5} == {32}
    assert all(0 <= r["accuracy"] <= 100 for r in rows)


def test_sweep_table(checkpoint, capsys):
    assert main(["sweep", checkpoint, "--arch", "vgg11_bn", "--dataset", "mnist5k", "--groups", "2",
                 "--sparsities", "0.5", "--limit", "100", "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:5] == ["group", "s", "default", "IF", "paper"]
    assert out[2].split()[:2] == ["2", "0.50"]


@pytest.mark.parametrize("args,message", [
    (["--groups", "99", "--sparsities", "0.5"], "group 99 does not exist"),
    (["--groups", "1", "--sparsities", "1.0"], "sparsity must be in [0, 1)"),
])
def test_sweep_bad_input_is_one_clear_line(checkpoint, capsys, args, message):
    assert main(["sweep", checkpoint, "--arch", "vgg11_bn", "--dataset", "mnist5k", "--limit", "50", "--quiet",
                 *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ")


def test_missing_checkpoint_and_unknown_model(tmp_path, capsys):
    assert main(["groups", str(tmp_path / "nope.pt"), "--arch", "vgg11_bn"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["groups", "no-such-model"]) == 2
    assert "no bundled model 'no-such-model'" in capsys.readouterr().err


def _subcommands():
    from intrafusion.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_command_takes_threads():
    from intrafusion.cli import COMMANDS

    commands = _subcommands()
    assert len(commands) == len(COMMANDS) >= 5
    for name, sub in commands.items():
        assert any("--threads" in a.option_strings for a in sub._actions), name


def test_repair_help_names_every_kind_and_which_use_data():
    """`prune --help` and `sweep --help` describe the repairs: the no-data part names exactly the kinds without
    data (refit-synthetic among them), the training-images part exactly those that use data (data, refit-data)."""
    import re

    from intrafusion.core.repair import REPAIRS, RepairOptions

    def kinds(text: str) -> set[str]:
        return {k for k in REPAIRS if re.search(rf"(?<![\w-]){re.escape(k)}(?![\w-])", text)}

    free = {k for k in REPAIRS if k != "none" and not RepairOptions(k).uses_data}
    with_data = {k for k in REPAIRS if RepairOptions(k).uses_data}
    assert "refit-synthetic" in free and with_data == {"data", "refit-data"}
    for name, sub in _subcommands().items():
        if name not in ("prune", "sweep"):
            continue
        text = " ".join(next(a for a in sub._actions if "--repair" in a.option_strings).help.split())
        no_data, _, uses = text.partition("No data:")[2].partition("unlabelled training images")
        assert kinds(no_data) == free, (name, text)
        assert kinds(uses) == with_data, (name, text)
        assert "least squares" in text, name  # what the refit does


def test_sweep_rows_table_aligns_long_repair_labels():
    """The rows table widens its columns for 'fusion (function-preserving) + refit-synthetic repair'."""
    from intrafusion.cli.sweep import format_rows
    from intrafusion.views.variants import CellRow

    rows = [CellRow(group="all", n=64, sparsity=0.5, kept=32, label=label, base_label=label, setting="",
                    method=label.split(" ")[0], normalization=None, repair=repair, criterion="l1", accuracy=acc,
                    logit_distance=1.25, agreement=90.0, params=10, macs=None, latency_ms=None, seconds=1.0,
                    eval_seconds=0.5)
            for label, repair, acc in (("default", "none", 11.5),
                                       ("fusion (function-preserving) + refit-synthetic repair", "refit-synthetic",
                                        91.25),
                                       ("fusion (paper) + refit-data repair", "refit-data", 97.0))]
    lines = format_rows(rows, "m", 98.0, "l1").splitlines()
    assert len({len(line) for line in lines[1:]}) == 1, lines  # header and rows in the same columns
    acc_end = lines[1].index("acc %") + len("acc %")
    assert [line[acc_end - 6 : acc_end] for line in lines[2:]] == [" 11.50", " 91.25", " 97.00"]
    assert "refit-data*" in lines[4] and "refit-synthetic*" not in lines[3]  # * = used training images


def test_threads_default_is_torchs_own_and_option_sets_it(capsys):
    """Defect 11: the CLI used to cap torch at 2 threads whatever the machine."""
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert main(["models", "--json"]) == 0
        assert torch.get_num_threads() == 4  # untouched without --threads
        assert main(["models", "--json", "--threads", "3"]) == 0
        assert torch.get_num_threads() == 3
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main(["models", "--threads", "0"])
        assert exit_.value.code == 2 and "--threads must be at least 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(previous)


def test_console_script_and_module_entry_points(tmp_path):
    """`intrafusion ...` (the installed console script) and `python -m intrafusion ...` work from any folder."""
    script = Path(sys.executable).with_name("intrafusion")
    if not script.exists():
        pytest.skip(f"the console script is not installed next to {sys.executable}: run `pip install -e .`")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for cmd in ([str(script), "models", "--json"], [sys.executable, "-m", "intrafusion", "models", "--json"]):
        out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert out.returncode == 0, out.stderr
        ids = [json.loads(line)["id"] for line in out.stdout.splitlines()]
        assert "vgg11_bn-mnist5k" in ids
    out = subprocess.run([str(script), "no-such-command"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "invalid choice" in out.stderr
