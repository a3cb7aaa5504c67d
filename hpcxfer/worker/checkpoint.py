"""Atomic, complete, versioned checkpoints; strict resume: never a silent restart.

A checkpoint holds everything the next step needs to be the step an uninterrupted run
would have taken: model, optimizer, gradient scaler, the epoch and the step within it,
this epoch's data order, every random number generator, the running sums of the epoch's
training loss, the resolved config and a format version. Written to a temporary file in
the task folder, fsynced, renamed; the previous checkpoint is kept until the new one is
complete, and is the fallback when the newest is truncated or corrupt. A protocol group
keeps one such checkpoint of all its members in its own folder (`GroupPaths`): every
function here takes a task's paths or a group's. A task's checkpoint has a small
`checkpoint.json` beside it (its epoch and step), which submit reads without torch.

At a search's rung a group's checkpoint is split into its members' own (`split`: each
exactly what the member's run alone writes there), and a new group starts from its
members' own checkpoints when they stand at one epoch boundary in one random state
(`compose`): survivors of different groups train on together.

The policy lives here too: `Checkpointer` (timm's CheckpointSaver is the shape) resumes
from the newest checkpoint, saves on a time cadence and at cheap epoch ends, and on a stop
request saves at the next step and raises `Interrupted`; `Position` is where the loop is.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hpcxfer.errors import CheckpointError
from hpcxfer.fileio import atomic_write_bytes, atomic_write_json, fsync_dir, read_json
from hpcxfer.layout import GroupPaths, TaskPaths
from hpcxfer.worker.signals import Interrupted, StopFlag

Paths = TaskPaths | GroupPaths

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
#: What a group's checkpoint shares among its members; the rest is each member's own.
SHARED = ("rng", "epoch", "step", "order", "train_s", "restarts", "wall_s")
#: The generators that training draws from (the data order and augmentation, dropout on the
#: CPU or the GPU); numpy's and Python's are saved too, but nothing in a step draws from
#: them and each process starts them from the OS's entropy, so members may differ there.
DRAWN = ("torch", "data", "cuda")
#: An epoch end is "cheap" to checkpoint when the last save took at most this share of
#: the time since the save before it.
CHEAP_SAVE = 0.05


@dataclass
class Position:
    """Where the loop is: the epoch in progress (= epochs completed), the steps done in it,
    its data order and its training seconds so far. A mid-epoch checkpoint stores all of
    it, with each model's running sums."""

    epoch: int
    step: int = 0
    order: torch.Tensor | None = None
    seconds: float = 0.0  # training time of this epoch so far, for images/s


class RungReached(Interrupted):
    """A search's stop request (`TaskPaths.rung`) names this epoch: checkpointed, resume me."""

    def __init__(self, epoch: int):
        Exception.__init__(self, f"stopped after epoch {epoch}, a search's rung")
        self.signum, self.epoch, self.step = 0, epoch, 0


def stop_after(paths: TaskPaths) -> int | None:
    """The epoch after which a search asked this task to stop (hpcxfer/tune/drive.py), if any."""
    try:
        stop = read_json(paths.rung)["stop_after"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s: ignored (%s)", paths.rung, e)
        return None
    return stop if isinstance(stop, int) and not isinstance(stop, bool) else None


def rung_reached(members: Sequence[TaskPaths], epoch: int) -> bool:
    """Whether a search asked any of `members` (a task alone, or a group's unfinished
    members) to stop after `epoch` or earlier. A group stops at its earliest request: a
    stop request promises the state at that epoch, and a member that asked for none
    loses nothing by a split (its own checkpoint resumes it exactly)."""
    return any(stop is not None and epoch >= stop for stop in map(stop_after, members))


class Checkpointer:
    """When to save (a time cadence, cheap epoch ends, a stop request), and the shared part
    of what: the position, every random generator, restarts and wall time. `contents()`
    gives the models' part, `restore(state)` puts it back. `paths` is a task's or a group's
    (anything with .checkpoint, .checkpoint_prev and .dir); `identity` is checked on load;
    `members` are the tasks it trains (a group's are split at a rung); `start` is where a
    group without a checkpoint starts (`compose`), whose first save replaces the members'
    own checkpoints."""

    def __init__(self, paths: Paths, identity: dict, gen: torch.Generator, minutes: float,
                 stop: StopFlag | None, contents: Callable[[], dict], restore: Callable[[dict], None],
                 members: Sequence[TaskPaths] = (), start: dict | None = None):
        self.paths, self.identity, self.gen, self.stop = paths, identity, gen, stop
        self.members = list(members) or ([paths] if isinstance(paths, TaskPaths) else [])
        self.start = start
        self.contents, self.restore = contents, restore
        self.interval = minutes * 60
        self.last_at = time.monotonic()
        self.cost = 0.0  # seconds the last save took
        self.restarts, self.wall_before = 0, 0.0  # restarts: checkpoints resumed from
        self.began = time.perf_counter()

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.began

    def resume(self) -> Position:
        """Restore the newest checkpoint; its position, or epoch 0."""
        state = load_latest(self.paths, self.identity)
        if state is None:
            state = self.start
        else:
            self.start = None  # the group's checkpoint is newer than its members' own
        if state is None:
            return Position(epoch=0)
        self.restore(state)
        set_rng_state(state["rng"], self.gen)
        self.restarts, self.wall_before = state["restarts"] + 1, state["wall_s"]
        pos = Position(epoch=state["epoch"], step=state["step"], order=state["order"], seconds=state["train_s"])
        log.info("resuming %s at epoch %d step %d (restart %d)", self.paths.dir.name, pos.epoch, pos.step,
                 self.restarts)
        return pos

    def save(self, pos: Position) -> dict:
        """Save the state at `pos`; the state saved."""
        state = {
            "task": self.identity, **self.contents(),
            "rng": rng_state(self.gen), "epoch": pos.epoch, "step": pos.step, "order": pos.order,
            "train_s": pos.seconds, "restarts": self.restarts, "wall_s": self.wall(),
        }
        self.cost = save(self.paths, state)
        self.last_at = time.monotonic()
        if self.start is not None:  # the group's checkpoint holds what the members' own held
            for tp in self.members:
                remove(tp)
            self.start = None
        return state

    def after_step(self, pos: Position) -> None:
        if self.stop:
            self.save(pos)  # a failure here propagates: the task then fails rather than lies
            raise Interrupted(self.stop.signum or 0, pos.epoch, pos.step)  # set: bool(stop) says so
        if time.monotonic() - self.last_at >= self.interval:
            self.try_save(pos)

    def epoch_end(self, pos: Position) -> None:
        if rung_reached(self.members, pos.epoch):
            state = self.save(pos)  # a group's first: a crash during the split loses nothing
            if isinstance(self.paths, GroupPaths):
                split(self.paths, state, self.members)
            raise RungReached(pos.epoch)
        since = time.monotonic() - self.last_at
        if since >= self.interval or self.cost <= CHEAP_SAVE * since:
            self.try_save(pos)

    def try_save(self, pos: Position) -> None:
        """Save, or warn: a full disk or a quota must not kill the work done since the last
        checkpoint; the previous one is intact, and the next cadence tries again."""
        try:
            self.save(pos)
        except OSError as e:
            log.warning("checkpoint of %s at epoch %d step %d failed (%s); keeping the previous one",
                        self.paths.dir.name, pos.epoch, pos.step, e)
            self.last_at = time.monotonic()


def save(paths: Paths, state: dict) -> float:
    """Write the new checkpoint beside the old; the old one becomes the fallback only
    once the new one is complete on disk. Returns the seconds it took.

    A failed write (disk full, quota) raises OSError and leaves the existing checkpoints
    as they were: the temporary file is removed and nothing is renamed.
    """
    began = time.perf_counter()
    buf = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state, "sha256": digest(state)}, buf)
    atomic_write_bytes(paths.checkpoint_new, buf.getvalue())
    if paths.checkpoint.exists():
        os.replace(paths.checkpoint, paths.checkpoint_prev)
    os.replace(paths.checkpoint_new, paths.checkpoint)
    fsync_dir(paths.dir)
    if isinstance(paths, TaskPaths) and "epoch" in state and "step" in state:
        # Written after the rename: a crash between the two leaves a stale position, whose
        # bytes and mtime no longer match checkpoint.pt's, which submit then distrusts.
        st = paths.checkpoint.stat()
        atomic_write_json(paths.checkpoint_position, {"epoch": state["epoch"], "step": state["step"],
                                                      "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return time.perf_counter() - began


def drawn(rng: dict) -> dict:
    """The part of an `rng_state` that training draws from (`DRAWN`)."""
    return {k: v for k, v in rng.items() if k in DRAWN}


def member_state(group: dict, task_id: str) -> dict:
    """A member's part of a group's checkpoint as its run alone would have saved it at the
    same position: its task identity, config and model state, with the group's shared part."""
    return {**group["members"][task_id], **{k: group[k] for k in SHARED}}


def split(gp: GroupPaths, state: dict, members: Sequence[TaskPaths]) -> None:
    """Write each member's part of the group's `state` as that member's own checkpoint
    (each atomically), then remove the group's: the members go on apart, or regrouped."""
    for tp in members:
        save(tp, member_state(state, tp.task_id))
    remove(gp)
    log.info("%s: split into its members' own checkpoints at epoch %d", gp.group_id, state["epoch"])


def compose(gp: GroupPaths, identity: dict, members: Sequence[tuple[TaskPaths, dict]], mode: str) -> dict:
    """The state of group `gp` (`identity`) that its members' own checkpoints make up
    (`members`: each member's paths and task identity), to start from as if it were the
    group's checkpoint (`Checkpointer`'s `start`). They must all stand at one epoch
    boundary (step 0) with one random state that training draws from (the data order and
    augmentation, dropout): then the group's steps are each member's own steps."""
    states = []
    for tp, task in members:
        state = load_latest(tp, task)
        if state is None:
            raise CheckpointError(f"{tp.dir}: member {tp.task_id}'s checkpoint disappeared while its group started")
        states.append((tp, state))
    first_tp, first = states[0]
    for tp, state in states:
        if state["step"] != 0 or state["epoch"] != first["epoch"] or first["step"] != 0:
            raise CheckpointError(
                f"{tp.checkpoint}: member {tp.task_id} stands at epoch {state['epoch']} step {state['step']}, "
                f"{first_tp.task_id} at epoch {first['epoch']} step {first['step']}; a group starts its members "
                f"at one epoch boundary (`hpcxfer submit` runs such tasks apart)")
        if digest(drawn(state["rng"])) != digest(drawn(first["rng"])) or state["order"] is not None:
            raise CheckpointError(
                f"{tp.checkpoint}: member {tp.task_id}'s random state (data order, augmentation, dropout) differs "
                f"from {first_tp.task_id}'s at epoch {state['epoch']}; refusing to train them on one stream of "
                f"batches (`hpcxfer run-task STUDY {tp.task_id}` trains it alone)")
    group = {"task": identity, "mode": mode,
             "members": {tp.task_id: {k: v for k, v in s.items() if k not in (*SHARED, "format_version")}
                         for tp, s in states},
             **{k: first[k] for k in SHARED},
             # one clock for the group: the members' longest, resumed the most
             "restarts": max(s["restarts"] for _, s in states), "wall_s": max(s["wall_s"] for _, s in states)}
    log.info("%s: composed from %d members' own checkpoints at epoch %d", gp.group_id, len(states), first["epoch"])
    return group


def _load_one(path: Path, identity: dict, what: str) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    version = state.get("format_version") if isinstance(state, dict) else "?"
    if version != FORMAT_VERSION:
        raise ValueError(f"format version {version}, expected {FORMAT_VERSION}")
    stored = state.pop("sha256", None)
    if stored != digest({k: v for k, v in state.items() if k != "format_version"}):
        raise ValueError("contents do not match their checksum (corrupt)")
    if state.get("task") != identity:
        raise CheckpointError(f"{path}: checkpoint belongs to a different {what} config; "
                              f"refusing to resume (remove it to start this {what} afresh)")
    return state


def digest(state: dict) -> str:
    """SHA-256 of a state's contents. torch.load does not check the zip's CRCs, so without
    it a flipped bit in a tensor would load as a silently wrong weight."""
    h = hashlib.sha256()

    def walk(obj: object) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
        elif isinstance(obj, dict):
            h.update(b"{")
            for k in sorted(obj, key=repr):
                h.update(repr(k).encode())
                walk(obj[k])
            h.update(b"}")
        elif isinstance(obj, (list, tuple)):
            h.update(b"[")
            for v in obj:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(obj).encode())

    walk(state)
    return h.hexdigest()


def load_latest(paths: Paths, identity: dict) -> dict | None:
    """The newest usable checkpoint, the previous one if the newest is damaged, or None
    when the task has never checkpointed. Damaged beyond both is an error."""
    # checkpoint.pt.new exists alone only after a crash between save()'s two renames,
    # in which case it is complete and the newest.
    candidates = [p for p in (paths.checkpoint, paths.checkpoint_new, paths.checkpoint_prev) if p.exists()]
    if not candidates:
        return None
    errors = []
    for path in candidates:
        try:
            state = _load_one(path, identity, "group" if isinstance(paths, GroupPaths) else "task")
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - truncated, corrupt, unpicklable: all "damaged"
            errors.append(f"{path.name}: {e}")
            log.warning("checkpoint %s is unusable (%s); trying an older one", path, e)
            continue
        return state
    raise CheckpointError(f"{paths.dir}: every checkpoint is unusable ({'; '.join(errors)}); "
                          "refusing to restart from scratch silently (remove them to start afresh)")


def remove(paths: Paths) -> None:
    for p in (paths.checkpoint, paths.checkpoint_prev, paths.checkpoint_new):
        p.unlink(missing_ok=True)
    if isinstance(paths, TaskPaths):
        paths.checkpoint_position.unlink(missing_ok=True)


def rng_state(data: torch.Generator) -> dict:
    """Every generator a step can draw from: torch's (dropout on the CPU), the loop's data
    generator (order, augmentation), CUDA's (dropout on the GPU), numpy's and Python's."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "data": data.get_state(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, data: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data.set_state(state["data"])
    npy = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "has_gauss": npy["has_gauss"], "gauss": npy["gauss"],
                         "state": {"key": npy["key"].numpy().astype(np.uint32), "pos": npy["pos"]}})
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
