"""What the user sees of a search: `status` (rungs, candidates alive, compute used, pruned
tasks) and the report's rung figure, on a searched study written here in the driver's own
format, so that every expected number is worked out by hand from the files written."""

from __future__ import annotations

import json

import pytest
from collect_study import write

from benchmarks import synthetic
from hpcxfer.collect import read_study
from hpcxfer.collect.build import collect
from hpcxfer.collect.html import build_report
from hpcxfer.collect.plotting import draw
from hpcxfer.fileio import atomic_write_json
from hpcxfer.grid.task import candidate_key
from hpcxfer.layout import StudyPaths
from hpcxfer.study import task_state
from hpcxfer.tune.rule import decide

EPOCHS = 6
SPLITS = (0, 1)
#: Four candidates (n, h, d, f) per size; a candidate's val_acc at epoch e is base + e / 100.
BASE = {(6, 1, 5, 0): 0.60, (3, 1, 5, 0): 0.55, (7, 8, 30, 0): 0.50, (0, 8, 30, 0): 0.40}
#: Fashion-MNIST: 10 classes, the target half 5: a task trains size x 5 images an epoch.
HALF = 5


def _acc(cand: tuple, split: int, epoch: int) -> float:
    return BASE[cand] + epoch / 100 + split / 1000


def _write_metrics(paths: StudyPaths, task, cand: tuple, upto: int) -> None:
    tp = paths.task(task.task_id)
    tp.metrics.write_text("".join(json.dumps({"epoch": e, "val_acc": _acc(cand, task.split, e), "val_loss": 1.0,
                                              "train_loss": 0.5, "train_acc": 0.9}) + "\n"
                                  for e in range(1, upto + 1)))
    atomic_write_json(tp.progress, {"epoch": upto, "epochs": task.epochs, "time": 1.0})


def _decide(paths: StudyPaths, index: int, epoch: int, members: dict, alive: dict[int, list], keep: int) -> None:
    """Rung `index` decided as drive.py decides it: the rule on the members' metric, the
    record with each candidate's task ids, pruned.json for the pruned, their rung.json gone."""
    sizes = {}
    for size, cands in alive.items():
        metrics = {candidate_key(members[size, c][0]): {(t.split, t.seed): _acc(c, t.split, epoch)
                                                         for t in members[size, c]} for c in cands}
        of = {candidate_key(members[size, c][0]): c for c in cands}
        standings = decide(metrics, keep)
        sizes[str(size)] = [{**s.to_dict(), "tasks": [t.task_id for t in members[size, of[s.candidate]]]}
                            for s in standings]
        for s in standings:
            for t in members[size, of[s.candidate]]:
                tp = paths.task(t.task_id)
                if not s.kept:
                    atomic_write_json(tp.pruned, {"rung": index, "epoch": epoch, "metric": "val_acc",
                                                  "standing": s.to_dict()})
                    tp.rung.unlink(missing_ok=True)
    paths.tune_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(paths.rung_decision(index), {"rung": index, "epoch": epoch, "metric": "val_acc", "eta": 2,
                                                   "sizes": sizes})


@pytest.fixture
def searched(tmp_path):
    return write_searched(tmp_path / "study")


def write_searched(root):
    """Sizes 10 and 100, 4 candidates x 2 splits, 6 epochs, eta 2, rungs at epochs 2 and 4.
    Size 10 is done: 4 -> 2 -> 1, the winner n6 h1 d5 f0 trained to 6. Size 100 has
    decided rung 0 (4 -> 2) and trains rung 1 (epoch 4): its survivors' members at 4, 3, 4, 2."""
    members = {(size, c): [synthetic.finetune_task(s, size, *c, epochs=EPOCHS) for s in SPLITS]
               for size in (10, 100) for c in BASE}
    tasks = [t for ts in members.values() for t in ts]
    pre = [synthetic.pretrain_task(s) for s in SPLITS]
    paths = synthetic.write_study(root, pre + tasks, records=0, finished=lambda t: t.stage == "pretrain")
    for (size, c), ts in members.items():
        for t in ts:
            _write_metrics(paths, t, c, 2)
            atomic_write_json(paths.task(t.task_id).rung, {"stop_after": 2})
    _decide(paths, 0, 2, members, {10: list(BASE), 100: list(BASE)}, keep=2)
    top2 = [(6, 1, 5, 0), (3, 1, 5, 0)]
    reached = dict(zip([t.task_id for c in top2 for t in members[100, c]], (4, 3, 4, 2)))
    for size in (10, 100):
        for c in top2:
            for t in members[size, c]:
                _write_metrics(paths, t, c, 4 if size == 10 else reached[t.task_id])
                atomic_write_json(paths.task(t.task_id).rung, {"stop_after": 4})
    _decide(paths, 1, 4, members, {10: top2}, keep=1)
    for t in members[10, top2[0]]:  # the finalist of size 10 trained to the end
        tp = paths.task(t.task_id)
        tp.rung.unlink()
        _write_metrics(paths, t, top2[0], EPOCHS)
        tp.result.write_text(json.dumps({"task_id": t.task_id, "stage": "finetune", "val_acc": _acc(top2[0], t.split, 6),
                                         "val_loss": 1.0, "train_loss": 0.5, "train_acc": 0.9, "epochs": EPOCHS}))
    return paths, members


def test_status_shows_each_rung_the_candidates_alive_and_the_compute_used(searched, cli):
    paths, _ = searched
    out = cli("status", str(paths.dir), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    # pruned: size 10's two candidates at rung 0 and one at rung 1, size 100's two at rung 0
    assert data["counts"]["pruned"] == (2 + 1 + 2) * len(SPLITS)
    assert data["counts"]["done"] == len(SPLITS) * 2  # the pre-training and size 10's winner
    search = data["search"]
    small, big = search["sizes"]
    assert (small["examples_per_class"], small["candidates"], small["phase"]) == (10, 4, "done")
    assert [(r["epoch"], r["candidates"], r["kept"]) for r in small["rungs"]] == [(2, 4, 2), (4, 2, 1)]
    assert small["winner"] == "n6 h1 d5 f0"
    assert (big["phase"], big["epoch"], big["alive"]) == ("rung", 4, 2)
    assert [(r["epoch"], r["candidates"], r["kept"]) for r in big["rungs"]] == [(2, 4, 2), (4, 2, None)]
    # images: epochs trained x size x 5, over every task's 6 epochs
    small_used = (2 * 2 * 2 + 1 * 2 * 4 + 1 * 2 * 6) * 10 * HALF
    big_used = (2 * 2 * 2 + (4 + 3 + 4 + 2)) * 100 * HALF

    def grid(size: int) -> int:
        return len(BASE) * len(SPLITS) * EPOCHS * size * HALF

    assert (small["images"], small["grid_images"]) == (small_used, grid(10))
    assert (search["images"], search["grid_images"]) == (small_used + big_used, grid(10) + grid(100))
    assert search["images_share"] == pytest.approx((small_used + big_used) / (grid(10) + grid(100)))


def test_status_table_at_80_columns(searched, cli):
    paths, _ = searched
    out = cli("status", str(paths.dir), env={"COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    print(text)
    share = 100 * ((2 * 2 * 2 + 8 + 12) * 10 + (8 + 13) * 100) / (48 * 10 + 48 * 100)
    assert f"({share:.1f} %)" in text
    assert "4 -> 2 -> 1" in text and "done; winner n6 h1 d5 f0" in text
    assert "rung 1 (epoch 4): 2 candidates training" in " ".join(text.split())
    assert all(len(line) <= 80 for line in text.splitlines())


def test_a_pruned_task_reads_pruned_in_status_and_collect(searched):
    paths, members = searched
    pruned = members[100, (0, 8, 30, 0)][0]
    st = task_state(paths, pruned)
    assert st.state == "pruned" and "rung 0 (epoch 2)" in st.detail
    records = read_study(paths)
    assert {r["task_id"]: r["state"] for r in records.incomplete}[pruned.task_id] == "pruned"
    alive = members[100, (6, 1, 5, 0)][0]
    assert task_state(paths, alive).state == "pending"  # stopped at its rung, not pruned


def test_the_rung_figure_fades_the_pruned_and_marks_the_rungs(searched):
    from hpcxfer.collect.figures import rung_figure
    from hpcxfer.collect.plotting import FADED_ALPHA

    paths, _ = searched
    data = rung_figure(paths)
    assert data is not None
    faded = {(se.size, se.label) for se in data.series if se.faded}
    assert faded == {(10, "n3 h1 d5 f0"), (10, "scratch (n0 h8 d30 f0)"), (10, "common (n7 h8 d30 f0)"),
                     (100, "scratch (n0 h8 d30 f0)"), (100, "common (n7 h8 d30 f0)")}
    assert [(se.size, se.label) for se in data.series if se.winner] == [(10, "n6 h1 d5 f0")]
    assert data.marks == {10: [2, 4], 100: [2]}
    winner = next(se for se in data.series if se.winner)
    assert winner.x == list(range(1, 7)) and winner.mean[1] == pytest.approx(100 * (0.62 + 0.0005))
    fig = draw(data)
    small = fig.axes[0]
    lines = [ln for ln in small.get_lines() if ln.get_gid()]
    assert sorted(ln.get_alpha() for ln in lines) == [FADED_ALPHA] * 3 + [1.0]
    rungs = [ln for ln in small.get_lines() if not ln.get_gid()]
    assert sorted(ln.get_xdata()[0] for ln in rungs) == [2, 4]


def test_the_report_has_the_rung_figure_of_a_searched_study_only(searched, tmp_path):
    paths, _ = searched
    html = build_report(collect(paths))
    assert 'id="rungs"' in html and "faded: pruned at a rung" in html
    plain = write(tmp_path / "plain", {synthetic.finetune_task(s, 10, n, epochs=3): 0.5 + n / 100
                                       for s in SPLITS for n in (0, 3)})
    assert 'id="rungs"' not in build_report(collect(plain))


def test_a_damaged_decision_is_a_warning_and_the_search_shown_up_to_it(searched):
    from hpcxfer.service import status

    paths, _ = searched
    paths.rung_decision(1).write_text('{"rung": 1, "epo')
    search = status(str(paths.dir)).search
    assert search is not None and len(search.problems) == 1 and "rung-1.json" in search.problems[0]
    small = search.sizes[0]
    assert small.ladder == "4 -> 2" and [r.epoch for r in small.rungs] == [2]  # rung 1 not read


def test_a_plain_submit_still_trains_a_pruned_task_on(write_grid):
    from conftest import prepare_study

    from hpcxfer import service

    grid = write_grid()
    paths = prepare_study(grid)
    req = service.prepare(str(grid), "local", None)
    pruned = next(t for t in req.tasks if t.stage == "finetune")
    atomic_write_json(paths.task(pruned.task_id).pruned, {"rung": 0, "epoch": 1, "metric": "val_acc"})
    chosen = service.decide(req, {})
    assert chosen.states[pruned.task_id].state == "pruned"
    assert pruned.task_id in {t.task_id for t in chosen.todo}


def test_tune_prints_candidates_by_their_protocol_where_that_tells_them_apart():
    from hpcxfer.tune.render import labels

    base = "arch=alexnet,frozen_layers=0,high_lr_layers=8,initial_decay_epochs=30,lr_high=0.01,transfer_layers="
    common, n3 = base + "7", base + "3"
    assert labels([common, n3], "10") == {common: "common (n7 h8 d30 f0)", n3: "n3 h8 d30 f0"}
    other_lr = common.replace("lr_high=0.01", "lr_high=0.001")  # same protocol, another rate: names in full
    assert labels([common, other_lr], "10") == {common: common, other_lr: other_lr}
