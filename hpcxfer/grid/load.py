"""Read a grid file into a validated Grid; every failure is one ConfigError line.

A grid may start from others: `extends: base.yaml` (or a list, paths relative to the
file) merges the bases first, then the file itself. Mappings merge key by key, other
values replace the base's, except `experiments`, whose lists are concatenated in order,
so that several experiment files extending one base form one study. A file reached twice
(a shared base) is read once; a cycle is an error.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from hpcxfer.errors import ConfigError
from hpcxfer.grid.schema import Grid


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(None, str(key), f"key given twice (line {line})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_error(path: str | Path, err: ValidationError) -> ConfigError:
    first = err.errors()[0]
    msg = first["msg"].removeprefix("Value error, ")
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    if first["type"] == "missing":
        msg = "required field is missing"
    return ConfigError(path, field_path(loc) or None, msg)


def parse_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "no such grid file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, None, f"cannot read: {e}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(path, e.field, e.message) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        raise ConfigError(path, where, f"not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(path, None, "a grid file must be a YAML mapping (study:, data:, finetune:, ...)")
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
    elif not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(path, "extends", "give a grid file or a list of grid files")
    merged: dict = {}
    files: list[tuple[Path, dict]] = []
    for name in bases:
        base = (path.parent / name).resolve()
        if base in stack or base == path.resolve():
            raise ConfigError(path, "extends", f"{name}: a grid cannot extend itself (cycle)")
        if base in seen:
            continue
        seen.add(base)
        if not base.is_file():
            raise ConfigError(path, "extends", f"{name}: no such grid file ({base})")
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


def load_grid(path: str | Path) -> Grid:
    path = Path(path)
    data, files = _resolved(path, set(), ())
    try:
        grid = Grid.model_validate(data)
    except ValidationError as e:
        err = validation_error(path, e)
        if len(files) > 1 and not any(isinstance(p, int) for p in e.errors()[0]["loc"]):
            # experiments are concatenated across files, so list positions name no file
            err = ConfigError(_owner(files, e.errors()[0]["loc"], path), err.field, err.message, err.hint)
        raise err from None
    grid._source = str(path)
    grid._sources = tuple(str(p) for p, _ in files)
    return grid
