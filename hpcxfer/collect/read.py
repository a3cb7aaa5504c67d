"""Read every task's records into rows; a missing or damaged record is a state, not a crash."""

from __future__ import annotations

from dataclasses import dataclass, field

from hpcxfer.fileio import read_json
from hpcxfer.grid.task import Task
from hpcxfer.layout import StudyPaths
from hpcxfer.study import load_tasks


@dataclass
class Records:
    rows: list[dict] = field(default_factory=list)  # one per finished task: task fields + result
    missing: list[Task] = field(default_factory=list)  # tasks with no usable result.json
    problems: list[str] = field(default_factory=list)  # what was skipped, and why


def read_results(paths: StudyPaths) -> Records:
    rec = Records()
    for task in load_tasks(paths):
        tp = paths.task(task.task_id)
        try:
            result = read_json(tp.result)
        except FileNotFoundError:
            rec.missing.append(task)
            continue
        except (OSError, ValueError) as e:
            rec.missing.append(task)
            rec.problems.append(f"{tp.result}: unreadable ({e})")
            continue
        rec.rows.append({**task.to_dict(), **result})
    return rec
