"""A search as lines of text, for `plan` and `tune --dry-run` (the CLI prints them)."""

from __future__ import annotations

from hpcxfer.collect.aggregate import protocol_label
from hpcxfer.layout import StudyPaths
from hpcxfer.tune.drive import Outcome, Step
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


def labels(candidates: list[str], size: str) -> dict[str, str]:
    """Candidates by their protocol (`common (n7 h8 d30 f0)`, `n3 h1 d30 f2`) where that
    tells them apart, else by their whole name (they differ in more than the protocol)."""
    def label(candidate: str) -> str:
        fields = dict(kv.split("=", 1) for kv in candidate.split(","))
        task = {k: int(v) if v.lstrip("-").isdigit() else v for k, v in fields.items()}
        return protocol_label({**task, "examples_per_class": int(size) if size.isdigit() else size})

    try:
        short = {c: label(c) for c in candidates}
    except (KeyError, ValueError):
        return {c: c for c in candidates}
    return short if len(set(short.values())) == len(short) else {c: c for c in candidates}


def outcome_lines(outcome: Outcome) -> list[str]:
    """Each rung's survivors per size, and the finalists' state."""
    out = []
    for record in outcome.decided:
        for size, standings in record["sizes"].items():
            names = labels([s["candidate"] for s in standings], size)
            kept = [names[s["candidate"]] for s in standings if s["kept"]]
            out.append(f"rung {record['rung']} (epoch {record['epoch']}), {size} per class: "
                       f"{len(kept)} of {len(standings)} go on: {'; '.join(kept)}")
    if outcome.step is not None and outcome.step.stuck:
        return [*out, outcome.step.note]
    out.append(f"finalists trained to epoch {outcome.search.epochs}: {len(outcome.finalists)} tasks"
               + (f", {len(outcome.unfinished)} not finished" if outcome.unfinished else ""))
    out.append(f"collect {outcome.paths.dir} to compare them")
    return out


def started_lines(paths: StudyPaths, started: Step | int) -> list[str]:
    """What `tune` without --wait did: the stage it submitted and what follows it."""
    if isinstance(started, int):
        return [f"the search runs on in the local driver (pid {started}); its log: {paths.driver_log}",
                f"hpcxfer status {paths.dir} shows how far it is; run `hpcxfer tune` again to resume it"]
    out = [f"rung {r['rung']} (epoch {r['epoch']}) decided by {r.get('decided_by', {}).get('by', 'tune')}"
           for r in started.decided]
    if started.ended:
        return [*out, f"the search has ended: collect {paths.dir} to compare the finalists"]
    stage = f"the finalists (to epoch {started.target})" if started.final else \
        f"rung {started.stage} (epoch {started.target})"
    out.append(f"{stage}: {len(started.members)} tasks, {len(started.behind)} submitted now, "
               f"held by {len(started.held)} job element(s)")
    if started.note:
        out.append(started.note)
    return out
