"""Where output lands: a terminal of any width, a pipe, a stream of any encoding.

Tables are declared with a priority per column. Below `NARROW` columns they take short
headers and a lighter box, and drop their lowest-priority columns until what is left fits;
a number or an id is never cut or folded (its column keeps the width of its widest cell),
only text columns (names, details) wrap. Piped output has no trailing spaces. A stream
that cannot encode the glyphs (latin-1, ASCII) gets ASCII stand-ins instead of an
exception: rich draws ASCII boxes by itself there, and an encoding error handler covers
every other character written.
"""

from __future__ import annotations

import codecs
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

#: Width of a console that is not a terminal (and names no COLUMNS): no table is cropped.
PIPE_WIDTH = 10_000
#: Below this many columns, tables take short headers and drop columns by priority.
NARROW = 100
#: Width a text column (names, details) is given at least before columns are dropped.
TEXT_MIN = 10
#: The error handler that stands in ASCII for what a stream cannot encode.
ERRORS = "hpcxfer-ascii"
#: ASCII stand-ins for the glyphs hpcxfer writes; any other character becomes "?".
ASCII = {"…": "...", "±": "+/-", "§": "S", "█": "#", "▒": "=", "░": ".", "━": "-", "─": "-", "│": "|",
         "×": "x", "≈": "~", "—": "-", "–": "-", "→": "->", "•": "*", "✓": "ok", "✗": "x", "µ": "u"}


def stand_in(error: UnicodeError) -> tuple[str, int]:
    """An encoding error handler: the ASCII stand-in of each character that failed."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    bad = error.object[error.start:error.end]
    return "".join(ASCII.get(c, "?") for c in bad), error.end


def can_encode(stream: IO[str], text: str = "█…±") -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def plain_streams() -> None:
    """Give stdout and stderr ASCII stand-ins where they cannot encode the glyphs
    (PYTHONIOENCODING=latin-1, LC_ALL=C without UTF-8 mode)."""
    codecs.register_error(ERRORS, stand_in)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and hasattr(stream, "reconfigure") and not can_encode(stream):
            stream.reconfigure(errors=ERRORS)


def glyphs_ok(console: Console) -> bool:
    """Whether `console` can show the block and ellipsis glyphs."""
    return console.encoding.startswith("utf")


class _Trimmed:
    """A text stream that drops the spaces rich pads lines with, for pipes and files."""

    _END = re.compile(r"[ \t]+(?=\n)")

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(self._END.sub("", text))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


class OutConsole(Console):
    """rich's console for hpcxfer: a closed pipe is handled by main(); off a terminal,
    lines lose their trailing spaces."""

    def on_broken_pipe(self) -> None:
        """rich's own handling exits 1; main() handles a closed pipe the same way for all."""
        self.quiet = True
        raise BrokenPipeError

    @property
    def file(self) -> IO[str]:
        stream = super().file
        isatty = getattr(stream, "isatty", None)
        return stream if isatty is not None and isatty() else _Trimmed(stream)  # type: ignore[return-value]

    @file.setter
    def file(self, new_file: IO[str]) -> None:
        self._file = new_file


def pipe_width() -> int:
    """COLUMNS when it names a width (a user asking for 80 columns), else no limit."""
    value = os.environ.get("COLUMNS", "")
    return int(value) if value.isdigit() and 20 <= int(value) <= PIPE_WIDTH else PIPE_WIDTH


def make_console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    terminal = hasattr(stream, "isatty") and stream.isatty()
    return OutConsole(stderr=stderr, width=None if terminal else pipe_width())


@dataclass(frozen=True)
class Col:
    """A column: its header, a shorter one for narrow terminals, how it aligns, and its
    priority (higher stays longer; columns of equal priority go right to left). `text`
    columns may wrap; the others (numbers, ids, states) are shown whole or not at all."""

    header: str
    short: str | None = None
    priority: int = 5
    right: bool = False
    text: bool = False
    style: str | None = None


def _header(col: Col, narrow: bool, widest: int) -> Text:
    """The header, on as many lines as keep it within the column's widest cell (never
    breaking a word)."""
    name = col.short if narrow and col.short else col.header
    if col.text or not narrow:
        return Text(name)
    return Text("\n".join(textwrap.wrap(name, max(widest, 1), break_long_words=False)) or name)


def encodable(text: str, encoding: str) -> str:
    """`text` with the ASCII stand-in of each character `encoding` cannot hold, so that
    a table is laid out with the characters it will show."""
    try:
        text.encode(encoding)
        return text
    except (UnicodeEncodeError, LookupError):
        return text.encode(encoding, errors=ERRORS).decode(encoding) if _known(encoding) else text


def _known(encoding: str) -> bool:
    try:
        codecs.lookup(encoding)
    except LookupError:
        return False
    codecs.register_error(ERRORS, stand_in)
    return True


def _cell(value, encoding: str = "utf-8") -> Text:
    text = value if isinstance(value, Text) else Text(str(value))
    plain = encodable(text.plain, encoding)
    return text if plain == text.plain else Text(plain, style=text.style)


def _build(cols: Sequence[Col], rows: Sequence[Sequence], keep: list[int], narrow: bool, encoding: str,
           **kw) -> Table:
    chosen = box.SIMPLE_HEAD if narrow else kw.pop("wide_box", box.HEAVY_HEAD)
    # Narrow: two spaces between columns (the box's own and one of padding), none at the edges.
    table = Table(box=chosen, pad_edge=chosen is not box.SIMPLE_HEAD, **({"padding": (0, 1, 0, 0)} if narrow else {}),
                  **{k: v for k, v in kw.items() if k != "wide_box"})
    for i in keep:
        col = cols[i]
        cells = [_cell(r[i], encoding) for r in rows]
        widest = max((c.cell_len for c in cells), default=0)
        header = _header(col, narrow, widest)
        atom = {"no_wrap": True, "min_width": max(widest, *(len(x) for x in header.plain.split("\n")))}
        table.add_column(header, justify="right" if col.right else "left", style=col.style,
                         **({"overflow": "fold"} if col.text else atom))
    for r in rows:
        table.add_row(*(_cell(r[i], encoding) for i in keep))
    return table


def fit_table(console: Console, cols: Sequence[Col], rows: Sequence[Sequence], **table_kw) -> Table:
    """A table of `rows` (cells: str or Text) that fits `console`: on a narrow one, its
    lowest-priority columns are dropped until the rest fits whole, and a caption says
    which. `table_kw` go to rich's Table (`wide_box`: its box on a wide console)."""
    width = console.width
    narrow = width < NARROW
    keep = list(range(len(cols)))
    dropped: list[str] = []
    # Text columns fold, so they need only TEXT_MIN: the probe stands for the table at its narrowest.
    probe = [[Text("x" * min(TEXT_MIN, _cell(r[i]).cell_len)) if c.text else r[i] for i, c in enumerate(cols)]
             for r in rows]
    while narrow and len(keep) > 1 and _needs(console, _build(cols, probe, keep, narrow, console.encoding, **table_kw)) > width:
        lowest = min(keep, key=lambda i: (cols[i].priority, -i))
        keep.remove(lowest)
        dropped.insert(0, cols[lowest].header)
    table = _build(cols, rows, keep, narrow, console.encoding, **table_kw)
    if dropped:
        note = f"not shown at {width} columns: {', '.join(dropped)}"
        table.caption = Text(f"{table.caption.plain}\n{note}" if isinstance(table.caption, Text)
                             else f"{table.caption}\n{note}" if table.caption else note)
        table.caption_justify = "left"
    return table


def _needs(console: Console, table: Table) -> int:
    """The narrowest the table can be with every cell of its atomic columns whole."""
    return Measurement.get(console, console.options.update_width(PIPE_WIDTH), table).minimum


def duration(seconds: float) -> str:
    """h:mm:ss."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def id_ranges(ids: Sequence[str]) -> list[str]:
    """Scheduler ids summarised: the elements of one array job as ranges (PBS
    `1234[0-9,12].server`, SLURM `77_[0-4]`), other ids as they are."""
    arrays: dict[tuple[str, str, str], set[int]] = {}
    out: list[str] = []
    for job in ids:
        m = re.fullmatch(r"(.+?)(\[|_)(\d+)(\]?)(\..*)?", job)
        if not m or (m.group(2) == "[") != (m.group(4) == "]"):
            out.append(job)
            continue
        arrays.setdefault((m.group(1), m.group(2), m.group(5) or ""), set()).add(int(m.group(3)))
    for (stem, sep, suffix), found in arrays.items():
        numbers = sorted(found)
        spans, start = [], numbers[0]
        for a, b in zip(numbers, [*numbers[1:], None]):
            if b != a + 1:
                spans.append(str(start) if start == a else f"{start}-{a}")
                start = b
        out.append(f"{stem}{'[' if sep == '[' else '_['}{','.join(spans)}]{suffix}")
    return out
