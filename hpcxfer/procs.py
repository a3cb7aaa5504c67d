"""Which process a record names, and whether that very process is still alive.

A pid alone is not an identity: pids are reused, and a pid of 0, -1 or a negative number
means a process group or "every process" to kill(2). A `ProcessId` is (host, pid, start
time, boot id, pid namespace): the start time is field 22 of /proc/<pid>/stat (clock ticks
since boot), which a reused pid does not share; the boot id (/proc/sys/kernel/random/boot_id)
tells a process of an earlier boot from one of this boot; the pid namespace
(/proc/self/ns/pid) tells a container's pid 42 from the host's pid 42. Where /proc is absent
(macOS) these are None and a record is alive while a process with its pid exists.

Run files of the local backend, `running.json` and the study's `.submit.lock` hold one
(`to_dict`); `from_dict` reads any record back, damaged or not, without raising.
"""

from __future__ import annotations

import functools
import os
import signal as _signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity: a batch job's share, not the node's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@functools.cache
def hostname() -> str:
    return socket.gethostname()


@functools.cache
def boot_id() -> str | None:
    try:
        return (PROC / "sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


@functools.cache
def pid_namespace() -> str | None:
    try:
        return os.readlink(PROC / "self/ns/pid")
    except OSError:
        return None


def valid_pid(pid: Any) -> bool:
    """A real process's pid: an int (not a bool) above 1. 0, -1 and negative numbers name
    process groups or every process to kill(2); 1 is init."""
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 1


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) from /proc/<pid>/stat; None
    when there is no such process."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces and ')'.
    fields = raw[raw.rfind(b")") + 2:].split()
    try:
        return fields[0].decode(), int(fields[19])  # fields 3 and 22
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks since boot); None without /proc or
    without that process."""
    st = _stat(pid) if valid_pid(pid) and PROC.joinpath("self").exists() else None
    return st[1] if st else None


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: checks, sends nothing
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class ProcessId:
    host: str
    pid: int
    start: int | None = None
    boot: str | None = None
    pidns: str | None = None

    @classmethod
    def current(cls) -> ProcessId:
        return cls.of(os.getpid())

    @classmethod
    def of(cls, pid: int) -> ProcessId:
        """The identity of process `pid` of this host, as it is now (e.g. a child just started)."""
        return cls(hostname(), pid, start_time(pid), boot_id(), pid_namespace())

    @classmethod
    def from_dict(cls, record: Any) -> ProcessId | None:
        """The process a record names, or None when it names none usable: not a mapping, no
        host, a pid that is not an int above 1 ("abc", -1, a list, true)."""
        if not isinstance(record, Mapping):
            return None
        host, pid, start = record.get("host"), record.get("pid"), record.get("start")
        if not isinstance(host, str) or not host or not isinstance(pid, int) or not valid_pid(pid):
            return None
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            start = None
        boot, pidns = (v if isinstance(v, str) and v else None for v in (record.get("boot"), record.get("pidns")))
        return cls(host, pid, start, boot, pidns)

    def to_dict(self) -> dict:
        return {"host": self.host, "pid": self.pid, "start": self.start, "boot": self.boot, "pidns": self.pidns}

    @property
    def here(self) -> bool:
        """On this host and in this pid namespace: where its pid means the same process."""
        return self.host == hostname() and (not self.pidns or not pid_namespace() or self.pidns == pid_namespace())

    def alive(self) -> bool | None:
        """True while this very process runs; False when it is gone (or its pid now belongs
        to another process: another start time, another boot); None when it is on another
        host (or in another pid namespace), where no look from here can tell."""
        if not self.here:
            return None
        if not valid_pid(self.pid):
            return False
        if self.boot and boot_id() and self.boot != boot_id():
            return False
        if PROC.joinpath("self").exists():
            st = _stat(self.pid)
            if st is None:
                # Another user's process under /proc's hidepid: it exists but cannot be
                # checked; taken as alive, so that its lock is never taken over.
                return _exists(self.pid)
            if st[0] in ("Z", "X"):  # a zombie has finished: nothing to signal
                return False
            return self.start is None or st[1] == self.start
        return _exists(self.pid)

    def signal(self, sig: int = _signal.SIGTERM) -> bool:
        """Send `sig` to this process only if it is alive and is this very process."""
        if self.alive() is not True:
            return False
        try:
            os.kill(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def signal_group(self, sig: int = _signal.SIGTERM) -> bool:
        """Send `sig` to the process group this process leads (a process started with
        start_new_session), only if it is alive, is this very process and leads its group."""
        if self.alive() is not True:
            return False
        try:
            if os.getpgid(self.pid) != self.pid:
                return False
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"
