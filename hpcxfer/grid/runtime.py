"""How a task runs (the grid's `runtime` section), typed and free of pydantic.

`RuntimeSettings` states each setting's default once. The grid's schema
(`RuntimeSpec` in hpcxfer/grid/schema.py) takes its defaults from here and validates a
grid's values with pydantic; the worker reads the `runtime` object of a task's task.json
back with `RuntimeSettings.from_record`, which imports nothing but the standard library
(a worker's start-up time matters: benchmarks/startup.py).

None of these settings is part of a task's identity: changing one reruns nothing
(docs/design.md §3).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcxfer.errors import ConfigError
from hpcxfer.grid.task import finite_number


@dataclass(frozen=True)
class RuntimeSettings:
    """The `runtime` section of a grid, with its defaults (README, "The grid file")."""

    eval_every: int = 1
    checkpoint_minutes: float = 5.0
    device: str = "auto"
    threads: int = 0
    keep_checkpoints: bool = False
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    data_memory_gb: float = 8.0
    loader_workers: int = 4
    decode_cache: str = "auto"
    gpu_decode: bool = True
    tensorboard: bool = True
    profile: bool = False
    group_max: int = 0
    group_mode: str = "auto"

    @classmethod
    def from_record(cls, runtime: Any, path: str | Path | None = None) -> RuntimeSettings:
        """The settings of a task.json's (or group's) `runtime` object: a missing key takes
        its default (a task.json written before the setting existed); an unknown key or a
        value of the wrong kind is a ConfigError naming `path` and the field."""
        if not isinstance(runtime, dict):
            raise ConfigError(path, "runtime", f"{json.dumps(runtime)[:40]} is not a JSON object",
                              "run `hpcxfer submit` again to rewrite it")
        kinds = {f.name: str(f.type) for f in dataclasses.fields(cls)}  # annotations are strings here
        for key, value in runtime.items():
            if key not in kinds:
                raise ConfigError(path, f"runtime.{str(key)[:40]}", "unknown setting; valid settings: "
                                  + ", ".join(kinds))
            if not _KIND_CHECK[kinds[key]](value):
                raise ConfigError(path, f"runtime.{key}", f"{json.dumps(value)[:40]} is not {_KIND_NAME[kinds[key]]}")
        return cls(**runtime)

    @classmethod
    def of_config(cls, config: dict, path: str | Path | None = None) -> RuntimeSettings:
        """The settings of a task.json read whole (`config`, from `path`)."""
        return cls.from_record(config.get("runtime", {}), path)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: Field annotations (strings, under `from __future__ import annotations`) -> their check.
_KIND_CHECK = {"int": lambda v: type(v) is int, "float": finite_number, "bool": lambda v: type(v) is bool,
               "str": lambda v: type(v) is str}
_KIND_NAME = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}

#: The defaults, for the schema to state nothing twice.
DEFAULTS = RuntimeSettings()
