"""Crash-safe writes: whole records, ordinary permissions, torn lines skipped."""

from __future__ import annotations

import os

from hpcxfer.fileio import append_jsonl, atomic_write_json, iter_jsonl


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


def test_torn_last_line_and_garbage_are_skipped(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"epoch": 1})
    append_jsonl(path, {"epoch": 2})
    with open(path, "ab") as f:
        f.write(b'not json\n{"epoch": 3, "val')
    assert [r["epoch"] for r in iter_jsonl(path)] == [1, 2]
