"""The README's Python example runs as written and prints what it claims."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has a Python example"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["default", "fusion"]
    accuracies = [float(line.rsplit(" ", 1)[1].rstrip("%")) for line in lines]
    assert all(0 <= a <= 100 for a in accuracies)


def test_readme_has_exactly_two_setup_commands():
    bash = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    setup = [b.strip() for b in bash if "pip install" in b]
    assert len(setup) == 2
    ci = (README.parent / ".ci" / "run").read_text()
    assert setup[1] in ci  # CI runs the README's test command verbatim
