"""The search's settings, resolved against the expanded grid, and its price.

A candidate is one setting of every fine-tuning field but the replicate ones (`split`,
`seed`) within one target size (`examples_per_class`); its members are its tasks, one per
(split, seed). What the schema cannot see is checked here, each failure one ConfigError
naming the grid file and the field: a rung beyond the tasks' epochs, a target size with a
single candidate (nothing to search).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from hpcxfer.errors import ConfigError
from hpcxfer.grid import cost
from hpcxfer.grid.expansion import expand
from hpcxfer.grid.load import load_grid
from hpcxfer.grid.schema import Grid
from hpcxfer.grid.search import METRICS, SearchSpec
from hpcxfer.grid.task import Task, candidate_key


@dataclass(frozen=True)
class Search:
    """Resolved settings: every rung and its eta explicit, checked against the tasks."""

    etas: tuple[int, ...]  # one per rung
    rungs: tuple[int, ...]
    metric: str
    min_survivors: int
    epochs: int

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger value of the metric ranks a candidate higher."""
        return METRICS[self.metric]

    def keep(self, alive: int, rung: int) -> int:
        """How many of `alive` candidates go on from rung `rung` (its index): the best 1/eta
        of that rung, at least `min_survivors`, never more than there are."""
        return min(alive, max(math.ceil(alive / self.etas[rung]), self.min_survivors))


def candidates(tasks: Iterable[Task]) -> dict[int | str, dict[str, list[Task]]]:
    """Fine-tuning tasks by target size, then by candidate, members in task order."""
    out: dict[int | str, dict[str, list[Task]]] = {}
    for t in tasks:
        if t.stage == "finetune":
            out.setdefault(t.examples_per_class, {}).setdefault(candidate_key(t), []).append(t)
    return out


#: The default ladder when the grid names neither eta nor rungs: (fraction of the tasks'
#: epochs, eta) per rung. The first rung keeps half, the second a twelfth of those: an
#: early ranking misleads (short-horizon bias, measured in BENCHMARKS.md "Tune"), so the
#: hard cut waits for the later rung. With 12 candidates it trains 25 % of the grid's images.
DEFAULT_LADDER = ((1 / 8, 2), (1 / 4, 12))
#: eta at explicit rungs when the grid gives none: gentle at every rung but the last.
GENTLE_ETA, LAST_ETA = 2, 12


def ladder(points: Sequence[tuple[float, int]], epochs: int, eval_every: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Rungs at fractions of `epochs`, each rounded up to an epoch the tasks evaluate at (a
    multiple of eval_every) and kept only below `epochs`, with their etas; where two land on
    one epoch the first's eta stays. At least one rung."""
    def up(x: float) -> int:
        return max(1, math.ceil(math.ceil(x) / eval_every)) * eval_every

    rungs: list[int] = []
    etas: list[int] = []
    for fraction, eta in points:
        r = up(epochs * fraction)
        if r < epochs and (not rungs or r > rungs[-1]):
            rungs.append(r)
            etas.append(eta)
    return (tuple(rungs), tuple(etas)) if rungs else ((min(up(1), epochs),), (points[0][1],))


def default_rungs(eta: int, epochs: int, eval_every: int = 1) -> tuple[int, ...]:
    """E/eta² and E/eta epochs, the classic geometric ladder of a single eta."""
    return ladder(((1 / eta**2, eta), (1 / eta, eta)), epochs, eval_every)[0]


def _etas(grid: Grid, spec: SearchSpec, epochs: int, every: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The rungs and one eta per rung, from what the grid names (docs/design.md §12)."""
    if spec.rungs is None:
        if spec.eta is None:
            return ladder(DEFAULT_LADDER, epochs, every)
        if isinstance(spec.eta, list):
            raise ConfigError(grid.source, "search.eta", "a list of eta values needs search.rungs, one eta per rung")
        rungs = default_rungs(spec.eta, epochs, every)
        return rungs, (spec.eta,) * len(rungs)
    rungs = tuple(spec.rungs)
    if spec.eta is None:
        return rungs, (GENTLE_ETA,) * (len(rungs) - 1) + (LAST_ETA,)
    if isinstance(spec.eta, int):
        return rungs, (spec.eta,) * len(rungs)
    if len(spec.eta) != len(rungs):
        raise ConfigError(grid.source, "search.eta", f"{len(spec.eta)} values for {len(rungs)} rungs; give one "
                          "eta, or one per rung")
    return rungs, tuple(spec.eta)


def resolve(grid: Grid, tasks: Iterable[Task]) -> Search:
    """The grid's search settings (defaults where absent), checked against its tasks."""
    spec = grid.search or SearchSpec()
    by_size = candidates(tasks)
    if not by_size:
        raise ConfigError(grid.source, "search", "the grid has no fine-tuning tasks to search over")
    for size, cands in by_size.items():
        if len(cands) < 2:
            raise ConfigError(grid.source, "search", f"examples_per_class {size} has one protocol; a search "
                              "needs at least two candidates per target size (add protocols, or run the grid)")
    epochs = min(t.epochs for cands in by_size.values() for ts in cands.values() for t in ts)
    every = grid.runtime.eval_every
    rungs, etas = _etas(grid, spec, epochs, every)
    if rungs[-1] > epochs:
        raise ConfigError(grid.source, "search.rungs", f"rung {rungs[-1]} is beyond the fine-tuning tasks' "
                          f"{epochs} epochs; rungs are epochs of those tasks")
    odd = [r for r in rungs if r % every and r != epochs]
    if odd:
        raise ConfigError(grid.source, "search.rungs", f"rung {odd[0]} is not an epoch the tasks evaluate at "
                          f"(runtime.eval_every {every}); choose multiples of {every}, or lower eval_every")
    return Search(etas, rungs, spec.metric, spec.min_survivors, epochs)


def alive_per_stage(search: Search, k: int) -> list[tuple[int, int]]:
    """(candidates alive, epochs they reach) for each stretch of training of k candidates:
    all k to the first rung, the survivors of each rung to the next, the last survivors to
    the end. Exact in advance: the rule keeps a fixed count (hpcxfer/tune/rule.py)."""
    out, alive = [], k
    for i, r in enumerate(search.rungs):
        out.append((alive, r))
        alive = search.keep(alive, i)
    if search.rungs[-1] < search.epochs:
        out.append((alive, search.epochs))
    return out


def images_share(search: Search, tasks: Iterable[Task], images_per_epoch: Callable[[Task], float]) -> tuple[float, float]:
    """(search's fine-tuning images, the full grid's): what the search trains at most.

    Each candidate of a size trains its members epoch by epoch up to where it is pruned;
    `images_per_epoch(task)` is a task's training set (its size times the classes)."""
    searched = full = 0.0
    for cands in candidates(tasks).values():
        per_candidate = [sum(images_per_epoch(t) for t in ts) for ts in cands.values()]
        full += sum(n * ts[0].epochs for n, ts in zip(per_candidate, cands.values()))
        # the candidates' members are alike within a size; price with their mean
        mean = sum(per_candidate) / len(per_candidate)
        done = 0
        for alive, reach in alive_per_stage(search, len(cands)):
            searched += alive * mean * (reach - done)
            done = reach
    return searched, full


@dataclass(frozen=True)
class SearchPlan:
    """A search as `plan` and `tune --dry-run` show it, before anything runs."""

    search: Search
    sizes: list[tuple[int | str, int, int, list[tuple[int, int]]]]  # size, candidates, members, stages
    images: float | None  # the search's fine-tuning images, at most (None: the data's size is unknown)
    grid_images: float | None

    @property
    def share(self) -> float | None:
        """The search's images over the grid's fine-tuning images (0..1)."""
        return self.images / self.grid_images if self.images is not None and self.grid_images else None


def plan_search(grid: Grid, tasks: list[Task]) -> SearchPlan:
    """The resolved search of a grid, what each size trains, and its price against the grid's."""
    search = resolve(grid, tasks)
    sizes = [(size, len(cands), max(len(ts) for ts in cands.values()), alive_per_stage(search, len(cands)))
             for size, cands in candidates(tasks).items()]
    try:
        model = cost.model_for(grid)
        images, full = images_share(search, tasks, lambda t: cost.task_images(t, model)[0])
    except cost.UnknownSize:
        images = full = None
    return SearchPlan(search, sizes, images, full)


def plan_file(grid_file: str) -> SearchPlan:
    """The search `tune` would run on a grid file (its `search:` section, or the defaults), priced."""
    grid = load_grid(grid_file)
    return plan_search(grid, expand(grid))
