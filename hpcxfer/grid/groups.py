"""Protocol groups: fine-tuning tasks that differ only in their protocol, trained by one
worker on one stream of batches.

The protocols of one (split, size) cell read the same images in the same order, with the
same augmentation and the same dropout masks; only the weights they train differ. A group
is such a set of tasks: everything but the protocol fields (`GROUP_FREE`) is equal, so one
process decodes the data once, draws one random stream and steps every member on each
batch (hpcxfer/worker/group.py). Every member still writes its own records in its own task
folder, as its solo run would.

Grouping is a pure function of the tasks to run (`make_groups`), done at submit time over
the tasks that are not done: a group's id is a hash of its sorted member ids, so the same
unfinished set always forms the same group (and resumes the same group checkpoint), while
a grid that later adds protocols to a cell forms a new group of what is left to run.

Except what has progress to lose: a group that holds a checkpoint of unfinished members
stays as it is (all its members share one position in one stream of batches, which a
member added at epoch 0 cannot join), and so does a task whose own checkpoint stands
mid-epoch (`units`' `kept` and `alone`, read off the study by hpcxfer/checkpoints.py).
Tasks whose own checkpoints stand at an epoch boundary (a search's survivors, split from
their groups at a rung) group with the tasks at the same boundary (`starts`): the worker
starts such a group from its members' own checkpoints.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from hpcxfer.grid.task import Task

#: The fields in which members of one group may differ.
GROUP_FREE = ("transfer_layers", "high_lr_layers", "initial_decay_epochs", "frozen_layers", "lr_high", "lr_low")
#: Prefix of a group id (a task id never starts with it: tasks are `pt-` or `ft-`).
PREFIX = "g-"
#: Members of a group when `runtime.group_max` is 0 (automatic) and the device does not
#: say otherwise: the 42 protocols of a cell of the paper's study fit in one group.
AUTO_MAX = 64
#: Parameters of each architecture with a 500-class head (the narrow one: 5 classes).
ARCH_PARAMS = {"alexnet": 59.1e6, "vgg11": 130.8e6, "alexnet-narrow": 0.1e6, "resnet18": 11.4e6,
               "resnet50": 24.5e6, "resnet-narrow": 0.16e6}
#: Device memory a member takes, in multiples of its fp32 weights: weights, gradients and
#: momentum (3), and as much again for activations and workspace at batch 256 (assumed).
MEMBER_FACTOR = 6
#: The share of a GPU's memory a group's members may take; the rest holds decoded images.
GROUP_SHARE = 0.5


def auto_max(arch: str, device_gb: float | None) -> int:
    """Members of an automatic group (`runtime.group_max: 0`) that fit a device of
    `device_gb` GB (None: not a GPU, or not known: AUTO_MAX). AlexNet: 11 on a V100,
    28 on an A100, 49 on an H200."""
    per_member = ARCH_PARAMS.get(arch, 0.0) * 4 * MEMBER_FACTOR
    if device_gb is None or per_member <= 0:
        return AUTO_MAX
    return max(1, min(AUTO_MAX, int(device_gb * 1e9 * GROUP_SHARE // per_member)))


def group_key(task: Task) -> tuple:
    """What members of one group share: every identity field except the protocol's."""
    identity = task.identity()
    return tuple((k, repr(v)) for k, v in sorted(identity.items()) if k not in GROUP_FREE)


@dataclass(frozen=True)
class Group:
    group_id: str
    members: tuple[str, ...]  # task ids, in the order the tasks were given

    def to_dict(self) -> dict:
        return {"group_id": self.group_id, "members": list(self.members)}


@dataclass(frozen=True)
class Unit:
    """What one worker process runs: a task alone (`id` is the task's) or a protocol group
    (`id` is the group's). Backends schedule units; status and collect still see tasks."""

    id: str
    stage: str
    depends_on: tuple[str, ...]
    members: tuple[str, ...]

    @property
    def is_group(self) -> bool:
        return is_group_id(self.id)

    def to_dict(self) -> dict:
        return {"id": self.id, "stage": self.stage, "depends_on": list(self.depends_on),
                "members": list(self.members)}

    @classmethod
    def of_task(cls, task: Task) -> Unit:
        return cls(task.task_id, task.stage, task.depends_on, (task.task_id,))


def group_id(tasks: list[Task]) -> str:
    """`g-s0-x10-<hash of the sorted member ids>`: readable split and size, exact members."""
    first = tasks[0]
    digest = hashlib.sha256("\n".join(sorted(t.task_id for t in tasks)).encode()).hexdigest()[:10]
    return f"{PREFIX}s{first.split}-x{first.examples_per_class}-{digest}"


def is_group_id(name: str) -> bool:
    return name.startswith(PREFIX)


def make_groups(tasks: list[Task], group_max: int, device_gb: float | None = None,
                starts: Mapping[str, int] | None = None) -> list[Task | Group]:
    """The units to run, in the order of `tasks`: a Group for every set of two or more
    fine-tuning tasks with one `group_key` that start at one epoch (`starts`: a task's
    epoch boundary, 0 if not named), split into groups of at most `group_max`, the task
    itself otherwise. group_max 1 runs every task alone; 0 sizes groups to the device's
    memory (`auto_max`)."""
    limit = group_max or (auto_max(tasks[0].arch, device_gb) if tasks else AUTO_MAX)
    starts = starts or {}
    by_key: dict[tuple, list[Task]] = {}
    for t in tasks:
        if t.stage == "finetune" and limit > 1:
            by_key.setdefault((group_key(t), starts.get(t.task_id, 0)), []).append(t)
    first_of: dict[str, Task | Group] = {}
    for members in by_key.values():
        for i in range(0, len(members), limit):
            chunk = members[i:i + limit]
            if len(chunk) > 1:
                group = Group(group_id(chunk), tuple(t.task_id for t in chunk))
                first_of[chunk[0].task_id] = group
                for t in chunk[1:]:
                    first_of[t.task_id] = None  # type: ignore[assignment] # held by the group
    units: list[Task | Group] = []
    for t in tasks:
        unit = first_of.get(t.task_id, t)
        if unit is not None:
            units.append(unit)
    return units


def units(tasks: list[Task], group_max: int, device_gb: float | None = None, kept: tuple[Group, ...] = (),
          alone: frozenset[str] = frozenset(),
          starts: Mapping[str, int] | None = None) -> tuple[list[Unit], list[Group]]:
    """`make_groups` as what backends schedule: (the units in order, the groups among them).

    Regrouping never throws progress away: the `kept` groups (each holding a checkpoint of
    its unfinished members) run again as they are, and the tasks in `alone` (each with a
    checkpoint of its own that stands mid-epoch) run alone; the rest of `tasks` is grouped
    anew, a task with its own checkpoint at an epoch boundary (`starts`) only with tasks at
    that boundary. A unit stands where its first task stands in `tasks`."""
    by_id = {t.task_id: t for t in tasks}
    place = {t.task_id: i for i, t in enumerate(tasks)}
    held = {m: g for g in kept for m in g.members if m in by_id}
    rest = [t for t in tasks if t.task_id not in held and t.task_id not in alone]
    placed: list[tuple[int, Unit, Group | None]] = []
    for g in kept:
        present = [m for m in g.members if m in by_id]
        deps = tuple(sorted({d for m in present for d in by_id[m].depends_on}))
        placed.append((min(place[m] for m in present), Unit(g.group_id, "finetune", deps, g.members), g))
    placed += [(place[t], Unit.of_task(by_id[t]), None) for t in alone if t in by_id and t not in held]
    for u in make_groups(rest, group_max, device_gb, starts):
        if isinstance(u, Group):
            deps = tuple(sorted({d for m in u.members for d in by_id[m].depends_on}))
            placed.append((place[u.members[0]], Unit(u.group_id, "finetune", deps, u.members), u))
        else:
            placed.append((place[u.task_id], Unit.of_task(u), None))
    placed.sort(key=lambda x: x[0])
    return [u for _, u, _ in placed], [g for _, _, g in placed if g is not None]
