"""The README's Python example runs as written and prints what it claims."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs_from_any_folder(tmp_path):
    """The example runs as a script in an empty temporary folder: it needs the installed package, not the repo."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has a Python example"
    script = tmp_path / "example.py"
    script.write_text("\n".join(blocks))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["default", "fusion"]
    accuracies = [float(line.rsplit(" ", 1)[1].rstrip("%")) for line in lines]
    assert all(0 <= a <= 100 for a in accuracies)
    assert accuracies[1] > accuracies[0]  # the README's point: fusing keeps more accuracy than dropping
    assert sorted(p.name for p in tmp_path.iterdir()) == ["example.py"]  # it wrote nothing where it ran


def test_readme_has_exactly_two_setup_commands():
    bash = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    setup = [b.strip() for b in bash if "pip install" in b]
    assert len(setup) == 2
    ci = (README.parent / ".ci" / "run").read_text()
    assert setup[1] in ci  # CI runs the README's test command verbatim


def test_public_api_is_importable_from_the_package():
    import intrafusion

    missing = [name for name in intrafusion.__all__ if getattr(intrafusion, name, None) is None]
    assert not missing
    for name in ("prune", "evaluate", "TransportOptions", "load_zoo_model", "load_model", "load_dataset"):
        assert name in intrafusion.__all__
    assert intrafusion.load_zoo_model("mlp-digits8x8").dataset == "digits8x8"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import statement in a file; relative modules start with dots."""
    import ast

    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append(("." * node.level + (node.module or ""), [a.name for a in node.names]))
    return out


def test_layout_import_rules():
    """docs/ARCHITECTURE.md: the library never imports Streamlit or the pages; pages use no private names."""
    root = README.parent
    bad = [f"{p.relative_to(root)}: {m}" for p in (root / "intrafusion").rglob("*.py") for m, _ in _imports(p)
           if m.split(".")[0] in ("streamlit", "pages", "app")]
    assert not bad
    private = [f"{p.name}: {m}.{n}" for p in [*(root / "pages").glob("*.py"), root / "app.py"]
               for m, names in _imports(p) if m.startswith("intrafusion") for n in names if n.startswith("_")]
    assert not private
    core = [f"{p.name}: {m}" for p in (root / "intrafusion" / "core").glob("*.py") for m, _ in _imports(p)
            if (m.startswith("..") and m not in ("..device",)) or m.startswith("intrafusion")]
    assert not core, "core/ holds the method only"
