"""Job scripts are template files (pbs_templates/), rendered with undefined variables as
errors, with sorted directives and every value from the grid shell-quoted."""

from __future__ import annotations

import shlex
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).resolve().parents[2] / "pbs_templates"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             autoescape=False, keep_trailing_newline=True, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["q"] = lambda v: shlex.quote(str(v))
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
            lines.append(f"{prefix} {flag}")
        else:
            lines.append(f"{prefix} {flag}{'' if flag.endswith('=') else ' '}{shlex.quote(str(value))}")
    return lines


def render(template: str, **context: object) -> str:
    return _env().get_template(template).render(**context)
