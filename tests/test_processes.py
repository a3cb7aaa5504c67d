"""Processes named by records, and the locks: `cancel` signals only a live runner it can
identify (never pid -1, 0, 1, a group, a reused pid), damaged run files are skipped, one
worker trains a task at a time, stale locks are taken over, and one `submit` of a study
decides at a time.

Every test that could send a signal (each `cancel`, each detached runner) runs in a pid
namespace of its own (tests/procs_driver.py under `unshare -fp --mount-proc`): a wrong
signal reaches nothing outside it, and the namespace dies with the driver.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import pbs_standin

from hpcxfer.fileio import iter_jsonl
from hpcxfer.grid import expand, load_grid
from hpcxfer.layout import StudyPaths
from hpcxfer.locks import STALE_S, SUBMIT_WAIT_S, Lock, LockHeld, inspect
from hpcxfer.procs import ProcessId
from hpcxfer.states import Held, Hold
from hpcxfer.study import study_paths, study_states, task_state, write_study
from hpcxfer.worker import EXIT_BUSY

HERE = Path(__file__).parent
DRIVER = HERE / "procs_driver.py"
HOST = socket.gethostname()
UNSHARE = shutil.which("unshare")


@functools.cache
def can_unshare() -> bool:
    if not UNSHARE:
        return False
    try:
        return subprocess.run([UNSHARE, "-fp", "--mount-proc", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


NO_NAMESPACE = ("`unshare -fp --mount-proc` is unavailable (needs root): tests that send signals run only in a "
                "pid namespace of their own")


def needs_namespace(test):
    """Run `test` where a pid namespace can be made; skip it where none can, except under
    CI (CI=true), where a test that silently did not run would hide what it guards."""
    if can_unshare():
        return test
    if os.environ.get("CI") != "true":
        return pytest.mark.skip(reason=NO_NAMESPACE)(test)

    @functools.wraps(test)
    def fail(*args, **kwargs):
        pytest.fail(f"{NO_NAMESPACE}; under CI this is a failure, not a skip")

    return fail


def in_namespace(*args: str, timeout: float = 180) -> dict:
    out = subprocess.run([UNSHARE, "-fp", "--kill-child", "--mount-proc", sys.executable, str(DRIVER), *args],
                         capture_output=True, text=True, timeout=timeout, start_new_session=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def make_study(write_grid, overrides: dict | None = None) -> tuple[Path, StudyPaths, list]:
    grid_path = write_grid(overrides)
    grid = load_grid(grid_path)
    tasks = expand(grid)
    paths = study_paths(grid)
    write_study(paths, grid, tasks)
    return grid_path, paths, tasks


def write_lock(path: Path, record, age_s: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(record if isinstance(record, bytes) else json.dumps(record).encode())
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))


def dead_process() -> ProcessId:
    """The identity a process of this host had: it has exited and been reaped."""
    proc = subprocess.Popen(["sleep", "30"])
    pid = ProcessId.of(proc.pid)
    proc.kill()
    proc.wait()
    return pid


def elsewhere() -> dict:
    return {**dataclasses.replace(ProcessId.current(), host=HOST + "-elsewhere").to_dict(), "job_id": "pbs:42"}


# ------------------------------------------------------------------ identities
@pytest.mark.parametrize("record", [
    None, [], "x", {"host": HOST}, {"host": HOST, "pid": -1}, {"host": HOST, "pid": 0},
    {"host": HOST, "pid": 1}, {"host": HOST, "pid": "abc"}, {"host": HOST, "pid": True},
    {"host": HOST, "pid": [5]}, {"host": HOST, "pid": 5.0}, {"pid": 5}, {"host": 7, "pid": 5}],
    ids=repr)
def test_a_record_that_names_no_process_reads_as_none(record):
    assert ProcessId.from_dict(record) is None


def test_a_reused_pid_is_not_the_process_a_record_names():
    me = ProcessId.current()
    assert me.start is not None and me.alive() is True
    assert ProcessId.from_dict(json.loads(json.dumps(me.to_dict()))) == me
    reused = dataclasses.replace(me, start=me.start + 1)  # our pid, another process's start
    assert reused.alive() is False
    assert not reused.signal(0) and not reused.signal_group(0)  # signal 0: would send nothing anyway
    assert dataclasses.replace(me, boot="an-earlier-boot").alive() is False
    assert dataclasses.replace(me, host="elsewhere").alive() is None  # cannot tell from here
    assert dataclasses.replace(me, pidns="pid:[1]").alive() is None  # a container's pid 42 is not ours
    assert dead_process().alive() is False
    assert dataclasses.replace(me, start=None).alive() is True  # an old record: the pid exists


# ------------------------------------------------------------------ cancel
@needs_namespace
def test_cancel_signals_only_a_live_runner_it_can_identify(write_grid):
    _, paths, tasks = make_study(write_grid)
    report = in_namespace("cancel", str(paths.dir))
    before = report["before"]
    everyone = set(report["sleeper_pids"])

    minus_one = report["stages"]["pid -1"]
    assert minus_one["rc"] == 0 and "Traceback" not in minus_one["stderr"], minus_one["stderr"]
    assert "nothing queued to cancel" in minus_one["stdout"]
    assert all(minus_one["alive"].values()), minus_one["alive"]
    gone = {pid: cmd for pid, cmd in before.items() if minus_one["processes"].get(pid) != cmd}
    assert not gone, f"processes signalled away by the cancel: {gone}"

    bad = report["stages"]["bad run files"]
    assert bad["rc"] == 0 and "Traceback" not in bad["stderr"], bad["stderr"]
    assert "nothing queued to cancel" in bad["stdout"]
    assert all(bad["alive"].values()), bad["alive"]  # pid 0, 1, -pgid, a reused pid, another host's pid
    assert not {pid: cmd for pid, cmd in before.items() if bad["processes"].get(pid) != cmd}

    planted = report["stages"]["planted run files"]
    assert planted["rc"] == 0 and "nothing queued to cancel" in planted["stdout"], planted
    assert all(planted["alive"].values()), planted["alive"]  # the named runner was not signalled
    for name in ("planted", "forged"):
        assert f"runs/{name}.json: skipped, not written by this study's runner" in planted["stderr"], planted
    status = report["planted_status"]
    assert status["rc"] == 0, status["stderr"]
    assert json.loads(status["stdout"])["counts"]["queued"] == 0  # not held forever
    assert "runs/planted.json: skipped" in status["stderr"]

    real = report["stages"]["a real runner"]
    assert f"cancelled local:{report['real_pid']}" in real["stdout"], real
    assert real["alive"] == {name: name != "own session" for name in everyone}


def _damage(paths: StudyPaths, tasks) -> None:
    runs = paths.backend("local").dir / "runs"
    runs.mkdir(parents=True)
    ids = [t.task_id for t in tasks]
    record = {"run_id": "x", "host": HOST, "tasks": ids, "max_parallel": 1, "threads": 1}
    for name, content in {"minus-one": {**record, "pid": -1}, "abc": {**record, "pid": "abc"},
                          "list": [record], "pid-list": {**record, "pid": [os.getpid()]},
                          "tasks": {**record, **ProcessId.current().to_dict(), "tasks": {"a": 1}},
                          "bytes": b"\x00\xff\xfe garbage \x80"}.items():
        write_lock(runs / f"{name}.json", content)
    for task, content in zip(ids, [{"host": HOST, "pid": "abc"}, [1, 2], b"\xff\x00 garbage", {"pid": -1}]):
        write_lock(paths.task(task).running, content, age_s=60)


def test_status_and_submit_skip_damaged_run_files(write_grid, cli):
    grid_path, paths, tasks = make_study(write_grid)
    _damage(paths, tasks)
    out = cli("status", paths.dir, "--json")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    counts = json.loads(out.stdout)["counts"]
    assert counts["pending"] == len(tasks), counts  # not queued (forever), not running
    for name in ("minus-one", "abc", "list", "pid-list", "tasks", "bytes"):
        assert out.stderr.count(f"runs/{name}.json: skipped") == 1, out.stderr  # warned, once
    out = cli("status", paths.dir)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    out = cli("submit", grid_path, "--backend", "local", "--dry-run")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert f"submitting {len(tasks)} to local" in out.stdout


# ------------------------------------------------------------------ the task lock
def test_running_json_is_believed_only_while_its_owner_lives(write_grid):
    _, paths, tasks = make_study(write_grid)
    task = tasks[0]
    tp = paths.task(task.task_id)

    def state(view=None):
        return task_state(paths, task, {task.task_id: view} if view else {})

    write_lock(tp.running, ProcessId.current().to_dict())
    assert state().state == "running"
    write_lock(tp.running, {**ProcessId.current().to_dict(), "start": ProcessId.current().start + 1})
    st = state()
    assert st.state == "pending" and "is gone" in st.detail  # a reused pid
    write_lock(tp.running, dead_process().to_dict())
    assert state().state == "pending"

    write_lock(tp.running, elsewhere(), age_s=60)  # another host, heartbeat a minute old
    assert state().state == "running"
    write_lock(tp.running, elsewhere(), age_s=STALE_S + 60)  # the OOM killer, a failed node
    st = state()
    assert st.state == "pending" and f"{HOST}-elsewhere" in st.detail and "heartbeat" in st.detail
    assert state(Held(Hold.QUEUED, detail="requeued")).state == "queued"
    assert state(Held(Hold.RUNNING)).state == "running"  # the scheduler's word


def _worker(paths: StudyPaths, index: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpcxfer", "run-task", str(paths.dir), str(index)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _epochs(tp) -> list[int]:
    return [r["epoch"] for r in iter_jsonl(tp.metrics)]


@pytest.mark.slow  # trains
def test_two_workers_of_one_task_train_it_once(write_grid):
    _, paths, tasks = make_study(write_grid, {"finetune": {"epochs": 2}})
    index = next(i for i, t in enumerate(tasks) if not t.depends_on)
    tp = paths.task(tasks[index].task_id)
    first, second = _worker(paths, index), _worker(paths, index)
    deadline = time.monotonic() + 120
    while first.poll() is None and second.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    refused, winner = (first, second) if first.poll() is not None else (second, first)
    assert refused.returncode == EXIT_BUSY, refused.communicate()
    assert winner.poll() is None  # refused at once, while the other trains
    err = refused.stderr.read()
    assert len(err.strip().splitlines()) == 1 and "is being run by pid" in err and str(winner.pid) in err, err
    assert winner.wait(timeout=300) == 0, winner.communicate()
    assert _epochs(tp) == [1, 2]  # each epoch once
    assert tp.result.is_file() and not tp.failed.exists() and not tp.running.exists()


@pytest.mark.slow  # trains
def test_a_stale_task_lock_is_taken_over_and_a_live_one_is_not(write_grid):
    _, paths, tasks = make_study(write_grid, {"pretrain": {"epochs": 1}, "finetune": {"epochs": 1}})
    first = next(i for i, t in enumerate(tasks) if not t.depends_on)  # the pre-training
    then = next(i for i, t in enumerate(tasks) if t.depends_on == (tasks[first].task_id,))
    free = [first, then]
    a, b = (paths.task(tasks[i].task_id) for i in free)

    # Another host, heartbeat fresh: refused at once, and nothing of the task touched.
    write_lock(a.running, elsewhere(), age_s=30)
    before = a.running.read_bytes()
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "hpcxfer", "run-task", str(paths.dir), str(free[0])],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_BUSY and f"pid {os.getpid()} on host {HOST}-elsewhere (job pbs:42)" in proc.stderr
    assert time.monotonic() - t0 < 30
    assert a.running.read_bytes() == before
    assert sorted(p.name for p in a.dir.iterdir()) == ["running.json", "task.json"]  # no log, no failed.json

    # Its heartbeat stopped long ago (a failed node): taken over, the task runs.
    write_lock(a.running, elsewhere(), age_s=STALE_S + 60)
    assert _worker(paths, free[0]).wait(timeout=300) == 0
    assert a.result.is_file() and not a.running.exists()

    # A dead process of this host (SIGKILL, the OOM killer): taken over at once.
    write_lock(b.running, {**dead_process().to_dict(), "job_id": "local:1"})
    assert _worker(paths, free[1]).wait(timeout=300) == 0
    assert b.result.is_file() and not b.running.exists() and _epochs(b) == [1]


def test_one_of_many_takes_over_a_stale_lock(tmp_path):
    """Processes that find one stale lock at the same moment: exactly one ends up with it.
    The moment is certain, however loaded the machine: each process, once it has found the
    lock stale, waits until all have (a barrier in `locks.inspect`), so none breaks it before
    every other has decided to; a process that never gets there says so and fails the test."""
    n = 6
    lock, ready = tmp_path / "running.json", tmp_path / "ready"
    ready.mkdir()
    write_lock(lock, dead_process().to_dict())
    code = ("import os, sys, time; from pathlib import Path; from hpcxfer import locks\n"
            "real, seen = locks.inspect, []\n"
            "def inspect(*args):\n"
            "    holder = real(*args)\n"
            "    if not seen and holder is not None and not holder.live:\n"
            "        seen.append(1)\n"
            f"        (Path({str(ready)!r}) / str(os.getpid())).touch()\n"
            "        end = time.monotonic() + 120\n"
            f"        while len(os.listdir({str(ready)!r})) < {n}:\n"
            "            if time.monotonic() > end:\n"
            "                print('no overlap'); sys.exit()\n"
            "            time.sleep(0.005)\n"
            "    return holder\n"
            "locks.inspect = inspect\n"
            f"lock = locks.Lock(Path({str(lock)!r}))\n"
            "try:\n    lock.acquire()\nexcept locks.LockHeld:\n    print('refused' if seen else 'not stale'); sys.exit()\n"
            "print('won' if seen else 'not stale'); time.sleep(2); lock.release()\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(n)]
    outs = sorted(p.communicate(timeout=180)[0].strip() for p in procs)
    assert outs == ["refused"] * (n - 1) + ["won"], outs
    assert len(os.listdir(ready)) == n  # every one of them found it stale before any broke it
    assert not lock.exists() and not list(tmp_path.glob(".*"))  # nothing left behind


def test_a_missing_namespace_fails_under_ci_and_is_skipped_elsewhere(monkeypatch):
    def guarded(write_grid):
        return write_grid

    monkeypatch.setattr(sys.modules[__name__], "can_unshare", lambda: False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="under CI this is a failure"):
        needs_namespace(guarded)(None)
    monkeypatch.setenv("CI", "")
    assert [m.name for m in needs_namespace(guarded).pytestmark] == ["skip"]


def test_a_held_lock_beats_and_is_removed_on_release(tmp_path):
    path = tmp_path / "x.lock"
    lock = Lock(path, {"job_id": "j"}, heartbeat_s=0.05).acquire()
    old = time.time() - 100
    os.utime(path, (old, old))
    time.sleep(0.3)
    assert inspect(path).age_s < 5  # touched since
    with pytest.raises(LockHeld, match=f"pid {os.getpid()} on host {HOST} \\(job j\\)"):
        Lock(path).acquire()
    lock.release()
    assert not path.exists()
    path.write_text("{}")  # someone else's now: a late release leaves it alone
    lock.release()
    assert path.exists()


# ------------------------------------------------------------------ the study lock
@pytest.mark.slow  # waits out the study lock
def test_a_submit_waits_for_the_study_lock_then_gives_up(write_grid, cli, tmp_path):
    # A real submit (a dry run takes no lock: it writes nothing), to PBS stand-ins that only record.
    env = pbs_standin.install(tmp_path)
    grid_path, paths, tasks = make_study(write_grid)
    held = Lock(paths.submit_lock).acquire()
    t0 = time.monotonic()
    out = cli("submit", grid_path, "--backend", "pbs", env=env)
    waited = time.monotonic() - t0
    assert out.returncode == 2 and waited >= SUBMIT_WAIT_S, (out.returncode, waited)
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert f"another submit or cancel of this study is under way (pid {os.getpid()} on host {HOST}" in out.stderr
    assert "submitting" not in out.stdout
    assert json.loads(paths.submit_lock.read_text())["token"] == held.token  # left alone

    threading.Timer(1.0, held.release).start()  # the other submit finishes in time
    t0 = time.monotonic()
    out = cli("submit", grid_path, "--backend", "pbs", env=env)
    assert out.returncode == 0 and f"submitting {len(tasks)} to pbs" in out.stdout, out.stderr
    assert time.monotonic() - t0 >= 1.0
    assert not paths.submit_lock.exists()  # not left behind

    write_lock(paths.submit_lock, dead_process().to_dict())  # a submit killed mid-way
    out = cli("submit", grid_path, "--backend", "pbs", env=env)
    assert out.returncode == 0 and "took over a stale lock" in out.stderr, out.stderr
    assert not paths.submit_lock.exists()


@needs_namespace
@pytest.mark.slow  # several seconds
def test_two_submits_at_once_submit_each_task_once(write_grid):
    grid_path = write_grid({"pretrain": {"epochs": 30}, "local": {"max_parallel": 1}, "runtime": {"eval_every": 30}})
    tasks = expand(load_grid(grid_path))
    report = in_namespace("submits", str(grid_path))
    for sub in report["submits"]:
        assert sub["rc"] == 0 and "Traceback" not in sub["stderr"], sub
    submitted = [t for run in report["run_files"] for t in run["tasks"]]
    assert sorted(submitted) == sorted(t.task_id for t in tasks)  # each task once, across both
    said = sorted(int(s["stdout"].split("; submitting ")[1].split()[0]) for s in report["submits"])
    assert said == [0, len(tasks)], said
    assert not report["lock_left"]
    for run in report["run_files"]:
        assert ProcessId.from_dict(run) is not None and run["group"] is True  # the runner's real pid


@needs_namespace
@pytest.mark.slow  # a runner started and cancelled
def test_a_cancel_during_a_submit_waits_for_it_and_cancels_what_it_queued(write_grid):
    grid_path = write_grid({"pretrain": {"epochs": 30}, "local": {"max_parallel": 1}, "runtime": {"eval_every": 30}})
    tasks = expand(load_grid(grid_path))
    report = in_namespace("cancel_during_submit", str(grid_path))
    cancel = report["cancel"]
    assert cancel["rc"] == 0 and "Traceback" not in cancel["stderr"], cancel
    assert f"cancelled local:{report['runner']}" in cancel["stdout"], cancel  # not "nothing queued"
    assert report["runner_stopped"], "the runner kept running after the cancel"
    counts = report["counts"]
    assert counts["done"] < len(tasks) and counts["queued"] == counts["running"] == 0, counts


def test_a_cancel_gives_up_on_a_submit_that_never_finishes(write_grid):
    from hpcxfer.service import cancel

    _, paths, _ = make_study(write_grid)
    held = Lock(paths.submit_lock, heartbeat_s=0).acquire()
    t0 = time.monotonic()
    with pytest.raises(LockHeld) as err:
        cancel(str(paths.dir), wait_s=0.5)
    assert time.monotonic() - t0 >= 0.5
    message = str(err.value)
    assert f"another submit or cancel of this study is under way (pid {os.getpid()} on host {HOST}" in message
    assert "cancel again once it is done" in message and "\n" not in message
    held.release()
    assert cancel(str(paths.dir), wait_s=0.5) == [] and not paths.submit_lock.exists()


def test_states_of_a_study_with_a_lock_of_each_kind(write_grid):
    """study_states never raises on what running.json files hold."""
    _, paths, tasks = make_study(write_grid)
    _damage(paths, tasks)
    states = study_states(paths)
    assert {s.state for s in states} == {"pending"}
