"""Tasks -> scheduler submissions. A plain dict is the registry; each backend is small."""

from __future__ import annotations

import os
import shutil
import socket

from hpcxfer.backends.base import Backend, Submission, worker_command
from hpcxfer.backends.gadi import GadiBackend
from hpcxfer.backends.local import LocalBackend
from hpcxfer.backends.pbs import PbsBackend
from hpcxfer.backends.slurm import SlurmBackend
from hpcxfer.errors import ConfigError

BACKENDS: dict[str, type] = {"local": LocalBackend, "slurm": SlurmBackend, "pbs": PbsBackend, "gadi": GadiBackend}


def get_backend(name: str | None) -> Backend:
    name = name or default_backend()
    if name not in BACKENDS:
        raise ConfigError(None, "--backend", f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return BACKENDS[name]()


def default_backend() -> str:
    """The scheduler whose client is on PATH (Gadi is PBS with its own login hosts), else
    the embedded local backend. A study on a machine with a scheduler installed for tests
    (as CI's) passes `--backend local` explicitly."""
    if shutil.which("sbatch") and shutil.which("squeue"):
        return "slurm"
    if shutil.which("qsub") and shutil.which("qstat"):
        return "gadi" if socket.getfqdn().endswith("gadi.nci.org.au") or os.path.isdir("/g/data") else "pbs"
    return "local"


__all__ = ["BACKENDS", "Backend", "Submission", "default_backend", "get_backend", "worker_command"]
