"""Kill fuzz: `tune --wait` SIGKILLed at random moments, and right as a rung's decision
appears (inside or just after the decide/apply window), then run again until it ends: the
winners and the finalists' results are those of an uninterrupted search.

The kills happen in a PID namespace of their own (`unshare -fp --mount-proc`), run by this
file as its pid 1 (`python tests/test_tune_kill.py STUDY_GRID SEED`): it starts each `tune`
and kills every other process of the namespace at once (kill(-1) from pid 1: the tune, its
runner, its workers), so no signal leaves the namespace, and the processes' locks and run
files are judged in the namespace they were taken in.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: What a `tune` attempt waits for before the kill: a decision file's name, or seconds.
KILLS = ("rung-0.json", "delay", "rung-1.json", "delay")
METRICS = ("val_acc", "val_loss", "train_acc", "train_loss", "epochs")


def _reap() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                return
        except ChildProcessError:
            return


def _window(study: str, kill: str) -> str:
    """Where a kill at a decision landed: how many of its pruned members had no pruned.json
    yet (inside the decide/apply window) or all had (just after it)."""
    if kill == "delay" or not Path(study, "tune", kill).exists():
        return ""
    rung = json.loads(Path(study, "tune", kill).read_text())
    pruned = [t for s in rung["sizes"]["10"] if not s["kept"] for t in s["tasks"]]
    missing = sum(not Path(study, "tasks", t, "pruned.json").exists() for t in pruned)
    return f"; {missing} of {len(pruned)} pruned.json not yet written"


def _driver(grid: str, study: str, seed: int) -> int:
    """pid 1 of the namespace: each kill in KILLS, then a last `tune --wait` to its end."""
    assert os.getpid() == 1, "run me as pid 1 of a namespace of my own: unshare -fp --mount-proc"
    rng = random.Random(seed)
    tune = [sys.executable, "-m", "hpcxfer", "tune", grid, "--backend", "local", "--wait"]
    log = open(Path(study).parent / "fuzz.log", "ab")  # noqa: SIM115 - open for the driver's life
    for kill in KILLS:
        proc = subprocess.Popen(tune, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        trigger = Path(study, "tune", kill)
        delay = rng.uniform(2.0, 12.0)  # drawn for every kill, so a seed gives the same moments
        start = time.monotonic()
        by_time = kill == "delay" or trigger.exists()  # a decision made before: a random moment instead
        while proc.poll() is None and not (time.monotonic() - start > delay if by_time else trigger.exists()):
            time.sleep(0.002)
        try:
            os.kill(-1, signal.SIGKILL)  # every process of the namespace but this one
        except ProcessLookupError:
            pass  # nothing left to kill: the search ended before this moment
        proc.wait()
        _reap()
        log.write(f"--- killed ({kill}) after {time.monotonic() - start:.2f} s{_window(study, kill)}\n".encode())
        log.flush()
    last = subprocess.run(tune, stdout=log, stderr=subprocess.STDOUT, check=False)
    return last.returncode


def decisions(study: Path) -> list[list[tuple[str, bool, float | None]]]:
    """Each rung's standings: candidate, kept, its mean at the rung."""
    return [[(s["candidate"], s["kept"], s["mean"]) for s in json.loads(p.read_text())["sizes"]["10"]]
            for p in sorted((study / "tune").glob("rung-*.json"))]


@pytest.mark.slow
def test_killed_searches_end_as_an_uninterrupted_one(write_grid, cli, tmp_path):
    from conftest import prepare_study
    from test_tune_promote import SEARCH

    from hpcxfer.layout import StudyPaths

    # The uninterrupted search: `tune` without --wait returns at once, and the local
    # backend's detached driver runs every rung to the end.
    grid = write_grid(SEARCH)
    started = time.monotonic()
    ref = cli("tune", grid, "--backend", "local", timeout=300)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    assert time.monotonic() - started < 60 and "local driver" in ref.stdout, ref.stdout
    ref_paths = StudyPaths.of(tmp_path / "runs", "tiny")
    driver = json.loads(ref_paths.driver.read_text())["driver"]
    end = time.monotonic() + 900
    while Path(f"/proc/{driver['pid']}").exists() and time.monotonic() < end:
        time.sleep(1)
    log = (ref_paths.promotion_dir / "driver.log").read_text()
    assert "search ended: 1 finalists, 0 not finished" in log, log[-3000:]
    assert all(json.loads(p.read_text())["decided_by"]["by"] == "local driver"
               for p in ref_paths.tune_dir.glob("rung-*.json"))
    # The killed search in a study of its own, from the same pre-trained model (its
    # pre-training is not what this test is about, and costs the most).
    fuzz_grid = write_grid({**SEARCH, "study": "fuzz"}, name="fuzz.yaml")
    paths = prepare_study(fuzz_grid)
    for pre in ref_paths.tasks_dir.glob("pt-*"):
        shutil.copytree(pre, paths.tasks_dir / pre.name, dirs_exist_ok=True)
    seed = int(os.environ.get("HPCXFER_FUZZ_SEED", "22"))
    out = subprocess.run(["unshare", "-fp", "--mount-proc", "--kill-child=SIGKILL", sys.executable, __file__,
                          str(fuzz_grid), str(paths.dir), str(seed)], capture_output=True, text=True, timeout=1200,
                         check=False)
    log = (tmp_path / "runs" / "fuzz.log").read_text()
    assert out.returncode == 0, out.stdout + out.stderr + log[-3000:]
    assert log.count("--- killed") == len(KILLS), log[-3000:]
    print("".join(line + "\n" for line in log.splitlines() if line.startswith("--- killed")))
    # The same decisions (winners, survivors and the means they rest on) and finalists' results.
    assert decisions(paths.dir) == decisions(ref_paths.dir)
    rungs = [json.loads(p.read_text()) for p in sorted(paths.tune_dir.glob("rung-*.json"))]
    finalists = [t for s in rungs[-1]["sizes"]["10"] if s["kept"] for t in s["tasks"]]
    for t in finalists:
        ours, theirs = (json.loads(p.task(t).result.read_text()) for p in (paths, ref_paths))
        assert {k: ours[k] for k in METRICS} == {k: theirs[k] for k in METRICS}, t
    # Nothing half-applied: every pruned member has pruned.json and no stop request.
    for rung in rungs:
        for s in rung["sizes"]["10"]:
            for t in s["tasks"]:
                tp = paths.task(t)
                if not s["kept"]:
                    assert tp.pruned.is_file() and not tp.rung.exists() and not tp.failed.exists(), t
    assert not any(paths.task(t).rung.exists() for t in finalists)


if __name__ == "__main__":
    raise SystemExit(_driver(sys.argv[1], sys.argv[2], int(sys.argv[3])))
