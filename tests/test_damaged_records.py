"""Wrong numbers never pass as results, and damaged records or careless arguments end in one
line, never a traceback: results are validated where they are read, a damaged one is rerun
by the next submit, and every on-disk record is checked at the point it is read."""

from __future__ import annotations

import errno
import json
import shutil

import pytest

from collect_study import ft, write
from hpcxfer import results
from hpcxfer.collect.read import read_study
from hpcxfer.grid import expand, load_grid
from hpcxfer.grid.task import Task
from hpcxfer.study import is_done, task_state

# ---------------------------------------------------------------- damaged results

#: result.json bodies that must not count as a result (besides the task's own id).
DAMAGED_RESULTS = {
    "val_acc NaN": '{"task_id": "%s", "val_acc": NaN, "val_loss": 1.0}',
    "val_acc Infinity": '{"task_id": "%s", "val_acc": Infinity, "val_loss": 1.0}',
    "val_acc true": '{"task_id": "%s", "val_acc": true, "val_loss": 1.0}',
    "val_acc a percentage": '{"task_id": "%s", "val_acc": 57.0, "val_loss": 1.0}',
    "val_acc a string": '{"task_id": "%s", "val_acc": "0.5", "val_loss": 1.0}',
    "val_acc negative": '{"task_id": "%s", "val_acc": -0.1, "val_loss": 1.0}',
    "train_acc above 1": '{"task_id": "%s", "val_acc": 0.5, "train_acc": 1.5}',
    "negative loss": '{"task_id": "%s", "val_acc": 0.5, "val_loss": -2.0}',
    "no val_acc": '{"task_id": "%s", "val_loss": 1.0}',
    "no task id": '{"val_acc": 0.5, "val_loss": 1.0}',
    "another task": '{"task_id": "ft-s9-x10-n7h8d30f0-0000000000", "val_acc": 0.5}',
    "task id a number": '{"task_id": 7, "val_acc": 0.5}',
    "epochs a string": '{"task_id": "%s", "val_acc": 0.5, "epochs": "many"}',
    "empty": "",
    "a list": "[0.5]",
    "an empty object": "{}",
    "truncated": '{"task_id": "%s", "val_acc": 0.5, "val_lo',
}


@pytest.fixture
def two(tmp_path):
    a, b = ft(0, 10, 7), ft(1, 10, 7)
    return write(tmp_path / "s", {a: 0.5, b: 0.7}), a, b


@pytest.mark.parametrize("case", DAMAGED_RESULTS)
def test_a_damaged_result_is_failed_skipped_and_not_done(two, case):
    paths, a, b = two
    body = DAMAGED_RESULTS[case].replace("%s", a.task_id)
    tp = paths.task(a.task_id)
    tp.result.write_text(body)

    assert not is_done(tp)
    st = task_state(paths, a)
    assert st.state == "failed" and "damaged result.json" in st.detail, st
    rec = read_study(paths)
    assert a.task_id not in rec.results and b.task_id in rec.results  # only the valid one is averaged
    assert sum(rec.skipped.tasks.values()) == 1
    (row,) = [r for r in rec.incomplete if r["task_id"] == a.task_id]
    assert row["state"] == "failed" and "damaged result.json" in row["detail"]


def test_valid_results_pass_and_a_diverged_loss_is_a_result(two):
    paths, a, b = two
    assert is_done(paths.task(a.task_id)) and is_done(paths.task(b.task_id))
    # A diverged run measures a NaN loss; rerunning it would diverge again: it is a result.
    paths.task(a.task_id).result.write_text(
        f'{{"task_id": "{a.task_id}", "val_acc": 0.2, "val_loss": NaN, "train_loss": Infinity, "train_acc": 0.2}}')
    assert is_done(paths.task(a.task_id))
    assert results.problem({"task_id": "x", "val_acc": 57.0}, "x").endswith("(a percentage?)")


# ---------------------------------------------------------------- a real study, damaged and rerun
ONE_TASK = {"pretrain": {"epochs": 1}, "experiments": [{"name": "named", "protocol": ["common"]}],
            "local": {"max_parallel": 1}}


#: Tests of a real finished study (the `study` fixture) wait for it to be trained first.
TRAINED = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A real finished study: one pre-training and one fine-tuning task."""
    import yaml

    from conftest import TINY_GRID, merge, run_cli

    root = tmp_path_factory.mktemp("finished")
    grid_path = root / "grid.yaml"
    grid_path.write_text(yaml.safe_dump(merge(TINY_GRID, {**ONE_TASK, "root": str(root / "runs")})))
    out = run_cli("submit", grid_path, "--backend", "local", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    return grid_path, root / "runs" / "tiny"


@pytest.fixture
def study(finished, tmp_path):
    """A private copy of the finished study, and a grid that points at it."""
    grid_path, original = finished
    copy = tmp_path / "runs" / "tiny"
    shutil.copytree(original, copy)
    grid = tmp_path / "grid.yaml"
    grid.write_text(grid_path.read_text().replace(str(original.parent), str(copy.parent)))
    return grid, copy


@TRAINED
def test_a_damaged_result_is_trained_again_by_the_next_submit(study, cli):
    grid_path, study_dir = study
    fine = [t for t in expand(load_grid(grid_path)) if t.stage == "finetune"][0]
    tp_dir = study_dir / "tasks" / fine.task_id
    good = json.loads((tp_dir / "result.json").read_text())
    epochs = [json.loads(x)["epoch"] for x in (tp_dir / "metrics.jsonl").read_text().splitlines()]
    (tp_dir / "result.json").write_text(json.dumps({**good, "val_acc": good["val_acc"] * 100}))

    status = json.loads(cli("status", study_dir, "--json").stdout)
    assert status["counts"]["failed"] == 1 and status["counts"]["done"] == 1
    out = cli("submit", grid_path, "--backend", "local", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "submitting 1 to local" in out.stdout  # the damaged one only, not the pre-training

    again = json.loads((tp_dir / "result.json").read_text())
    assert again["val_acc"] == good["val_acc"] and again["restarts"] == 0  # trained from the start, same numbers
    assert json.loads((tp_dir / "result.damaged.json").read_text())["val_acc"] == good["val_acc"] * 100
    assert [json.loads(x)["epoch"] for x in (tp_dir / "metrics.jsonl").read_text().splitlines()] == epochs


# ---------------------------------------------------------------- one line, exit 2 (or a warning)
def _one_error_line(out) -> str:
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr and len(lines) == 1, out.stderr
    return lines[0]


def _damage(study_dir, case: str) -> None:
    tasks = [json.loads(x) for x in (study_dir / "tasks.jsonl").read_text().splitlines()]
    fine = study_dir / "tasks" / tasks[1]["task_id"]
    if case == "failed.json a list":
        (fine / "result.json").unlink()
        (fine / "failed.json").write_text("[1, 2]")
    elif case == "failed.json error in rich markup":
        (fine / "result.json").unlink()
        (fine / "failed.json").write_text(json.dumps({"error": "[/red] boom [bold]x"}))
    elif case == "task id a number":
        tasks[1]["task_id"] = 12345
        (study_dir / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    elif case == "random bytes in tasks.jsonl":
        with open(study_dir / "tasks.jsonl", "ab") as f:
            f.write(bytes(range(256)) * 4 + b"\n")
    elif case == "task.json a list":
        (fine / "result.json").unlink()
        (fine / "task.json").write_text("[]")


@TRAINED
@pytest.mark.parametrize("case", ["failed.json a list", "failed.json error in rich markup", "task id a number",
                                  "random bytes in tasks.jsonl", "task.json a list"])
def test_damaged_studies_are_reported_not_tracebacks(study, cli, case, tmp_path):
    grid_path, study_dir = study
    _damage(study_dir, case)
    for command in (["status", study_dir], ["status", study_dir, "--json"], ["collect", study_dir],
                    ["report", study_dir, "--out", tmp_path / "r.html"]):
        out = cli(*command)
        assert out.returncode == 0 and "Traceback" not in out.stderr, (command, out.stderr)
    status = cli("status", study_dir)
    if case == "failed.json error in rich markup":
        assert "[/red] boom [bold]x" in status.stdout  # shown as written, not parsed as markup
    if case in ("task id a number", "random bytes in tasks.jsonl"):
        assert "tasks.jsonl line" in status.stderr  # the damaged line is named
        before = (study_dir / "tasks.jsonl").read_bytes()
        out = cli("submit", grid_path, "--backend", "local", "--dry-run")
        assert out.returncode == 2 and "tasks.jsonl line" in _one_error_line(out)
        assert (study_dir / "tasks.jsonl").read_bytes() == before  # nothing rewritten or lost
    if case == "task.json a list":
        out = cli("run-task", study_dir, "1")
        assert out.returncode == 2 and "task.json" in _one_error_line(out)


@pytest.mark.parametrize("args, words", [
    (["run-task", "{s}", "²"], "no task '²'"),
    (["run-task", "{s}", "9" * 5000], "no task with index 999"),
    (["run-task", "{s}", "7"], "no task with index 7"),
    (["run-task", "{s}", "ft-nothing"], "no task 'ft-nothing'"),
    (["run-task", "{tmp}/nowhere", "0"], "not a study directory"),
    (["collect", "{s}", "--out", "{tmp}"], "--out: "),
    (["collect", "{s}", "--out", "{s}/study.json/x.csv"], "--out: cannot write"),
    (["report", "{s}", "--out", "{s}/study.json/new/r.html"], "--out: cannot write"),
    (["report", "{s}", "--out", "{tmp}"], "--out: "),
    (["collect", "{s}", "--plots", "{s}/study.json"], "--plots: "),
    (["collect", "{s}", "--jobs", "0"], "--jobs"),
    (["collect", "{s}", "--jobs", "-3"], "--jobs"),
    (["plan", "{grid}", "--limit", "-5"], "--limit"),
    (["plan", "{grid}", "--limit", "1" * 30], "--limit"),
    (["status", "{tmp}/nowhere"], "not a study directory"),
    (["collect", "{s}", "--view", "[red]x"], "unknown view '[red]x'"),
])
@TRAINED
def test_careless_arguments_get_one_line_and_exit_2(study, cli, tmp_path, args, words):
    grid_path, study_dir = study
    before = sorted(p.name for p in tmp_path.iterdir())
    fill = {"s": str(study_dir), "tmp": str(tmp_path), "grid": str(grid_path)}
    out = cli(*[a.format(**fill) for a in args])
    assert out.returncode == 2
    assert words in _one_error_line(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


@TRAINED
def test_a_task_folder_gone_read_only_at_the_end_is_one_line(study, monkeypatch, capsys):
    """The last writes fail (result.json, failed.json, removing running.json): the task
    fails with exit 1 and says so in a line or two, not three chained tracebacks."""
    import hpcxfer.fileio
    from hpcxfer.worker import EXIT_FAILED
    from hpcxfer.worker.main import run_task

    grid_path, study_dir = study
    fine = [t for t in expand(load_grid(grid_path)) if t.stage == "finetune"][0]
    tp = study_dir / "tasks" / fine.task_id
    (tp / "result.json").unlink()
    real = hpcxfer.fileio.atomic_write_bytes

    def read_only(path, data):
        if path.name in ("result.json", "failed.json"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(path, data)

    monkeypatch.setattr(hpcxfer.fileio, "atomic_write_bytes", read_only)
    assert run_task(str(study_dir), fine.task_id) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "Traceback" not in err and 1 <= len(err.strip().splitlines()) <= 2, err
    assert "Read-only file system" in err
    assert not (tp / "result.json").exists() and not (tp / "running.json").exists()


def test_every_task_field_is_checked_when_read():
    """The record checker knows every field of a task (a field added later cannot slip by)."""
    from hpcxfer.grid.task import _KINDS

    assert set(_KINDS) == set(Task.__dataclass_fields__)
    good = ft(0, 10, 7).to_dict()
    assert Task.from_record(good) == ft(0, 10, 7)
    for field, bad in [("split", "0"), ("split", True), ("lr_high", float("nan")), ("task_id", "../x"),
                       ("stage", "train"), ("depends_on", "pt-s0"), ("examples_per_class", "half")]:
        with pytest.raises(ValueError, match=field):
            Task.from_record({**good, field: bad})
