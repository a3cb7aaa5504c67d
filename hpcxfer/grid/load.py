"""Read a grid file into a validated Grid; every failure is one ConfigError line."""

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


def load_grid(path: str | Path) -> Grid:
    path = Path(path)
    data = parse_yaml(path)
    try:
        grid = Grid.model_validate(data)
    except ValidationError as e:
        raise validation_error(path, e) from None
    grid._source = str(path)
    return grid
