"""A submit's records appear whole or not at all, and an OS error at the edge is one line.

A read-only study root and a full disk are real mounts, each in a private mount namespace
(`unshare -m`): this file, run as a script under `unshare -m`, mounts and runs the CLI,
and prints what it saw as JSON. A submit to the PBS stand-ins only records (no training).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pbs_standin

from hpcxfer.layout import StudyPaths

UNSHARE = shutil.which("unshare")


def _can_unshare_mounts() -> bool:
    if not UNSHARE:
        return False
    try:
        return subprocess.run([UNSHARE, "-m", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def needs_mounts() -> None:
    if _can_unshare_mounts():
        return
    why = "`unshare -m` with mount(2) is unavailable (needs root or user namespaces)"
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


def cli(*args, env: dict | None = None, cwd: str | None = None) -> dict:
    out = subprocess.run([sys.executable, "-m", "hpcxfer", *map(str, args)], capture_output=True, text=True,
                         timeout=300, cwd=cwd, env={**os.environ, "COLUMNS": "200", **(env or {})})
    return {"rc": out.returncode, "stdout": out.stdout, "stderr": out.stderr}


def in_mount_namespace(*args: str, env: dict) -> dict:
    out = subprocess.run([UNSHARE, "-m", sys.executable, __file__, *args], capture_output=True, text=True,
                         timeout=600, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def one_line(out: dict) -> str:
    err = out["stderr"].strip()
    assert out["rc"] == 2 and "Traceback" not in err and len(err.splitlines()) == 1, out
    return err


# ------------------------------------------------------------------ the scenarios (in the namespace)
def read_only(grid: Path, root: Path) -> dict:
    """Submits to a root bind-mounted read-only: first a new study, then one recorded."""
    study = root / "tiny"
    subprocess.run(["mount", "--bind", "-o", "ro", str(root), str(root)], check=True)
    report = {"new": cli("submit", grid, "--backend", "pbs"), "new_exists": study.exists()}
    subprocess.run(["umount", str(root)], check=True)
    prepared = cli("submit", grid, "--backend", "pbs")  # recorded and submitted, then read-only
    before = {str(p): p.stat().st_mtime_ns for p in study.rglob("*")}
    subprocess.run(["mount", "--bind", "-o", "ro", str(root), str(root)], check=True)
    report.update(prepared=prepared, existing=cli("submit", grid, "--backend", "pbs"),
                  status=cli("status", study, "--json"), cancel=cli("cancel", study),
                  unchanged=before == {str(p): p.stat().st_mtime_ns for p in study.rglob("*")})
    return report


def full_disk(grid: Path, root: Path, size: str) -> dict:
    """A submit to a tmpfs of `size`, then (the disk grown) status and the next submit."""
    study = root / "tiny"
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)], check=True)
    report = {"full": cli("submit", grid, "--backend", "pbs"), "left": sorted(
        str(p.relative_to(root)) for p in root.rglob("*"))}
    report["status_full"] = cli("status", study, "--json")
    subprocess.run(["mount", "-o", "remount,size=16m", str(root)], check=True)
    report.update(again=cli("submit", grid, "--backend", "pbs"), status=cli("status", study, "--json"))
    return report


# ------------------------------------------------------------------ the tests
@pytest.fixture
def setup(write_grid, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    return write_grid({"root": str(root)}), root, pbs_standin.install(tmp_path)


def test_a_read_only_root_is_one_line_and_nothing_written(setup):
    needs_mounts()
    grid, root, env = setup
    report = in_mount_namespace("read_only", str(grid), str(root), env=env)
    err = one_line(report["new"])
    assert f"{root}/tiny: cannot take the study's lock to submit: Read-only file system" in err, err
    assert not report["new_exists"]
    assert report["prepared"]["rc"] == 0, report["prepared"]
    err = one_line(report["existing"])
    assert f"{root}/tiny/.submit.lock: cannot take the study's lock to submit: Read-only" in err, err
    assert report["status"]["rc"] == 0, report["status"]  # a read-only study still reads
    assert report["cancel"]["rc"] == 0 and "Traceback" not in report["cancel"]["stderr"], report["cancel"]
    assert report["unchanged"]


@pytest.mark.parametrize("size", ["4k", "12k", "20k"])
def test_a_full_disk_leaves_a_study_status_and_the_next_submit_understand(setup, size):
    needs_mounts()
    grid, root, env = setup
    report = in_mount_namespace("full_disk", str(grid), str(root), size, env=env)
    err = one_line(report["full"])
    assert "No space left on device" in err and str(root) in err, err
    left = report["left"]
    if "tiny/study.json" in left:  # an existing study's records, marked incomplete
        status = report["status_full"]
        assert status["rc"] in (0, 2) and "Traceback" not in status["stderr"], status
        assert "stopped before it had recorded the whole study" in status["stderr"] + status["stdout"], status
    else:
        assert left == [], left  # a new study: nothing at all
    again = report["again"]
    assert again["rc"] == 0 and "submitting 4 to pbs" in again["stdout"], again
    status = report["status"]
    assert status["rc"] == 0 and "stopped before" not in status["stderr"], status
    assert json.loads(status["stdout"])["counts"]["queued"] == 4


def test_a_deleted_working_folder_with_a_relative_root_is_one_line(write_grid, tmp_path):
    grid = write_grid({"root": "runs"})
    gone = tmp_path / "gone"
    gone.mkdir()
    out = subprocess.run(["sh", "-c", f'cd "{gone}" && rmdir "{gone}" && exec "$0" -m hpcxfer submit "$1" '
                          "--backend local", sys.executable, str(grid)],
                         capture_output=True, text=True, timeout=300)
    err = one_line({"rc": out.returncode, "stderr": out.stderr})
    assert "the current folder is gone" in err, err
    assert not gone.exists()


def test_an_interrupted_record_is_reported_and_completed(write_grid, tmp_path, monkeypatch):
    """A crash between study.json's two writes: status says so, the next submit completes."""
    from hpcxfer import fileio, study
    from hpcxfer.grid import expand, load_grid

    grid_path = write_grid({"root": str(tmp_path / "root")})
    grid = load_grid(grid_path)
    tasks = expand(grid)
    paths = study.study_paths(grid)
    real = fileio.atomic_write_bytes
    calls = []

    def crash_on_third(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(study, "atomic_write_json", lambda p, o: crash_on_third(
        p, (json.dumps(o, indent=2, sort_keys=True, default=str) + "\n").encode()))
    monkeypatch.setattr(study, "rewrite_jsonl", lambda p, rs: crash_on_third(
        p, "".join(json.dumps(r) + "\n" for r in rs).encode()))
    with pytest.raises(OSError):
        study.write_study(paths, grid, tasks)
    monkeypatch.undo()
    assert json.loads(paths.study_json.read_text()).get(study.RECORDING)
    from hpcxfer.service import status

    st = status(str(paths.dir))
    assert any("stopped before it had recorded the whole study" in w for w in st.warnings), st.warnings
    study.write_study(paths, grid, tasks)  # what the next submit does first
    assert study.RECORDING not in json.loads(paths.study_json.read_text())
    assert all(paths.task(t.task_id).config.is_file() for t in tasks)
    assert not status(str(paths.dir)).warnings
    assert StudyPaths.existing(paths.dir) == paths


if __name__ == "__main__":
    scenario, grid_arg, root_arg, *rest = sys.argv[1:]
    print(json.dumps({"read_only": read_only, "full_disk": full_disk}[scenario](Path(grid_arg), Path(root_arg),
                                                                               *rest)))
