"""Runs inside its own pid namespace (`unshare -fp --mount-proc`, as pid 1) the scenarios of
tests/test_processes.py that send signals, so that a wrong signal can reach nothing outside;
when it exits the kernel kills whatever it leaves in the namespace. Prints one JSON object.

    procs_driver.py cancel STUDY_DIR    innocent sleepers, bad run files, `hpcxfer cancel`
    procs_driver.py submits GRID        two `hpcxfer submit --backend local` at once
    procs_driver.py cancel_during_submit GRID   `hpcxfer cancel` while a submit holds the lock
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from hpcxfer.layout import StudyPaths
from hpcxfer.procs import ProcessId
from hpcxfer.trust import TOKEN, seal, study_key

HOST = socket.gethostname()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcxfer", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})


def processes() -> dict[int, str]:
    """pid -> command line of every process in this namespace (what `ps -e` shows)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                pass
    return out


def living(sleepers: dict[str, subprocess.Popen]) -> dict[str, bool]:
    return {name: p.poll() is None for name, p in sleepers.items()}


def run_file(runs: Path, name: str, content) -> None:
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    (runs / f"{name}.json").write_bytes(data)


def cancel(study: Path) -> dict:
    """Sleepers that no run file may reach; run files naming pid -1, then every other bad
    pid, then one naming a real runner; `hpcxfer cancel` after each."""
    runs = study / "backends" / "local" / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    tasks = [json.loads(line)["task_id"] for line in (study / "tasks.jsonl").read_text().splitlines()]
    sleep = ["sleep", "600"]
    sleepers = {
        "same group": subprocess.Popen(sleep),  # in this process's group (and cancel's)
        "own session": subprocess.Popen(sleep, start_new_session=True),
        "reused pid": subprocess.Popen(sleep, start_new_session=True),
        "other host": subprocess.Popen(sleep, start_new_session=True),
    }
    while any(not processes().get(p.pid, "").startswith("sleep") for p in sleepers.values()):
        time.sleep(0.01)  # each has exec'd sleep
    record = {"run_id": "x", "host": HOST, "tasks": tasks, "max_parallel": 1, "threads": 1, "started": time.time()}
    report: dict = {"driver_pid": os.getpid(), "before": processes(), "stages": {}}

    def stage(name: str) -> None:
        out = cli("cancel", str(study))
        report["stages"][name] = {"rc": out.returncode, "stdout": out.stdout, "stderr": out.stderr,
                                  "alive": living(sleepers), "processes": processes()}

    # The bug as it was: a run file written before its runner started, pid -1.
    run_file(runs, "minus-one", {**record, "pid": -1})
    stage("pid -1")

    leader = sleepers["own session"].pid
    reused = ProcessId.of(sleepers["reused pid"].pid)
    elsewhere = ProcessId.of(sleepers["other host"].pid)
    for name, content in {
        "zero": {**record, "pid": 0}, "one": {**record, "pid": 1},
        "group": {**record, "pid": -leader}, "abc": {**record, "pid": "abc"},
        "true": {**record, "pid": True}, "list-pid": {**record, "pid": [leader]},
        "float": {**record, "pid": float(leader)}, "no-pid": record, "list": [record],
        "bytes": os.urandom(64), "tasks-dict": {**record, "pid": leader, "tasks": {"a": 1}},
        "reused": {**record, **reused.to_dict(), "start": (reused.start or 0) + 1, "group": True},
        "other-host": {**record, **elsewhere.to_dict(), "host": HOST + "-elsewhere", "group": True},
    }.items():
        run_file(runs, name, content)
    stage("bad run files")

    # Planted: a live process's pid and start time (what ps shows), no seal or a wrong one.
    for f in runs.glob("*.json"):
        f.unlink()
    real = {**record, **ProcessId.of(leader).to_dict(), "group": True}
    run_file(runs, "planted", real)
    run_file(runs, "forged", {**real, TOKEN: seal(b"a key of someone else's" * 2, real)})
    stage("planted run files")
    status = cli("status", str(study), "--json")
    report["planted_status"] = {"rc": status.returncode, "stdout": status.stdout, "stderr": status.stderr}

    for f in runs.glob("*.json"):
        f.unlink()
    key, _ = study_key(StudyPaths(study).runner_key, create=True)  # as the study's own runner
    run_file(runs, "real", {**real, TOKEN: seal(key, real)})
    report["real_pid"] = leader
    stage("a real runner")
    time.sleep(0.2)
    report["stages"]["a real runner"]["alive"] = living(sleepers)
    report["sleeper_pids"] = {name: p.pid for name, p in sleepers.items()}
    for p in sleepers.values():
        p.kill()
        p.wait()
    return report


def submits(grid: Path) -> dict:
    """Two submits of one study started at the same moment; the run files they leave."""
    procs = [subprocess.Popen([sys.executable, "-m", "hpcxfer", "submit", str(grid), "--backend", "local"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "COLUMNS": "200"}) for _ in range(2)]
    outs = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    study = grid.parent / "runs" / "tiny"
    runs = [json.loads(f.read_text()) for f in sorted((study / "backends/local/runs").glob("*.json"))]
    return {"submits": [{"rc": rc, "stdout": out, "stderr": err} for rc, out, err in outs],
            "run_files": runs, "lock_left": (study / ".submit.lock").exists()}


def submit_starting_a_cancel(grid: Path) -> dict:
    """A detached local submit, in this process, that starts `hpcxfer cancel` while it holds
    the study lock (after deciding, before starting its runner); what the cancel said."""
    from contextlib import nullcontext

    from hpcxfer import service

    study = grid.parent / "runs" / "tiny"
    box: dict = {}

    class Report:
        def estimate(self, line: str) -> None:
            pass

        def plan(self, plan) -> None:
            box["cancel"] = subprocess.Popen([sys.executable, "-m", "hpcxfer", "cancel", str(study)],
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(4.0)  # long enough for the cancel to start and find the lock held

        def submitted(self, sub) -> None:
            pass

        def watch(self, *args):
            return nullcontext(lambda counts: None)

    sub = service.submit(service.prepare(str(grid), "local", None), Report()).submission
    out, err = box["cancel"].communicate(timeout=120)
    return {"cancel": {"rc": box["cancel"].returncode, "stdout": out, "stderr": err},
            "runner": int(sub.job_ids[0].split(":")[1])}


def cancel_during_submit(grid: Path) -> dict:
    """`submit_starting_a_cancel` in a process of its own (pid 1, this driver, names no
    process a lock can trust); then whether its runner stopped, and the study's counts."""
    out = subprocess.run([sys.executable, __file__, "submit_starting_a_cancel", str(grid)], capture_output=True,
                         text=True, timeout=300)
    report = json.loads(out.stdout)
    runner = ProcessId.of(report["runner"])
    end = time.monotonic() + 60
    while time.monotonic() < end and runner.alive():
        time.sleep(0.1)
    report["runner_stopped"] = not runner.alive()
    report["counts"] = json.loads(cli("status", str(grid.parent / "runs" / "tiny"), "--json").stdout)["counts"]
    return report


if __name__ == "__main__" and sys.argv[1] == "submit_starting_a_cancel":
    print(json.dumps(submit_starting_a_cancel(Path(sys.argv[2]))))
elif __name__ == "__main__":
    assert os.getpid() == 1, "run me as pid 1 of a namespace of my own: unshare -fp --mount-proc"
    # A process group of our own too: kill(0) or kill(-pgid) reaches a group's members in
    # every namespace, so the group must not hold unshare or pytest.
    os.setsid()
    what, arg = sys.argv[1], Path(sys.argv[2])
    print(json.dumps({"cancel": cancel, "submits": submits, "cancel_during_submit": cancel_during_submit}[what](arg)))
