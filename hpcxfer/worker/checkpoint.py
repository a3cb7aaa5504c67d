"""Atomic, complete, versioned checkpoints; strict resume (STYLE: never a silent restart)."""

from __future__ import annotations

import io
import logging
import os

import torch

from hpcxfer.errors import CheckpointError
from hpcxfer.fileio import atomic_write_bytes
from hpcxfer.layout import TaskPaths

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def save(paths: TaskPaths, state: dict) -> None:
    """Write the new checkpoint beside the old; the old one becomes the fallback only
    once the new one is complete on disk."""
    buf = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buf)
    tmp_final = paths.checkpoint.with_suffix(".pt.new")
    atomic_write_bytes(tmp_final, buf.getvalue())
    if paths.checkpoint.exists():
        os.replace(paths.checkpoint, paths.checkpoint_prev)
    os.replace(tmp_final, paths.checkpoint)


def _load_one(path, identity: dict) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"format version {state.get('format_version') if isinstance(state, dict) else '?'}, "
                         f"expected {FORMAT_VERSION}")
    if state.get("task") != identity:
        raise CheckpointError(f"{path}: checkpoint belongs to a different task config; "
                              "refusing to resume (remove it to start this task afresh)")
    return state


def load_latest(paths: TaskPaths, identity: dict) -> dict | None:
    """The newest usable checkpoint, the previous one if the newest is damaged, or None
    when the task has never checkpointed. Damaged beyond both is an error."""
    candidates = [p for p in (paths.checkpoint, paths.checkpoint.with_suffix(".pt.new"),
                              paths.checkpoint_prev) if p.exists()]
    if not candidates:
        return None
    errors = []
    for path in candidates:
        try:
            state = _load_one(path, identity)
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - truncated, corrupt, unpicklable: all "damaged"
            errors.append(f"{path.name}: {e}")
            log.warning("checkpoint %s is unusable (%s); trying an older one", path, e)
            continue
        return state
    raise CheckpointError(f"{paths.dir}: every checkpoint is unusable ({'; '.join(errors)}); "
                          "refusing to restart from scratch silently (remove them to start afresh)")


def remove(paths: TaskPaths) -> None:
    for p in (paths.checkpoint, paths.checkpoint_prev, paths.checkpoint.with_suffix(".pt.new")):
        p.unlink(missing_ok=True)
