"""SLURM through submitit: one array per stage and chunk, fine-tuning after its
pre-training (`afterok`), arrays split to the cluster's MaxArraySize and renumbered from 0.

Each array element runs `ArrayTask`: it reads its task id from the chunk's task list and
runs the worker as a child process (`hpcxfer run-task`), so the job starts from the task
directory rather than from pickled training state. submitit runs it under `srun` and asks
for USR2 `signal_delay` seconds before the time limit; the signal reaches every process
of the step, so the worker checkpoints while submitit's handler waits for it
(`ArrayTask.checkpoint`) and then requeues the element.

SLURM expands `%` patterns (`%j`, `%x`, `%u`...) in `--output`/`--error`, so in the
`#SBATCH` lines the study directory's own `%` are doubled (`log_patterns`) while submitit's
`%j` stays a pattern. srun's own handling of `%%` is not reliable (slurm 22.05 expands
the path twice once it holds `%t`), so srun writes to the batch step's files (`--output
all`: the same files submitit names, since each job runs one task). submitit itself
replaces `%j %t %A %a` anywhere in its folder's path, so a study directory holding one of
those is refused before anything is written (hpcxfer.grid.load.checked_root).
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from hpcxfer.backends.base import worker_command
from hpcxfer.backends.render import script_safe
from hpcxfer.backends.resources import Resources
from hpcxfer.backends.scheduler import SchedulerBackend, SchedulerError, run
from hpcxfer.grid.schema import Grid
from hpcxfer.layout import BackendPaths, StudyPaths
from hpcxfer.worker import EXIT_BUSY, EXIT_RESUME

log = logging.getLogger(__name__)

#: How long the USR2 handler waits for the worker to write its checkpoint and exit.
CHECKPOINT_WAIT_S = 60
#: SLURM's MaxArraySize when slurm.conf does not set it (what a dry run assumes).
DEFAULT_MAX_ARRAY_SIZE = 1001


class TaskFailed(RuntimeError):
    """The worker exited for a real error: the element ends FAILED and is not requeued."""


class ArrayTask(submitit.helpers.Checkpointable):
    """Element `index` of a chunk: runs the task on line index+1 of `list_file`."""

    def __init__(self, study_dir: str, list_file: str, index: int, max_requeues: int):
        self.study_dir, self.list_file, self.index, self.max_requeues = study_dir, list_file, index, max_requeues
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_proc"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _proc=None)

    def task_id(self) -> str:
        return Path(self.list_file).read_text().splitlines()[self.index].strip()

    def __call__(self) -> str:
        task_id = self.task_id()
        study = StudyPaths(Path(self.study_dir))
        env = submitit.JobEnvironment()
        cpus = os.environ.get("SLURM_CPUS_PER_TASK", "1")
        child_env = {**os.environ, "HPCXFER_JOB_ID": f"slurm:{env.job_id}", "HPCXFER_THREADS": cpus,
                     "OMP_NUM_THREADS": cpus}
        self._proc = subprocess.Popen(worker_command(study, task_id),
                                      env=child_env, stdin=subprocess.DEVNULL)
        code = self._proc.wait()
        if code == 0:
            return task_id
        if code == EXIT_BUSY:  # another live worker holds the task: not this element's failure
            return f"{task_id} run by another worker"
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)  # unset on the first run
        if code == EXIT_RESUME:
            # Checkpointed on a signal submitit does not requeue for. USR1 from a user
            # (the job still RUNNING): put the element back in the queue. scancel, or a
            # preemption or requeue SLURM is carrying out (the job no longer RUNNING): leave
            # it to SLURM, so that a cancel is never undone; the next submit resumes it.
            if restarts < self.max_requeues and job_state(env.job_id) == "RUNNING":
                subprocess.run(["scontrol", "requeue", env.job_id], check=False)
                return f"{task_id} requeued"
            return f"{task_id} checkpointed"
        raise TaskFailed(f"{task_id}: worker exited {code} (restarts {restarts}); see {study.task(task_id).log}")

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        # USR2 reached the worker too (same srun step): let it finish its checkpoint
        # before submitit requeues this element and exits.
        if self._proc is not None:
            try:
                self._proc.wait(timeout=CHECKPOINT_WAIT_S)
            except subprocess.TimeoutExpired:
                log.warning("worker did not exit %d s after the signal", CHECKPOINT_WAIT_S)
        return super().checkpoint(*args, **kwargs)


def job_state(job_id: str) -> str:
    """JobState of one job or array element as slurmctld sees it ("" when unknown)."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=False).stdout
    m = re.search(r"\bJobState=(\S+)", out)
    return m.group(1) if m else ""


def max_array_size(retry: bool = True) -> int:
    """MaxArraySize of the cluster (array indices go 0..MaxArraySize-1)."""
    out = run(["scontrol", "show", "config"], "reading MaxArraySize", retry=retry)
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else DEFAULT_MAX_ARRAY_SIZE


def slurm_escape(text: str) -> str:
    """`text` as a literal in a SLURM filename pattern: `%%` is one `%`."""
    return text.replace("%", "%%")


def log_patterns(backend: BackendPaths, array: bool) -> dict[str, str]:
    """sbatch's --output/--error for submitit's folder (`backend.submitit`/%j), as submitit
    writes them (task 0's log files) but with the folder's own `%` escaped: submitit leaves
    them as they are, to be expanded."""
    job = "%A_%a" if array else "%j"
    return {"output": backend.submitit_log(job, "out", slurm_escape),
            "error": backend.submitit_log(job, "err", slurm_escape)}


class _RenderOnly(submitit.SlurmExecutor):
    """An executor that only renders sbatch scripts: a dry run needs no srun on PATH."""

    @classmethod
    def affinity(cls) -> int:
        return 1


class SlurmBackend(SchedulerBackend):
    name = "slurm"

    def _chunk_size(self, grid: Grid, paths: StudyPaths, n: int, dry_run: bool = False) -> tuple[int, str | None]:
        if dry_run:  # asked once if SLURM answers; a dry run needs none
            try:
                return max_array_size(retry=False), None
            except SchedulerError as e:
                return DEFAULT_MAX_ARRAY_SIZE, (f"MaxArraySize not read ({e}): assumed {DEFAULT_MAX_ARRAY_SIZE}, "
                                                "SLURM's default")
        return max_array_size(), None

    def executor(self, paths: StudyPaths, grid: Grid, after: list[str], array: bool = False,
                 dry_run: bool = False) -> submitit.SlurmExecutor:
        res, spec = Resources.of(grid), grid.slurm
        backend = paths.backend(self.name)
        script_safe(backend.submitit)  # the study directory and the interpreter reach the script as text
        script_safe(sys.executable)
        try:
            ex = (_RenderOnly if dry_run else submitit.SlurmExecutor)(folder=backend.submitit_jobs,
                                                                      max_num_timeout=spec.max_requeues)
        except RuntimeError as e:  # submitit finds no srun
            raise SchedulerError(f"submitting to SLURM: {e}") from None
        logs = log_patterns(backend, array)
        # additional_parameters replace submitit's own #SBATCH --output/--error; srun takes
        # the last of repeated options, so srun_args replace the patterns of its srun line.
        params = {"job_name": f"hpcxfer-{paths.name}", "time": res.minutes, "cpus_per_task": res.cpus,
                  "mem": f"{res.mem_mb}M", "signal_delay_s": spec.signal_delay,
                  "additional_parameters": {"kill_on_invalid_dep": "yes", **logs},
                  "srun_args": ["--output", "all", "--error", "all"]}
        if res.gpus:
            params["gpus_per_task"] = res.gpus
        if spec.array_parallelism:
            params["array_parallelism"] = spec.array_parallelism
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(spec, key):
                params[key] = getattr(spec, key)
        if after:
            params["dependency"] = "afterok:" + ":".join(after)
        for value in [*params.values(), *params["additional_parameters"].values(), *params["srun_args"]]:
            script_safe(value)
        ex.update_parameters(**params)
        return ex

    def _submit_job(self, paths, grid, stage, task_ids, list_file, after, dry_run) -> dict:
        ex = self.executor(paths, grid, after, array=len(task_ids) > 1, dry_run=dry_run)
        if dry_run:
            params = dict(ex.parameters)
            if len(task_ids) > 1:
                params["map_count"] = len(task_ids)
            script = paths.backend(self.name).job_script(list_file, ".sbatch")
            text = _make_sbatch_string(command=ex._submitit_command_str, folder=ex.folder, **params)
            return {"command": f"sbatch {shlex.quote(str(script))}", "script": str(script), "text": text}
        fns = [ArrayTask(str(paths.dir), str(list_file), i, grid.slurm.max_requeues) for i in range(len(task_ids))]
        try:
            jobs = ex.submit_array(fns)
        except (submitit.core.utils.FailedJobError, subprocess.SubprocessError, OSError) as e:
            raise SchedulerError(f"sbatch refused the {stage} array of {len(task_ids)} tasks: {e}") from e
        first = jobs[0]
        job_id = first.job_id.split("_")[0]
        script = str(first.paths.submission_file)
        return {"job_id": job_id, "elements": [j.job_id for j in jobs], "script": script,
                "logs": [str(j.paths.stderr) for j in jobs], "log": str(first.paths.stderr),
                "command": f"sbatch {script}"}

    def log_of(self, rec: dict, index: int) -> str:
        return rec["logs"][index]

    def _active(self, paths, job_ids) -> dict[str, tuple[str, str]]:
        # All of the user's jobs at once (no -j: squeue fails on the whole list if one id has
        # expired), not every user's.
        out = run(["squeue", "-h", "-r", "-t", "all", "-u", getpass.getuser(), "-o", "%F|%K|%T|%r|%i"],
                  "asking squeue")
        active = {}
        for line in out.splitlines():
            array_id, task, state, reason, _ = (line.split("|") + [""] * 5)[:5]
            if array_id not in job_ids:
                continue
            element = array_id if task in ("N/A", "") else f"{array_id}_{task}"
            active[element] = (state, "" if reason == "None" else reason)
        return active

    def _cancel(self, job_ids: list[str]) -> None:
        run(["scancel", *job_ids], "cancelling")


if __name__ == "__main__":  # pragma: no cover - `python -m hpcxfer.backends.slurm` prints MaxArraySize
    print(max_array_size(), file=sys.stdout)
