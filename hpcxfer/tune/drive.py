"""The rung driver: train the candidates alive to the next rung, decide, repeat.

A rung is an epoch of the very tasks the full grid runs (same ids, same task.json, same lr
schedule): each alive member gets a stop request, `tasks/<id>/rung.json` = {"stop_after":
r}, and is submitted like any task; the worker checkpoints after epoch r and exits with
Exit.RESUME. Once every member is back, the decision (rule.py) is written atomically to
`tune/rung-<i>.json`, under the study's lock, and only if no other run wrote it first; a
pruned member's stop request is replaced by `pruned.json` (so a later plain `submit`
trains it to the end like any interrupted task). A re-run reads the decisions on disk and
goes on from the first rung not decided: it resumes, never repeats.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hpcxfer import service
from hpcxfer.fileio import atomic_write_json, read_json
from hpcxfer.grid.task import Task
from hpcxfer.layout import StudyPaths
from hpcxfer.locks import submit_lock
from hpcxfer.study import last_epoch, metrics_records
from hpcxfer.tune.rule import decide
from hpcxfer.tune.settings import Search, candidates, resolve


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
        record = read_json(path)
        decided.append(record)
        for size, standings in record["sizes"].items():
            alive[size] = [s["candidate"] for s in standings if s["kept"]]
    return Progress(decided, alive)


def metric_at(paths: StudyPaths, task: Task, epoch: int, metric: str) -> float | None:
    """A task's metric as evaluated after `epoch` (None if it has no such record)."""
    for rec in metrics_records(paths.task(task.task_id)):
        if rec.get("epoch") == epoch and metric in rec:
            return rec[metric]
    return None


def decide_rung(paths: StudyPaths, search: Search, by_size: dict, alive: dict[str, list[str]], index: int) -> dict:
    """Decide rung `index` from the members' metrics and record it (once, under the lock)."""
    epoch = search.rungs[index]
    with submit_lock(paths, doing="decide a rung"):
        path = paths.rung_decision(index)
        if path.is_file():  # another promotion run decided it first
            return read_json(path)
        sizes = {}
        for size, cands in by_size.items():
            names = alive[size_name(size)]
            metrics = {c: {(t.split, t.seed): metric_at(paths, t, epoch, search.metric) for t in cands[c]}
                       for c in names}
            standings = decide(metrics, search.keep(len(names)), search.higher_is_better)
            sizes[size_name(size)] = [{**s.to_dict(), "tasks": [t.task_id for t in cands[s.candidate]]}
                                      for s in standings]
            for s in standings:
                for t in cands[s.candidate]:
                    tp = paths.task(t.task_id)
                    if not s.kept:
                        atomic_write_json(tp.pruned, {"rung": index, "epoch": epoch, "metric": search.metric,
                                                      "standing": s.to_dict()})
                        tp.rung.unlink(missing_ok=True)
        record = {"rung": index, "epoch": epoch, "metric": search.metric, "eta": search.eta, "sizes": sizes}
        paths.tune_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)
        return record


def _ask_stop(paths: StudyPaths, members: list[Task], epoch: int | None) -> None:
    for t in members:
        tp = paths.task(t.task_id)
        tp.dir.mkdir(parents=True, exist_ok=True)
        if epoch is None:
            tp.rung.unlink(missing_ok=True)
        else:
            atomic_write_json(tp.rung, {"stop_after": epoch})


@dataclass
class Outcome:
    """What a search did: its settings, its decisions, and the members trained to the end."""

    paths: StudyPaths
    search: Search
    decided: list[dict]
    finalists: list[Task]
    unfinished: list = dataclasses.field(default_factory=list)


def run(grid_file: str, backend: str | None, root: str | None, report: service.Reporter) -> Outcome:
    """Run (or resume) the search of a grid to its end, waiting for each rung."""
    req = service.prepare(grid_file, backend, root)
    search = resolve(req.grid, req.tasks)
    by_size = candidates(req.tasks)
    pretrain = [t for t in req.tasks if t.stage == "pretrain"]

    def members(alive: dict[str, list[str]]) -> list[Task]:
        return [t for s, cands in by_size.items() for c in alive[size_name(s)] for t in cands[c]]

    while True:
        state = progress(req.paths, search, by_size)
        index = len(state.decided)
        alive = members(state.alive)
        if index == len(search.rungs):
            break
        rung = search.rungs[index]
        _ask_stop(req.paths, alive, rung)
        behind = [t for t in alive if (last_epoch(req.paths.task(t.task_id)) or 0) < rung]  # a resumed search
        if behind:
            service.submit(dataclasses.replace(req, tasks=pretrain + behind), report, wait=True)
        decide_rung(req.paths, search, by_size, state.alive, index)
    _ask_stop(req.paths, alive, None)  # the finalists train to the end
    out = service.submit(dataclasses.replace(req, tasks=pretrain + alive), report, wait=True)
    return Outcome(req.paths, search, state.decided, alive, out.unfinished or [])
