"""What a search shows of itself: per target size the rungs and the candidates alive at
each, where it stands now, and the compute it used against the full grid's (`status`);
each candidate's validation accuracy by epoch for the rung figure (`report`).

Read off the study's files alone, as hpcxfer/tune/drive.py writes them: the decisions
`tune/rung-<i>.json` (per size each candidate's standing, `kept`, and its task ids), each
member's stop request `rung.json` ({"stop_after": epoch}) and `pruned.json`, and what the
tasks have trained (result.json, progress.json, metrics.jsonl). The compute used is the
fine-tuning images trained so far: per task the epochs it has completed times its training
images per epoch (hpcxfer/grid/cost.py `task_images`, the target half's classes), over the
same for every fine-tuning task trained to its last epoch. The search's settings are not
on disk, so a rung shows once the driver has asked for it (its stop requests) or decided it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rich import box
from rich.console import Console
from rich.text import Text

from hpcxfer.collect.aggregate import protocol_label, size_key
from hpcxfer.fileio import read_json
from hpcxfer.grid.cost import DATA_COUNTS
from hpcxfer.grid.task import Task, candidate_key
from hpcxfer.layout import StudyPaths
from hpcxfer.progress import epochs_done, stop_after
from hpcxfer.study import is_done, metrics_records
from hpcxfer.terminal import Col, fit_table


def decisions(paths: StudyPaths, problems: list[str] | None = None) -> list[dict]:
    """The search's decisions on disk, in rung order, up to the first rung not decided. A
    damaged one ends the list there: with a `problems` list, a line says so; without, it
    raises ValueError."""
    out: list[dict] = []
    while (path := paths.rung_decision(len(out))).is_file():
        try:
            record = read_json(path)
        except (OSError, ValueError) as e:
            record, why = None, str(e)
        else:
            why = "not a rung's decision"
        if not (isinstance(record, dict) and isinstance(record.get("epoch"), int)
                and isinstance(record.get("sizes"), dict)):
            line = f"{path}: unreadable ({why}); the search is shown up to the rung before it"
            if problems is None:
                raise ValueError(line)
            problems.append(line)
            break
        out.append(record)
    return out


def epoch_images(task: Task) -> float | None:
    """A task's training images per epoch (None where its data set's size is not known)."""
    classes, train, _ = DATA_COUNTS.get(task.dataset, (0, 0, 0))
    if not classes:
        return None
    half = classes // 2
    return round(train * half / classes) if task.examples_per_class == "full" else int(task.examples_per_class) * half


@dataclass
class Rung:
    """One rung of one size: its epoch, the candidates trained to it, and how many go on
    (None while it is not decided)."""

    index: int
    epoch: int
    candidates: int
    kept: int | None


@dataclass
class SizeSearch:
    """One target size's search: its rungs, where it stands, and what it has trained."""

    size: int | str
    candidates: int
    rungs: list[Rung]
    phase: str  # "rung" (a rung training), "deciding", "waiting" (decided, the next not asked), "final", "done"
    epoch: int | None  # the epoch the alive candidates train to now
    alive: int
    winner: str | None  # the protocol of highest final mean among the finalists, once done
    images: float = 0.0
    grid_images: float = 0.0

    @property
    def ladder(self) -> str:
        """`12 -> 3 -> 1`: the candidates alive at the start and after each decided rung."""
        return " -> ".join(str(n) for n in [self.candidates, *(r.kept for r in self.rungs if r.kept is not None)])

    @property
    def now(self) -> str:
        """Where the size stands, in words."""
        open_rung = self.rungs[-1] if self.rungs and self.rungs[-1].kept is None else None
        if self.phase == "rung" and open_rung:
            return f"rung {open_rung.index} (epoch {open_rung.epoch}): {_candidates(self.alive)} training"
        if self.phase == "deciding" and open_rung:
            return f"rung {open_rung.index} (epoch {open_rung.epoch}): trained, to be decided"
        if self.phase == "waiting":
            return f"rung {self.rungs[-1].index} decided; `hpcxfer tune` goes on"
        if self.phase == "final":
            return f"finalists to epoch {self.epoch}: {_candidates(self.alive)} training"
        return f"done; winner {self.winner}" if self.winner else "done"

    def to_dict(self) -> dict:
        return {"examples_per_class": self.size, "candidates": self.candidates, "alive": self.alive,
                "phase": self.phase, "epoch": self.epoch, "winner": self.winner,
                "rungs": [r.__dict__ for r in self.rungs], "images": self.images,
                "grid_images": self.grid_images, "images_share": share(self.images, self.grid_images)}


@dataclass
class SearchView:
    """A searched study: each size's search, and the fine-tuning images trained so far
    against the full grid's (`known`: in images; otherwise only the share is, from the
    sizes, the data set's class count being the same for every task)."""

    sizes: list[SizeSearch]
    known: bool = True
    problems: list[str] = field(default_factory=list)  # decisions that could not be read

    @property
    def images(self) -> float:
        return sum(s.images for s in self.sizes)

    @property
    def grid_images(self) -> float:
        return sum(s.grid_images for s in self.sizes)

    @property
    def share(self) -> float | None:
        """Fine-tuning images trained over the full grid's (0..1)."""
        return share(self.images, self.grid_images)

    def to_dict(self) -> dict:
        """The machine-readable form (`status --json`'s "search")."""
        sizes = [s.to_dict() for s in self.sizes]
        if not self.known:
            for s in sizes:
                s["images"] = s["grid_images"] = None
        return {"images": self.images if self.known else None, "grid_images": self.grid_images if self.known else None,
                "images_share": self.share, "sizes": sizes, "warnings": self.problems}

    def heading(self) -> str:
        """The compute used against the full grid's, in one line."""
        pct = "?" if self.share is None else f"{100 * self.share:.1f} %"
        if not self.known:
            return f"search: trained {pct} of the full grid's fine-tuning images"
        return (f"search: trained {self.images:,.0f} of the full grid's {self.grid_images:,.0f} fine-tuning "
                f"images ({pct})")


def search_parts(console: Console, view: SearchView) -> list:
    """What `status` shows of a search: the compute line and a row per size (the candidates
    alive at the start and after each rung, the rungs' epochs, where it stands, its images)."""
    cols = [Col("per class", "size", right=True, priority=9), Col("candidates", "alive", priority=8),
            Col("rungs (epoch)", "rungs", priority=6), Col("now", text=True, priority=7),
            Col("images", right=True, priority=5)]
    rows = [[str(s.size), s.ladder, ", ".join(str(r.epoch) for r in s.rungs) or "-", s.now,
             "?" if s.grid_images == 0 else f"{100 * s.images / s.grid_images:.1f} %"] for s in view.sizes]
    return [Text(view.heading()), *(Text(f"warning: {line}", style="red") for line in view.problems),
            fit_table(console, cols, rows, wide_box=box.SIMPLE_HEAD)]


def _candidates(n: int) -> str:
    return f"{n} candidate{'' if n == 1 else 's'}"


def share(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _trained(paths: StudyPaths, task: Task) -> int:
    """Epochs a task has completed (all of them once it has its result)."""
    tp = paths.task(task.task_id)
    return task.epochs if is_done(tp) else (epochs_done(tp) or 0)


def search_view(paths: StudyPaths, tasks: Sequence[Task]) -> SearchView | None:
    """A searched study's search (None for a study no search has touched: no decision, no
    stop request and no pruned task)."""
    finetune = [t for t in tasks if t.stage == "finetune"]
    problems: list[str] = []
    decided = decisions(paths, problems)
    asked = {t.task_id: stop_after(paths.task(t.task_id)) for t in finetune}
    if not decided and not problems and not any(v is not None for v in asked.values()) \
            and not any(paths.task(t.task_id).pruned.is_file() for t in finetune):
        return None
    per_epoch = {t.task_id: epoch_images(t) for t in finetune}
    known = all(v is not None for v in per_epoch.values())
    if not known:  # the same classes for every task: the share from the sizes alone
        per_epoch = {t.task_id: (t.examples_per_class if isinstance(t.examples_per_class, int) else None)
                     for t in finetune}
        if any(v is None for v in per_epoch.values()):
            per_epoch = {t.task_id: 0 for t in finetune}
    by_size: dict = {}
    for t in finetune:
        by_size.setdefault(t.examples_per_class, {}).setdefault(candidate_key(t), []).append(t)
    sizes = []
    for size in sorted(by_size, key=size_key):
        cands = by_size[size]
        sizes.append(_size(paths, size, cands, decided, asked, per_epoch))
    return SearchView(sizes, known, problems)


def _size(paths: StudyPaths, size, cands: dict[str, list[Task]], decided: list[dict], asked: dict,
          per_epoch: dict) -> SizeSearch:
    key = str(size)
    task_of = {t.task_id: t for ts in cands.values() for t in ts}
    rungs, alive_ids, count = [], list(task_of), len(cands)
    for index, record in enumerate(decided):
        standings = record["sizes"].get(key)
        if not isinstance(standings, list):
            continue
        standings = [s for s in standings if isinstance(s, dict)]
        kept = [s for s in standings if s.get("kept")]
        rungs.append(Rung(index, record["epoch"], len(standings), len(kept)))
        alive_ids = [i for s in kept for i in s.get("tasks", []) if i in task_of]
        count = len(kept)
    last = rungs[-1].epoch if rungs else 0
    requests = {asked.get(i) for i in alive_ids} - {None}
    epochs = max(t.epochs for t in task_of.values())
    done = all(is_done(paths.task(i)) for i in alive_ids)
    trained = {i: _trained(paths, t) for i, t in task_of.items()}
    ahead = [r for r in requests if r > last]
    if ahead:
        target = max(ahead)
        rungs.append(Rung(len(rungs), target, count, None))
        phase = "deciding" if all(trained[i] >= target for i in alive_ids) else "rung"
    elif requests:
        phase, target = "waiting", last
    elif done and rungs:
        phase, target = "done", epochs
    else:
        phase, target = "final", epochs
    winner = None
    if phase == "done":
        finals = {c: final_mean(paths, ts, epochs) for c, ts in cands.items() if ts[0].task_id in alive_ids}
        best = max(finals, key=lambda c: (finals[c], c)) if finals else None
        winner = protocol_label(cands[best][0].to_dict()) if best else None
    images = sum(trained[i] * per_epoch[i] for i in task_of)
    full = sum(t.epochs * per_epoch[i] for i, t in task_of.items())
    return SizeSearch(size, len(cands), rungs, phase, target, count, winner, float(images), float(full))


def final_mean(paths: StudyPaths, members: Sequence[Task], epoch: int) -> float:
    """The members' mean val_acc at `epoch` (-inf with none: ranks last)."""
    vals = [r["val_acc"] for t in members for r in metrics_records(paths.task(t.task_id))
            if r.get("epoch") == epoch and isinstance(r.get("val_acc"), (int, float))]
    return sum(vals) / len(vals) if vals else float("-inf")
