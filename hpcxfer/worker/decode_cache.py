"""Decode once per job, not once per epoch: a streamed set's decoded images on local disk.

A set too large for `runtime.data_memory_gb` is streamed: without a cache every epoch
decodes every JPEG again, and decoding (a few hundred images a second per core) sets the
pace of a 90-epoch pre-training. With `runtime.decode_cache` (default `auto`) the first
pass over a set writes each decoded uint8 image (3 x S x S, S = `data.image_size`) to its
slot in one file on node-local disk, and every later pass reads the slots it needs through
a read-only memory map. The bytes are exactly what decoding gives, so training is
bit-identical with and without the cache.

Where (`runtime.decode_cache`):

- `auto`: `$PBS_JOBFS` (Gadi's node-local disk, docs/design.md §4), else `$SLURM_TMPDIR`,
  else `$TMPDIR`, else the system's temporary folder; in a subfolder `hpcxfer-decoded`.
  The process that builds a cache removes it when it exits, also after an error or a stop
  signal (a SIGKILL leaves it: on node-local disk the scheduler removes the job's folder;
  elsewhere the next task that finds it, its builder dead, adopts it and removes it in
  turn).
- a folder (absolute; `~` and `$VARS` are expanded on the compute node): caches there are
  kept, for later tasks and jobs to reuse, until the user deletes them. A build that died
  half-way is removed by the next task that finds it.
- `off`: decode every pass.

One cache file per (decoder, stored size, the exact list of files in the set's order): two
tasks of a job that stream the same set share one file; a set that differs by one image
gets its own. Files changed in place under the same names are not noticed: delete a kept
cache after changing a data set.

Whole or nothing: a cache is built under `<key>.u8.partial`, with the builder named in
`<key>.lock` (created with O_EXCL: one builder; the others stream meanwhile and look again
at their next pass), fsynced, and renamed to `<key>.u8` only once every slot is written; a
complete file must have exactly the expected size. A builder whose process is gone (same
host: pid and start time; another host: nothing written for STALE_S) is stale, and its
partial file is removed.

Checked when opened: the builder records a CRC-32 of the whole file (`<key>.u8.crc32`,
written before the rename that completes the cache) and every process that opens the cache
checks it first (zlib.crc32 is several times faster than a cryptographic hash, BENCHMARKS.md;
it is there to catch damage, not an adversary). A cache without its checksum, or whose bytes
do not match it, is removed with one warning and built again: training never reads it.

Disk space: the whole file is sized (and allocated, where the file system can) before the
first image is written. A cache that would leave less than RESERVE_FRACTION of the disk
(at least RESERVE_MIN bytes) free is not built: with `auto` the task streams every pass and
says so in its log; with a named folder the task fails before its first step with one line
naming the folder, the size needed and the space free. A cache that finds the disk full
later (another job took the space) falls back to streaming with a warning, never failing
a task in mid-training.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
import weakref
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from hpcxfer.errors import DataError
from hpcxfer.fileio import atomic_write_bytes, fsync_dir, read_json

log = logging.getLogger(__name__)

FORMAT = 1
SUBFOLDER = "hpcxfer-decoded"
#: Node-local folders, in the order `auto` tries them.
LOCAL_ENV = ("PBS_JOBFS", "SLURM_TMPDIR", "TMPDIR")
RESERVE_FRACTION = 0.02
RESERVE_MIN = 1 << 30
#: A builder on another host that has written nothing for this long is presumed dead.
STALE_S = 600.0


def size_text(nbytes: float) -> str:
    """Bytes as a person reads them: 130.86 GB, 12.3 MB, 24.6 kB."""
    if nbytes >= 1e8:
        return f"{nbytes / 1e9:.2f} GB"
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e5 else f"{nbytes / 1e3:.1f} kB"


def folder_for(setting: str) -> tuple[Path | None, bool]:
    """(folder, kept) for a `runtime.decode_cache` setting; (None, False) for `off`."""
    if setting == "off":
        return None, False
    if setting == "auto":
        for var in LOCAL_ENV:
            value = os.environ.get(var)
            if value and os.path.isdir(value):
                return Path(value) / SUBFOLDER, False
        return Path(tempfile.gettempdir()) / SUBFOLDER, False
    path = os.path.expanduser(os.path.expandvars(setting))
    if "$" in path or not os.path.isabs(path):
        raise DataError(None, "runtime.decode_cache", f"{setting!r} is not an absolute folder on this node "
                        f"(gives {path!r})", hint="auto, off, or an absolute path; $VARS must be set")
    return Path(path), True


def cache_key(paths: Iterable[str], shape: tuple[int, ...], decoder: str) -> str:
    """The name of a set's cache: its decoder, image shape and files in order."""
    h = hashlib.sha256(f"{FORMAT}|{decoder}|{'x'.join(map(str, shape))}|".encode())
    for p in paths:
        h.update(os.fsencode(p))
        h.update(b"\0")
    return f"{decoder}-{shape[-1]}px-{h.hexdigest()[:24]}"


def _start_time(pid: int) -> int | None:
    """A process's start time (clock ticks since boot), from /proc; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def me() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid)}


def _alive(owner: dict, quiet_s: float) -> bool:
    """Whether the process named in a lock still runs. Another host's cannot be asked:
    it counts as alive until its build has been quiet for STALE_S."""
    if owner.get("host") != socket.gethostname():
        return quiet_s < STALE_S
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    start = _start_time(pid)
    return start is not None and (owner.get("start") is None or start == owner.get("start"))


# Files this process must remove when it exits, and bytes it has promised to caches not
# yet allocated (so that a task's train and val caches are sized together).
_OWNED: set[Path] = set()
_PLANNED: dict[Path, int] = {}
_OWNER_PID: int | None = None
# Caches this process has checked (or built): path -> (inode, mtime) it had then.
_VERIFIED: dict[Path, tuple[int, int]] = {}
# Builders alive in this process: a lock naming this process whose builder is gone (a task
# that stopped in mid-pass, in a process that trains another task next) is stale.
_BUILDING: dict[Path, weakref.ref] = {}


def _own(*paths: Path) -> None:
    global _OWNER_PID
    if _OWNER_PID is None:
        _OWNER_PID = os.getpid()
        atexit.register(remove_owned)
    _OWNED.update(paths)


def _disown(*paths: Path) -> None:
    _OWNED.difference_update(paths)


def remove_owned() -> None:
    """Remove every cache file this process built or adopted (run at exit; forked loader
    workers inherit the list and must not act on it)."""
    if os.getpid() != _OWNER_PID:
        return
    for path in sorted(_OWNED):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove decode cache file %s (%s)", path, e.strerror or e)
    _OWNED.clear()


def crc32_of(path: Path) -> int:
    """zlib's CRC-32 of a file's bytes, read through a memory map."""
    import mmap

    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return 0
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            view = memoryview(m)
            try:
                return zlib.crc32(view)
            finally:
                view.release()


def free_space(folder: Path) -> tuple[int, int]:
    """(free bytes, total bytes) of the file system holding `folder` (or its nearest existing parent)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return usage.free, usage.total


class DecodeCache:
    """One set's cache file: its state on disk, and the right to build it."""

    def __init__(self, folder: Path, key: str, count: int, shape: tuple[int, ...], kept: bool):
        self.folder, self.key, self.count, self.shape, self.kept = folder, key, count, tuple(shape), kept
        self.slot = math.prod(self.shape)
        self.nbytes = count * self.slot
        self.path = folder / f"{key}.u8"
        self.partial = folder / f"{key}.u8.partial"
        self.lock = folder / f"{key}.lock"
        self.checksum = folder / f"{key}.u8.crc32"

    def __str__(self) -> str:
        return str(self.path)

    def plan(self) -> str | None:
        """Promise this cache its space, unless it is complete already. Returns why it does
        not fit (one line), or None."""
        if self._complete_size():
            return None
        free, total = free_space(self.folder)
        others = sum(n for p, n in _PLANNED.items() if p != self.path and p.parent == self.folder)
        reserve = max(RESERVE_MIN, int(RESERVE_FRACTION * total))
        if self.nbytes + others + reserve > free:
            return (f"{self.folder}: {size_text(self.nbytes)} needed for {self.count} decoded images"
                    + (f" (+ {size_text(others)} for this task's other set)" if others else "")
                    + f", {size_text(free)} free; keeping {size_text(reserve)} free")
        _PLANNED[self.path] = self.nbytes
        return None

    def _complete_size(self) -> bool:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return False
        if size != self.nbytes:
            log.warning("decode cache %s has %d bytes, not %d: ignored", self.path, size, self.nbytes)
            return False
        return True

    def open(self) -> np.ndarray | None:
        """The complete cache, memory-mapped read-only as uint8 [count, *shape]; None if it
        is not there (yet). Adopts a finished cache whose builder is gone (auto mode)."""
        if not self._complete_size() or not self._intact():
            return None
        try:
            images = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.count, *self.shape))
        except (FileNotFoundError, ValueError):  # removed by its builder just now
            return None
        _PLANNED.pop(self.path, None)
        if not self.kept and self.path not in _OWNED:
            owner = self._owner()
            if owner is None or not _alive(owner, 0.0):
                # left by a killed task: ours now, to remove when this process exits
                try:
                    atomic_write_bytes(self.lock, json.dumps(me()).encode())
                    _own(self.path, self.lock, self.checksum)
                    log.info("adopted decode cache %s (its builder is gone)", self.path)
                except OSError as e:
                    log.warning("could not adopt decode cache %s (%s)", self.path, e.strerror or e)
        return images.view(np.ndarray)

    def _intact(self) -> bool:
        """Whether the complete cache's bytes match the checksum its builder recorded; one
        that does not (or has none) is removed, so that it is built again."""
        try:
            st = self.path.stat()
            if _VERIFIED.get(self.path) == (st.st_ino, st.st_mtime_ns):
                return True
            record = read_json(self.checksum)
            expected = record.get("crc32") if isinstance(record, dict) else None
            actual = crc32_of(self.path)
        except FileNotFoundError as e:
            if e.filename != str(self.checksum):
                return False  # removed by its builder just now
            expected, actual = None, -1
        except (OSError, ValueError) as e:
            expected, actual = None, -1
            log.debug("decode cache checksum %s unreadable: %s", self.checksum, e)
        if expected == actual:
            _VERIFIED[self.path] = (st.st_ino, st.st_mtime_ns)
            return True
        log.warning("decode cache %s is damaged (%s): removed, and decoded again", self.path,
                    "its checksum does not match" if expected is not None else f"no readable {self.checksum.name}")
        for p in (self.path, self.checksum):
            try:
                p.unlink(missing_ok=True)
            except OSError as e:
                log.warning("could not remove %s (%s)", p, e.strerror or e)
        return False

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(self.lock.read_text())
            return owner if isinstance(owner, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _quiet_s(self) -> float:
        newest = 0.0
        for p in (self.partial, self.lock):
            try:
                newest = max(newest, p.stat().st_mtime)
            except FileNotFoundError:
                pass
        return time.time() - newest

    def claim(self) -> Builder | None:
        """Become this cache's builder; None when another live process builds it or the
        disk has no room (a warning says so)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            log.warning("decode cache folder %s unusable (%s); streaming", self.folder, e.strerror or e)
            return None
        for _ in range(2):
            try:
                fd = os.open(self.lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    continue  # released just now: try again
                building = _BUILDING.get(self.path, lambda: None)()
                if (owner == me() and building is not None) or (owner != me() and _alive(owner, self._quiet_s())):
                    return None  # being built: stream this pass, look again at the next
                log.info("removing the decode cache build of a process that is gone (%s)", owner)
                for p in (self.partial, self.lock):
                    p.unlink(missing_ok=True)
                continue
            except OSError as e:
                log.warning("cannot create %s (%s); streaming", self.lock, e.strerror or e)
                return None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me()))
            _own(self.lock, self.partial)
            break
        else:
            return None
        try:
            fd = os.open(self.partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            log.warning("cannot create %s (%s); streaming", self.partial, e.strerror or e)
            self._release()
            return None
        try:
            try:
                os.posix_fallocate(fd, 0, self.nbytes)  # the space is ours before the first image
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                os.ftruncate(fd, self.nbytes)  # a file system without fallocate: sparse
        except OSError as e:
            os.close(fd)
            self._release()
            log.warning("decode cache %s: cannot allocate %s (%s); streaming every pass",
                        self.path, size_text(self.nbytes), e.strerror or e)
            return None
        _PLANNED.pop(self.path, None)
        builder = Builder(self, fd)
        _BUILDING[self.path] = weakref.ref(builder)
        return builder

    def _release(self) -> None:
        for p in (self.partial, self.lock):
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass
        _disown(self.partial, self.lock)
        _PLANNED.pop(self.path, None)


class Builder:
    """Writes decoded images into their slots of a partial cache file. `write` may run in
    any process forked from the builder's (the file descriptor is inherited; writes are
    positioned); `mark` and `finish` run in the builder's process."""

    def __init__(self, cache: DecodeCache, fd: int):
        self.cache, self.fd = cache, fd
        self.written = np.zeros(cache.count, dtype=bool)
        self._close = weakref.finalize(self, os.close, fd)  # a builder dropped in mid-pass

    def write(self, positions: np.ndarray, images: np.ndarray) -> None:
        slot = self.cache.slot
        images = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(positions), slot)
        for pos, row in zip(np.asarray(positions).tolist(), images):
            view = memoryview(row)
            done = 0
            while done < slot:  # pwrite may write less than asked
                done += os.pwrite(self.fd, view[done:], pos * slot + done)

    def mark(self, positions: np.ndarray) -> None:
        self.written[np.asarray(positions, dtype=np.int64)] = True

    def missing(self) -> np.ndarray:
        return np.flatnonzero(~self.written)

    def finish(self) -> bool:
        """Make the cache whole (fsync, rename); False (and the build dropped) if it failed."""
        cache = self.cache
        if len(self.missing()):
            raise RuntimeError(f"{cache.partial}: {len(self.missing())} slots not written")
        try:
            os.fsync(self.fd)
            self._close()
            crc = crc32_of(cache.partial)
            atomic_write_bytes(cache.checksum, json.dumps({"crc32": crc, "nbytes": cache.nbytes}).encode())
            os.replace(cache.partial, cache.path)
            fsync_dir(cache.folder)
            st = cache.path.stat()
            _VERIFIED[cache.path] = (st.st_ino, st.st_mtime_ns)
        except OSError as e:
            log.warning("decode cache %s could not be completed (%s); streaming every pass", cache.path,
                        e.strerror or e)
            cache._release()
            return False
        _disown(cache.partial)
        if not cache.kept:
            _own(cache.checksum)
        if cache.kept:
            cache.lock.unlink(missing_ok=True)  # a kept cache has no owner
            _disown(cache.lock)
        else:
            _own(cache.path)
        return True
