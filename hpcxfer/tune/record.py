"""What `tune` records in the study, so that a promotion job needs nothing else.

`tune/grid.yaml` is the grid as validated (its `extends` merged, `data.path` absolute):
a promotion job expands it to the very tasks the user's grid gives, even after that file
was edited or moved. `tune/search.json` holds the search's resolved settings, the backend,
the user's grid file and the interpreter `tune` ran under (the promotion job's script
runs that interpreter with `-P`, so nothing is imported from the job's folder).

The decisions on disk were made under the recorded settings: a `tune` whose grid now
resolves to other settings is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import yaml

from hpcxfer import service
from hpcxfer.backends import get_backend
from hpcxfer.errors import ConfigError, StudyError
from hpcxfer.fileio import atomic_write_bytes, atomic_write_json, read_json
from hpcxfer.grid.expansion import expand_study
from hpcxfer.grid.load import load_grid
from hpcxfer.layout import StudyPaths
from hpcxfer.tune.settings import Search, resolve


def settings_of(search: Search) -> dict:
    """The settings a decision depends on, as JSON."""
    return {**dataclasses.asdict(search), "rungs": list(search.rungs), "etas": list(search.etas)}


def check_settings(paths: StudyPaths, search: Search, grid_file: str) -> None:
    """Refuse settings other than those the decisions on disk were made under."""
    if not paths.rung_decision(0).is_file():
        return
    try:
        recorded = read_json(paths.search_record)["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        recorded = read_json(paths.rung_decision(0)).get("settings")
    now = settings_of(search)
    if recorded is not None and recorded != now:
        changed = [f"{k} {recorded.get(k)} -> {now[k]}" for k in now if recorded.get(k) != now[k]]
        raise ConfigError(grid_file, "search", f"differs from the search under way in {paths.dir} "
                          f"({'; '.join(changed)}): its decisions on disk were made under the old settings; "
                          "restore them, or search in a new study (another `study` name or --root)")


def write(req: service.Request, search: Search) -> None:
    """Record the grid and the search in the study (before its first advance)."""
    paths = req.paths
    data = req.grid.model_dump(mode="json", by_alias=True, exclude_unset=True)
    data.pop("root", None)  # the study directory is where this copy lies
    paths.tune_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(paths.search_grid, yaml.safe_dump(data, sort_keys=False).encode())
    atomic_write_json(paths.search_record, {
        "grid": str(Path(req.grid.source).absolute()), "backend": req.backend.name, "python": sys.executable,
        "settings": settings_of(search), "recorded": time.time()})


def load(study_dir: str | Path) -> tuple[service.Request, Search]:
    """A search's request and settings from its study alone (what a promotion job runs)."""
    # Not StudyPaths.existing: a new study's driver starts before its first submit records it.
    paths = StudyPaths(Path(study_dir).absolute())
    try:
        info = read_json(paths.search_record)
        grid_file, backend = str(info["grid"]), str(info["backend"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StudyError(f"{paths.search_record}: not a search's record ({type(e).__name__}); run "
                         "`hpcxfer tune GRID` again to write it") from None
    grid = load_grid(paths.search_grid, source=grid_file)
    expansion = expand_study(grid)
    req = service.Request(grid, get_backend(backend), paths, expansion.tasks, "", blocks=expansion.blocks)
    return req, resolve(grid, req.tasks)
