"""The grid's `search:` section: successive halving over the protocols of each target size.

Checked here on its own (types, ranges, rungs strictly increasing); what needs the expanded
grid (a rung beyond a task's epochs, a grid with one protocol) is checked by
hpcxfer/tune/settings.py, which also fills in what is left out.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from hpcxfer.grid.fields import Strict
from hpcxfer.grid.limits import MAX_LIST, short

#: What a rung ranks candidates by, and whether more is better.
METRICS = {"val_acc": True, "val_loss": False}
#: The most epochs a rung may name (far beyond any real schedule).
MAX_EPOCH = 10**6
MAX_ETA = 1000


def _rungs(value: Any) -> list[int]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{short(value)} is not a non-empty list of epochs")
    if len(value) > MAX_LIST:
        raise ValueError(f"a list of {len(value)} rungs; at most {MAX_LIST}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_EPOCH:
            raise ValueError(f"{short(v)} is not an epoch 1..{MAX_EPOCH} (item {i} of the list)")
        if i and v <= value[i - 1]:
            raise ValueError(f"rungs must be strictly increasing: {v} follows {value[i - 1]} (item {i} of the list)")
    return value


def _eta(value: Any) -> int | list[int]:
    items = value if isinstance(value, list) else [value]
    if not items or len(items) > MAX_LIST:
        raise ValueError(f"a list of {len(items)} values; give one eta, or one per rung (at most {MAX_LIST})")
    for i, v in enumerate(items):
        where = f" (item {i} of the list)" if isinstance(value, list) else ""
        # pydantic reports a ValueError as this field's error; a TypeError would escape it
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{short(v)} is not an integer{where}")  # noqa: TRY004
        if not 2 <= v <= MAX_ETA:
            raise ValueError(f"{v} is not in 2..{MAX_ETA}: a rung keeps the best 1/eta{where}")
    return value


def _metric(value: Any) -> str:
    if value not in METRICS:
        raise ValueError(f"{short(value)} is not a metric; choose from {', '.join(METRICS)}")
    return value


class SearchSpec(Strict):
    """Successive halving: every candidate trains to the first rung, the best 1/eta of each
    target size go on to the next, and so on to the last (docs/design.md, "Tune")."""

    eta: Annotated[int | list[int], BeforeValidator(_eta)] | None = Field(
        None, description="keep the best 1/eta of the candidates at each rung; a list gives one eta per rung "
        "(default: [2, 12] at rungs E/8 and E/4: prune gently where early rankings mislead)")
    rungs: Annotated[list[int], BeforeValidator(_rungs)] | None = Field(
        None, description="epochs of the fine-tuning tasks at which candidates are compared, strictly increasing, "
        "the last at most the tasks' epochs (default: E/8 and E/4 of the tasks' E epochs, or E/eta² and E/eta "
        "for a single eta)")
    metric: Annotated[str, BeforeValidator(_metric)] = Field(
        "val_acc", description="what ranks candidates: val_acc (higher is better) or val_loss (lower)")
    min_survivors: int = Field(1, ge=1, le=1000, description="at least this many candidates go on from a rung")

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger value of the metric ranks a candidate higher."""
        return METRICS[self.metric]
