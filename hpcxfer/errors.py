"""One family of errors; the CLI turns each into one line and exit status 2."""

from __future__ import annotations

import re
from pathlib import Path

#: Characters that would end the one line (C0/C1 controls, Unicode line separators).
_BREAKS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """`text` with every line-ending or control character written as its escape."""
    return _BREAKS.sub(lambda m: repr(m.group())[1:-1], text)


class HpcxferError(Exception):
    """Base of every error hpcxfer reports to a user (exit status 2); its text is one line,
    whatever a file or an argument it quotes holds."""

    exit_status = 2

    def __str__(self) -> str:
        return one_line(super().__str__())


class ConfigError(HpcxferError):
    """Bad input: a file, the field in it, what is wrong, and a hint."""

    def __init__(self, path: str | Path | None, field: str | None, message: str, hint: str = ""):
        self.path = str(path) if path is not None else None
        self.field = field
        self.message = message
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ": ".join(p for p in (self.path, self.field) if p)
        text = f"{where}: {self.message}" if where else self.message
        return one_line(f"{text} ({self.hint})" if self.hint else text)


class DataError(ConfigError):
    """A data set that cannot be read or does not hold what the study needs."""


class StudyError(HpcxferError):
    """A study directory that is missing or not a study."""


class CheckpointError(HpcxferError):
    """A checkpoint that is asked for and unusable: never a silent fresh start."""


class BackendError(HpcxferError):
    """A scheduler refused or failed a command."""
