"""Files that ship with hpcxfer besides its modules: the job script templates
(`pbs_templates/`) and the example grids (`jobs/`).

In the repository both are top-level folders. The build maps them into the package
(pyproject.toml's `package-dir`: `hpcxfer.pbs_templates`, `hpcxfer.jobs`), so an installed
wheel holds them inside the package, and a source checkout (run in place or installed
editable) holds them beside it. `folder()` finds either, the package's own copy first.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

from hpcxfer.errors import HpcxferError

#: Shipped folders, each with a file that must be in it (a stray folder of the same name
#: elsewhere is never taken for it).
FOLDERS = {"pbs_templates": "base.sh.j2", "jobs": "quickstart.yaml"}

#: Examples `hpcxfer init` writes out: name -> the files under jobs/ (the first is the one to plan).
EXAMPLES = {
    "quickstart": ("quickstart.yaml",),
    "plested2019": tuple(f"plested2019/{n}" for n in (
        "all.yaml", "base.yaml", "exp3.1.yaml", "exp3.2.yaml", "exp3.3.yaml", "exp3.4.yaml", "exp3.5.yaml",
        "exp3.6.yaml", "README.md")),
    "dissimilar": ("dissimilar.yaml", "dissimilar-alexnet.yaml"),
}
#: Examples whose data `hpcxfer init` prepares: name -> the folder under DIR it writes, which
#: the example's `path: <folder>` lines are pointed at (absolute).
PREPARED = {"dissimilar": "digits"}


class MissingFiles(HpcxferError):
    """An install without the files it ships (a wheel built without its package data)."""


def folder(name: str) -> Path:
    """The shipped folder `name` (a key of FOLDERS) as a real path."""
    marker = FOLDERS[name]
    package = Path(str(importlib.resources.files("hpcxfer")))
    candidates = (package / name, package.parent / name)
    for candidate in candidates:
        if (candidate / marker).is_file():
            return candidate
    raise MissingFiles(f"hpcxfer's {name}/ is in none of {', '.join(map(str, candidates))}: a broken install "
                       "(reinstall hpcxfer)")


def example_files(name: str) -> list[tuple[str, bytes]]:
    """(path relative to jobs/, contents) of each file of example `name`."""
    jobs = folder("jobs")
    return [(rel, (jobs / rel).read_bytes()) for rel in EXAMPLES[name]]


def example_files_at(name: str, dest: Path) -> list[tuple[Path, bytes]]:
    """(where, contents) of each file of example `name` written into `dest`: a prepared
    example's data path made absolute, so the grid runs from any folder."""
    files = [(dest / rel, data) for rel, data in example_files(name)]
    if name not in PREPARED:
        return files
    folder = PREPARED[name]
    absolute = json.dumps(str((dest / folder).absolute())).encode()
    return [(path, data.replace(f"path: {folder} ".encode(), b"path: " + absolute + b" ")) for path, data in files]
