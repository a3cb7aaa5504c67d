"""One element of a SLURM array, as the job script's srun line runs it:
`python -P -m hpcxfer.backends.slurm_element STUDY LIST MAX_REQUEUES`.

It runs the worker on the task of line SLURM_ARRAY_TASK_ID+1 of the chunk's task list, as
a child process. `--signal=USR2@N` reaches every process of the step: the worker checkpoints
and exits 75, and the element requeues itself (`scontrol requeue`, same id,
SLURM_RESTART_COUNT + 1) while the job is still RUNNING, at most MAX_REQUEUES times; so
does a worker the signal killed before its handlers were in place. A signal that comes
after the task's result was written ends the element COMPLETED. A
cancel, a preemption or a requeue that SLURM is carrying out (the job no longer RUNNING) is
left to SLURM, so a cancel is never undone; the next submit resumes the task. A real failure
ends the element FAILED, never requeued (docs/design.md §4).

The package does not import this module, so `-m` runs it without importing it twice.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from hpcxfer.backends.base import worker_command
from hpcxfer.grid.groups import is_group_id
from hpcxfer.layout import StudyPaths
from hpcxfer.errors import StudyError
from hpcxfer.study import is_done, read_group
from hpcxfer.worker import EXIT_BUSY, EXIT_RESUME
from hpcxfer.worker.signals import STOP_SIGNALS


def job_state(job_id: str) -> str:
    """JobState of one job or array element as slurmctld sees it ("" when unknown)."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=False).stdout
    m = re.search(r"\bJobState=(\S+)", out)
    return m.group(1) if m else ""


def unit_done(study: StudyPaths, unit_id: str) -> bool:
    """Whether the unit (a task, or a protocol group: its members) has valid results."""
    try:
        members = read_group(study, unit_id).members if is_group_id(unit_id) else (unit_id,)
    except StudyError:  # no group record, or a damaged one: not done
        return False
    return all(is_done(study.task(m)) for m in members)


def element_id(environ: dict[str, str]) -> str:
    """This array element's id (`<array>_<index>`), or the job's id outside an array."""
    if environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ["SLURM_JOB_ID"]


def run_element(study_dir: str, list_file: str, max_requeues: int, environ: dict[str, str] | None = None) -> int:
    """What one array element runs (under srun): the worker on its task; the exit status
    the element ends with. Requeues the element when the worker checkpointed on a signal
    (exit 75) while the job is RUNNING, at most `max_requeues` times."""
    environ = dict(os.environ if environ is None else environ)
    index = int(environ.get("SLURM_ARRAY_TASK_ID") or 0)
    task_id = Path(list_file).read_text().splitlines()[index].strip()
    study, element = StudyPaths(Path(study_dir)), element_id(environ)
    # The signal reaches every process of the step: the worker decides, this one waits.
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda *_: None)
    proc = subprocess.Popen(worker_command(study, task_id), env={**environ, "HPCXFER_JOB_ID": f"slurm:{element}"},
                            stdin=subprocess.DEVNULL)
    code = proc.wait()
    if code == 0 or unit_done(study, task_id):  # a signal after the result was written
        return 0
    if code == EXIT_BUSY:  # another live worker holds the task: not this element's failure
        print(f"{task_id} run by another worker", flush=True)
        return 0
    restarts = int(environ.get("SLURM_RESTART_COUNT") or 0)  # unset on the first run
    # Killed by a stop signal: it came before the worker's handlers were in place (while it
    # imported torch) and nothing was lost since the last checkpoint.
    if code == EXIT_RESUME or -code in STOP_SIGNALS:
        if restarts < max_requeues and job_state(element) == "RUNNING":
            # Said first: the requeue ends this step at once.
            print(f"{task_id} checkpointed; requeuing {element}", flush=True)
            subprocess.run(["scontrol", "requeue", element], check=False)
        else:
            print(f"{task_id} checkpointed; the next submit resumes it", flush=True)
        return 0
    print(f"{task_id}: worker exited {code} (restarts {restarts}); see {study.task(task_id).log}",
          file=sys.stderr, flush=True)
    return 1


def main(argv: list[str]) -> int:
    study_dir, list_file, max_requeues = argv
    return run_element(study_dir, list_file, int(max_requeues))


if __name__ == "__main__":  # pragma: no cover - run by the job script
    sys.exit(main(sys.argv[1:]))
