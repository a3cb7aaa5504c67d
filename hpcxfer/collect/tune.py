"""`collect --view tune`: per target size, a search's winner, how sure, and what it cost.

Read from the study's own files: the decisions (`tune/rung-<i>.json`, hpcxfer/tune/drive.py)
and each task's metrics.jsonl. A comparison of the winner with another candidate is paired
over (split, seed) at the last epoch both reached: the end for a finalist, its rung for a
pruned one. `images_share` is the fine-tuning images the search trained over the grid's
(per size, where every candidate's training set has the same size: epochs trained over
epochs of the grid).
"""

from __future__ import annotations

from hpcxfer.collect.paired import paired_stats
from hpcxfer.collect.search import decisions as search_decisions
from hpcxfer.collect.views import Column, View, interval, signed
from hpcxfer.grid.protocols import PROTOCOL_FIELDS, names_of
from hpcxfer.layout import StudyPaths
from hpcxfer.study import load_index, metrics_records

FIELDS = ["examples_per_class", "winner", *PROTOCOL_FIELDS, "winner_val_acc", "runner_up", "vs_runner_up_diff",
          "vs_runner_up_low", "vs_runner_up_high", "vs_scratch_diff", "vs_scratch_low", "vs_scratch_high",
          "vs_common_diff", "vs_common_low", "vs_common_high", "images_share"]


def _at(paths: StudyPaths, task_id: str) -> dict[int, dict]:
    return {r["epoch"]: r for r in metrics_records(paths.task(task_id)) if isinstance(r.get("epoch"), int)}


def _compare(mine: list[dict], theirs: list[dict], epoch: int) -> dict:
    """Paired val_acc difference (mine minus theirs) at `epoch` over the shared (split, seed)."""
    a = {(t["split"], t["seed"]): t["at"].get(epoch, {}).get("val_acc") for t in mine}
    b = {(t["split"], t["seed"]): t["at"].get(epoch, {}).get("val_acc") for t in theirs}
    diffs = [a[k] - b[k] for k in sorted(a.keys() & b.keys()) if a[k] is not None and b[k] is not None]
    return paired_stats(diffs)


def _mean_at(members: list[dict], epoch: int) -> float:
    """The members' mean val_acc at `epoch` (-inf with none: ranks last)."""
    vals = [m["at"].get(epoch, {}).get("val_acc") for m in members]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else float("-inf")


def tune_rows(paths: StudyPaths, problems: list[str] | None = None) -> list[dict]:
    """One row per target size of a searched study ([] for a study no search has decided);
    a damaged decision is a line in `problems` (collect/search.py `decisions`)."""
    decisions = search_decisions(paths, problems)
    if not decisions:
        return []
    tasks = {t["task_id"]: t for t in load_index(paths)}
    rows = []
    for size, standings in decisions[0]["sizes"].items():
        members = {s["candidate"]: [{**tasks[i], "at": _at(paths, i)} for i in s["tasks"]] for s in standings}
        reach = {c: max((max(m["at"], default=0) for m in ms), default=0) for c, ms in members.items()}
        epochs = max(m["epochs"] for ms in members.values() for m in ms)
        finalists = [s["candidate"] for s in decisions[-1]["sizes"][size] if s["kept"]]

        def final(c: str, members: dict = members, epochs: int = epochs) -> float:
            return _mean_at(members[c], epochs)

        winner = max(finalists, key=lambda c: (final(c), c))
        ranked = [s["candidate"] for s in decisions[-1]["sizes"][size]]
        others = sorted((c for c in finalists if c != winner), key=final, reverse=True)
        runner_up = others[0] if others else next((c for c in ranked if c != winner), None)
        first = members[winner][0]
        row = {"examples_per_class": first["examples_per_class"], "winner": winner,
               **{f: first[f] for f in PROTOCOL_FIELDS}, "winner_val_acc": final(winner), "runner_up": runner_up}
        named = {n: c for c, ms in members.items() for n in names_of(ms[0])}
        for label, other in (("runner_up", runner_up), ("scratch", named.get("scratch")),
                             ("common", named.get("common"))):
            stats = _compare(members[winner], members[other], min(reach[other], reach[winner])) \
                if other and other != winner else {}
            row.update({f"vs_{label}_diff": stats.get("mean_diff"), f"vs_{label}_low": stats.get("ci_low"),
                        f"vs_{label}_high": stats.get("ci_high")})
        trained = sum(reach[c] * len(ms) for c, ms in members.items())
        row["images_share"] = trained / (epochs * sum(len(ms) for ms in members.values()))
        rows.append(row)
    return rows


def tune_view(paths: StudyPaths) -> View:
    """The search's outcome per size (accuracy differences in percentage points)."""
    problems: list[str] = []
    rows = tune_rows(paths, problems)

    def vs(label: str) -> Column:
        return Column(f"vs {label.replace('_', '-')}", lambda r: f"{signed(_pp(r[f'vs_{label}_diff']))} "
                      f"{interval(r[f'vs_{label}_low'], r[f'vs_{label}_high'], 100)}", numeric=False)

    columns = [Column("per class", lambda r: str(r["examples_per_class"])),
               Column("winner (n h d f)", lambda r: " ".join(str(r[f]) for f in PROTOCOL_FIELDS), numeric=False),
               Column("val acc", lambda r: f"{100 * r['winner_val_acc']:.1f} %"),
               vs("runner_up"), vs("scratch"), vs("common"),
               Column("images", lambda r: f"{100 * r['images_share']:.1f} %")]
    notes = problems + ([] if rows else ["no search decided in this study (run `hpcxfer tune`)"])
    return View("tune", "the search's winner per size: paired difference and 95 % interval, at the last epoch "
                "both reached", columns, rows, notes, FIELDS)


def _pp(value: float | None) -> float | None:
    return None if value is None else 100 * value
