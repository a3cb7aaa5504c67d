"""The study's own record of what a scheduler backend submitted:
backends/<name>/submissions.jsonl, one line per job (an array, a plain job or a packed job)
with its job id, the scheduler's id of each element (`123_4`, `123[4].pbs`) and the task
each element runs. `submit`, `status` and `cancel` join it
with what the scheduler says about those ids."""

from __future__ import annotations

import time
from pathlib import Path

from hpcxfer.fileio import append_jsonl, atomic_write_bytes, iter_jsonl
from hpcxfer.layout import StudyPaths


def submissions_file(paths: StudyPaths, backend: str) -> Path:
    return paths.backend(backend).submissions


def append(paths: StudyPaths, backend: str, record: dict) -> None:
    f = submissions_file(paths, backend)
    f.parent.mkdir(parents=True, exist_ok=True)
    append_jsonl(f, {**record, "submitted": time.time()})


def load(paths: StudyPaths, backend: str) -> list[dict]:
    f = submissions_file(paths, backend)
    return list(iter_jsonl(f)) if f.exists() else []


def latest_by_task(paths: StudyPaths, backend: str) -> dict[str, tuple[dict, int]]:
    """task id -> (the newest record that submitted it, its index in that job). Element i
    runs `tasks[i]`: a task, or a protocol group whose members `members[group]` lists."""
    out: dict[str, tuple[dict, int]] = {}
    for rec in load(paths, backend):
        members = rec.get("members") or {}
        for i, unit in enumerate(rec["tasks"]):
            for task_id in members.get(unit, [unit]):
                out[task_id] = (rec, i)
    return out


def write_task_list(path: Path, task_ids: list[str]) -> None:
    """Array index i runs the task on line i+1 (renumbered from 0 in every chunk)."""
    atomic_write_bytes(path, "".join(f"{t}\n" for t in task_ids).encode())


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), max(1, size))]


__all__ = ["append", "chunks", "latest_by_task", "load", "submissions_file", "write_task_list"]
