"""What the SLURM, PBS and Gadi backends share: stages in dependency order, jobs split to
the scheduler's limits, the study's own record of every submission, and joining that
record with the scheduler's view for `submit`, `status` and `cancel`.

A backend says how to submit one job (`_submit_job`), what the scheduler holds
(`_active`: element id -> `Held`, its own codes translated into `Hold` there) and how to
cancel (`_cancel`).
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import hpcxfer
from hpcxfer.backends import records
from hpcxfer.backends.base import Submission, members, requested_gpu_memory_gb
from hpcxfer.backends.records import JobRecord, Submitted
from hpcxfer.backends.render import directives, render
from hpcxfer.errors import HpcxferError
from hpcxfer.fileio import atomic_write_bytes
from hpcxfer.grid.groups import Unit
from hpcxfer.grid.schema import Grid
from hpcxfer.grid.task import STAGES
from hpcxfer.layout import StudyPaths
from hpcxfer.states import Held, Hold

log = logging.getLogger(__name__)


class SchedulerError(HpcxferError):
    """The scheduler refused a command or could not be reached (`transient`: worth another try)."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


#: Waits (seconds) before the second, third and fourth try of a scheduler command that
#: failed as an unreachable or overloaded scheduler fails; every try of one call together
#: stops after TOTAL_S.
RETRY_WAITS = (2.0, 5.0, 10.0)
TOTAL_S = 120.0
CALL_TIMEOUT_S = 60.0
#: How a scheduler says it could not be reached (worth another try), as opposed to a refusal.
TRANSIENT = re.compile(r"time[ds]? ?out|unable to contact|connection (refused|reset)|communication|cannot connect|"
                       r"could not connect|try again|temporar|socket|not responding|server is busy|pbs_iff",
                       re.IGNORECASE)


def run(cmd: list[str], what: str, partial: bool = False, retry: bool = True) -> str:
    """A scheduler command's stdout; its own error text in one line if it fails.
    partial: a failure that still printed something (qstat on a list with a purged id)
    returns what it printed. retry: a command that timed out or could not reach the
    scheduler is tried again after RETRY_WAITS, within TOTAL_S (never a submission, which
    may have been accepted before the answer was lost)."""
    deadline = time.monotonic() + TOTAL_S
    waits = list(RETRY_WAITS) if retry else []
    tries = 0
    while True:
        tries += 1
        timeout = max(1.0, min(CALL_TIMEOUT_S, deadline - time.monotonic()))
        try:
            return _run_once(cmd, what, partial, timeout)
        except SchedulerError as e:
            if not (e.transient and waits and time.monotonic() + waits[0] < deadline):
                if tries > 1:
                    e.args = (f"{e.args[0]} (tried {tries} times)",)
                raise
            log.info("%s failed (%s); trying again in %.0f s", shlex.join(cmd), e, waits[0])
            time.sleep(waits.pop(0))


def _run_once(cmd: list[str], what: str, partial: bool, timeout: float) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise SchedulerError(f"{what}: {cmd[0]} is not on PATH") from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"{what}: {shlex.join(cmd)}: no answer in {timeout:.0f} s", transient=True) from None
    except OSError as e:
        raise SchedulerError(f"{what}: {shlex.join(cmd)}: {e}", transient=True) from e
    if proc.returncode != 0 and not (partial and proc.stdout.strip()):
        message = (proc.stderr or proc.stdout).strip()
        raise SchedulerError(f"{what}: {shlex.join(cmd)}: {message}", transient=bool(TRANSIENT.search(message)))
    return proc.stdout


#: A search's promotion job (hpcxfer/tune/promote.py) reads the study's records, decides a
#: rung and submits the next: one CPU, and memory for torch, which it imports to check
#: the data set before it submits, as `submit` does.
PROMOTION_CPUS = 1
PROMOTION_MEM_MB = 2048
PROMOTION_MINUTES = 15


class SchedulerBackend:
    name = "scheduler"
    in_process = False  # submit hands jobs to the scheduler; --wait polls `view`
    #: A job script's directive prefix, the command that submits one, and the shell
    #: variable that holds a job's own id inside it.
    directive = "#"
    submit_command = "false"
    job_id_var = "JOB_ID"

    # ------------------------------------------------------------ for subclasses
    def _chunk_size(self, grid: Grid, paths: StudyPaths, n: int, dry_run: bool = False) -> tuple[int, str | None]:
        """Most tasks in one job, for a stage of `n` tasks, and a note on where the number
        came from when it was assumed (a dry run asks no scheduler)."""
        raise NotImplementedError

    def _submit_job(self, paths: StudyPaths, grid: Grid, stage: str, task_ids: list[str], list_file: Path,
                    after: list[str], dry_run: bool) -> Submitted:
        """Submit one job running `task_ids`. A dry run writes and submits nothing: it
        returns the script's path, its text and the command."""
        raise NotImplementedError

    def _active(self, paths: StudyPaths, job_ids: set[str]) -> dict[str, Held]:
        """element id -> what the scheduler says of it, translated at this edge (its own
        state name in `scheduler_state`), for the elements of `job_ids` it still knows and
        that did not end done. No log: `view` adds it."""
        raise NotImplementedError

    def _cancel(self, job_ids: list[str]) -> None:
        raise NotImplementedError

    def promotion_options(self, paths: StudyPaths, grid: Grid, after: list[str]) -> dict:
        """The directives of a promotion job that starts once every job of `after` has ended."""
        raise NotImplementedError

    def _submitted_id(self, out: str, script: Path) -> str:
        """The job id in what the submit command printed."""
        raise NotImplementedError

    # ------------------------------------------------------------ a search's promotion job
    def render_promotion(self, paths: StudyPaths, grid: Grid, after: list[str], python: str) -> str:
        """The script of a promotion job: `python -P -m hpcxfer.tune.promote STUDY_DIR`."""
        return render("promote.sh.j2", directives=directives(self.directive, self.promotion_options(paths, grid, after)),
                      version=hpcxfer.__version__, study_dir=str(paths.dir), scheduler=self.name,
                      job_var=self.job_id_var, python=python,
                      what=f"a search's promotion job after {len(after)} job(s)")

    def submit_promotion(self, paths: StudyPaths, grid: Grid, after: list[str], python: str, n: int,
                         dry_run: bool = False) -> Submitted:
        """Submit promotion job `n` of the study, after every job or element of `after`."""
        script = paths.promotion_script(n)
        text = self.render_promotion(paths, grid, after, python)
        command = [self.submit_command, str(script)]
        if dry_run:
            return Submitted(shlex.join(command), str(script), text)
        paths.promotion_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(script, text.encode())
        job_id = self._submitted_id(run(command, "submitting a search's promotion job", retry=False), script)
        return Submitted(shlex.join(command), str(script), job_id=job_id, elements=(job_id,))

    def job_active(self, paths: StudyPaths, job_id: str) -> bool:
        """Whether the scheduler will still run job `job_id` (queued or running)."""
        return any(h.active for h in self._active(paths, {job_id}).values())

    # ------------------------------------------------------------ the interface
    def submit(self, paths: StudyPaths, grid: Grid, units: list[Unit], *, dry_run: bool = False,
               wait: bool = False) -> Submission:
        sub = Submission(backend=self.name, tasks=[m for u in units for m in u.members], units=[u.id for u in units])
        if not units:
            return sub
        grouped = members(units)
        try:
            held = self.view(paths)
        except SchedulerError as e:
            if not dry_run:
                raise
            held = {}  # a dry run needs no scheduler
            sub.notes.append(f"{self.name} not asked ({e}): tasks it may still hold from an earlier submit are "
                             "shown as to be submitted")
        element_of = {t: h.job for t, h in held.items() if h.active}
        batch = len(records.load(paths, self.name))
        for stage in STAGES:
            todo = [u for u in units if u.stage == stage]
            if not todo:
                continue
            size, note = self._chunk_size(grid, paths, len(todo), dry_run)
            if note and note not in sub.notes:
                sub.notes.append(note)
            for n, chunk in enumerate(records.chunks(todo, size)):
                after = sorted({element_of[d] for u in chunk for d in u.depends_on if d in element_of})
                list_file = paths.backend(self.name).task_list(batch, stage, n)
                ids = [u.id for u in chunk]
                if dry_run:
                    sub.files[str(list_file)] = "".join(f"{t}\n" for t in ids)
                else:
                    records.write_task_list(list_file, ids)
                job = self._submit_job(paths, grid, stage, ids, list_file, after, dry_run)
                sub.commands.append(job.command)
                sub.scripts.append(job.script)
                if dry_run:  # later chunks show what they would wait for
                    sub.files[job.script] = job.text
                    element_of.update((t, f"<{stage}-{n}[{i}]>") for i, t in enumerate(ids))
                    continue
                records.append(paths, self.name, JobRecord.of(job, stage, ids, list_file, after, grouped))
                sub.job_ids.append(job.job_id)
                for u, element in zip(chunk, job.elements):
                    element_of.update((m, element) for m in u.members)
        return sub

    def device_memory_gb(self, grid: Grid) -> float | None:
        return requested_gpu_memory_gb(grid)

    def view(self, paths: StudyPaths) -> dict[str, Held]:
        """task id -> what the scheduler says of the job element that last ran it. Tasks
        whose last element ended done, or that the scheduler has forgotten (finished long
        ago), are left out."""
        latest = records.latest_by_task(paths, self.name)
        if not latest:
            return {}
        active = self._active(paths, {rec.job_id for rec, _ in latest.values()})
        out = {}
        for task_id, (rec, i) in latest.items():
            held = active.get(rec.elements[i])
            if held is not None:
                out[task_id] = replace(held, log=rec.logs[i] if i < len(rec.logs) else None)
        return out

    def cancel(self, paths: StudyPaths) -> list[str]:
        elements = sorted({h.job for h in self.view(paths).values() if h.active})
        if elements:
            self._cancel(elements)
        return elements


def seen(backend: str, element: str, state: Hold, code: str, reason: str = "") -> Held:
    """A `Held` as a backend's `_active` reports it: the detail names the backend, the
    element, the scheduler's own word and its reason."""
    return Held(state, element, code, f"{backend} {element} {code}" + (f" ({reason})" if reason else ""))
