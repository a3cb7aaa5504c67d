"""Progress you can trust: the wait counts tasks, its estimate comes from measured epochs,
moves with the clock and falls as tasks finish; cancelled tasks are never shown as done;
a running task shows its epoch from progress.json before its first evaluation; off a
terminal, `submit --wait` prints plain progress lines and one line per task that ends."""

from __future__ import annotations

import io
import json
import re
import time

import pytest
from rich.console import Console

from benchmarks.synthetic import finetune_task, write_study
from hpcxfer import cli as hpcxfer_cli
from hpcxfer.procs import ProcessId
from hpcxfer.progress import Tracker, read_mark
from hpcxfer.watch import Waiting, eta_text, running_lines


def _study(tmp_path, n: int = 4):
    """`n` fine-tuning tasks of 10 epochs, none started."""
    tasks = [finetune_task(s, 10, 7, epochs=10) for s in range(n)]
    return write_study(tmp_path / "s", tasks, records=0, finished=lambda t: False), tasks


def _hold(paths, task) -> None:
    """The task runs: this (live) process holds its lock."""
    paths.task(task.task_id).running.write_text(json.dumps({**ProcessId.current().to_dict(), "started": time.time()}))


def _mark(paths, task, epoch: int, at: float) -> None:
    paths.task(task.task_id).progress.write_text(json.dumps({"epoch": epoch, "epochs": task.epochs, "time": at}))


def _finish(paths, task) -> None:
    paths.task(task.task_id).running.unlink(missing_ok=True)
    paths.task(task.task_id).result.write_text(json.dumps({
        "task_id": task.task_id, "stage": task.stage, "val_acc": 0.5, "val_loss": 1.3, "train_loss": 0.1,
        "train_acc": 0.6, "epochs": task.epochs, "restarts": 0, "wall_s": 10.0, "host": "h", "device": "cpu",
        "versions": {}, "git_revision": None}))


def test_the_estimate_is_measured_moves_with_the_clock_and_falls_as_tasks_finish(tmp_path):
    paths, tasks = _study(tmp_path)
    a, b = tasks[:2]
    tracker = Tracker(paths, tasks)
    snap, _ = tracker.poll(now=1000.0)
    assert snap.eta(1000.0) is None and eta_text(snap, 1000.0) == "est. time left: measuring"
    assert snap.epochs_left == 40 and snap.total == 4  # tasks, not workers
    _hold(paths, a)
    _mark(paths, a, 5, 1009.0)
    snap, _ = tracker.poll(now=1010.0)
    assert snap.rate == pytest.approx(0.5)  # 5 epochs in 10 s
    first = snap.eta(1010.0)
    assert first == pytest.approx(35 / 0.5)
    assert snap.eta(1015.0) == pytest.approx(first - 5)  # never frozen between polls
    assert eta_text(snap, 1015.0) == "est. 0:01:05 left"
    _finish(paths, a)
    _hold(paths, b)
    _mark(paths, b, 5, 1019.0)
    snap, ended = tracker.poll(now=1020.0)
    assert [(e.task_id, e.how) for e in ended] == [(a.task_id, "done")] and snap.done == 1
    assert snap.epochs_left == 25 and snap.eta(1020.0) < first - 10  # recomputed as tasks finish
    stalled, _ = tracker.poll(now=1200.0)  # no epoch since: the rate measured falls, the estimate grows
    assert stalled.eta(1200.0) > snap.eta(1020.0)


def test_cancelled_tasks_are_never_counted_done(tmp_path):
    paths, tasks = _study(tmp_path)
    tracker = Tracker(paths, tasks, held=True)
    from hpcxfer.states import Held, Hold

    queued = {t.task_id: Held(Hold.QUEUED, job=f"9[{i}]") for i, t in enumerate(tasks)}
    tracker.poll(queued, now=1.0)
    _finish(paths, tasks[0])
    snap, ended = tracker.poll({}, now=2.0)  # cancelled: the scheduler holds none any more
    assert snap.done == 1 and snap.counts["cancelled"] == 3 and snap.epochs_left == 0
    assert sorted(e.how for e in ended) == ["cancelled"] * 3 + ["done"]


def test_a_search_wait_counts_tasks_at_their_rung_as_done_for_it(tmp_path):
    """A search waits for members to reach a rung (rung.json), not their last epoch: one
    stopped there is done for this wait, said once, and what is left counts to the rung."""
    from hpcxfer.watch import counts_text, ended_line

    paths, tasks = _study(tmp_path, 3)
    a, b, c = tasks
    for t in tasks:
        paths.task(t.task_id).rung.write_text(json.dumps({"stop_after": 4}))
    tracker = Tracker(paths, tasks, held=True)
    from hpcxfer.states import Held, Hold

    tracker.poll({t.task_id: Held(Hold.QUEUED, job=f"9[{i}]") for i, t in enumerate(tasks)}, now=1.0)
    _mark(paths, a, 4, 1.5)  # a stopped at its rung (epoch 4) and left the scheduler
    _hold(paths, b)
    _mark(paths, b, 1, 1.5)
    snap, ended = tracker.poll({b.task_id: Held(Hold.RUNNING, job="9[1]"), c.task_id: Held(Hold.QUEUED, job="9[2]")},
                               now=2.0)
    assert snap.done == 1 and snap.counts["cancelled"] == 0  # without rung.json a would read cancelled
    assert snap.epochs_left == (4 - 1) + 4  # b and c to the rung, not to epoch 10
    assert [ended_line(e) for e in ended] == [f"{a.task_id} stopped at its rung (epoch 4)"]
    assert counts_text(snap) == "1 of them at their rung; 1 running, 1 queued"


def test_a_running_task_shows_its_epoch_from_progress_json(tmp_path, capsys):
    paths, tasks = _study(tmp_path, 2)
    t = tasks[0]
    _hold(paths, t)
    snap, _ = Tracker(paths, tasks).poll()
    assert "starting" in running_lines(snap)[0]  # no epoch finished, none evaluated
    _mark(paths, t, 2, time.time())  # two epochs done, none evaluated yet (metrics.jsonl is empty)
    snap, _ = Tracker(paths, tasks).poll()
    assert running_lines(snap) == [f"  {t.task_id}  epoch 2/10"]
    assert hpcxfer_cli.main(["status", str(paths.dir), "--json"]) == 0
    row = {r["task_id"]: r for r in json.loads(capsys.readouterr().out)["tasks"]}[t.task_id]
    assert row["state"] == "running" and row["epoch"] == 2
    assert hpcxfer_cli.main(["status", str(paths.dir)]) == 0
    assert "epoch 2/10" in capsys.readouterr().out


def test_a_damaged_progress_file_is_unknown(tmp_path):
    for text in ("", "{", '{"epoch": "3", "time": 1}', '{"epoch": 3}', '[1]', '{"epoch": -1, "time": 5}'):
        (tmp_path / "progress.json").write_text(text)
        assert read_mark(tmp_path / "progress.json") is None, text
    assert read_mark(tmp_path / "absent.json") is None


def test_cancel_summarises_array_ids(monkeypatch, tmp_path, capsys):
    from hpcxfer import service

    monkeypatch.setattr(service, "cancel", lambda d: [f"4711[{i}].pbs" for i in (*range(40), 42)])
    assert hpcxfer_cli.main(["cancel", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "cancelled 4711[0-39,42].pbs (41 jobs)\n"


@pytest.mark.slow
def test_wait_off_a_terminal_prints_progress_lines_and_each_ended_task(write_grid, cli):
    grid = write_grid({"pretrain": {"epochs": 1}, "finetune": {"epochs": 2},
                       "experiments": [{"name": "named", "protocol": ["common", "scratch"]}]})
    out = cli("submit", grid, "--backend", "local", "--wait", env={"HPCXFER_PROGRESS_S": "0.2"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    progress = [ln for ln in lines if re.search(r"\btasks: \d/3 done", ln)]
    assert len(progress) >= 3, out.stdout  # a line at the start, while it runs, and at the end
    assert progress[-1].split(" ", 1)[1].startswith("tasks: 3/3 done") and "wait is over" in progress[-1]
    assert any("est. " in ln for ln in progress)
    ended = [ln.split()[2:] for ln in lines if re.match(r"\d\d:\d\d:\d\d done ", ln)]
    assert len(ended) == 3 and all(len(e) == 1 for e in ended), out.stdout  # one line per task, its id whole
    assert not any(ln != ln.rstrip() for ln in lines)


def test_the_live_bar_counts_tasks_and_shows_each_running_task_whole(tmp_path):
    paths, tasks = _study(tmp_path)
    _hold(paths, tasks[0])
    _mark(paths, tasks[0], 4, time.time())
    _finish(paths, tasks[1])
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=60, color_system=None)
    with Waiting(console, Tracker(paths, tasks, held=True), every_s=60):
        pass
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    assert "tasks" in text and "1/4 done" in text and "est. " in text
    assert f"  {tasks[0].task_id}  epoch 4/10" in text and "1 running" in text
