"""The service layer (hpcxfer/service.py, docs/design.md §7): one submit expands its grid
once; a backend's way of running is its capability, not its name; the layers import
downward only."""

from __future__ import annotations

import ast
from pathlib import Path

from hpcxfer import cli
from hpcxfer.backends import BACKENDS, Submission
from hpcxfer.backends.local import LocalBackend
from hpcxfer.grid import expansion

ROOT = Path(__file__).resolve().parent.parent / "hpcxfer"


def count_expansions(monkeypatch) -> list:
    """Every expansion goes through expand_by_block: count its calls."""
    calls: list = []
    real = expansion.expand_by_block
    monkeypatch.setattr(expansion, "expand_by_block", lambda grid: calls.append(grid) or real(grid))
    return calls


def test_one_submit_plan_or_dry_run_expands_the_grid_once(write_grid, monkeypatch, capsys):
    grid = str(write_grid())
    calls = count_expansions(monkeypatch)
    handed: list = []
    monkeypatch.setattr(LocalBackend, "submit", lambda self, paths, g, units, **kw:
                        handed.append((units, kw)) or Submission(self.name, units=[u.id for u in units]))
    assert cli.main(["submit", grid, "--backend", "local"]) == 0
    assert len(calls) == 1
    assert len(handed) == 1 and len(handed[0][0]) == 4 and handed[0][1] == {}  # 1 pre-training + 3 fine-tuning
    for argv in (["submit", grid, "--backend", "local", "--dry-run"], ["plan", grid]):
        calls.clear()
        assert cli.main(argv) == 0
        assert len(calls) == 1, argv
    assert "estimated cost of 4 tasks" in capsys.readouterr().out


class InProcess:
    """A backend that runs its units in this process, under a name the CLI cannot know."""

    name = "inprocess"
    in_process = True
    calls: list = []

    def submit(self, paths, grid, units, *, dry_run=False, wait=False, on_change=None, recorded=None):
        InProcess.calls.append({"wait": wait, "units": len(units)})
        recorded()  # the study lock is let go here
        on_change({"running": 0, "done": len(units)})
        return Submission(self.name, tasks=[m for u in units for m in u.members], job_ids=["inprocess:1"])

    def check_resources(self, grid):
        return []

    def device_memory_gb(self, grid):
        return None

    def view(self, paths):
        return {}

    def cancel(self, paths):
        return []


def test_wait_goes_to_an_in_process_backend_by_its_capability(write_grid, monkeypatch, capsys):
    monkeypatch.setitem(BACKENDS, "inprocess", InProcess)
    InProcess.calls.clear()
    # Nothing trained, so every task is unfinished after the wait: exit status 1.
    assert cli.main(["submit", str(write_grid()), "--backend", "inprocess", "--wait"]) == 1
    assert InProcess.calls == [{"wait": True, "units": 4}]
    out = capsys.readouterr().out
    assert "submitted 4 tasks as inprocess:1" in out and out.count(" pending: ") == 4


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def test_layers_import_downward_only():
    for path in (ROOT / "grid").glob("*.py"):
        assert not {m for m in imports(path) if m.startswith("hpcxfer.backends")}, path
    assert not {m for m in imports(ROOT / "sites.py") if m.startswith("hpcxfer")}
    used = {m for m in imports(ROOT / "cli.py") if m.startswith("hpcxfer.")}
    inner = sorted(m for m in used if m.split(".")[1] in ("study", "backends", "grid", "layout", "locks"))
    assert inner == []
    source = (ROOT / "cli.py").read_text()
    assert ".name ==" not in source and ".name !=" not in source and "hasattr(backend" not in source
    assert "._source" not in source
