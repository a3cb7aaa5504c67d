"""One record that cannot be read costs its task, never the study: a metrics.jsonl or
result.json that is a directory, a symlink loop, a FIFO, unreadable to the user (EACCES) or
not UTF-8 is a warning naming the file, and its task counts as not done, in every reader:
status, collect (every view, curves included), report, submit and its dry run.

Tests run as root, which reads a chmod 000 file: the EACCES case runs the command without
the capabilities that let root ignore permissions (setpriv drops CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH). Running it as `nobody` cannot work here: the Python interpreter lives
under /root, which `nobody` may not enter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import prepare_study

#: root without the capabilities that bypass file permissions: chmod 000 holds for it.
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]

#: How each damage is made, from the record's path.
DAMAGE = {
    "a directory": lambda p: p.mkdir(),
    "a symlink loop": lambda p: p.symlink_to(p.name),
    "a FIFO": lambda p: os.mkfifo(p),
    "unreadable (EACCES)": lambda p: (p.write_text('{"epoch": 1}\n'), p.chmod(0)),
}
#: What the warning says of each.
SAYS = {"a directory": "a directory", "a symlink loop": "Too many levels of symbolic links", "a FIFO": "a FIFO",
        "unreadable (EACCES)": "Permission denied"}


@pytest.fixture
def study(write_grid):
    """A submitted study: one fine-tuning task finished (result and metrics), the rest pending."""
    grid = write_grid()
    paths = prepare_study(grid)
    tasks = [json.loads(line) for line in paths.tasks_index.read_text().splitlines()]
    done = next(t["task_id"] for t in tasks if t["stage"] == "finetune")
    tp = paths.task(done)
    tp.metrics.write_text("".join(json.dumps({"epoch": e, "val_acc": 0.4 + e / 10, "val_loss": 1.0, "train_loss": 0.5,
                                              "train_acc": 0.9}) + "\n" for e in (1, 2, 3)))
    tp.result.write_text(json.dumps({"task_id": done, "val_acc": 0.7, "val_loss": 1.0, "train_loss": 0.5,
                                     "train_acc": 0.9, "epochs": 3}))
    pending = next(t["task_id"] for t in tasks if t["stage"] == "pretrain")
    return grid, paths, done, pending


def _cli(*args, as_user: bool = False) -> subprocess.CompletedProcess:
    prefix = NO_DAC if as_user else []
    return subprocess.run([*prefix, sys.executable, "-m", "hpcxfer", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})


def _needs_setpriv(kind: str) -> None:
    if kind != "unreadable (EACCES)":
        return
    if shutil.which("setpriv") is None or subprocess.run([*NO_DAC, "true"], check=False).returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("setpriv must be able to drop CAP_DAC_OVERRIDE in CI")
        pytest.skip("needs setpriv to drop CAP_DAC_OVERRIDE")


@pytest.mark.parametrize("record", ["metrics.jsonl", "result.json"])
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_every_reader_survives_one_unreadable_record(study, tmp_path, kind, record):
    _needs_setpriv(kind)
    grid, paths, _, pending = study
    path = paths.task(pending).dir / record
    DAMAGE[kind](path)
    user = kind == "unreadable (EACCES)"

    status = _cli("status", paths.dir, "--json", as_user=user)
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    counts = json.loads(status.stdout)["counts"]
    assert counts["done"] == 1 and counts["pending"] + counts["failed"] == 3, counts  # the study, whole
    state = {t["task_id"]: t for t in json.loads(status.stdout)["tasks"]}[pending]
    assert state["state"] in ("pending", "failed"), state  # not done
    said = status.stderr + state["detail"]
    assert SAYS[kind] in said, said  # why, and ...
    assert record in said  # ... which file

    outs = {}
    for args in (["status", paths.dir], ["collect", paths.dir, "--view", "curves"],
                 ["collect", paths.dir, "--view", "all", "--format", "json"],
                 ["report", paths.dir, "--out", tmp_path / "r.html"],
                 ["submit", grid, "--dry-run", "--backend", "local"]):
        out = outs[args[0]] = _cli(*args, as_user=user)
        assert out.returncode == 0 and "Traceback" not in out.stderr, (args, out.stderr)
        assert record in out.stderr + out.stdout, (args, out.stderr)
    collected = json.loads(outs["collect"].stdout)
    assert collected["summary"]["skipped"]["tasks"], collected["summary"]  # the damaged task, counted
    assert 0.7 in [r["val_acc_mean"] for r in collected["views"]["cells"]["rows"]]  # the finished one, read
    # the damaged task is among those a submit would start, the finished one is not
    assert "3 tasks would be submitted" in outs["submit"].stdout, outs["submit"].stdout


def test_a_metrics_file_not_utf8_is_damaged_lines_not_a_failure(study, tmp_path):
    _, paths, _, pending = study
    paths.task(pending).metrics.write_bytes(b'\xff\xfe{"epoch": 1}\n{"epoch": 2, "val_acc": 0.5}\n')
    out = _cli("status", paths.dir, "--json")
    assert out.returncode == 0, out.stderr
    assert {t["task_id"]: t for t in json.loads(out.stdout)["tasks"]}[pending]["epoch"] == 2
    collected = _cli("collect", paths.dir, "--view", "curves", "--format", "json")
    assert collected.returncode == 0 and "Traceback" not in collected.stderr, collected.stderr


@pytest.mark.parametrize("kind", ["a directory", "a FIFO"])
def test_a_real_submit_submits_the_task_of_an_unreadable_record(study, monkeypatch, capsys, kind):
    """The real submit decides as its dry run does: the task is not done, so it is submitted,
    with a warning naming the file; the finished task is not."""
    from hpcxfer import cli
    from hpcxfer.backends.base import Submission
    from hpcxfer.backends.local import LocalBackend

    grid, paths, done, pending = study
    DAMAGE[kind](paths.task(pending).metrics)
    handed = []

    def submit(self, paths, grid, units, **kw):
        handed.extend(m for u in units for m in u.members)
        return Submission("local", tasks=[m for u in units for m in u.members])

    monkeypatch.setattr(LocalBackend, "submit", submit)
    assert cli.main(["submit", str(grid), "--backend", "local"]) == 0
    err = capsys.readouterr().err
    assert str(paths.task(pending).metrics) in err and SAYS[kind] in err, err
    assert pending in handed and done not in handed


def test_read_regular_never_waits_on_a_fifo(tmp_path):
    from hpcxfer.fileio import read_regular

    os.mkfifo(tmp_path / "f")
    with pytest.raises(OSError, match="a FIFO"):
        read_regular(tmp_path / "f")  # returns at once: no writer is waited for
    (tmp_path / "r").write_bytes(b"x" * 10)
    assert read_regular(tmp_path / "r", limit=3) == b"xxxx"
