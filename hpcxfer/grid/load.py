"""Read a grid file into a validated Grid; every failure is one ConfigError line.

A grid may start from others: `extends: base.yaml` (or a list, paths relative to the
file) merges the bases first, then the file itself. Mappings merge key by key, other
values replace the base's, except `experiments`, whose lists are concatenated in order,
so that several experiment files extending one base form one study. A file reached twice
(a shared base) is read once; a cycle is an error.

Whatever a file holds, the outcome is a Grid or one ConfigError naming the file and the
field: a file is read only if it is a regular file of at most MAX_GRID_BYTES, the parsed
YAML is checked for sizes, key types and control characters (hpcxfer/grid/limits.py)
before the schema sees it, and nothing is written anywhere.
"""

from __future__ import annotations

import os
import re
import stat
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from hpcxfer.errors import ConfigError
from hpcxfer.grid.limits import (
    MAX_GRID_BYTES,
    MAX_GRID_FILES,
    MAX_STUDY_DIR,
    check_path,
    control_char,
    short,
    tree_problem,
)
from hpcxfer.grid.schema import Grid
from hpcxfer.layout import StudyPaths

#: libyaml when PyYAML has it: 5-10 times faster on a large file, and it refuses nesting
#: deeper than 1000 levels itself (the pure-Python parser recurses until RecursionError).
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE = "tag:yaml.org,2002:merge"
_BOOL = "tag:yaml.org,2002:bool"
_WORD = "tag:hpcxfer,2026:word"
#: YAML 1.1's other booleans: read as the words they are, since settings take `off` as a
#: word (`amp: off`, `decode_cache: off`); a bool setting reads them back (`_bools`).
WORDS = {"yes": True, "no": False, "on": True, "off": False}


class Word(str):
    """yes, no, on or off written plainly (unquoted) in a grid file: a bool where the
    schema wants one, else the word. A quoted 'yes' is a plain str, never a bool."""


class _UniqueKeyLoader(_BaseLoader):
    """SafeLoader that refuses a key given twice (PyYAML keeps the last one silently) and a
    key that is not a plain value (a list or a mapping as a key). Only true and false (any
    case YAML 1.1 allows) are booleans: yes, no, on and off stay words (YAML 1.2's rule)."""

    def construct_word(self, node):
        return Word(self.construct_scalar(node))

    yaml_implicit_resolvers: typing.ClassVar[dict] = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
        + ([(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"))] if first in "tTfF" else [])
        + ([(_WORD, re.compile(r"^(?:yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF)$"))] if first in "yYnNoO" else [])
        for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()}
    yaml_constructors: typing.ClassVar[dict] = {**_BaseLoader.yaml_constructors, _WORD: construct_word}

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE:  # `<<: *base`: its keys may be overridden here
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(None, f"line {line}", "a list or a mapping as a key; keys are names")
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    name = key if isinstance(key, str) and not control_char(key) and len(key) <= 60 else short(key)
                    raise ConfigError(None, name, f"key given twice (line {line})")
                seen.add(key)
            except TypeError:  # unhashable: a !!set or other tagged value as a key
                raise ConfigError(None, f"line {line}", f"key {short(key)} is not a name") from None
        return super().construct_mapping(node, deep=deep)


def field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _tag(part: object) -> bool:
    """pydantic's own names in an error's location: union members (`int`,
    `literal['full']`), validator functions (`function-after[...]`)."""
    return isinstance(part, str) and (part in ("int", "str", "float", "bool", "none", "[key]")
                                      or re.match(r"^[a-z-]+\[", part) is not None)


def validation_error(path: str | Path, err: ValidationError) -> ConfigError:
    first = err.errors()[0]
    msg = first["msg"].removeprefix("Value error, ")
    loc = tuple(p for p in first["loc"] if not _tag(p))
    if first["type"] == "missing":
        msg = "required field is missing"
    elif not first["type"].startswith(("value_error", "extra_forbidden")):
        # pydantic's own messages do not say what was given: "Input should be ..."
        value = first.get("input")
        if isinstance(value, (str, int, float, bool, type(None))):
            msg = f"{msg}, got {short(value)}"
        else:
            msg = f"{msg}, got a {type(value).__name__}"
    return ConfigError(path, field_path(loc) or None, msg)


def read_grid_text(path: Path) -> str:
    """The text of a grid file: a regular file of at most MAX_GRID_BYTES, in UTF-8 (a
    byte-order mark is dropped). Reads at most MAX_GRID_BYTES + 1 bytes of anything."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(path, None, "no such grid file") from None
    except (OSError, ValueError) as e:
        raise ConfigError(path, None, f"cannot read: {e.__class__.__name__}: {e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(path, None, "a directory, not a grid file")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(path, None, "not a regular file (a device, pipe or socket); give a YAML grid file")
    if st.st_size > MAX_GRID_BYTES:
        raise ConfigError(path, None, f"{st.st_size} bytes; a grid file holds at most {MAX_GRID_BYTES}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_GRID_BYTES + 1)
    except OSError as e:
        raise ConfigError(path, None, f"cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_GRID_BYTES:  # it grew since the stat
        raise ConfigError(path, None, f"more than {MAX_GRID_BYTES} bytes; a grid file holds at most that")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(path, f"byte {e.start}", "not UTF-8 text") from None


def parse_yaml(path: Path) -> dict:
    text = read_grid_text(path)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as e:
        raise ConfigError(path, e.field, e.message) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(path, where, f"not valid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(path, None, "not valid YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(path, None, "a grid file must be a YAML mapping (study:, data:, finetune:, ...)")
    problem = tree_problem(data)
    if problem:
        raise ConfigError(path, problem[0] or None, problem[1])
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if key == "experiments" and isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = out[key] + value
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _resolved(path: Path, seen: set[Path], stack: tuple[Path, ...]) -> tuple[dict, list[tuple[Path, dict]]]:
    """(merged data, [(file, its own data)] in merge order) of `path` and its bases."""
    data = parse_yaml(path)
    bases = data.pop("extends", None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and bases and all(isinstance(b, str) and b for b in bases)):
        raise ConfigError(path, "extends", "give a grid file or a list of grid files")
    merged: dict = {}
    files: list[tuple[Path, dict]] = []
    for name in bases:
        base = (path.parent / name).resolve()
        if base in stack or base == path.resolve():
            raise ConfigError(path, "extends", f"{short(name)}: a grid cannot extend itself (cycle)")
        if base in seen:
            continue
        seen.add(base)
        if len(seen) > MAX_GRID_FILES:
            raise ConfigError(path, "extends", f"more than {MAX_GRID_FILES} grid files in one study")
        try:
            if not base.exists():
                raise ConfigError(path, "extends", f"{short(name)}: no such grid file")
            if not base.is_file():
                raise ConfigError(path, "extends", f"{short(name)}: not a regular file")
        except OSError as e:
            raise ConfigError(path, "extends", f"{short(name)}: {e.strerror or e}") from None
        sub, subfiles = _resolved(base, seen, stack + (path.resolve(),))
        merged = _merge(merged, sub)
        files += subfiles
    return _merge(merged, data), files + [(path, data)]


def _owner(files: list[tuple[Path, dict]], loc: tuple, fallback: Path) -> Path:
    """The file whose own text holds the longest prefix of a field's location."""
    best, depth = fallback, 0
    for path, data in reversed(files):
        node, d = data, 0
        for part in loc:
            if isinstance(node, dict) and part in node:
                node, d = node[part], d + 1
            else:
                break
        if d > depth:
            best, depth = path, d
    return best


def _bools(value: object, annotation: object) -> object:
    """`value` with each plain yes/no/on/off (`Word`) read as a boolean where the schema's
    field is a bool, and as the word (a str) everywhere else."""
    if isinstance(value, Word):
        return WORDS[value.lower()] if annotation is bool or bool in typing.get_args(annotation) else str(value)
    if annotation is bool:
        return value
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if not isinstance(value, dict):
            return value
        fields = annotation.model_fields
        return {k: _bools(v, fields[k].annotation) if isinstance(k, str) and k in fields else v
                for k, v in value.items()}
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list and isinstance(value, list) and args:
        return [_bools(v, args[0]) for v in value]
    if typing.get_origin(annotation) is dict and isinstance(value, dict) and len(args) == 2:
        return {k: _bools(v, args[1]) for k, v in value.items()}
    if typing.get_origin(annotation) is typing.Annotated and args:
        return _bools(value, args[0])
    for arg in args:  # a union (X | None): the first member that changes it
        out = _bools(value, arg)
        if out is not value:
            return out
    return value


def load_grid(path: str | Path, source: str | None = None) -> Grid:
    """`source`: the grid file the study records this grid as, when `path` is a copy of it
    (a search's promotion job reads the copy `tune` keeps in the study)."""
    path = Path(path)
    data, files = _resolved(path, set(), ())
    data = _bools(data, Grid)
    try:
        grid = Grid.model_validate(data)
    except ValidationError as e:
        err = validation_error(path, e)
        if len(files) > 1 and not any(isinstance(p, int) for p in e.errors()[0]["loc"]):
            # experiments are concatenated across files, so list positions name no file
            err = ConfigError(_owner(files, e.errors()[0]["loc"], path), err.field, err.message, err.hint)
        raise err from None
    grid = _data_path_resolved(grid, _owner(files, ("data", "path"), path))
    grid._source = source or str(path)
    grid._sources = tuple(str(p) for p, _ in files)
    return grid


def _data_path_resolved(grid: Grid, owner: Path) -> Grid:
    """`data.path` relative to the folder of the grid file that gives it, as `extends` is,
    whatever folder hpcxfer runs in (an absolute path, ~ or $VAR is kept as written). The
    path is no part of a task's identity, so task ids do not change with it."""
    given = grid.data.path
    if given is None or given.startswith(("~", "$")) or os.path.isabs(given):
        return grid
    resolved = os.path.normpath(os.path.join(owner.absolute().parent, given))
    return grid.model_copy(update={"data": grid.data.model_copy(update={"path": resolved})})


def checked_root(grid: Grid, option: str | None, backend: str | None = None) -> str:
    """The parent folder of the study directory: `--root` if given, else the grid's `root`.

    Refused (a ConfigError naming `--root`, or the grid file and `root`) before anything is
    written when the study directory it gives would break a job script or a file system:
    a control character anywhere in its absolute path (the current directory included), a
    component over 255 bytes, a path too long for the files inside it, or on SLURM a
    backslash (its own `%` are escaped in the log paths, hpcxfer/backends/slurm.py). The
    grid's own `root` was checked by the schema already.
    """
    root = grid.root if option is None else option

    def refuse(message: str) -> ConfigError:
        if option is None:
            return ConfigError(grid._source, "root", message)
        return ConfigError(None, "--root", message)

    try:
        check_path(root, "the root folder")
        study_dir = str(StudyPaths.of(root, grid.study).dir)
        size = len(study_dir.encode("utf-8", "surrogatepass"))
        if size > MAX_STUDY_DIR:
            raise ValueError(f"the study directory {short(study_dir)} is {size} bytes long; at most "
                             f"{MAX_STUDY_DIR}, so that the paths inside it fit PATH_MAX")
        check_path(study_dir, "the study directory")
    except ValueError as e:
        raise refuse(str(e)) from None
    if backend == "slurm" and "\\" in study_dir:
        raise refuse(f"the study directory {short(study_dir)} holds a backslash, which turns off SLURM's "
                     "%j in log paths (the job would fail to open its log); choose a folder without it")
    return root
