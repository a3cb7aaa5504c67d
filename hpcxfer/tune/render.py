"""A search as lines of text, for `plan` and `tune --dry-run` (the CLI prints them)."""

from __future__ import annotations

from hpcxfer.tune.drive import Outcome
from hpcxfer.tune.settings import SearchPlan


def _stages(stages: list[tuple[int, int]]) -> str:
    return ", ".join(f"{alive} to epoch {reach}" for alive, reach in stages)


def search_lines(plan: SearchPlan) -> list[str]:
    """The search's settings, what each size trains, and its price against the grid's."""
    s = plan.search
    rungs = ", ".join(f"{r} (eta {e})" for r, e in zip(s.rungs, s.etas))
    out = [(f"search: rungs at epochs {rungs} of {s.epochs}, "
            f"ranked by {s.metric}, at least {s.min_survivors} kept per rung")]
    for size, k, members, stages in plan.sizes:
        out.append(f"  {size} per class: {k} candidates x {members} replicates; {_stages(stages)}")
    if plan.share is None:
        out.append("  search price: unknown (the data set's size is not known; set cost.train_images)")
    else:
        out.append(f"  search price: at most {plan.images:,.0f} of the grid's {plan.grid_images:,.0f} fine-tuning "
                   f"images ({100 * plan.share:.1f} %)")
    return out


def outcome_lines(outcome: Outcome) -> list[str]:
    """Each rung's survivors per size, and the finalists' state."""
    out = []
    for record in outcome.decided:
        for size, standings in record["sizes"].items():
            kept = [s["candidate"] for s in standings if s["kept"]]
            out.append(f"rung {record['rung']} (epoch {record['epoch']}), {size} per class: "
                       f"{len(kept)} of {len(standings)} go on: {'; '.join(kept)}")
    out.append(f"finalists trained to epoch {outcome.search.epochs}: {len(outcome.finalists)} tasks"
               + (f", {len(outcome.unfinished)} not finished" if outcome.unfinished else ""))
    out.append(f"collect {outcome.paths.dir} to compare them")
    return out
