"""The study's own record of what a scheduler backend submitted:
backends/<name>/submissions.jsonl, one line per job (an array, a plain job or a packed job)
with its job id, the scheduler's id of each element (`123_4`, `123[4].pbs`) and the unit
(a task alone or a protocol group) each element runs. `submit`, `status` and `cancel` join
it with what the scheduler says about those ids.

Records written before units were named `units` call them `tasks`, and PBS's kept one
`log` (the logs folder) instead of one log per element: both still load."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from hpcxfer.fileio import append_jsonl, atomic_write_bytes, iter_jsonl
from hpcxfer.layout import StudyPaths


@dataclass(frozen=True)
class Submitted:
    """What submitting one job gave (`SchedulerBackend._submit_job`): the script and the
    command; a dry run has the script's text instead of the scheduler's ids."""

    command: str
    script: str
    text: str = ""  # a dry run's script, not written
    job_id: str = ""
    elements: tuple[str, ...] = ()  # the scheduler's id of each element, in unit order
    logs: tuple[str, ...] = ()  # where each element's output goes


@dataclass(frozen=True)
class JobRecord:
    """One line of submissions.jsonl: element i runs `units[i]`, a task or a protocol group
    whose members `members[group]` lists."""

    job_id: str
    elements: tuple[str, ...]
    logs: tuple[str, ...]
    units: tuple[str, ...]
    stage: str = ""
    script: str = ""
    list_file: str = ""
    after: tuple[str, ...] = ()
    members: dict[str, list[str]] = field(default_factory=dict)
    submitted: float = 0.0

    @classmethod
    def of(cls, job: Submitted, stage: str, units: list[str], list_file: Path, after: list[str],
           members: dict[str, list[str]]) -> JobRecord:
        return cls(job.job_id, job.elements, job.logs, tuple(units), stage, job.script, str(list_file),
                   tuple(after), {u: members[u] for u in units if u in members}, time.time())

    @classmethod
    def from_json(cls, d: dict) -> JobRecord:
        elements = tuple(d["elements"])
        logs = d.get("logs") or [str(d.get("log", "")).replace("%a", str(i)) for i in range(len(elements))]
        return cls(str(d["job_id"]), elements, tuple(logs), tuple(d["units"] if "units" in d else d["tasks"]),
                   d.get("stage", ""), d.get("script", ""), d.get("list_file", ""), tuple(d.get("after") or ()),
                   dict(d.get("members") or {}), float(d.get("submitted") or 0.0))

    def to_json(self) -> dict:
        out = {"job_id": self.job_id, "elements": list(self.elements), "logs": list(self.logs),
               "units": list(self.units), "stage": self.stage, "script": self.script, "list_file": self.list_file,
               "after": list(self.after), "submitted": self.submitted}
        if self.members:
            out["members"] = self.members
        return out

    def tasks_of(self, index: int) -> list[str]:
        """The task ids element `index` runs."""
        unit = self.units[index]
        return list(self.members.get(unit, [unit]))


def submissions_file(paths: StudyPaths, backend: str) -> Path:
    return paths.backend(backend).submissions


def append(paths: StudyPaths, backend: str, record: JobRecord) -> None:
    f = submissions_file(paths, backend)
    f.parent.mkdir(parents=True, exist_ok=True)
    append_jsonl(f, record.to_json())


def load(paths: StudyPaths, backend: str) -> list[JobRecord]:
    f = submissions_file(paths, backend)
    return [JobRecord.from_json(d) for d in iter_jsonl(f)] if f.exists() else []


def latest_by_task(paths: StudyPaths, backend: str) -> dict[str, tuple[JobRecord, int]]:
    """task id -> (the newest record that submitted it, its element's index in that job)."""
    out: dict[str, tuple[JobRecord, int]] = {}
    for rec in load(paths, backend):
        for i in range(len(rec.units)):
            for task_id in rec.tasks_of(i):
                out[task_id] = (rec, i)
    return out


def write_task_list(path: Path, task_ids: list[str]) -> None:
    """Array index i runs the task on line i+1 (renumbered from 0 in every chunk)."""
    atomic_write_bytes(path, "".join(f"{t}\n" for t in task_ids).encode())


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), max(1, size))]


__all__ = ["JobRecord", "Submitted", "append", "chunks", "latest_by_task", "load", "submissions_file",
           "write_task_list"]
