"""Every size a grid may reach, and the text that may reach a job script.

A grid is input from anyone who can write a file: each of its sizes is bounded before
anything is built from it, and no text that can end up in a job script (a path, a name)
may hold a control character, since a line break in a `#PBS`/`#SBATCH` directive or a
comment starts a new shell line that no quoting can protect. Pure: no pydantic, no I/O.
"""

from __future__ import annotations

import math
import re

#: Bytes of one grid file (read at most one more than this).
MAX_GRID_BYTES = 1 << 20
#: Grid files one study reads through `extends`.
MAX_GRID_FILES = 64
#: Values (scalars, lists and mappings, counting each alias once per use) in one grid file.
MAX_VALUES = 100_000
#: Nesting of lists and mappings in a grid file.
MAX_DEPTH = 32
#: Items of one list (one axis of the grid).
MAX_LIST = 10_000
#: Characters of any one string (a key, a value, a path).
MAX_STRING = 4096
#: Characters of a name: the study, an experiment, a scheduler queue or account.
MAX_NAME = 100
#: Tasks one grid may expand to (counted before any is built).
MAX_TASKS = 100_000
#: Integers anywhere in a grid: a signed 64-bit value.
MAX_INT = 2**63 - 1
#: Class splits: numpy.random.RandomState(split) takes 0..2**32-1.
MAX_SPLIT = 2**32 - 1
#: Seeds: torch seeds (2**64-1 at most) with room for the worker's pre-training offset.
MAX_SEED = 2**31 - 1
#: Bytes of an absolute study directory: PATH_MAX (4096) less room for what is inside it
#: (backends/slurm/logs/<array>_<index>.log, tasks/<id>/checkpoint.prev.pt.tmp...).
MAX_STUDY_DIR = 3800
#: Bytes of one path component (NAME_MAX).
MAX_COMPONENT = 255

#: C0 controls, DEL, C1 controls (U+0085 NEL among them) and the Unicode line and
#: paragraph separators: each can end a line for some reader of a script. Lone
#: surrogates (bytes that are not UTF-8, from a command line) cannot be written as text.
_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def control_char(text: str) -> str | None:
    """`a control character (U+000A)` for the first character of `text` no script may
    hold, None if there is none."""
    m = _REFUSED.search(text)
    if not m:
        return None
    code = ord(m.group())
    kind = "a byte that is not UTF-8" if 0xD800 <= code <= 0xDFFF else "a control character"
    return f"{kind} (U+{code:04X})"


def check_text(text: str, what: str = "text") -> str:
    """`text` unchanged, or ValueError if it holds a control character."""
    bad = control_char(text)
    if bad:
        raise ValueError(f"{short(text)} holds {bad}; {what} can reach a job script, where a line "
                         "break would start a command")
    return text


def check_path(text: str, what: str = "a path") -> str:
    """A path that may reach a job script: no control characters, none empty, each
    component within NAME_MAX and the whole within MAX_STRING characters."""
    if not text:
        raise ValueError(f"{what} is empty")
    if len(text) > MAX_STRING:
        raise ValueError(f"{what} is {len(text)} characters long; at most {MAX_STRING}")
    check_text(text, what)
    for part in text.split("/"):
        if len(part.encode("utf-8")) > MAX_COMPONENT:
            raise ValueError(f"a component of {what} is longer than {MAX_COMPONENT} bytes: {short(part)}")
    return text


def short(value: object, limit: int = 60) -> str:
    """repr(value) cut to `limit` characters: error messages stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 5]}...{text[-2:]}"


def number_problem(value: object) -> str | None:
    """Why `value` is not a usable number (None if it is one): bools, non-finite floats and
    integers beyond 64 bits are refused everywhere (a float of a huge int overflows)."""
    if isinstance(value, bool):
        return f"{value!r} is a boolean, not a number"
    if isinstance(value, int):
        return None if -MAX_INT - 1 <= value <= MAX_INT else f"an integer of {len(str(abs(value)))} digits is out of range"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} is not a finite number"
    return None


def tree_problem(data: object) -> tuple[str, str] | None:
    """(field, what is wrong) for the first value of parsed YAML that no grid may hold:
    a key that is not a string, a string with a control character or over MAX_STRING
    characters, a number `number_problem` refuses, a list over MAX_LIST items, nesting
    over MAX_DEPTH, or more than MAX_VALUES values in all (aliases count at each use, so
    an alias bomb is refused after MAX_VALUES steps, never expanded)."""
    stack: list[tuple[object, str, int]] = [(data, "", 0)]
    seen = 0
    while stack:
        value, where, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            return "", (f"more than {MAX_VALUES} values (aliases count at each use); "
                        "a grid this large is not a study description")
        if depth > MAX_DEPTH:
            return f"{where[:60]}...", f"nested more than {MAX_DEPTH} levels deep"
        if isinstance(value, dict):
            items = list(value.items())
            for key, sub in reversed(items):
                if not isinstance(key, str):
                    return where, f"key {short(key)} is not a string ({type(key).__name__}); keys are names"
                if len(key) > MAX_STRING:
                    return where, f"a key of {len(key)} characters; at most {MAX_STRING}"
                bad = control_char(key)
                if bad:
                    return where, f"key {short(key)} holds {bad}"
                stack.append((sub, f"{where}.{key}" if where else key, depth + 1))
        elif isinstance(value, list):
            if len(value) > MAX_LIST:
                return where, f"a list of {len(value)} items; at most {MAX_LIST}"
            for i in reversed(range(len(value))):
                stack.append((value[i], f"{where}[{i}]", depth + 1))
        elif isinstance(value, str):
            if len(value) > MAX_STRING:
                return where, f"a string of {len(value)} characters; at most {MAX_STRING}"
            bad = control_char(value)
            if bad:
                return where, f"{short(value)} holds {bad}"
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = number_problem(value)
            if problem:
                return where, problem
    return None
