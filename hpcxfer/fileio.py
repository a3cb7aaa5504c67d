"""Crash-safe file writes: a record is on disk whole or not at all.

Every file hpcxfer writes that another process may read goes through here. The parallel
file systems of HPC sites (Lustre, GPFS) give no useful locks, so safety comes from
write-to-temporary + fsync + rename, and from appending whole lines in one write.
"""

from __future__ import annotations

import errno
import functools
import io
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonlines

from hpcxfer.errors import ConfigError
from hpcxfer.layout import StudyPaths

try:
    from orjson import loads as _fast_loads
except ImportError:  # a declared dependency; without it everything still reads, several times slower
    _fast_loads = json.loads  # type: ignore[assignment]


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
    """A JSON file's value; OSError for what is not a readable regular file (never waits on a
    FIFO), ValueError for what is not JSON in UTF-8."""
    return json.loads(read_regular(path))


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
        data = read_regular(path)
    except FileNotFoundError:
        return
    yield from (value for _, value, _ in jsonl_lines(io.BytesIO(data)) if type(value) is dict)


def iter_jsonl_lines(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """`jsonl_lines` of a file: for readers that must say where a file is damaged rather
    than skip it quietly."""
    yield from jsonl_lines(io.BytesIO(read_regular(path)))


def rewrite_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_bytes(path, "".join(dumps(r) + "\n" for r in records).encode())


# ---------------------------------------------------------------- reading a record safely
def read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a regular file (at most `limit` + 1 of them when `limit` is given).

    FileNotFoundError when there is none; any other OSError, with a short `strerror`, for
    what is not a readable regular file: a directory, a symlink loop, a FIFO (opened without
    waiting for a writer, then refused), a device, a file the user may not read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, kind_of(st.st_mode), str(path))
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read() if limit is None else f.read(limit + 1)
    finally:
        os.close(fd)


def why_unreadable(e: OSError) -> str:
    """A few words for a read that failed: `a directory`, `a FIFO`, `Permission denied`."""
    return e.strerror or type(e).__name__


def kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a file")):
        if test(mode):
            return name
    return "not a file"


# ---------------------------------------------------------------- where a command may write
#: Pseudo file systems: a write there changes the kernel's state or fails after the work.
_PSEUDO = ("/proc", "/sys", "/dev")
_SCRATCH = ("/dev/shm",)  # a tmpfs under /dev where files are files


@dataclass(frozen=True)
class Output:
    """Where a command writes one output and how: `direct` for a stream (a character device
    such as /dev/null or a terminal, a FIFO, /dev/stdout), written in place and never
    renamed over; otherwise a regular file, replaced atomically (symlinks followed)."""

    path: Path
    direct: bool = False


def _recognise(kind: str, head: bytes) -> bool:
    """Whether `head` (a file's first bytes) is hpcxfer's own output of `kind`."""
    text = head.decode("utf-8", "replace")
    first = text.lstrip().split("\n", 1)[0]
    if kind == "html":
        return text.lstrip().lower().startswith("<!doctype html") and ": hpcxfer report</title>" in text
    if kind == "json":
        try:
            value = json.loads(head)
        except ValueError:
            return False
        return isinstance(value, dict) and set(value) == {"views", "summary"}
    if kind == "csv":
        names = first.split(",")
        return bool(first) and all(_FIELD.fullmatch(n) for n in names) and bool(_CSV_FIELDS & set(names))
    if kind == "markdown":
        return first.startswith("### ")
    if kind == "table":
        return any(line.lstrip().startswith(("┏", "┌")) for line in text.splitlines()[:3])
    if kind == "png":
        return head.startswith(b"\x89PNG\r\n\x1a\n")
    if kind == "pdf":
        return head.startswith(b"%PDF-")
    if kind == "svg":
        return "<svg" in text
    if kind == "script":
        return text.startswith("#!") and "hpcxfer" in text
    if kind == "list":
        return all(_FIELD_ID.fullmatch(line) for line in text.splitlines() if line)
    raise ValueError(f"no output kind {kind!r}")


_FIELD = re.compile(r"[a-z][a-z0-9_]*")
_FIELD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
#: Columns one of which every CSV view of collect has.
_CSV_FIELDS = {"examples_per_class", "protocol", "task_id", "stage", "n", "cells", "val_acc", "val_acc_mean"}
#: How much of an existing file is read to recognise it (a JSON output is read whole).
_HEAD = 1 << 16
_JSON_MAX = 64 << 20


def _refuse(option: str, value: str, why: str, hint: str = "") -> ConfigError:
    return ConfigError(None, option, f"cannot write {value}: {why}", hint)


def _pseudo(real: str) -> str | None:
    for top in _PSEUDO:
        if (real == top or real.startswith(top + "/")) and not any(
                real == s or real.startswith(s + "/") for s in _SCRATCH):
            return top
    return None


def _study_record(real: Path) -> Path | None:
    """The study directory whose own records `real` is, or lies inside, or None."""
    for folder in real.parents:
        study = StudyPaths(folder)
        if study.study_json.is_file():
            for record in study.records:
                if real == record or record in real.parents:
                    return folder
    return None


def _check_place(value: str, option: str, real: Path) -> None:
    """Refuse `real` (a resolved path) inside /proc, /sys, /dev or a study's own records."""
    top = _pseudo(str(real))
    if top:
        raise _refuse(option, value, f"inside {top}, which holds no files to write", "name a file elsewhere")
    study = _study_record(real)
    if study is not None:
        raise _refuse(option, value, f"a record of the study {study}; writing it would destroy the study",
                      "name a file elsewhere")


def _check_parent(value: str, option: str, path: Path) -> None:
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise _refuse(option, value, f"{parent} is not a folder you can write to")


def output_file(value: str | Path, option: str, kind: str, force: bool = False) -> Output:
    """Where a command may write its `kind` of output (html, csv, markdown, json, table, png,
    pdf, svg, script, list) given as `value` for `option`: checked before any work, so
    a refused path costs nothing. A ConfigError in one line (exit status 2) refuses it.

    A character device or FIFO is written in place. A regular file is replaced atomically,
    but only when it is hpcxfer's own output of the same kind (recognised by its first
    bytes, `_recognise`), is empty, or `force` is given. Refused: a folder, a socket or a
    block device, anything inside /proc, /sys or /dev (but /dev/shm), and any record of a
    study (study.json, tasks.jsonl, tasks/, groups/, backends/) of a study it lies in.
    """
    value = str(value)
    path = Path(value).absolute()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise _refuse(option, value, why_unreadable(e)) from None
    if st is not None and (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        return Output(path, direct=True)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise _refuse(option, value, f"it is {kind_of(st.st_mode)}; name a file")
    if st is None:  # a new file, or a symlink to one: written where the link leads
        real = Path(os.path.realpath(path))
        _check_place(value, option, real)
        _check_parent(value, option, real)
        return Output(real)
    real = Path(os.path.realpath(path))
    _check_place(value, option, real)
    if not os.access(real.parent, os.W_OK | os.X_OK):
        raise _refuse(option, value, f"{real.parent} is not a folder you can write to")
    if not force and st.st_size:
        try:
            head = read_regular(real, _JSON_MAX if kind == "json" else _HEAD)
        except OSError as e:
            raise _refuse(option, value, f"it cannot be read to tell what it is ({why_unreadable(e)})",
                          "--force replaces it") from None
        if not _recognise(kind, head[:_JSON_MAX] if kind == "json" else head[:_HEAD]):
            raise _refuse(option, value, f"it exists and is not an earlier {kind} output of hpcxfer",
                          "--force replaces it")
    return Output(real)


def output_folder(value: str | Path, option: str, files: Iterable[tuple[str, str]] = (), force: bool = False
                  ) -> Path:
    """A folder a command writes several outputs into (--plots, --scripts), checked as
    `output_file` checks a file: not a file, not inside /proc, /sys or /dev, not a study's
    records; and each of `files` ((name, kind) of what the command may write there) that
    exists is replaced only when it is hpcxfer's own output of that kind, or with `force`."""
    value = str(value)
    path = Path(value).absolute()
    if path.exists() and not path.is_dir():
        raise _refuse(option, value, "it is a file; name a folder")
    real = Path(os.path.realpath(path))
    _check_place(value, option, real)
    if not path.exists():
        _check_parent(value, option, real / "x")
        return real
    if not os.access(real, os.W_OK | os.X_OK):
        raise _refuse(option, value, "not a folder you can write to")
    for name, kind in files:
        if os.path.lexists(real / name):
            output_file(real / name, option, kind, force)
    return real


def write_output(out: Output, data: bytes) -> None:
    """Write an output where `output_file` allowed it: a stream in place, appending (a
    /dev/stdout that is a file the shell opened keeps what it holds), a file atomically."""
    if not out.direct:
        atomic_write_bytes(out.path, data)
        return
    fd = os.open(out.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
