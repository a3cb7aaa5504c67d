"""Job scripts are template files (pbs_templates/, shipped in the package: hpcxfer.shipped),
rendered with undefined variables as errors, with sorted directives and every value from
the grid shell-quoted.

Quoting protects a shell word, not a line: a line break inside a quoted value would end a
`#PBS` directive or a `#` comment and start a command. So every value that reaches a
script, quoted or not, is refused if it holds a control character (the grid and the
command line refuse them first; this is the last line of defence).
"""

from __future__ import annotations

import functools
import shlex

import jinja2

from hpcxfer import shipped
from hpcxfer.errors import HpcxferError
from hpcxfer.grid.limits import control_char, short


class ScriptValueError(HpcxferError):
    """A value that would break out of its line in a job script."""


def script_safe(value: object) -> str:
    """str(value), or ScriptValueError if it holds a control character."""
    text = str(value)
    bad = control_char(text)
    if bad:
        raise ScriptValueError(f"{short(text)} holds {bad} and cannot go into a job script")
    return text


def quote(value: object) -> str:
    """A shell word for `value` (which may hold no control character)."""
    return shlex.quote(script_safe(value))


@functools.cache
def _env() -> jinja2.Environment:
    loader = jinja2.FileSystemLoader(str(shipped.folder("pbs_templates")))
    env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined,
                             autoescape=False, keep_trailing_newline=True, trim_blocks=True,
                             lstrip_blocks=True, finalize=script_safe)
    env.filters["q"] = quote
    return env


def directives(prefix: str, options: dict[str, object]) -> list[str]:
    """`#PBS -x value` lines, sorted so diffs between two studies are readable; a value
    of None leaves the option out, True gives a bare flag, and a flag ending in `=`
    (`-l walltime=`) is joined to its value."""
    lines = []
    for flag in sorted(options):
        value = options[flag]
        if value is None or value is False:
            continue
        if value is True:
            lines.append(f"{prefix} {script_safe(flag)}")
        else:
            lines.append(f"{prefix} {script_safe(flag)}{'' if flag.endswith('=') else ' '}{quote(value)}")
    return lines


def render(template: str, **context: object) -> str:
    return _env().get_template(template).render(**context)
