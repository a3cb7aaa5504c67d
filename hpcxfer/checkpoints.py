"""Where a study's progress lives on disk, for regrouping and for the disk it takes.

A checkpoint holds work that is not to be thrown away: a protocol group's (of every
unfinished member at one shared position) or a task's own (from a run alone, or split from
its group at a search's rung). Submit keeps a group with a checkpoint as it is, groups the
tasks whose own checkpoints stand at one epoch boundary with each other (the worker starts
their group from those checkpoints), and runs a task alone whose checkpoint stands
mid-epoch or cannot be placed (`resumable`, for hpcxfer/grid/groups.py `units`). It removes
the group checkpoints that no unfinished member needs any more (`remove_leftovers`), whose
bytes `status` reports (`leftover_bytes`).
"""

from __future__ import annotations

from collections.abc import Iterable

from hpcxfer.errors import StudyError
from hpcxfer.fileio import read_json
from hpcxfer.grid.groups import Group
from hpcxfer.grid.task import Task
from hpcxfer.layout import GroupPaths, StudyPaths, TaskPaths
from hpcxfer.study import TaskState, is_done, read_group, task_running


def checkpoint_bytes(wp: TaskPaths | GroupPaths) -> int:
    """Bytes of a worker folder's checkpoints (the newest, the previous, one being written)."""
    total = 0
    for p in (wp.checkpoint, wp.checkpoint_prev, wp.checkpoint_new):
        try:
            total += p.stat().st_size
        except OSError:
            continue
    return total


def boundary(tp: TaskPaths) -> int | None:
    """The epoch boundary at which a task's own checkpoint stands (its step 0), read from the
    position written beside it, which must still describe that very file (its bytes and
    mtime); None when it stands mid-epoch, or where it stands is not known for sure."""
    try:
        pos = read_json(tp.checkpoint_position)
        st = tp.checkpoint.stat()
    except (OSError, ValueError):
        return None
    if tp.checkpoint_new.exists() or not isinstance(pos, dict):
        return None  # a save was cut between its renames: the newest is the .new one
    if (pos.get("bytes"), pos.get("mtime_ns"), pos.get("step")) != (st.st_size, st.st_mtime_ns, 0):
        return None
    epoch = pos.get("epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def checkpointed_groups(paths: StudyPaths) -> list[Group]:
    """The groups with a checkpoint on disk, the newest group.json first."""
    if not paths.groups_dir.is_dir():
        return []
    found = []
    for f in paths.groups_dir.glob("*/group.json"):
        try:
            if checkpoint_bytes(paths.group(f.parent.name)):
                found.append((f.stat().st_mtime, read_group(paths, f.parent.name)))
        except (OSError, StudyError):
            continue  # a damaged group record names no member
    return [g for _, g in sorted(found, key=lambda x: -x[0])]


def _holders(groups: list[Group]) -> dict[str, str]:
    """task id -> the group whose checkpoint holds its progress: the newest naming it."""
    out: dict[str, str] = {}
    for g in groups:
        for m in g.members:
            out.setdefault(m, g.group_id)
    return out


def resumable(paths: StudyPaths, tasks: list[Task],
              todo: list[Task]) -> tuple[tuple[Group, ...], frozenset[str], dict[str, int]]:
    """What of `todo` (the grid's `tasks` left to run) has progress on disk: the groups
    that run again as they are (each holds the checkpoint of its unfinished members, and
    all of those that the grid names are left to run), the tasks whose own checkpoint
    stands mid-epoch or at an unknown place (run alone), and the epoch boundary of each
    task whose own checkpoint stands at one (grouped with tasks at that boundary). They go
    to `groups.units` as `kept`, `alone` and `starts`."""
    groups = checkpointed_groups(paths)
    holder = _holders(groups)
    wanted = {t.task_id for t in todo}
    in_grid = {t.task_id for t in tasks}
    kept = []
    for g in groups:
        mine = [m for m in g.members if m in wanted and holder.get(m) == g.group_id]
        others = [m for m in g.members if m in in_grid and m not in mine and not is_done(paths.task(m))]
        if mine and not others:  # a member queued, running or held by a newer group: not this group's to run
            kept.append(g)
    held = {m for g in kept for m in g.members}
    alone, starts = set(), {}
    for t in todo:
        tp = paths.task(t.task_id)
        if t.task_id in held or not checkpoint_bytes(tp):
            continue
        epoch = boundary(tp)
        if epoch is None:
            alone.add(t.task_id)
        else:
            starts[t.task_id] = epoch
    return tuple(kept), frozenset(alone), starts


def leftover_groups(paths: StudyPaths, states: Iterable[TaskState] = ()) -> list[GroupPaths]:
    """The groups whose checkpoints no unfinished member needs: each member is done, or
    its progress is held by a newer group. Never one with a member queued or running (in
    `states`, the tasks' states joined with the backends') or held by a live worker (it may
    be writing the group's next checkpoint)."""
    busy = {s.task_id for s in states if s.state in ("queued", "running")}
    groups = checkpointed_groups(paths)
    holder = _holders(groups)
    out = []
    for g in groups:
        members = [paths.task(m) for m in g.members]
        if any(tp.task_id in busy or task_running(tp) for tp in members):
            continue
        if all(holder.get(tp.task_id) != g.group_id or is_done(tp) for tp in members):
            out.append(paths.group(g.group_id))
    return out


def leftover_bytes(paths: StudyPaths, states: Iterable[TaskState] = ()) -> int:
    """Bytes of group checkpoints that no unfinished member needs (`leftover_groups`)."""
    return sum(checkpoint_bytes(gp) for gp in leftover_groups(paths, states))


def remove_leftovers(paths: StudyPaths, states: Iterable[TaskState] = ()) -> int:
    """Remove the checkpoints of `leftover_groups` (the group's log and group.json stay:
    results name the group); the bytes freed."""
    freed = 0
    for gp in leftover_groups(paths, states):
        freed += checkpoint_bytes(gp)
        for p in (gp.checkpoint_new, gp.checkpoint, gp.checkpoint_prev):
            p.unlink(missing_ok=True)
    return freed
