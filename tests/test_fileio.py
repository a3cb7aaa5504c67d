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


def test_one_reader_reads_and_names_every_line_alike(tmp_path):
    from hpcxfer.fileio import iter_jsonl_lines, parse_jsonl

    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"epoch": 1}\n\n[1, 2]\n{"epoch": 2, "val_loss": NaN}\ngarbage\n{"epoch": 3}\n{"epoch": 4}')
    records, problems = parse_jsonl(path.read_bytes())
    # a NaN (what Python's json writes for a diverged loss) is read, not dropped as orjson would
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[1]["val_loss"] != records[1]["val_loss"]
    assert problems == ["truncated (the last line of a file, never finished)", "blank", "not a JSON object",
                        "not JSON"]
    assert [r["epoch"] for r in iter_jsonl(path)] == [1, 2, 3, 4]  # a whole last line without its newline
    assert [(n, why) for n, _, why in iter_jsonl_lines(path) if why] == [(2, "blank"), (5, "not JSON")]
