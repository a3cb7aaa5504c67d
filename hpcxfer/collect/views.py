"""A view: a titled table whose rows are flat dicts of raw values (what CSV and JSON get)
and whose columns say how a reader sees them (what the terminal, Markdown and HTML get).
`fields` declares the raw fields of its rows, so that a view without a row still has a
CSV header; one word means one thing in every view (`n` is layers transferred, never a
count: the replicates of a cell are `replicates`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Column:
    header: str
    show: Callable[[dict], str]
    numeric: bool = True


@dataclass
class View:
    name: str
    title: str
    columns: list[Column]
    rows: list[dict]
    notes: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)

    def field_names(self) -> list[str]:
        """The declared fields, then any other field a row holds, in order of appearance."""
        return list(dict.fromkeys([*self.fields, *(k for r in self.rows for k in r)]))

    def cells(self) -> list[list[str]]:
        return [[c.show(r) for c in self.columns] for r in self.rows]

    def empty_line(self) -> str:
        """What a view without a row shows instead of an empty table: its title and notes, one line."""
        return f"{self.title}: {'; '.join(self.notes) or 'nothing to show'}"

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "fields": self.field_names(), "rows": self.rows, "notes": self.notes}


def fixed(value: float, digits: int = 1, sign: bool = False) -> str:
    """`value` to `digits` decimals (`+` before a positive one with `sign`), never a negative
    zero: a value that rounds to zero is `0.0`, whatever side of zero it came from."""
    text = f"{value:{'+' if sign else ''}.{digits}f}"
    return text[1:] if text.lstrip("+-").strip("0.") == "" and text[0] in "+-" else text


def num(value, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else fixed(value * scale, digits)


def pm(mean, std, scale: float = 1.0, digits: int = 1) -> str:
    """`45.2 ± 1.3`, or `-` when there is no value."""
    if mean is None:
        return "-"
    return f"{fixed(mean * scale, digits)} ± {fixed((std or 0.0) * scale, digits)}"


def signed(value, digits: int = 1, unit: str = " %") -> str:
    return "-" if value is None else f"{fixed(value, digits, sign=True)}{unit}"


def interval(low, high, scale: float = 1.0, digits: int = 1) -> str:
    """`[-1.2, +3.4]` (signed, no negative zero), or `n/a` where there is none."""
    if low is None or high is None:
        return "n/a"
    return f"[{fixed(low * scale, digits, True)}, {fixed(high * scale, digits, True)}]"


def key(name: str, header: str | None = None, numeric: bool = False) -> Column:
    """A column showing one raw field as it is."""
    return Column(header or name, lambda r: "-" if r.get(name) is None else str(r[name]), numeric)
