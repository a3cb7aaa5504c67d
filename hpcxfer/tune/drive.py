"""The rung driver: one idempotent step, `advance`, that `tune --wait`, `tune` and every
promotion job run alike.

A rung is an epoch of the very tasks the full grid runs (same ids, same task.json, same lr
schedule): each alive member gets a stop request, `tasks/<id>/rung.json` = {"stop_after":
r}, and is submitted like any task; the worker checkpoints after epoch r and exits with
Exit.RESUME. `advance`, under the study's lock:

1. re-applies every decision on disk (idempotent: a kill between a decision and its
   effects leaves them to the next advance);
2. decides each rung whose alive members are all back: none held by a backend, each at the
   rung's epoch or failed (a failed member gives no evidence). The decision is written
   first (`tune/rung-<i>.json`, atomically, only if absent), then applied: a pruned
   member's stop request is replaced by `pruned.json`. A rung no member of some size
   reached (all failed) is not decided: the step stops there and says why;
3. writes the stop requests of the next stage (a rung, or the end for the finalists).

Then, outside the lock (submit takes it), it submits the members of that stage that are
neither there, nor held, nor failed (a user's `tune` counts the failed as not there, once),
through `service.submit`, which submits only what is
not done or held; on a scheduler it submits a promotion job that depends (afterany) on
every job holding the stage's members and runs `advance` again (hpcxfer/tune/promote.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass, field

from hpcxfer import service
from hpcxfer.backends.scheduler import SchedulerBackend
from hpcxfer.fileio import append_jsonl, atomic_write_json, iter_jsonl, read_json
from hpcxfer.grid.task import Task
from hpcxfer.layout import StudyPaths
from hpcxfer.locks import submit_lock
from hpcxfer.study import last_epoch, metrics_records, study_states
from hpcxfer.tune import record as search_record
from hpcxfer.tune.rule import decide
from hpcxfer.tune.settings import Search, candidates

log = logging.getLogger(__name__)

#: Seconds a step waits for another `tune`, promotion job or submit to let go of the study's lock.
LOCK_WAIT_S = 120.0
#: Promotion jobs submitted for one stage at most: a member that keeps ending unfinished
#: (a walltime too short to reach the rung) stops the chain instead of looping.
MAX_PROMOTIONS = 5


@dataclass
class Progress:
    """Where a search stands: the rungs decided, and the candidates alive per size."""

    decided: list[dict]
    alive: dict[str, list[str]]


def size_name(size: int | str) -> str:
    """A target size as a key of a decision file (JSON keys are strings)."""
    return str(size)


def progress(paths: StudyPaths, search: Search, by_size: dict) -> Progress:
    """The decisions on disk, in rung order, and who is alive after the last of them."""
    alive = {size_name(s): sorted(cands) for s, cands in by_size.items()}
    decided = []
    for i in range(len(search.rungs)):
        path = paths.rung_decision(i)
        if not path.is_file():
            break
        rec = read_json(path)
        decided.append(rec)
        for size, standings in rec["sizes"].items():
            alive[size] = [s["candidate"] for s in standings if s["kept"]]
    return Progress(decided, alive)


def metric_at(paths: StudyPaths, task: Task, epoch: int, metric: str) -> float | None:
    """A task's metric as evaluated after `epoch` (None if it has no such record)."""
    for rec in metrics_records(paths.task(task.task_id)):
        if rec.get("epoch") == epoch and metric in rec:
            return rec[metric]
    return None


def who(by: str) -> dict:
    """Who decides: `by` (tune, a promotion job, the local driver), with the scheduler's id
    of the job it runs in, if any."""
    return {"by": by, "job": os.environ.get("HPCXFER_JOB_ID") or None, "host": os.uname().nodename,
            "pid": os.getpid(), "at": time.time()}


def apply(paths: StudyPaths, decision: dict) -> None:
    """A decision's effects, idempotently: each pruned member gets `pruned.json` and loses its
    stop request. Applied after the decision is written and again at every advance."""
    for standings in decision["sizes"].values():
        for s in standings:
            if s["kept"]:
                continue
            for task_id in s["tasks"]:
                tp = paths.task(task_id)
                if not tp.pruned.is_file():
                    standing = {k: v for k, v in s.items() if k != "tasks"}
                    atomic_write_json(tp.pruned, {"rung": decision["rung"], "epoch": decision["epoch"],
                                                  "metric": decision["metric"], "standing": standing})
                tp.rung.unlink(missing_ok=True)


def decide_rung(paths: StudyPaths, search: Search, by_size: dict, alive: dict[str, list[str]], index: int,
                by: str = "tune") -> dict:
    """Decide rung `index` and record it, once: the caller holds the study's lock."""
    path = paths.rung_decision(index)
    if path.is_file():  # decided before (by another step)
        return read_json(path)
    epoch = search.rungs[index]
    sizes = {}
    for size, cands in by_size.items():
        names = alive[size_name(size)]
        metrics = {c: {(t.split, t.seed): metric_at(paths, t, epoch, search.metric) for t in cands[c]} for c in names}
        standings = decide(metrics, search.keep(len(names), index), search.higher_is_better)
        sizes[size_name(size)] = [{**s.to_dict(), "tasks": [t.task_id for t in cands[s.candidate]]}
                                  for s in standings]
    decision = {"rung": index, "epoch": epoch, "metric": search.metric, "eta": search.etas[index],
                "settings": search_record.settings_of(search), "decided_by": who(by), "sizes": sizes}
    paths.tune_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, decision)  # first the decision, then its effects
    apply(paths, decision)
    return decision


def ask_stop(paths: StudyPaths, members: list[Task], epoch: int | None) -> None:
    """Stop requests at `epoch` for `members` (None: train to the end), written only where
    they change."""
    for t in members:
        tp = paths.task(t.task_id)
        if epoch is None:
            tp.rung.unlink(missing_ok=True)
            continue
        try:
            if read_json(tp.rung) == {"stop_after": epoch}:
                continue
        except (OSError, ValueError):
            pass
        tp.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(tp.rung, {"stop_after": epoch})


@dataclass
class Step:
    """Where the search stands after an advance: the decisions, the stage's index (a rung's,
    or len(rungs): the finalists), its members, and what this advance submitted."""

    decided: list[dict]
    stage: int
    target: int  # the epoch the stage's members train to
    members: list[Task]
    behind: list[Task] = field(default_factory=list)  # submitted by this step
    held: list[str] = field(default_factory=list)  # job elements holding the stage's members
    promotion: str | None = None  # the promotion job following them (scheduler backends)
    note: str = ""
    final: bool = False  # the stage is the finalists' (to the tasks' last epoch)
    ended: bool = False
    stuck: bool = False  # a rung cannot be decided: no evidence at some size (`note` says why)


class Driver:
    """A search as its steps see it: the request (grid, backend, study), settings and candidates."""

    def __init__(self, req: service.Request, search: Search, by: str, retry_failed: bool = False):
        self.req, self.search, self.paths, self.by = req, search, req.paths, by
        self.retry_failed = retry_failed  # a user's `tune` runs failed members again, as `submit` does
        self.by_size = candidates(req.tasks)
        self.pretrain = [t for t in req.tasks if t.stage == "pretrain"]

    def members(self, alive: dict[str, list[str]]) -> list[Task]:
        return [t for s, cands in self.by_size.items() for c in alive[size_name(s)] for t in cands[c]]

    def states(self, tasks: list[Task]) -> tuple[dict, dict]:
        """(task id -> its state, task id -> what a backend holds of it)."""
        if not self.paths.tasks_index.is_file():
            return {}, {}
        view = service.held(self.paths)
        return {s.task_id: s for s in study_states(self.paths, view, tasks)}, view

    def without_evidence(self, alive: dict[str, list[str]], index: int) -> str | None:
        """A size none of whose alive members has the metric at rung `index` (every one
        failed, or its pre-training did): deciding it would rank candidates by name."""
        epoch, metric = self.search.rungs[index], self.search.metric
        for size, cands in self.by_size.items():
            if all(metric_at(self.paths, t, epoch, metric) is None for c in alive[size_name(size)] for t in cands[c]):
                return size_name(size)
        return None

    def where(self, tasks: list[Task], target: int) -> tuple[list[Task], list[Task]]:
        """(members held by a backend, members neither there, nor held, nor failed)."""
        states, _ = self.states(tasks)
        held, behind = [], []
        for t in tasks:
            st = states.get(t.task_id)
            if st is not None and st.state in ("queued", "running"):
                held.append(t)
            elif (last_epoch(self.paths.task(t.task_id)) or 0) < target and (
                    st is None or st.state != "failed" or self.retry_failed):
                behind.append(t)
        return held, behind

    def settle(self) -> Step:
        """Under the lock: re-apply the decisions, decide what is ready, ask the next stop."""
        paths, search = self.paths, self.search
        with submit_lock(paths, wait_s=LOCK_WAIT_S, doing="advance the search"):
            state = progress(paths, search, self.by_size)
            for decision in state.decided:
                apply(paths, decision)
            while True:
                index = len(state.decided)
                members = self.members(state.alive)
                target = search.rungs[index] if index < len(search.rungs) else search.epochs
                held, behind = self.where(members, target)
                if index == len(search.rungs) or held or behind:
                    break
                if blind := self.without_evidence(state.alive, index):
                    note = (f"rung {index} (epoch {target}) not decided: no member of {blind} per class reached "
                            "it (failed?); see `hpcxfer status`, fix the cause and run `hpcxfer tune` again")
                    return Step(state.decided, index, target, members, [], final=False, ended=False, note=note,
                                stuck=True)
                decide_rung(paths, search, self.by_size, state.alive, index, self.by)
                state = progress(paths, search, self.by_size)
            ask_stop(paths, members, target if index < len(search.rungs) else None)
        ended = index == len(search.rungs) and not held and not behind
        return Step(state.decided, index, target, members, behind, final=index == len(search.rungs), ended=ended)


def advance(req: service.Request, search: Search, report: service.Reporter, wait: bool = False,
            by: str = "tune", retry_failed: bool = False) -> Step:
    """One step of the search (see the module's docstring), by `by` (who it records as
    deciding). With `wait`, the stage's members are waited for before it returns; without,
    a scheduler backend gets a promotion job after them."""
    s = Driver(req, search, by, retry_failed)
    for _ in range(MAX_PROMOTIONS):
        step = s.settle()
        if step.ended or step.stuck:
            return step
        if step.behind:
            service.submit(dataclasses.replace(req, tasks=s.pretrain + step.behind), report, wait=wait)
        if wait:
            service.wait_for(s.paths, s.pretrain + step.members, report,
                             poll_s=service.LOCAL_POLL_S if req.backend.in_process else None)
            return step
        if not isinstance(req.backend, SchedulerBackend):
            return step
        _, view = s.states(s.pretrain + step.members)
        step.held = sorted({h.job for t in s.pretrain + step.members if (h := view.get(t.task_id)) and h.active})
        if step.held:
            step.promotion, step.note = follow(s, step)
            return step
        # Nothing holds the stage any more (it ended while this step submitted): decide again.
    step.note = "the stage's members were submitted several times and none is held; see `hpcxfer status`"
    return step


def follow(s: Driver, step: Step) -> tuple[str | None, str]:
    """Submit a promotion job after the stage's jobs, unless one for this stage is still
    queued (another `tune` or promotion job submitted it): (its job id, a note)."""
    backend, paths = s.req.backend, s.paths
    assert isinstance(backend, SchedulerBackend)
    me = os.environ.get("HPCXFER_JOB_ID", "").partition(":")[2]
    with submit_lock(paths, wait_s=LOCK_WAIT_S, doing="submit a promotion job"):
        chain = list(iter_jsonl(paths.promotions)) if paths.promotions.is_file() else []
        last = chain[-1] if chain else {}
        count = last.get("count", 0) if last.get("stage") == step.stage else 0
        job = last.get("job")
        if last.get("stage") == step.stage and job and job != me and backend.job_active(paths, job):
            return job, f"promotion job {job} already follows this stage"
        if count >= MAX_PROMOTIONS:
            return None, (f"{count} promotion jobs followed stage {step.stage} and its members are still not "
                          "back; run `hpcxfer tune GRID` once you have seen why (`hpcxfer status`)")
        n = last.get("n", -1) + 1
        # This interpreter: the user's `tune`, or a promotion job that one of its scripts
        # started; never a path read from the study's files (anyone who can write them could
        # name any program).
        sub = backend.submit_promotion(paths, s.req.grid, step.held, sys.executable, n)
        append_jsonl(paths.promotions, {"n": n, "job": sub.job_id, "stage": step.stage, "count": count + 1,
                                        "after": step.held, "script": sub.script, "by": who(s.by)})
        return sub.job_id, f"promotion job {sub.job_id} follows the {len(step.held)} job element(s) of this stage"


@dataclass
class Outcome:
    """What a search did: its settings, its decisions, and the members trained to the end."""

    paths: StudyPaths
    search: Search
    decided: list[dict]
    finalists: list[Task]
    unfinished: list = dataclasses.field(default_factory=list)
    step: Step | None = None  # where a search that did not wait stands


def run(req: service.Request, search: Search, report: service.Reporter, by: str = "tune") -> Outcome:
    """Run (or resume) the search to its end, waiting for each stage."""
    seen: tuple | None = None
    retry = by != "promotion job"  # a user's command (or the driver it starts) retries failed members once
    while True:
        step = advance(req, search, report, wait=True, by=by, retry_failed=retry)
        retry = False
        if step.ended or step.stuck:
            break
        # A stage whose members come back unfinished twice in a row (a failing pre-training,
        # a walltime too short) ends the wait: those members are reported, not retried forever.
        now = (step.stage, tuple(t.task_id for t in step.behind),
               tuple(last_epoch(req.paths.task(t.task_id)) for t in step.members))
        if now == seen and step.behind:
            break
        seen = now
    states = {s.task_id: s for s in study_states(req.paths, service.held(req.paths), step.members)}
    unfinished = [st for st in states.values() if st.state != "done"] if step.stage == len(search.rungs) else \
        [st for t in step.behind if (st := states[t.task_id])]
    return Outcome(req.paths, search, step.decided, step.members, unfinished, step)
