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
