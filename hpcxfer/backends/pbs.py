"""PBS Pro: `-J` arrays split to `max_array_size` (a chunk of one task is a plain job,
since an array needs two indices), `PBS_ARRAY_INDEX` mapped to the task through the
chunk's task list, fine-tuning after pre-training with `-W depend=afterok`.

PBS sends no warning before walltime: SIGTERM, then SIGKILL after `kill_delay`. The job
script `exec`s the worker so SIGTERM reaches it directly and it checkpoints in time;
users cannot requeue, so the next `hpcxfer submit` resubmits what is unfinished.
"""

from __future__ import annotations

import json
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
from hpcxfer.grid.schema import Grid
from hpcxfer.layout import StudyPaths
from hpcxfer.states import Exit, Held, Hold

DEFAULT_MAX_ARRAY_SIZE = 10000
#: qstat's single-letter states of a job that has not ended -> what hpcxfer says of it
#: (F and X, finished, are read with the exit status in `translate`).
STATES = {**dict.fromkeys("QHWTS", Hold.QUEUED), **dict.fromkeys("BRE", Hold.RUNNING)}
#: Exit statuses of a job whose unit is not done although nothing failed: the worker (or a
#: packed job's pool) checkpointed at walltime, or another worker held the unit.
LEFT = {Exit.RESUME: "checkpointed, the next submit resumes it", Exit.BUSY: "another worker held it"}


def translate(backend: str, element: str, state: str, status: int, comment: str = "") -> Held | None:
    """One subjob of `backend` (pbs, gadi) as `qstat -f -F json` says it -> Held; None
    when it ended done (or in a state hpcxfer does not know)."""
    if state in ("F", "X"):
        if status == 0:
            return None
        if status in LEFT:
            return seen(backend, element, Hold.STOPPED, state, f"exit status {status}: {LEFT[Exit(status)]}")
        # 271 = 256 + SIGTERM: killed at walltime or by qdel.
        return seen(backend, element, Hold.FAILED, state,
                    f"exit status {status}" + (", TIMEOUT: killed at walltime or by qdel" if status >= 256 else ""))
    hold = STATES.get(state)
    return None if hold is None else seen(backend, element, hold, state, comment)


def array_of(element: str) -> str:
    """`1234[5].srv` -> `1234[].srv`: PBS dependencies name whole arrays, not subjobs."""
    return re.sub(r"\[\d+\]", "[]", element)


class PbsBackend(SchedulerBackend):
    name = "pbs"
    template = "pbs_array.sh.j2"
    directive, submit_command, job_id_var = "#PBS", "qsub", "PBS_JOBID"

    def _chunk_size(self, grid: Grid, paths: StudyPaths, n: int, dry_run: bool = False) -> tuple[int, str | None]:
        if grid.pbs.max_array_size:
            return grid.pbs.max_array_size, None
        try:  # a dry run asks once if PBS answers, and needs no PBS
            out = run(["qstat", "-Bf"], "reading max_array_size", retry=not dry_run)
        except SchedulerError as e:
            if not dry_run:
                raise
            return DEFAULT_MAX_ARRAY_SIZE, (f"max_array_size not read ({e}): assumed {DEFAULT_MAX_ARRAY_SIZE}, "
                                            "PBS Pro's default (pbs.max_array_size in the grid sets it)")
        m = re.search(r"max_array_size\s*=\s*(\d+)", out)
        return (int(m.group(1)), None) if m else (DEFAULT_MAX_ARRAY_SIZE, None)

    def options(self, paths: StudyPaths, grid: Grid, stage: str, n_tasks: int, after: list[str]) -> dict:
        res = stage_plan(grid, stage, self.name).resources
        select = f"1:ncpus={res.cpus}:mem={res.mem_mb}mb" + (f":ngpus={res.gpus}" if res.gpus else "")
        opts = {"-N": f"hpcxfer-{stage}", "-j": "oe", "-o": f"{paths.backend(self.name).logs}/",
                "-l select=": select, "-l walltime=": res.walltime, "-q": grid.pbs.queue, "-P": grid.pbs.project,
                "-J": f"0-{n_tasks - 1}" if n_tasks > 1 else None}
        if after:
            opts["-W depend="] = "afterok:" + ":".join(sorted({array_of(a) for a in after}))
        return opts

    def describe(self, grid: Grid, stage: str, n_tasks: int) -> str:
        return f"{stage}, {n_tasks} task(s)"

    def promotion_options(self, paths: StudyPaths, grid: Grid, after: list[str]) -> dict:
        """One CPU in the stages' queue and project, after the rung's jobs however they
        end: `afterany` on each whole array (`1234[]`), as the stages depend on theirs."""
        return {"-N": "hpcxfer-tune", "-j": "oe", "-o": f"{paths.promotion_dir}/",
                "-l select=": f"1:ncpus={PROMOTION_CPUS}:mem={PROMOTION_MEM_MB}mb",
                "-l walltime=": f"00:{PROMOTION_MINUTES:02d}:00", "-q": grid.pbs.queue, "-P": grid.pbs.project,
                "-W depend=": "afterany:" + ":".join(sorted({array_of(a) for a in after})) if after else None}

    def _submitted_id(self, out: str, script: Path) -> str:
        job_id = out.strip()
        if not job_id or len(job_id.split()) != 1:
            raise SchedulerError(f"submitting {script}: qsub answered {job_id!r}, not a job id")
        return job_id

    def threads(self, grid: Grid, stage: str = "finetune") -> int:
        return grid.runtime.threads or stage_plan(grid, stage, self.name).resources.cpus

    def check_resources(self, grid: Grid) -> list[str]:
        """Warnings on what the jobs ask for; ConfigError where a task cannot finish."""
        return check(grid, self.name)

    def context(self, paths: StudyPaths, grid: Grid, stage: str, task_ids: list[str], list_file: Path) -> dict:
        return {"array": len(task_ids) > 1, "task_id": task_ids[0]}

    def render_script(self, paths: StudyPaths, grid: Grid, stage: str, task_ids: list[str], list_file: Path,
                      after: list[str]) -> str:
        opts = self.options(paths, grid, stage, len(task_ids), after)
        return render(self.template, directives=directives("#PBS", opts), version=hpcxfer.__version__, study_dir=str(paths.dir),
                      what=self.describe(grid, stage, len(task_ids)), threads=self.threads(grid, stage), worker=sys.executable,
                      list_file=str(list_file), **self.context(paths, grid, stage, task_ids, list_file))

    def _submit_job(self, paths, grid, stage, task_ids, list_file, after, dry_run) -> Submitted:
        script = paths.backend(self.name).job_script(list_file, ".pbs")
        text = self.render_script(paths, grid, stage, task_ids, list_file, after)
        command = ["qsub", str(script)]
        if dry_run:
            return Submitted(shlex.join(command), str(script), text)
        script.write_text(text)
        paths.backend(self.name).logs.mkdir(parents=True, exist_ok=True)
        job_id = run(command, f"submitting {script}", retry=False).strip()
        array = len(task_ids) > 1
        elements = tuple(job_id.replace("[]", f"[{i}]") for i in range(len(task_ids))) if array else (job_id,)
        # PBS names each log itself, in this folder.
        return Submitted(shlex.join(command), str(script), job_id=job_id, elements=elements,
                         logs=(str(paths.backend(self.name).logs),) * len(elements))

    def _active(self, paths, job_ids) -> dict[str, Held]:
        # qstat exits non-zero when one id is unknown (purged from history) yet prints the
        # others; no output at all means none is known any more.
        try:
            out = run(["qstat", "-x", "-t", "-f", "-F", "json", *sorted(job_ids)], "asking qstat", partial=True)
        except SchedulerError as e:
            if "Unknown Job Id" in str(e) or "Job has finished" in str(e):
                return {}
            raise
        jobs = json.loads(out or "{}").get("Jobs", {})
        active = {}
        for element, info in jobs.items():
            held = translate(self.name, element, info.get("job_state", ""), int(info.get("Exit_status", 0)),
                             info.get("comment", ""))
            if held is not None:
                active[element] = held
        return active

    def _cancel(self, job_ids: list[str]) -> None:
        run(["qdel", *sorted({array_of(j) for j in job_ids})], "cancelling")
