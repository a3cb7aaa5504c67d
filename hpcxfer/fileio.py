"""Crash-safe file writes: a record is on disk whole or not at all.

Every file hpcxfer writes that another process may read goes through here. The parallel
file systems of HPC sites (Lustre, GPFS) give no useful locks, so safety comes from
write-to-temporary + fsync + rename, and from appending whole lines in one write.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jsonlines

try:
    from orjson import loads as _fast_loads
except ImportError:  # a declared dependency; without it everything still reads, several times slower
    _fast_loads = json.loads


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable: without it a crash can forget the new name."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@functools.cache
def _file_mode() -> int:
    """What open() would give a new file (0o666 less the umask); mkstemp gives 0o600,
    which would hide results from the rest of a project group on a shared file system."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def append_jsonl(path: Path, record: dict) -> None:
    """Append one record as one line with a single write(2), then fsync.

    O_APPEND makes the write land at the end even with other writers, and a single
    write of a short line is never interleaved; a crash mid-write can at worst leave a
    truncated last line, which readers skip and `rewrite_jsonl` removes on resume.
    """
    line = (dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def loads(text: str | bytes) -> Any:
    """A JSON value at orjson's speed, or by the standard library where orjson refuses what
    Python writes: NaN and Infinity (a diverged loss in a result.json)."""
    try:
        return _fast_loads(text)
    except ValueError:
        return json.loads(text)


#: Why a line of a JSONL file was not read (the reasons collect counts).
TRUNCATED = "truncated (the last line of a file, never finished)"
BLANK, NOT_JSON, NOT_OBJECT = "blank", "not JSON", "not a JSON object"


def jsonl_lines(lines: Iterable[bytes | str]) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, value, None) for each line that parses, and (line number, None, why)
    for each that does not (BLANK or NOT_JSON): jsonlines' Reader, with `loads`."""
    reader = jsonlines.Reader(lines, loads=loads)
    lineno = 0
    while True:
        try:
            value = reader.read(allow_none=True)
        except EOFError:
            return
        except jsonlines.InvalidLineError as e:
            lineno = e.lineno
            yield lineno, None, NOT_JSON if str(e.line).strip() else BLANK
            continue
        lineno += 1
        yield lineno, value, None


def parse_jsonl(data: bytes) -> tuple[list[dict], list[str]]:
    """The whole JSON objects of a JSONL file's bytes, and why each other line was left out.

    The common case (every line whole) is parsed as one JSON array by orjson, many times
    faster than line by line; any damage (or a NaN, which only the standard library reads)
    falls back to `jsonl_lines`, which says what each damaged line is. A last line without
    its newline is TRUNCATED: an append writes a record and its newline at once.
    """
    problems = []
    if data and not data.endswith(b"\n"):
        problems.append(TRUNCATED)
        data = data[:data.rfind(b"\n") + 1]
    if not data:
        return [], problems
    try:
        records = _fast_loads(b"[" + data[:-1].replace(b"\n", b",") + b"]")
        if set(map(type, records)) == {dict}:
            return records, problems
    except ValueError:
        pass
    records = []
    for _, value, why in jsonl_lines(data[:-1].split(b"\n")):
        if why is None and type(value) is not dict:
            why = NOT_OBJECT
        if why:
            problems.append(why)
        else:
            records.append(value)
    return records, problems


def iter_jsonl(path: Path) -> Iterator[dict]:
    """Records of a JSONL file, skipping lines that are not whole JSON objects (a torn
    last line from a write that never finished, garbage from a full disk)."""
    try:
        with open(path, "rb") as f:
            yield from (value for _, value, _ in jsonl_lines(f) if type(value) is dict)
    except FileNotFoundError:
        return


def iter_jsonl_lines(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """`jsonl_lines` of a file: for readers that must say where a file is damaged rather
    than skip it quietly."""
    with open(path, "rb") as f:
        yield from jsonl_lines(f)


def rewrite_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_bytes(path, "".join(dumps(r) + "\n" for r in records).encode())
