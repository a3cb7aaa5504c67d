"""The building blocks of the grid's schema (hpcxfer/grid/schema.py): a strict model that
names unknown keys, and the validated types of its fields (axes that take a scalar or a
list, sizes, named protocols, paths and names that may reach a job script)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from hpcxfer.grid import limits
from hpcxfer.grid.limits import MAX_LIST, MAX_NAME, MAX_SEED, MAX_SPLIT, MAX_STRING, short
from hpcxfer.grid.protocols import NAMED

#: Bounds of the unit-counting axes here; each architecture's own are checked at expansion.
MAX_UNITS = 64


class Strict(BaseModel):
    """Unknown keys are errors that list the valid ones."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            keys = [f.alias or name for name, f in cls.model_fields.items()]
            unknown = sorted((k for k in data if k not in keys), key=repr)
            if unknown:
                valid = ", ".join(keys)
                raise ValueError(f"unknown key {short(unknown[0])}; valid keys: {valid}")
        elif data is not None and not isinstance(data, BaseModel):
            raise ValueError(f"expected a mapping, got {type(data).__name__} {short(data)}")
        return data


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{short(v)} is not {what}")  # noqa: TRY004 - pydantic reports ValueError, not TypeError
    problem = limits.number_problem(v)  # inf, nan, an integer too large for a float
    if problem:
        raise ValueError(problem)
    return v


def _items(value: Any, what: str) -> list:
    """A scalar as a list of one; a list checked for length."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError(f"an empty list; give at least one {what}")
    if len(items) > MAX_LIST:
        raise ValueError(f"a list of {len(items)} items; at most {MAX_LIST}")
    return items


def axis(kind: str, lo: float | None = None, hi: float | None = None, names: tuple = ()):
    """A validator turning a scalar or a list into a non-empty list of checked values.

    kind: "int" or "float"; lo/hi: inclusive bounds; names: strings also accepted.
    """
    rng = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"

    def check(value: Any) -> list:
        items = _items(value, "value")
        out = []
        for i, v in enumerate(items):
            at = f" (item {i} of the list)" if isinstance(value, list) else ""
            if isinstance(v, str) and v in names:
                out.append(v)
                continue
            if kind == "int" and (isinstance(v, bool) or not isinstance(v, int)):
                choices = f" or one of {', '.join(names)}" if names else ""
                raise ValueError(f"{short(v)} is not an integer{choices}{at}")
            v = _number(v, "a number")
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise ValueError(f"{short(v)} is out of range {rng}{at}")
            out.append(v)
        return out

    return BeforeValidator(check)


#: Examples per class: at most this many (the largest data sets hold ~1,300 per class).
MAX_SIZE = 10**9


def size_value(v: Any) -> int | str:
    if v != "full" and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SIZE):
        raise ValueError(f"{short(v)} is not a positive integer or 'full' (integers up to {MAX_SIZE})")
    return v


def _sizes(value: Any) -> list:
    return [size_value(v) for v in _items(value, "size")]


def _protocols(value: Any) -> list:
    items = _items(value, "protocol")
    for v in items:
        if not isinstance(v, str) or v not in NAMED:
            raise ValueError(f"{short(v)} is not a named protocol; choose from {', '.join(NAMED)}")
    return items


def _path(value: str) -> str:
    return limits.check_path(value, "a path")


def plain_text(value: str) -> str:
    return limits.check_text(value, "a name")


#: A path that reaches task configs and job scripts; a name shown in tables and scripts.
PathText = Annotated[str, Field(min_length=1, max_length=MAX_STRING), AfterValidator(_path)]
NameText = Annotated[str, Field(min_length=1, max_length=MAX_NAME), AfterValidator(plain_text)]
#: Counts with a bound far above any real use, so no value overflows what reads it.
BIG = 10**6


Layers = Annotated[list, axis("int", 0, MAX_UNITS, names=("optimal",))]
HighLr = Annotated[list, axis("int", 1, MAX_UNITS, names=("optimal",))]
DecayStart = Annotated[list, axis("int", 0, BIG, names=("optimal",))]
Frozen = Annotated[list, axis("int", 0, MAX_UNITS, names=("optimal",))]
Sizes = Annotated[list, BeforeValidator(_sizes)]
Protocols = Annotated[list, BeforeValidator(_protocols)]
PosInt = Annotated[list, axis("int", 1, BIG)]
Split = Annotated[list, axis("int", 0, MAX_SPLIT)]
Seed = Annotated[list, axis("int", 0, MAX_SEED)]
Rate = Annotated[list, axis("float", 0, BIG)]
Gamma = Annotated[list, axis("float", 0, 1)]
Momentum = Annotated[list, axis("float", 0, 0.999999)]
