"""`status` at scale: a 1,000-task study fits a screen, failed tasks first with their log;
piped, every id is whole for grep; --state, --detailed, --limit; --json keeps its shape
and gains fields; an unreachable scheduler is a warning, not the end; scheduler commands
retried within bounds and limited to the user's own jobs."""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from hpcxfer import cli as hpcxfer_cli
from hpcxfer.progress import Tracker
from hpcxfer.watch import running_lines
from hpcxfer.backends import scheduler
from hpcxfer.backends.scheduler import SchedulerError
from hpcxfer.backends.slurm import SlurmBackend
from benchmarks.synthetic import big_grid, write_study
from hpcxfer.fileio import append_jsonl
from hpcxfer.layout import StudyPaths
from hpcxfer.procs import ProcessId
from hpcxfer.states import Held, Hold

FAILED, RUNNING = 20, 5


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """1,000 synthetic tasks: 900 done, 20 failed with a log, 5 running (held by this
    process, alive for the test), the rest pending."""
    tasks = big_grid(1000)
    done = {t.task_id for t in tasks[:900]}
    paths = write_study(tmp_path_factory.mktemp("big") / "big", tasks, records=3, finished=lambda t: t.task_id in done)
    failed = tasks[900:900 + FAILED]
    for t in failed:
        tp = paths.task(t.task_id)
        tp.failed.write_text(json.dumps({"error": "RuntimeError: CUDA out of memory"}))
        tp.log.write_text("loading\nTraceback (most recent call last):\nRuntimeError: CUDA out of memory\n")
    running = tasks[900 + FAILED:900 + FAILED + RUNNING]
    for t in running:
        record = {**ProcessId.current().to_dict(), "started": time.time() - 3725, "job_id": "pbs:1.x"}
        paths.task(t.task_id).running.write_text(json.dumps(record))
    return paths, tasks, failed, running


def on_terminal(argv: list[str], rows: int = 40, cols: int = 100) -> str:
    """What `argv` shows on a terminal of rows x cols."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the terminal closed: the command ended
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


def test_status_of_1000_tasks_fits_a_screen_failed_first(big):
    paths, tasks, failed, running = big
    screen = on_terminal([sys.executable, "-m", "hpcxfer", "status", str(paths.dir)])
    lines = screen.replace("\r\n", "\n").rstrip("\n").split("\n")
    assert len(lines) <= 40, screen
    assert "984 tasks" in lines[0] or f"{len(tasks)} tasks" in lines[0]
    text = "\n".join(lines)
    assert f"failed ({FAILED})" in text and failed[0].task_id in text and "CUDA out of memory" in text
    assert "| RuntimeError: CUDA out of memory" in text  # the tail of its log
    assert text.index("failed (") < text.index("running (")  # failed first
    assert f"running ({RUNNING})" in text and running[0].task_id in text
    # its wall time: 3,725 s when the fixture wrote it, plus however long the tests since took
    walls = [int(h) * 3600 + int(m) * 60 + int(s) for h, m, s in re.findall(r"\b(\d+):(\d\d):(\d\d)\b", text)]
    assert any(3725 <= w < 3725 + 600 for w in walls), text
    assert "--state failed" in text and "--detailed" in text


def test_piped_status_has_every_id_whole(big, cli):
    paths, tasks, failed, running = big
    out = subprocess.run(f"{sys.executable} -m hpcxfer status {paths.dir} | grep {tasks[500].task_id}",
                         shell=True, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "COLUMNS"})
    assert out.returncode == 0 and tasks[500].task_id in out.stdout, out.stderr
    row = out.stdout.split()
    assert row[:3] == [tasks[500].task_id, "finetune", "done"] and "40/40" in row and "synthetic" in row


def test_state_detailed_and_limit(big, cli):
    paths, tasks, failed, running = big
    out = cli("status", paths.dir, "--state", "failed", "--limit", "3")
    assert out.returncode == 0, out.stderr
    shown = [t.task_id for t in failed if t.task_id in out.stdout]
    assert shown == [t.task_id for t in failed[:3]] and f"... and {FAILED - 3} more" in out.stdout
    out = cli("status", paths.dir, "--state", "running,failed")
    assert all(t.task_id in out.stdout for t in failed + running) and tasks[0].task_id not in out.stdout
    detailed = cli("status", paths.dir, "--detailed").stdout
    assert all(t.task_id in detailed for t in tasks)
    assert detailed.index(failed[0].task_id) < detailed.index(running[0].task_id) < detailed.index(tasks[0].task_id)
    bad = cli("status", paths.dir, "--state", "finished")
    assert bad.returncode == 2 and "--state" in bad.stderr and "pending, queued, running, done, failed" in bad.stderr


def test_json_keeps_its_shape_and_gains_progress(big, cli):
    paths, tasks, failed, running = big
    data = json.loads(cli("status", paths.dir, "--json").stdout)
    assert set(data) == {"counts", "tasks", "warnings", "leftover_checkpoint_bytes"}
    assert data["leftover_checkpoint_bytes"] == 0
    assert data["counts"]["failed"] == FAILED and data["counts"]["running"] == RUNNING
    assert len(data["tasks"]) == len(tasks)
    by_id = {t["task_id"]: t for t in data["tasks"]}
    done = by_id[tasks[0].task_id]
    assert {"task_id", "state", "dir", "stage", "detail", "log", "epoch", "group"} <= set(done)
    assert done["state"] == "done" and done["host"] == "synthetic" and done["wall_s"] == 150.0
    assert done["epochs"] == tasks[0].epochs and 0 < done["val_acc"] < 1
    run = by_id[running[0].task_id]
    assert run["state"] == "running" and run["epoch"] == 3 and run["wall_s"] >= 3725 and run["host"]


def test_an_unreachable_scheduler_is_a_warning_and_the_disk_is_shown(tmp_path, monkeypatch, capsys):
    tasks = big_grid(40)
    paths = write_study(tmp_path / "s", tasks, records=2, finished=lambda t: t.stage == "pretrain")
    paths.backend("slurm").dir.mkdir(parents=True)
    append_jsonl(paths.backend("slurm").dir / "submissions.jsonl",
                 {"job_id": "77", "elements": [f"77_{i}" for i in range(len(tasks))],
                  "tasks": [t.task_id for t in tasks], "logs": ["x"] * len(tasks), "log": "x", "script": "s"})
    stubs = tmp_path / "bin"
    stubs.mkdir()
    squeue = stubs / "squeue"
    squeue.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller' >&2\nexit 1\n")
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stubs}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(scheduler, "RETRY_WAITS", (0.01, 0.01))
    code = hpcxfer_cli.main(["status", str(paths.dir)])
    out = capsys.readouterr()
    assert code == 0, out.err
    warnings = [ln for ln in out.err.splitlines() if ln.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: slurm could not be asked")
    assert "Unable to contact slurm controller" in warnings[0] and "(tried 3 times)" in warnings[0]
    assert "4 done" in out.out and f"{len(tasks) - 4} pending" in out.out
    code = hpcxfer_cli.main(["status", str(paths.dir), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["counts"]["done"] == 4 and len(data["warnings"]) == 1


def _counting_stub(folder: Path, fails: int, message: str) -> Path:
    """A command that fails `fails` times with `message`, then prints its argv."""
    stub = folder / "cmd"
    stub.write_text(f"""#!/bin/sh
n=$(cat {folder}/count 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {folder}/count
if [ $n -le {fails} ]; then echo '{message}' >&2; exit 1; fi
echo "$@"
""")
    stub.chmod(0o755)
    return stub


def calls(folder: Path) -> int:
    return int((folder / "count").read_text())


def test_scheduler_queries_are_retried_within_bounds(tmp_path, monkeypatch):
    monkeypatch.setattr(scheduler, "RETRY_WAITS", (0.01, 0.02, 0.03))
    for name, fails, message, want_calls, ok in (
            ("transient", 2, "Socket timed out on send/recv operation", 3, True),
            ("refused", 5, "Invalid job id specified", 1, False),
            ("down", 9, "pbs_iff: cannot connect to host", 4, False)):
        folder = tmp_path / name
        folder.mkdir()
        stub = _counting_stub(folder, fails, message)
        if ok:
            assert scheduler.run([str(stub), "-x"], "asking").strip() == "-x"
        else:
            with pytest.raises(SchedulerError) as e:
                scheduler.run([str(stub)], "asking")
            assert message in str(e.value)
        assert calls(folder) == want_calls, name
    # A submission is never tried twice: it may have been accepted before its answer was lost.
    folder = tmp_path / "submit"
    folder.mkdir()
    with pytest.raises(SchedulerError):
        scheduler.run([str(_counting_stub(folder, 2, "Socket timed out"))], "submitting", retry=False)
    assert calls(folder) == 1
    # Every try of one call together stops at TOTAL_S.
    monkeypatch.setattr(scheduler, "RETRY_WAITS", (0.5, 0.5, 0.5))
    monkeypatch.setattr(scheduler, "TOTAL_S", 0.8)
    folder = tmp_path / "bounded"
    folder.mkdir()
    t0 = time.monotonic()
    with pytest.raises(SchedulerError, match="tried 2 times"):
        scheduler.run([str(_counting_stub(folder, 9, "Connection refused"))], "asking")
    assert time.monotonic() - t0 < 2.0


def test_squeue_asks_for_the_users_jobs_only(tmp_path, monkeypatch):
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "squeue").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/argv\necho '5|N/A|RUNNING|None|5'\n")
    (stubs / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stubs}{os.pathsep}{os.environ['PATH']}")
    active = SlurmBackend()._active(StudyPaths(tmp_path), {"5"})
    argv = (tmp_path / "argv").read_text().split()
    assert argv[argv.index("-u") + 1] == getpass.getuser()
    assert active == {"5": Held(Hold.RUNNING, "5", "RUNNING", "slurm 5 RUNNING")}


def test_wait_shows_each_running_task_at_its_epoch(big):
    paths, tasks, failed, running = big
    snap, _ = Tracker(paths, running + failed[:2]).poll()
    text = "\n".join(running_lines(snap))
    assert f"{running[0].task_id}  epoch 3/40" in text and failed[0].task_id not in text
    assert f"... and {RUNNING - 3} more running" in text  # three shown, the others counted


@pytest.mark.parametrize("where", ["terminal", "pipe"])
def test_status_of_1000_tasks_at_80_columns_keeps_every_count_and_id_whole(big, where):
    paths, tasks, failed, running = big
    argv = [sys.executable, "-m", "hpcxfer", "status", str(paths.dir)]
    if where == "terminal":
        text = on_terminal(argv, rows=60, cols=80).replace("\r\n", "\n")
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # colours
    else:
        text = subprocess.run(argv, capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "80"}).stdout
    lines = text.splitlines()
    assert all(len(ln) <= 80 for ln in lines) and "…" not in text, [ln for ln in lines if len(ln) > 80]
    header = next(ln for ln in lines if ln.split()[:3] == ["stage", "/", "sub-grid"])
    assert header.split()[3:] == ["tasks", "pend", "queue", "run", "done", "fail", "progress"]
    finetune = next(ln.split() for ln in lines if ln.split()[:1] == ["finetune"])
    assert finetune[:7] == ["finetune", "980", "59", "0", "5", "896", "20"]
    words = set(text.split())
    assert {t.task_id for t in failed[:3] + running} <= words  # ids whole in the overview
    if where == "pipe":
        assert {t.task_id for t in tasks} <= words  # and every id of the task rows
