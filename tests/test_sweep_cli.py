"""`sweep` on the command line: whole-model rows, several methods and repairs, JSON fields, clear errors."""

import json

import pytest

from intrafusion.cli import main


def test_whole_model_json_rows(capsys):
    code = main(["sweep", "vgg11_bn-mnist5k", "--whole-model", "--sparsities", "0.0", "0.3", "--methods", "default",
                 "fusion", "--repair", "none", "moments", "--limit", "60", "--json", "--quiet"])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 * 2 * 2
    for r in rows:
        assert r["group"] == "all" and r["uses_data"] is False
        for key in ("method", "normalization", "repair", "accuracy", "logit_distance", "seconds"):
            assert key in r
    assert {(r["method"], r["repair"]) for r in rows} == {(m, k) for m in ("default", "fusion")
                                                           for k in ("none", "moments")}
    zero = [r for r in rows if r["sparsity"] == 0.0]
    assert all(r["logit_distance"] < 1e-4 for r in zero)  # sparsity 0 changes nothing, repaired or not
    assert all(r["kept"] < r["n"] for r in rows if r["sparsity"] == 0.3)


def test_table_with_repairs(capsys):
    assert main(["sweep", "vgg11_bn-mnist5k", "--groups", "2", "--sparsities", "0.5", "--methods", "default",
                 "--repair", "none", "moments", "--limit", "40", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "repair" in out and "moments" in out and out.count("default") == 2


@pytest.mark.parametrize("args,message", [
    ([], "give --groups"),
    (["--groups", "0", "--repair", "bogus"], "invalid choice"),
])
def test_bad_options_named(capsys, args, message):
    try:
        code = main(["sweep", "vgg11_bn-mnist5k", "--limit", "20", "--quiet", *args])
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
