"""Lock files that hold on Lustre, GPFS and NFS, and recover when their owner is gone.

Two locks use this: a task's `running.json` (one worker trains a task at a time) and a
study's `.submit.lock` (one `submit` decides and records what to submit at a time, and a
`cancel` waits for it, so that it cancels what that submit queued).

A lock file is a JSON record of its owner (`procs.ProcessId`: host, pid, start time, boot
id, pid namespace), a random token and when it was taken. It is written whole to a
temporary name and hard-linked to the lock's name: link(2) fails if the name exists, on
every one of those file systems (O_CREAT|O_EXCL where links are not supported). While
held, a thread touches the file every `HEARTBEAT_S` seconds (its mtime is the heartbeat).

A lock is stale, and is taken over, when its owner is gone:
  - owner on this host: its process (that pid with that start time) is not alive;
  - owner on another host: its heartbeat is older than `STALE_S` seconds;
  - the file names no owner: JSON without a usable host and pid, or (maybe being written
    where link(2) is not supported) not JSON and older than `DAMAGED_GRACE_S`.
Taking over happens under a guard file (O_CREAT|O_EXCL) that one process holds at a time:
it judges the lock again, renames it to a name of its own, checks it is still the file
judged stale (else puts it back), removes it, and tries the link again; so processes that
find one stale lock at once do not both end up holding it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from hpcxfer.errors import HpcxferError, StudyError
from hpcxfer.fileio import fsync_dir
from hpcxfer.layout import StudyPaths
from hpcxfer.procs import ProcessId

log = logging.getLogger(__name__)

#: Seconds between two touches of a held lock file.
HEARTBEAT_S = 30.0
#: Seconds without a heartbeat after which another host's lock is stale (its owner is
#: taken for dead: a node failure, the OOM killer). Much longer than HEARTBEAT_S, so that a
#: slow file system or a little clock skew between nodes never breaks a live lock.
STALE_S = 600.0
#: Seconds a `submit` waits for another submit of the same study to finish deciding and
#: recording what it submits, before it gives up (exit status 2).
SUBMIT_WAIT_S = 5.0
#: Seconds a `cancel` waits for a submit of the study to finish recording what it queued.
CANCEL_WAIT_S = 60.0
#: Seconds a lock file that is not JSON (being written where link(2) is not supported, or
#: damaged) is left alone.
DAMAGED_GRACE_S = 5.0
#: Seconds after which a take-over guard (held for milliseconds) is taken for a crash's.
GUARD_STALE_S = 30.0


class LockHeld(HpcxferError):
    """The lock is held by a live owner (exit status 2 from the CLI)."""

    def __init__(self, path: Path, holder: Holder | None, message: str = ""):
        self.path, self.holder = Path(path), holder
        super().__init__(message or f"{path} is held by {describe(holder)}")


@dataclass
class Holder:
    """Who holds a lock file, as read off it."""

    record: dict | None  # None: the file names no owner (damaged)
    owner: ProcessId | None
    age_s: float  # since its last heartbeat
    live: bool
    why: str  # what `live` rests on, for messages
    ino: int = 0

    def get(self, key: str, default=None):
        return self.record.get(key, default) if self.record else default


def describe(holder: Holder | None) -> str:
    if holder is None:
        return "nobody"
    if holder.owner is None:
        return "an unreadable lock file"
    job = holder.get("job_id")
    started = holder.get("started")
    since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) \
        if isinstance(started, (int, float)) and not isinstance(started, bool) else ""
    return f"pid {holder.owner.pid} on host {holder.owner.host}" + (f" (job {job})" if job else "") + since


def inspect(path: Path, stale_s: float = STALE_S) -> Holder | None:
    """Who holds the lock at `path` and whether they are alive; None when there is no lock."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            raw = f.read(65536)
    except FileNotFoundError:
        return None
    except OSError as e:  # unreadable (permissions, a directory): say held, never break it
        return Holder(None, None, 0.0, True, f"unreadable ({e.strerror})")
    age = max(0.0, time.time() - st.st_mtime)
    try:
        record, raw_bad = json.loads(raw), False
    except ValueError:
        record, raw_bad = None, True
    owner = ProcessId.from_dict(record)
    if owner is None:
        # Not JSON: maybe a lock being written with O_EXCL (no link(2)); give it a moment.
        # JSON that names no process (pid -1, "abc", a list) is no lock of anyone alive.
        live = raw_bad and age < DAMAGED_GRACE_S
        return Holder(record if isinstance(record, dict) else None, None, age, live, "names no process", st.st_ino)
    alive = owner.alive()
    if alive is None:
        live, why = age < stale_s, f"its last heartbeat was {age:.0f} s ago"
    else:
        live, why = alive, "alive" if alive else "its process is gone"
    return Holder(record, owner, age, live, why, st.st_ino)


def _link_supported(e: OSError) -> bool:
    return e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK)


class Lock:
    """A lock file at `path`: `acquire()` or raise LockHeld, `release()`; a context manager.

    `extra` goes into the record (e.g. the scheduler's job id). The file's mtime is
    refreshed every `heartbeat_s` while held.
    """

    def __init__(self, path: Path, extra: dict | None = None, *, stale_s: float = STALE_S,
                 heartbeat_s: float = HEARTBEAT_S):
        self.path = Path(path)
        self.stale_s, self.heartbeat_s = stale_s, heartbeat_s
        self.token = uuid.uuid4().hex
        self.extra = extra or {}
        self.held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- taking it
    def _record(self) -> bytes:
        record = {**self.extra, **ProcessId.current().to_dict(), "token": self.token, "started": time.time()}
        return (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode()

    def _create(self) -> bool:
        """Try once to create the lock file; True when it is now ours."""
        data = self._record()
        tmp = self.path.with_name(f".{self.path.name}.{self.token}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # less the umask, like open()
        try:
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass
            except OSError as e:
                if _link_supported(e):
                    raise
                return self._create_excl(data)
            # The link count, not link()'s answer, says who won: over NFS a retried link
            # whose first reply was lost fails with EEXIST although it succeeded.
            won = os.stat(tmp).st_nlink == 2
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if won:
            fsync_dir(self.path.parent)
        return won

    def _create_excl(self, data: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # less the umask, like open()
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.path.parent)
        return True

    def _break(self, holder: Holder) -> bool:
        """Remove the stale lock file `holder` was read from, and only that file, under a
        guard (`.<name>.breaking`, O_EXCL) that one process at a time holds: the file is
        judged again under the guard, renamed to a name of our own, checked to be the file
        judged (else put back), and removed. False when another process holds the guard."""
        guard = self.path.with_name(f".{self.path.name}.breaking")
        try:
            os.close(os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            try:  # a guard is held for milliseconds: one this old was left by a crash
                if time.time() - os.stat(guard).st_mtime > GUARD_STALE_S:
                    os.unlink(guard)
            except FileNotFoundError:
                pass
            return False
        try:
            now = inspect(self.path, self.stale_s)
            if now is None or now.live or now.ino != holder.ino:
                return True  # gone, or taken by a live process since: nothing to break
            grave = self.path.with_name(f".{self.path.name}.stale.{self.token}")
            try:
                os.rename(self.path, grave)
            except FileNotFoundError:
                return True
            if now.ino and os.stat(grave).st_ino != now.ino:
                try:  # a new lock took its place between our look and the rename: put it back
                    os.link(grave, self.path)
                except OSError:
                    log.error("%s: a lock of another process taken at the same moment was lost", self.path)
            else:
                log.warning("%s: took over a stale lock of %s (%s)", self.path, describe(holder), holder.why)
            os.unlink(grave)
            return True
        finally:
            try:
                os.unlink(guard)
            except FileNotFoundError:
                pass

    def acquire(self, wait_s: float = 0.0, poll_s: float = 0.2) -> Lock:
        """Take the lock, waiting up to `wait_s` seconds for a live owner to let go; raise
        LockHeld naming the owner if it does not."""
        deadline = time.monotonic() + wait_s
        breaks = 0
        while True:
            if self._create():
                self.held = True
                self._start_heartbeat()
                return self
            holder = inspect(self.path, self.stale_s)
            if (holder is None or not holder.live) and breaks < 100:
                breaks += 1
                if holder is not None and not self._break(holder):
                    time.sleep(0.02)  # another process is breaking it
                continue  # let go, or stale and removed: try again at once
            if time.monotonic() >= deadline:
                raise LockHeld(self.path, holder)
            time.sleep(poll_s)

    # -------------------------------------------------------------- holding it
    def _ours(self) -> bool:
        try:
            return json.loads(self.path.read_bytes()).get("token") == self.token
        except (OSError, ValueError, AttributeError):
            return False

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self._ours():
                log.error("%s: this process no longer holds the lock (taken over as stale?)", self.path)
                return
            try:
                os.utime(self.path)
            except OSError as e:
                log.warning("%s: heartbeat failed: %s", self.path, e)

    def _start_heartbeat(self) -> None:
        if self.heartbeat_s > 0:
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.path.name}", daemon=True)
            self._thread.start()

    def release(self) -> None:
        """Let go: stop the heartbeat and remove the file if it is still ours. Idempotent."""
        if not self.held:
            return
        self.held = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._ours():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as e:  # a folder gone read-only: the file names a dead process, stale
                log.warning("could not remove the lock %s: %s", self.path, e.strerror or e)

    def __enter__(self) -> Self:
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def submit_lock(paths: StudyPaths, wait_s: float = SUBMIT_WAIT_S, doing: str = "submit") -> Lock:
    """Take a study's lock (`StudyPaths.submit_lock`) for a `submit` or a `cancel` (`doing`),
    waiting up to `wait_s` for another submit or cancel of the study; LockHeld names it if
    it does not finish in time. A folder that cannot be written is a StudyError naming it."""
    study_dir, path = paths.dir, paths.submit_lock
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        return Lock(path).acquire(wait_s=wait_s)
    except LockHeld as e:
        raise LockHeld(path, e.holder, (
            f"{study_dir}: another submit or cancel of this study is under way ({describe(e.holder)}), still "
            f"after {wait_s:.0f} s; {doing} again once it is done (a lock of a process that is gone is taken "
            f"over: on its host at once, from another after {STALE_S / 60:.0f} min; the lock is {path})")) from None
    except OSError as e:
        where = path if study_dir.is_dir() else study_dir
        raise StudyError(f"{where}: cannot take the study's lock to {doing}: {e.strerror or e}") from None
