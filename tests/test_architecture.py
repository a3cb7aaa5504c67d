"""The code's shape, checked: the layers of docs/design.md §7 and no import cycle
(import-linter's contracts in pyproject.toml), no module too long to read as one idea, and
no private name imported across modules."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hpcxfer"
MAX_LINES = 450


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_longer_than_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def private_imports(path: Path, root: Path = ROOT) -> list[str]:
    """`from hpcxfer.x import _name` in `path`: a name another module keeps to itself."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and (node.module.startswith("hpcxfer") or node.level):
            found += [f"{path.relative_to(root)}:{node.lineno} {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_private_name_is_imported_across_modules():
    found = [hit for p in modules() for hit in private_imports(p)]
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def test_the_private_import_check_sees_one(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nfrom hpcxfer.worker.main import _log_to, run_task\n")
    assert private_imports(probe, tmp_path) == ["probe.py:2 _log_to"]


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """import-linter's contracts (pyproject.toml) on the package in `tree`."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is not installed (pip install -e '.[test]')")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([exe, str(tree / "pyproject.toml"), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("module, wrong", [
    ("grid/schema.py", "import hpcxfer.backends.slurm"),  # the grid reaching up into a backend
    ("layout.py", "from hpcxfer import study"),           # the bottom layer reaching up
])
def test_a_wrong_import_breaks_the_contracts(tmp_path, module, wrong):
    shutil.copytree(PACKAGE, tmp_path / "hpcxfer", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / "hpcxfer" / module
    target.write_text(target.read_text() + f"\n\ndef _probe():\n    {wrong}\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode == 1 and "(docs/design.md §7) BROKEN" in proc.stdout, proc.stdout[-2000:]
