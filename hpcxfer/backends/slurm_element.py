"""One element of a SLURM array, as the job script's srun line runs it:
`python -P -m hpcxfer.backends.slurm_element STUDY LIST MAX_REQUEUES`.

It runs the worker on the unit of line SLURM_ARRAY_TASK_ID+1 of the chunk's task list, as
a child process, and exits 0 only when that unit is done: `afterok` releases a dependent
array on nothing else (docs/design.md §4, §8). `--signal=USR2@N` reaches every process of
the step: the worker checkpoints and exits 75, and while the job is still RUNNING the
element requeues itself (`scontrol requeue`, same id); so does a worker the signal killed
before its handlers were in place. A stop that comes with most of the job's time left is a
preemption and is requeued without counting; one near the time limit counts against
MAX_REQUEUES (`timed_out`). A cancel, or a requeue SLURM is carrying out itself (the job no
longer RUNNING), is left to SLURM, so a cancel is never undone; the next submit resumes the
unit. A real failure is never requeued.

The package does not import this module, so `-m` runs it without importing it twice.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from hpcxfer.backends.base import worker_command
from hpcxfer.errors import StudyError
from hpcxfer.fileio import append_jsonl, iter_jsonl, read_json
from hpcxfer.grid.groups import is_group_id
from hpcxfer.layout import StudyPaths
from hpcxfer.states import Exit
from hpcxfer.study import is_done, last_epoch, read_group
from hpcxfer.worker.signals import STOP_SIGNALS

#: A stop signal this close to the time limit (or later) is the time limit's: submitit's
#: `has_timed_out`, which guarantees a job min(80 %, all but 10 minutes) of its time.
LIMIT_SHARE = 0.8
LIMIT_MARGIN_S = 600


def job_info(job_id: str) -> dict[str, str]:
    """`scontrol show job` of one job or array element as key -> value ({} when unknown)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                         check=False).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def limit_seconds(text: str) -> int | None:
    """scontrol's TimeLimit (`[D-]HH:MM:SS`, `MM:SS`) in seconds; None for UNLIMITED or
    anything else it may say."""
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text)
    if not m:
        return None
    days, hours, mins, secs = (int(g or 0) for g in m.groups())
    return ((days * 24 + hours) * 60 + mins) * 60 + secs


def timed_out(info: dict[str, str], now: datetime | None = None) -> tuple[bool, float | None, int | None]:
    """(whether a stop now is the time limit's, seconds run since StartTime, the limit in
    seconds). A job whose start or limit cannot be read counts as timed out: the requeue
    budget then bounds it."""
    limit = limit_seconds(info.get("TimeLimit", ""))
    try:
        started = datetime.fromisoformat(info.get("StartTime", ""))
    except ValueError:
        return True, None, limit
    elapsed = ((now or datetime.now()) - started).total_seconds()  # slurmctld's local time, as ours
    if limit is None:
        return False, elapsed, None
    return elapsed >= min(LIMIT_SHARE * limit, limit - LIMIT_MARGIN_S), elapsed, limit


def unit_done(study: StudyPaths, unit_id: str) -> bool:
    """Whether the unit (a task, or a protocol group: its members) has valid results."""
    try:
        members = read_group(study, unit_id).members if is_group_id(unit_id) else (unit_id,)
    except StudyError:  # no group record, or a damaged one: not done
        return False
    return all(is_done(study.task(m)) for m in members)


def stopped_at_rung(study: StudyPaths, unit_id: str) -> bool:
    """Whether the unit checkpointed because a search asked it to stop at a rung (a member's
    `rung.json` names an epoch it has reached: a group stops at its members' earliest stop
    request, hpcxfer/worker/group.py): that is no preemption to requeue, the search's
    promotion job takes it on (hpcxfer/tune/)."""
    try:
        members = read_group(study, unit_id).members if is_group_id(unit_id) else (unit_id,)
    except (StudyError, OSError, ValueError):
        return False
    for m in members:
        tp = study.task(m)
        try:
            if (last_epoch(tp) or 0) >= int(read_json(tp.rung)["stop_after"]):
                return True
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return False


def element_id(environ: dict[str, str]) -> str:
    """This array element's id (`<array>_<index>`), or the job's id outside an array."""
    if environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ["SLURM_JOB_ID"]


def spent(study: StudyPaths, element: str) -> int:
    """Requeues of `element` at the time limit so far (preemptions are not counted)."""
    f = study.backend("slurm").requeues
    return sum(1 for r in iter_jsonl(f) if r.get("element") == element and r.get("why") == "time limit") \
        if f.exists() else 0


def requeue(study: StudyPaths, unit: str, element: str, max_requeues: int) -> bool:
    """Requeue the element after its worker checkpointed, if the job is RUNNING and, at the
    time limit, the budget allows; whether it asked SLURM to."""
    info = job_info(element)
    if info.get("JobState") != "RUNNING":  # cancelled, or SLURM requeues it itself
        print(f"{unit} checkpointed; {element} is {info.get('JobState') or 'unknown'}: "
              "the next submit resumes it", flush=True)
        return False
    at_limit, elapsed, limit = timed_out(info)
    done = spent(study, element)
    if at_limit and done >= max_requeues:
        print(f"{unit} checkpointed at the time limit; {element} was requeued {done} time(s), "
              f"max_requeues {max_requeues}: the next submit resumes it", flush=True)
        return False
    why = "time limit" if at_limit else "preemption"
    record = study.backend("slurm").requeues
    record.parent.mkdir(parents=True, exist_ok=True)
    append_jsonl(record, {"element": element, "unit": unit, "why": why, "elapsed_s": elapsed, "limit_s": limit,
                          "at": time.time()})
    counted = f"{done + 1} of {max_requeues}" if at_limit else "not counted"
    # Said first: the requeue ends this step at once.
    print(f"{unit} checkpointed; requeuing {element} ({why}, {counted})", flush=True)
    return subprocess.run(["scontrol", "requeue", element], check=False).returncode == 0


def run_element(study_dir: str, list_file: str, max_requeues: int, environ: dict[str, str] | None = None) -> int:
    """What one array element runs (under srun): the worker on its unit; the exit status
    the element ends with, 0 only when the unit is done."""
    environ = dict(os.environ if environ is None else environ)
    index = int(environ.get("SLURM_ARRAY_TASK_ID") or 0)
    unit = Path(list_file).read_text().splitlines()[index].strip()
    study, element = StudyPaths(Path(study_dir)), element_id(environ)
    # The signal reaches every process of the step: the worker decides, this one waits.
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda *_: None)
    proc = subprocess.Popen(worker_command(study, unit), env={**environ, "HPCXFER_JOB_ID": f"slurm:{element}"},
                            stdin=subprocess.DEVNULL)
    code = proc.wait()
    if unit_done(study, unit):  # a signal after the result was written counts as done too
        return Exit.DONE
    if code == Exit.BUSY:  # not this element's failure, but not done: its dependents must wait
        print(f"{unit} run by another worker; not done here, the next submit sees it", flush=True)
        return Exit.BUSY
    # Killed by a stop signal: it came before the worker's handlers were in place (while it
    # imported torch) and nothing was lost since the last checkpoint.
    if code == Exit.RESUME and stopped_at_rung(study, unit):
        print(f"{unit} stopped at its search's rung; not requeued", flush=True)
        return Exit.RESUME
    if code == Exit.RESUME or -code in STOP_SIGNALS:
        requeue(study, unit, element, max_requeues)
        return Exit.RESUME
    restarts = int(environ.get("SLURM_RESTART_COUNT") or 0)  # unset on the first run
    print(f"{unit}: worker exited {code} (restarts {restarts}) without a result; see {study.task(unit).log}",
          file=sys.stderr, flush=True)
    return Exit.FAILED


def main(argv: list[str]) -> int:
    study_dir, list_file, max_requeues = argv
    return run_element(study_dir, list_file, int(max_requeues))


if __name__ == "__main__":  # pragma: no cover - run by the job script
    sys.exit(main(sys.argv[1:]))
