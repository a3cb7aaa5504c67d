"""Which run files a study's own runner wrote: a per-study secret key and the seal it puts
on each run file.

A run file names a process that `cancel` signals and whose tasks `status` and `submit`
count as queued. Its pid and start time are no secret (`ps` shows both), so where a study
folder is writable by a group, anyone in it could plant a run file naming any process of
the study's owner. The study's key (`StudyPaths.runner_key`: random bytes, mode 0600,
created with O_EXCL and owned by the user who submits) is readable by that user alone;
each run file carries an HMAC of its whole record under the key (`token`). A run file
without the right token is ignored: nothing is signalled and nothing counts as queued.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path

from hpcxfer.errors import StudyError
from hpcxfer.fileio import fsync_dir

#: The field of a run file that holds its seal.
TOKEN = "token"


def _read(path: Path) -> tuple[bytes | None, str]:
    """(key, "") or (None, why it is not usable)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None, f"{path} is missing"
    except OSError as e:
        return None, f"{path} is unreadable ({e.strerror or e})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            return None, f"{path} is not a file of this user that only this user can read (mode 0600)"
        key = os.read(fd, 4096).strip()
    finally:
        os.close(fd)
    return (key, "") if len(key) >= 32 else (None, f"{path} is damaged (too short)")


def study_key(path: Path, create: bool = False) -> tuple[bytes | None, str]:
    """The study's runner key at `path` and "", or None and why there is none usable. With
    `create`, a missing key is made (O_EXCL, mode 0600) and an unusable one is an error."""
    key, why = _read(path)
    if key is not None or not create:
        return key, why
    if path.exists() or path.is_symlink():
        raise StudyError(f"{why}; it cannot seal this study's run files: remove it and submit again")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, secrets.token_hex(32).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)
    return _read(path)


def seal(key: bytes, record: dict) -> str:
    """The token of a run file's `record` (every field but the token itself)."""
    body = json.dumps({k: v for k, v in record.items() if k != TOKEN}, sort_keys=True, default=str)
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def sealed(key: bytes | None, record: dict) -> bool:
    """Whether `record` carries the seal of `key` (never without a key)."""
    token = record.get(TOKEN)
    return key is not None and isinstance(token, str) and hmac.compare_digest(token, seal(key, record))
