"""One family of errors; the CLI turns each into one line and exit status 2."""

from __future__ import annotations

from pathlib import Path


class HpcxferError(Exception):
    """Base of every error hpcxfer reports to a user (exit status 2)."""

    exit_status = 2


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
        return f"{text} ({self.hint})" if self.hint else text


class DataError(ConfigError):
    """A data set that cannot be read or does not hold what the study needs."""


class StudyError(HpcxferError):
    """A study directory that is missing or not a study."""


class CheckpointError(HpcxferError):
    """A checkpoint that is asked for and unusable: never a silent fresh start."""


class BackendError(HpcxferError):
    """A scheduler refused or failed a command."""
