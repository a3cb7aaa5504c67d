"""SLURM: one array per stage and chunk, fine-tuning after its pre-training (`afterok`),
arrays split to the cluster's MaxArraySize and renumbered from 0 (docs/design.md §4).

The sbatch script is rendered from pbs_templates/slurm_array.sh.j2 as PBS's are, so a dry
run shows exactly what a submit hands to `sbatch`, and tests/golden/ holds it. Each element
runs hpcxfer/backends/slurm_element.py under `srun`, which makes it a job step:
`--signal=USR2@signal_delay` (without `B:`) reaches it and its worker, the worker
checkpoints and exits 75, and the element requeues itself while the job is RUNNING.

SLURM expands `%` patterns (`%j`, `%A`, `%x`, `%u`...) in `--output`, so the study
directory's own `%` are doubled there (`log_pattern`) while `%A_%a` / `%j` stay patterns.
srun writes to the batch step's file (its default, `--output=all`).
"""

from __future__ import annotations

import getpass
import re
import shlex
import sys
from pathlib import Path

import hpcxfer
from hpcxfer.backends.records import Submitted
from hpcxfer.backends.render import directives, render
from hpcxfer.backends.resources import check, stage_plan
from hpcxfer.backends.scheduler import (
    PROMOTION_CPUS,
    PROMOTION_MEM_MB,
    PROMOTION_MINUTES,
    SchedulerBackend,
    SchedulerError,
    run,
    seen,
)
from hpcxfer.fileio import atomic_write_bytes
from hpcxfer.grid.schema import Grid
from hpcxfer.layout import BackendPaths, StudyPaths
from hpcxfer.states import Exit, Held, Hold

#: SLURM's MaxArraySize when slurm.conf does not set it (what a dry run assumes).
DEFAULT_MAX_ARRAY_SIZE = 1001


def max_array_size(retry: bool = True) -> int:
    """MaxArraySize of the cluster (array indices go 0..MaxArraySize-1)."""
    out = run(["scontrol", "show", "config"], "reading MaxArraySize", retry=retry)
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
    return int(m.group(1)) if m else DEFAULT_MAX_ARRAY_SIZE


def slurm_escape(text: str) -> str:
    """`text` as a literal in a SLURM filename pattern: `%%` is one `%`."""
    return text.replace("%", "%%")


def log_pattern(backend: BackendPaths, array: bool) -> str:
    """sbatch's --output for the jobs' log folder (`backend.logs`): one file per element
    (`<array>_<index>.log`, or `<job>.log`), the folder's own `%` escaped."""
    return backend.element_log('%A_%a' if array else '%j', slurm_escape)


def task_indices(field: str) -> list[int] | None:
    """squeue's `%K` -> the array indices it names: None for a job that is no array
    ("N/A"), else every index of "4", "4-7%2", "[0-3,8]" or "1,3,5-9:2"."""
    field = field.split("%")[0].strip().strip("[]")
    if field in ("", "N/A"):
        return None
    out: list[int] = []
    for part in field.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part)
        if not m:
            raise SchedulerError(f"asking squeue: cannot read the array indices {field!r}")
        first, last, step = int(m.group(1)), int(m.group(2) or m.group(1)), int(m.group(3) or 1)
        out.extend(range(first, last + 1, step))
    return out


#: SLURM's job states (squeue's %T) -> what hpcxfer says of the task. States not here
#: (COMPLETED, and a failure whose exit says the unit was left for the next submit) are
#: read in `translate`.
STATES = {
    **dict.fromkeys(("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED"), Hold.QUEUED),
    **dict.fromkeys(("RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING"), Hold.RUNNING),
    **dict.fromkeys(("FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "DEADLINE", "BOOT_FAIL"),
                    Hold.FAILED),
    "CANCELLED": Hold.STOPPED,
}
#: What an element's non-zero exit says when its unit is not done but nothing failed
#: (hpcxfer/backends/slurm_element.py): the next submit runs it.
LEFT = {Exit.RESUME: "checkpointed, the next submit resumes it", Exit.BUSY: "another worker held it"}
#: squeue's fields, `|`-separated: array (or job) id, array indices, state, reason, and the
#: exit's wait status (`ExitCode=75:0` is 19200), which `-o` cannot print.
SQUEUE_FORMAT = "ArrayJobID:|,ArrayTaskID:|,State:|,Reason:|,exit_code:"


def translate(element: str, state: str, reason: str, status: int) -> Held | None:
    """One element as squeue says it -> Held; None when it ended done (or in a state
    hpcxfer does not know, which it leaves alone)."""
    if state == "FAILED" and status & 0x7F == 0 and (status >> 8) in LEFT:
        return seen("slurm", element, Hold.STOPPED, state, LEFT[Exit(status >> 8)])
    hold = STATES.get(state)
    return None if hold is None else seen("slurm", element, hold, state, reason)


def parse_squeue(out: str, job_ids: set[str]) -> dict[str, Held]:
    """`squeue -O SQUEUE_FORMAT` lines -> element -> Held for the arrays and jobs of
    `job_ids`. Pending elements of an array come as one line of ranges (`4-7%2`)."""
    active = {}
    for line in out.splitlines():
        array_id, tasks, state, reason, status = (f.strip() for f in (line.split("|") + [""] * 5)[:5])
        if array_id not in job_ids:
            continue
        indices = task_indices(tasks)
        reason = "" if reason == "None" else reason
        code = int(status) if status.isdigit() else 0
        for element in [array_id] if indices is None else [f"{array_id}_{i}" for i in indices]:
            held = translate(element, state, reason, code)
            if held is not None:
                active[element] = held
    return active


def sbatch_job_id(out: str, script: Path) -> str:
    """The job id in sbatch's answer."""
    m = re.search(r"^Submitted batch job (\d+)", out, re.MULTILINE)
    if not m:
        raise SchedulerError(f"submitting {script}: sbatch answered {out.strip()!r}, not a job id")
    return m.group(1)


class SlurmBackend(SchedulerBackend):
    name = "slurm"
    template = "slurm_array.sh.j2"
    directive, submit_command, job_id_var = "#SBATCH", "sbatch", "SLURM_JOB_ID"

    def _chunk_size(self, grid: Grid, paths: StudyPaths, n: int, dry_run: bool = False) -> tuple[int, str | None]:
        if dry_run:  # asked once if SLURM answers; a dry run needs none
            try:
                return max_array_size(retry=False), None
            except SchedulerError as e:
                return DEFAULT_MAX_ARRAY_SIZE, (f"MaxArraySize not read ({e}): assumed {DEFAULT_MAX_ARRAY_SIZE}, "
                                                "SLURM's default")
        return max_array_size(), None

    def options(self, paths: StudyPaths, grid: Grid, n_tasks: int, after: list[str], stage: str = "finetune") -> dict:
        """The #SBATCH options of one chunk of `n_tasks` tasks of `stage`."""
        res, spec = stage_plan(grid, stage, self.name).resources, grid.slurm
        array = n_tasks > 1
        throttle = f"%{spec.array_parallelism}" if spec.array_parallelism else ""
        return {"--job-name=": f"hpcxfer-{paths.name}", "--time=": res.minutes, "--cpus-per-task=": res.cpus,
                "--mem=": f"{res.mem_mb}M", "--gpus-per-task=": res.gpus or None, "--ntasks=": 1, "--nodes=": 1,
                "--signal=": f"USR2@{spec.signal_delay}", "--requeue": True, "--open-mode=": "append",
                "--kill-on-invalid-dep=": "yes", "--output=": log_pattern(paths.backend(self.name), array),
                "--array=": f"0-{n_tasks - 1}{throttle}" if array else None,
                "--dependency=": "afterok:" + ":".join(after) if after else None,
                **{f"--{key}=": getattr(spec, key) for key in ("partition", "account", "qos", "constraint")}}

    def render_script(self, paths: StudyPaths, grid: Grid, stage: str, task_ids: list[str], list_file: Path,
                      after: list[str]) -> str:
        res = stage_plan(grid, stage, self.name).resources
        threads = grid.runtime.threads or res.cpus
        opts = self.options(paths, grid, len(task_ids), after, stage)
        return render(self.template, directives=directives("#SBATCH", opts),
                      version=hpcxfer.__version__, study_dir=str(paths.dir), what=f"{stage}, {len(task_ids)} task(s)",
                      threads=threads, cpus=res.cpus, gpus=res.gpus,
                      worker=sys.executable, list_file=str(list_file), max_requeues=grid.slurm.max_requeues)

    def _submit_job(self, paths, grid, stage, task_ids, list_file, after, dry_run) -> Submitted:
        backend = paths.backend(self.name)
        script = backend.job_script(list_file, ".sbatch")
        text = self.render_script(paths, grid, stage, task_ids, list_file, after)
        command = ["sbatch", str(script)]
        if dry_run:
            return Submitted(shlex.join(command), str(script), text)
        atomic_write_bytes(script, text.encode())
        backend.logs.mkdir(parents=True, exist_ok=True)
        out = run(command, f"sbatch refused the {stage} job of {len(task_ids)} task(s)", retry=False)
        job_id = sbatch_job_id(out, script)
        elements = tuple(f"{job_id}_{i}" for i in range(len(task_ids))) if len(task_ids) > 1 else (job_id,)
        return Submitted(shlex.join(command), str(script), job_id=job_id, elements=elements,
                         logs=tuple(backend.element_log(e) for e in elements))

    def check_resources(self, grid: Grid) -> list[str]:
        """Warnings on what the jobs ask for; ConfigError where a task cannot finish."""
        return check(grid, self.name)

    def promotion_options(self, paths: StudyPaths, grid: Grid, after: list[str]) -> dict:
        """One CPU on the stages' partition, account and QOS (not their constraint, which
        may ask for a GPU), after the rung's jobs however they end (afterany)."""
        spec = grid.slurm
        log = paths.promotion_log("%j", slurm_escape)
        return {"--job-name=": f"hpcxfer-tune-{paths.name}", "--time=": PROMOTION_MINUTES,
                "--cpus-per-task=": PROMOTION_CPUS, "--mem=": f"{PROMOTION_MEM_MB}M", "--ntasks=": 1, "--nodes=": 1,
                "--output=": log, "--dependency=": "afterany:" + ":".join(after) if after else None,
                **{f"--{key}=": getattr(spec, key) for key in ("partition", "account", "qos")}}

    def _submitted_id(self, out: str, script: Path) -> str:
        return sbatch_job_id(out, script)

    def _active(self, paths, job_ids) -> dict[str, Held]:
        # All of the user's jobs at once (no -j: squeue fails on the whole list if one id has
        # expired), not every user's; pending elements of an array come as one line.
        out = run(["squeue", "-h", "-t", "all", "-u", getpass.getuser(), "-O", SQUEUE_FORMAT], "asking squeue")
        return parse_squeue(out, job_ids)

    def _cancel(self, job_ids: list[str]) -> None:
        run(["scancel", *job_ids], "cancelling")


if __name__ == "__main__":  # pragma: no cover - `python -m hpcxfer.backends.slurm` prints MaxArraySize
    print(max_array_size(), file=sys.stdout)
