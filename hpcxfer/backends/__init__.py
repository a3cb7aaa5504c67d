"""Tasks -> scheduler submissions. A plain dict is the registry; each backend is small."""

from __future__ import annotations

from hpcxfer.backends.base import Backend, Submission, worker_command
from hpcxfer.backends.local import LocalBackend
from hpcxfer.errors import ConfigError

BACKENDS: dict[str, type] = {"local": LocalBackend}


def get_backend(name: str | None) -> Backend:
    name = name or default_backend()
    if name not in BACKENDS:
        raise ConfigError(None, "--backend", f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return BACKENDS[name]()


def default_backend() -> str:
    """The embedded local backend unless a scheduler this machine can reach is registered."""
    return "local"


__all__ = ["BACKENDS", "Backend", "Submission", "default_backend", "get_backend", "worker_command"]
