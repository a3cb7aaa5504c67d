"""What the SLURM, PBS and Gadi backends share: stages in dependency order, jobs split to
the scheduler's limits, the study's own record of every submission, and joining that
record with the scheduler's view for `submit`, `status` and `cancel`.

A backend says how to submit one job (`_submit_job`), what the scheduler holds
(`_active`: element id -> (state, reason)) and how to cancel (`_cancel`).
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
import time
from pathlib import Path

from hpcxfer.backends import records
from hpcxfer.backends.base import Submission, members, requested_gpu_memory_gb
from hpcxfer.errors import HpcxferError
from hpcxfer.grid.schema import Grid
from hpcxfer.grid.groups import Unit
from hpcxfer.grid.task import STAGES
from hpcxfer.layout import StudyPaths

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
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
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


#: Scheduler states of an element that will still run (or is running).
ACTIVE = {"PENDING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
          "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "Q", "R", "H", "W", "T", "E", "S", "B", "X_RUNNING"}
RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "R", "E"}
#: Terminal states that mean the scheduler, not the worker, ended the task.
KILLED = {"FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "DEADLINE", "BOOT_FAIL"}


class SchedulerBackend:
    name = "scheduler"
    in_process = False  # submit hands jobs to the scheduler; --wait polls `view`

    # ------------------------------------------------------------ for subclasses
    def _chunk_size(self, grid: Grid, paths: StudyPaths, n: int, dry_run: bool = False) -> tuple[int, str | None]:
        """Most tasks in one job, for a stage of `n` tasks, and a note on where the number
        came from when it was assumed (a dry run asks no scheduler)."""
        raise NotImplementedError

    def _submit_job(self, paths: StudyPaths, grid: Grid, stage: str, task_ids: list[str], list_file: Path,
                    after: list[str], dry_run: bool) -> dict:
        """Submit one job running `task_ids`; returns its record (job_id, elements, script,
        log, command). A dry run writes and submits nothing: its record holds the script's
        path, its text ("text") and the command."""
        raise NotImplementedError

    def _active(self, paths: StudyPaths, job_ids: set[str]) -> dict[str, tuple[str, str]]:
        """element id -> (scheduler state, reason) for the elements of `job_ids` the
        scheduler still knows."""
        raise NotImplementedError

    def _cancel(self, job_ids: list[str]) -> None:
        raise NotImplementedError

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
        element_of = {t: v["job"] for t, v in held.items() if v["state"] in ("queued", "running")}
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
                rec = self._submit_job(paths, grid, stage, ids, list_file, after, dry_run)
                sub.commands.append(rec.pop("command"))
                sub.scripts.append(rec["script"])
                if dry_run:  # later chunks show what they would wait for
                    sub.files[rec["script"]] = rec["text"]
                    element_of.update((t, f"<{stage}-{n}[{i}]>") for i, t in enumerate(ids))
                    continue
                rec.update(stage=stage, tasks=ids, list_file=str(list_file), after=after)
                if any(u in grouped for u in ids):
                    rec["members"] = {u: grouped[u] for u in ids if u in grouped}
                records.append(paths, self.name, rec)
                sub.job_ids.append(rec["job_id"])
                for u, element in zip(chunk, rec["elements"]):
                    element_of.update((m, element) for m in u.members)
        return sub

    def device_memory_gb(self, grid: Grid) -> float | None:
        return requested_gpu_memory_gb(grid)

    def view(self, paths: StudyPaths) -> dict[str, dict]:
        """task id -> what the scheduler says of the job that last ran it: {"state":
        queued|running|failed|stopped (cancelled), "job", "scheduler_state", "detail", "log"}. Tasks whose last
        job the scheduler has forgotten (finished long ago) are left out."""
        latest = records.latest_by_task(paths, self.name)
        if not latest:
            return {}
        active = self._active(paths, {rec["job_id"] for rec, _ in latest.values()})
        out = {}
        for task_id, (rec, i) in latest.items():
            element = rec["elements"][i]
            if element not in active:
                continue
            state, reason = active[element]
            if state in ACTIVE:
                kind = "running" if state in RUNNING else "queued"
                detail = f"{self.name} {element} {state}" + (f" ({reason})" if reason else "")
            elif state in KILLED:
                kind = "stopped" if state == "CANCELLED" else "failed"
                detail = f"{self.name} {element} {state}" + (f" ({reason})" if reason else "")
            else:
                continue
            out[task_id] = {"state": kind, "job": element, "scheduler_state": state, "detail": detail,
                            "log": self.log_of(rec, i)}
        return out

    def log_of(self, rec: dict, index: int) -> str:
        return rec["log"].replace("%a", str(index))

    def cancel(self, paths: StudyPaths) -> list[str]:
        view = self.view(paths)
        elements = sorted({v["job"] for v in view.values() if v["state"] in ("queued", "running")})
        if elements:
            self._cancel(elements)
        return elements
