"""Dry runs on a machine with no scheduler and no data: every backend's scripts rendered,
the limits it assumed said, nothing written (or only the scripts, into --scripts DIR); and
Gadi's `-l storage` inferred from every /scratch and /g/data folder a job touches."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from hpcxfer.backends.gadi import GadiBackend, storage, storage_of
from hpcxfer.grid.schema import Grid
from hpcxfer.layout import StudyPaths

GRID = {
    "study": "dry",
    "data": {"dataset": "imagenet", "path": "/g/data/xy99/ILSVRC2012-not-here"},
    "arch": "alexnet",
    "finetune": {"split": [0, 1], "examples_per_class": [10], "epochs": 2, "protocol": ["common", "scratch"]},
    "runtime": {"group_max": 1},
    "pbs": {"queue": "gpu"},
    "gadi": {"project": "ab12"},
}
SUFFIX = {"slurm": ".sbatch", "pbs": ".pbs", "gadi": ".pbs"}


def listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size if p.is_file() else -1) for p in folder.rglob("*"))


@pytest.fixture
def bare(tmp_path, write_grid):
    """A grid, and an environment whose PATH holds no scheduler command (nor anything
    else: the CLI runs by its interpreter's absolute path), HOME and the cache in tmp_path."""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {"PATH": str(empty), "HOME": str(tmp_path / "home"), "HPCXFER_CACHE": str(tmp_path / "cache"),
           "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    return write_grid(base=GRID), env


@pytest.mark.parametrize("backend", ["local", "slurm", "pbs", "gadi"])
def test_a_dry_run_needs_no_scheduler_no_data_and_writes_nothing(bare, cli, tmp_path, backend):
    grid, env = bare
    before = listing(tmp_path)
    out = cli("submit", grid, "--backend", backend, "--dry-run", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert listing(tmp_path) == before, "a dry run wrote something"
    assert "data not checked (dry run): imagenet at /g/data/xy99/ILSVRC2012-not-here" in out.stdout
    assert "nothing was submitted and nothing written" in out.stdout
    study = tmp_path / "runs" / "dry"
    if backend == "local":
        assert out.stdout.count(f"{sys.executable} -P -m hpcxfer run-task {study} ") == 6
        return
    scripts = out.stdout.split("#!/bin/bash")[1:]
    assert len(scripts) >= 2 and out.stdout.count(f"# {study}/backends/{backend}/lists/") == len(scripts)
    command = "sbatch" if backend == "slurm" else "qsub"
    assert out.stdout.count(f"{command} {study}/backends/{backend}/lists/") == len(scripts)
    assumed = {"slurm": "MaxArraySize not read (reading MaxArraySize: scontrol is not on PATH): assumed 1001",
               "pbs": "max_array_size not read (reading max_array_size: qstat is not on PATH): assumed 10000",
               "gadi": None}[backend]
    if assumed:
        assert f"note: {assumed}" in out.stdout, out.stdout
    if backend == "gadi":
        assert "#PBS -l storage=gdata/xy99" in out.stdout  # the data set's project, though the data is absent


@pytest.mark.parametrize("backend", ["slurm", "pbs", "gadi"])
def test_scripts_dir_receives_the_scripts_and_nothing_else_is_written(bare, cli, tmp_path, backend):
    grid, env = bare
    before = listing(tmp_path)
    out = cli("submit", grid, "--backend", backend, "--dry-run", "--scripts", tmp_path / "scripts",
              cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    written = sorted(p.name for p in (tmp_path / "scripts").iterdir())
    assert [n for n in written if n.endswith(SUFFIX[backend])] and [n for n in written if n.endswith(".txt")]
    assert [x for x in listing(tmp_path) if not x[0].startswith("scripts")] == before
    assert "#!/bin/bash" not in out.stdout  # written, not printed
    for name in written:
        assert f"wrote {tmp_path / 'scripts' / name} (submit writes it as " in out.stdout
    lists = [n for n in written if n.endswith(".txt")]
    ids = [line for n in lists for line in (tmp_path / "scripts" / n).read_text().split()]
    assert len(ids) == len(set(ids)) == 6  # every task in exactly one list


def test_scripts_without_dry_run_and_onto_a_file_are_refused(bare, cli, tmp_path):
    grid, env = bare
    out = cli("submit", grid, "--backend", "pbs", "--scripts", tmp_path / "s", cwd=tmp_path, env=env)
    assert out.returncode == 2 and "--scripts" in out.stderr and "--dry-run" in out.stderr
    (tmp_path / "f").write_text("")
    out = cli("submit", grid, "--backend", "pbs", "--dry-run", "--scripts", tmp_path / "f", cwd=tmp_path, env=env)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "is a file" in out.stderr


def test_a_dry_run_of_a_damaged_study_says_what_submit_would_refuse(bare, cli, tmp_path):
    grid, env = bare
    study = tmp_path / "runs" / "dry"
    study.mkdir(parents=True)
    (study / "study.json").write_text("[]")
    out = cli("submit", grid, "--backend", "local", "--dry-run", cwd=tmp_path, env=env)
    assert out.returncode == 2 and "study.json: damaged" in out.stderr


def test_storage_names_every_project_folder_a_job_touches(monkeypatch):
    assert storage_of("/scratch/ab12/me/runs") == "scratch/ab12"
    assert storage_of("/g/data/xy99/ILSVRC2012") == "gdata/xy99"
    assert storage_of("/g/data/xy99") == "gdata/xy99"
    for elsewhere in ("/home/123/me", "/apps/python3/3.11.7/bin/python3", "/scratchy/ab12", "/g/data",
                      "/g/data/<project>/x", "relative/scratch/ab12"):
        assert storage_of(elsewhere) is None, elsewhere

    monkeypatch.setenv("HPCXFER_CACHE", "/scratch/cd34/cache")
    monkeypatch.setattr(sys, "prefix", "/g/data/ef56/venvs/hpcxfer")
    monkeypatch.setattr(sys, "executable", "/g/data/ef56/venvs/hpcxfer/bin/python")
    grid = Grid.model_validate({**GRID, "data": {"dataset": "imagenet", "path": "/g/data/xy99/ILSVRC2012",
                                                 "index_cache": "/g/data/gh78/index"},
                                "gadi": {"project": "ab12", "storage": "scratch/ab12+gdata/zz00"}})
    paths = StudyPaths(Path("/scratch/ab12/runs/dry"))
    # gadi.storage first, as written; then the inferred ones, sorted, each once
    assert storage(paths, grid) == "scratch/ab12+gdata/zz00+gdata/ef56+gdata/gh78+gdata/xy99+scratch/cd34"
    options = GadiBackend().options(paths, grid, "finetune", 2, [])
    assert options["-l storage="] == storage(paths, grid)

    relative_cache = Grid.model_validate({**GRID, "data": {"dataset": "imagenet", "path": "/g/data/xy99/in",
                                                           "index_cache": "cache"}})
    assert "gdata/xy99" in storage(StudyPaths(Path("/home/me/runs/dry")), relative_cache).split("+")


def test_storage_is_left_out_where_nothing_is_on_a_project_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HPCXFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv/bin/python"))
    grid = Grid.model_validate({**GRID, "data": {"dataset": "fashion-mnist"}})
    paths = StudyPaths(tmp_path / "runs" / "dry")
    if storage_of(os.path.realpath(sys.base_prefix)) is None and storage_of(Path(__file__).resolve()) is None:
        assert storage(paths, grid) is None
        assert GadiBackend().options(paths, grid, "finetune", 1, [])["-l storage="] is None
