"""hpcxfer/layout.py owns every path under a study (docs/design.md §3): no other module
joins anything onto a path that layout gives, and the paths it gives are the ones the
study folder has always had."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from hpcxfer import layout
from hpcxfer.errors import StudyError
from hpcxfer.layout import StudyPaths

PACKAGE = Path(layout.__file__).parent
LAYOUT_CLASSES = (layout.StudyPaths, layout.BackendPaths, layout.TaskPaths, layout.GroupPaths)


def path_names() -> tuple[set[str], set[str]]:
    """(properties, methods) of layout's classes that give a path or a folder's paths."""
    props, methods = {"dir"}, set()
    for cls in LAYOUT_CLASSES:
        for name, member in inspect.getmembers(cls):
            fn = member.fget if isinstance(member, property) else member
            returns = getattr(fn, "__annotations__", {}).get("return", "")
            if isinstance(returns, str) and (returns == "Path" or returns.strip("'\"").endswith("Paths")):
                (props if isinstance(member, property) else methods).add(name)
    return props, methods


def offenders(source: str, props: set[str], methods: set[str]) -> list[tuple[int, str]]:
    """(line, what) for each place in `source` that builds a path from one layout gives:
    `x.task(t).dir / "f"`, `paths.backend(b).dir / "f"`, `f"{paths.dir}/f"`,
    `os.path.join(paths.dir, "f")`, `tp.checkpoint.with_suffix(".new")`, and the same through
    a variable assigned one of them."""
    tree = ast.parse(source)
    aliases: set[str] = set()
    helpers: set[str] = set()

    def from_layout(node: ast.AST) -> bool:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "str":
            return len(node.args) == 1 and from_layout(node.args[0])
        if isinstance(node, ast.Attribute):
            return node.attr in props
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            return node.func.attr in methods
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return node.func.id in helpers
        return isinstance(node, ast.Name) and node.id in aliases

    def derived(node: ast.AST) -> bool:
        return from_layout(node) or (isinstance(node, ast.BinOp) and derived(node.left))

    for _ in range(2):  # a helper's result assigned to a name, and the other way round
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and derived(node.value):
                aliases.update(t.id for t in node.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.FunctionDef) and any(
                    isinstance(r, ast.Return) and r.value is not None and derived(r.value) for r in ast.walk(node)):
                helpers.add(node.name)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Div, ast.Add)) and from_layout(node.left):
            found.append((node.lineno, "joins onto a layout path"))
        elif isinstance(node, ast.JoinedStr):
            parts = node.values
            for a, b in zip(parts, parts[1:]):
                if (isinstance(a, ast.FormattedValue) and from_layout(a.value) and isinstance(b, ast.Constant)
                        and str(b.value).startswith("/") and len(str(b.value).rstrip()) > 1):
                    found.append((node.lineno, "formats a path under a layout path"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("with_suffix", "with_name", "with_stem", "joinpath") and from_layout(node.func.value):
                found.append((node.lineno, f"{node.func.attr} on a layout path"))
            elif node.func.attr == "join" and any(from_layout(a) for a in node.args):
                found.append((node.lineno, "os.path.join onto a layout path"))
    return sorted(found)


def test_the_check_finds_each_way_of_building_a_path():
    props, methods = path_names()
    assert {"dir", "checkpoint", "log", "submissions", "runs", "logs"} <= props
    assert {"task", "group", "backend", "task_list", "run_file"} <= methods
    bad = '\n'.join([
        'a = paths.dir / "x"',
        'b = paths.backend("pbs").dir / "logs"',
        'c = f"{paths.task(t).dir}/log.txt"',
        'd = os.path.join(paths.dir, "x")',
        'e = tp.checkpoint.with_suffix(".pt.new")',
        'folder = paths.backend("slurm").logs',
        'f = folder / "%j"',
        'g = str(paths.dir) + "/x"',
        'def runs(paths):',
        '    return paths.backend("local").dir / "runs"',
        'h = runs(paths) / "r.json"',
        'i = Path(args.dir) / "grid.yaml"',
    ])
    assert [line for line, _ in offenders(bad, props, methods)] == [1, 2, 3, 4, 5, 7, 8, 10, 11]
    fine = '\n'.join([
        'a = paths.task(t).result',
        'b = f"{paths.backend(name).logs}/"',  # PBS's -o: a folder, named as layout gives it
        'c = np.log(x) / 2',
        'd = len(paths.dir.name) / 2',
    ])
    assert offenders(fine, props, methods) == []


def test_no_module_but_layout_builds_a_study_path():
    props, methods = path_names()
    found = []
    for f in sorted(PACKAGE.rglob("*.py")):
        if f.name == "layout.py" and f.parent == PACKAGE:
            continue
        found += [f"{f.relative_to(PACKAGE.parent)}:{line}: {what}"
                  for line, what in offenders(f.read_text(), props, methods)]
    assert found == []


def test_backend_paths_keep_the_study_folder_as_it_was(tmp_path):
    paths = StudyPaths.of(tmp_path, "st")
    root = tmp_path / "st"
    pbs, slurm, local = paths.backend("pbs"), paths.backend("slurm"), paths.backend("local")
    assert pbs.dir == root / "backends" / "pbs"
    assert pbs.submissions == root / "backends/pbs/submissions.jsonl"
    assert pbs.task_list(7, "finetune", 2) == root / "backends/pbs/lists/007-finetune-2.txt"
    assert pbs.job_script(pbs.task_list(0, "pretrain", 0), ".pbs") == root / "backends/pbs/lists/000-pretrain-0.pbs"
    assert pbs.logs == root / "backends/pbs/logs"
    assert slurm.element_log("%A_%a", lambda s: s.replace("%", "%%")) == f"{root}/backends/slurm/logs/%A_%a.log"
    assert slurm.element_log("12_3") == f"{root}/backends/slurm/logs/12_3.log"
    assert local.run_file("r1") == root / "backends/local/runs/r1.json"
    assert local.run_log("r1") == root / "backends/local/r1.log"
    assert paths.report == root / "report.html"
    assert paths.task("ft-a").checkpoint_new == root / "tasks/ft-a/checkpoint.pt.new"
    for bad in ("", "../x", ".hidden"):
        with pytest.raises(StudyError):
            paths.backend(bad)
