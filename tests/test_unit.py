"""The worker's one lifecycle (hpcxfer/worker/unit.py): the pre-flight check, the refused
worker that never imports torch, progress between evaluations, interruptions beside
restarts, and an import graph of hpcxfer/worker without cycles."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import StopAfter, prepare_study, run_cli

from hpcxfer.fileio import iter_jsonl, read_json
from hpcxfer.procs import ProcessId
from hpcxfer.states import Exit

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = {"finetune": {"epochs": 1}, "experiments": [{"protocol": "scratch"}],
            "runtime": {"threads": 1, "tensorboard": True}}


def _unimportable(tmp_path: Path, module: str) -> dict:
    """Environment of a worker in which `module` is installed but cannot be imported."""
    shim = tmp_path / "shim"
    (shim / module).mkdir(parents=True)
    (shim / module / "__init__.py").write_text(f"raise ImportError('{module} is broken here (test)')\n")
    return {"PYTHONPATH": os.pathsep.join([str(shim), str(REPO), os.environ.get("PYTHONPATH", "")])}


def _pretrain(paths) -> Path:
    index = list(iter_jsonl(paths.tasks_index))
    return paths.task(next(t["task_id"] for t in index if t["stage"] == "pretrain")).dir


@pytest.mark.slow
def test_a_missing_tensorboard_is_one_warning_and_the_task_finishes(write_grid, tmp_path):
    paths = prepare_study(write_grid(PRETRAIN))
    task = _pretrain(paths)
    out = run_cli("run-task", paths.dir, task.name, env=_unimportable(tmp_path, "tensorboard"))
    assert out.returncode == Exit.DONE, out.stderr
    assert read_json(task / "result.json")["epochs"] == 2
    assert len(list(iter_jsonl(task / "metrics.jsonl"))) == 2
    warnings = [line for line in (task / "log.txt").read_text().splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and "runtime.tensorboard" in warnings[0] and "training without it" in warnings[0]
    assert not (task / "tb").exists()


def test_a_missing_torchvision_is_bad_input_before_anything_is_trained(write_grid, tmp_path):
    paths = prepare_study(write_grid(PRETRAIN))
    task = _pretrain(paths)
    before = sorted(p.name for p in task.iterdir())
    out = run_cli("run-task", paths.dir, task.name, env=_unimportable(tmp_path, "torchvision"))
    assert out.returncode == Exit.USAGE
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(task / "task.json") in lines[0] and "torchvision" in lines[0], lines
    assert sorted(p.name for p in task.iterdir()) == before  # no metrics, no checkpoint, no log, no lock


def test_an_unreadable_data_set_is_bad_input_before_anything_is_trained(write_grid, tmp_path):
    paths = prepare_study(write_grid(PRETRAIN))
    task = _pretrain(paths)
    config = read_json(task / "task.json")
    config["data"]["path"] = str(tmp_path / "gone")
    (task / "task.json").write_text(json.dumps(config))
    before = sorted(p.name for p in task.iterdir())
    out = run_cli("run-task", paths.dir, task.name)
    assert out.returncode == Exit.USAGE
    assert out.stderr.strip().splitlines() == [
        f"error: {task / 'task.json'}: data.path: {tmp_path / 'gone'} is missing or not readable here"]
    assert sorted(p.name for p in task.iterdir()) == before


@pytest.mark.parametrize("kind", ["task", "group"])
def test_a_refused_worker_exits_busy_without_importing_torch(write_grid, kind):
    paths = prepare_study(write_grid({**PRETRAIN, "runtime": {"group_max": 0}, "experiments": [
        {"protocol": ["scratch", "common"]}]}))
    index = list(iter_jsonl(paths.tasks_index))
    members = [t["task_id"] for t in index if t["stage"] == "finetune"]
    if kind == "group":
        from hpcxfer.fileio import atomic_write_json
        from hpcxfer.grid.groups import Group, make_groups
        from hpcxfer.grid.task import Task

        (group,) = [u for u in make_groups([Task.from_dict(t) for t in index], 0) if isinstance(u, Group)]
        gp = paths.group(group.group_id)
        gp.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(gp.config, group.to_dict())
        spec = group.group_id
    else:
        spec = members[0]
    held = paths.task(members[-1] if kind == "group" else members[0]).running
    held.write_text(json.dumps({**ProcessId.current().to_dict(), "job_id": "test"}))  # this live process
    code = ("import sys; from hpcxfer.worker.main import run_task; "
            f"status = run_task({str(paths.dir)!r}, {spec!r}); print(int(status), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == [str(int(Exit.BUSY)), "False"]
    assert "is being run by" in out.stderr
    assert held.exists() and not any(paths.task(m).log.exists() for m in members)


@pytest.mark.slow
def test_progress_is_written_at_every_epoch_end_between_evaluations(write_grid):
    from hpcxfer.worker import train
    from hpcxfer.worker.signals import Interrupted

    paths = prepare_study(write_grid({**PRETRAIN, "runtime": {"eval_every": 5, "tensorboard": False}}))
    tp = paths.task(_pretrain(paths).name)
    with pytest.raises(Interrupted):
        train.run(paths, tp, StopAfter(15))  # 300 images at batch 32: 10 steps an epoch
    assert not tp.metrics.exists() or not list(iter_jsonl(tp.metrics))  # no evaluation yet
    progress = read_json(tp.progress)
    assert (progress["epoch"], progress["epochs"]) == (1, 2) and isinstance(progress["time"], float)
    result = train.run(paths, tp)
    assert result["restarts"] == 1 and not tp.progress.exists()  # the result says it now


@pytest.mark.slow
def test_a_worker_killed_before_its_first_checkpoint_is_an_interruption_not_a_restart(write_grid):
    from hpcxfer.worker.main import run_task

    paths = prepare_study(write_grid({**PRETRAIN, "runtime": {"tensorboard": False}}))
    task = _pretrain(paths)
    dead = subprocess.Popen(["sleep", "30"])
    pid = ProcessId.of(dead.pid)
    dead.kill()
    dead.wait()
    (task / "running.json").write_text(json.dumps({**pid.to_dict(), "job_id": "test"}))  # killed, no checkpoint
    assert run_task(str(paths.dir), task.name) == Exit.DONE
    result = read_json(task / "result.json")
    assert (result["restarts"], result["interruptions"]) == (0, 1)


def _imports(path: Path) -> set[str]:
    """hpcxfer.worker modules that `path` imports anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n.startswith("hpcxfer.worker.")
                  and (REPO / (n.replace(".", "/") + ".py")).is_file()}
    return found


def test_the_worker_modules_import_each_other_without_a_cycle():
    folder = REPO / "hpcxfer" / "worker"
    graph = {f"hpcxfer.worker.{p.stem}": _imports(p) for p in folder.glob("*.py") if p.stem != "__init__"}

    def visit(module: str, path: tuple[str, ...]) -> None:
        for dep in graph.get(module, ()):
            assert dep not in path, f"import cycle: {' -> '.join(path + (dep,))}"
            visit(dep, path + (dep,))

    for module in graph:
        visit(module, (module,))


@pytest.mark.slow
def test_a_profiled_task_writes_a_chrome_trace_event_file(write_grid):
    """runtime.profile: a trace Perfetto's UI and Holistic Trace Analysis load: JSON with a
    `traceEvents` list whose events carry `ph` and `name`, and `ts` where they are timed."""
    from hpcxfer.worker import train

    paths = prepare_study(write_grid({**PRETRAIN, "runtime": {"profile": True, "tensorboard": False}}))
    tp = paths.task(_pretrain(paths).name)
    train.run(paths, tp)  # 20 steps: the schedule records steps 5-10
    (trace,) = tp.profile.glob("*.json")
    events = json.loads(trace.read_text())["traceEvents"]
    assert isinstance(events, list) and events
    assert all("ph" in e and "name" in e for e in events)
    timed = [e for e in events if e["ph"] != "M"]  # "M": metadata (process and thread names)
    assert timed and all(isinstance(e["ts"], (int, float)) for e in timed)
    assert any(e["ph"] == "X" and e["name"].startswith("ProfilerStep#") for e in events)
