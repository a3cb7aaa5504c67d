"""Outputs never replace what they must not: every --out, --plots, --scripts and report path
goes through one check (hpcxfer/fileio.py output_file) before any work. A stream is written
in place, /proc, /sys and /dev are refused, a study's own records are refused, and an existing
file is replaced only by hpcxfer's own output of the same kind or with --force.

The tests of /dev/null and /dev/stdout run in a private mount namespace with a tmpfs of
their own on /dev, so that a regression replaces a device node there, never the real one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import prepare_study


@pytest.fixture
def study(write_grid):
    """A submitted study (its records written, nothing trained): what collect and report read."""
    grid = write_grid()
    paths = prepare_study(grid)
    return grid, paths


def _one_line_exit_2(out: subprocess.CompletedProcess, *words: str) -> str:
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- streams: /dev/null, /dev/stdout, a FIFO
PRIVATE_DEV = """
set -e
mount -t tmpfs tmpfs /dev
mknod -m 666 /dev/null c 1 3
mknod -m 666 /dev/zero c 1 5
mknod -m 666 /dev/urandom c 1 9
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
set +e
"""


def _in_private_dev(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """`script` (sh) in a mount namespace of its own whose /dev is a fresh tmpfs."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", PRIVATE_DEV],
            capture_output=True).returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("unshare -m with a tmpfs on /dev must work in CI (root or user namespaces)")
        pytest.skip("needs unshare -m and mount (root or user namespaces)")
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", PRIVATE_DEV + script],
                          capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "PY": sys.executable})


def test_report_into_dev_null_leaves_it_a_device(study, tmp_path):
    _, paths = study
    out = _in_private_dev(f'"$PY" -m hpcxfer report {paths.dir} --out /dev/null; echo "rc=$?"; '
                          'stat -c "%F %s" /dev/null', tmp_path)
    assert "rc=0" in out.stdout, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "character special file 0", out.stdout


def test_collect_to_dev_stdout_prints_and_leaves_the_link(study, tmp_path):
    _, paths = study
    out = _in_private_dev(f'"$PY" -m hpcxfer collect {paths.dir} --format csv --out /dev/stdout > got.csv; '
                          'echo "rc=$?"; stat -c %F /dev/stdout; "$PY" -m hpcxfer collect '
                          f'{paths.dir} --format csv --out /dev/stdout | cat > piped.csv; echo "piped=$?"', tmp_path)
    assert "rc=0" in out.stdout and "piped=0" in out.stdout, out.stderr
    assert "symbolic link" in out.stdout
    for name in ("got.csv", "piped.csv"):
        text = (tmp_path / name).read_text()
        assert text.startswith("protocol,") or "," in text.splitlines()[0], text  # the CSV itself
        assert len(text.splitlines()) >= 1


def test_a_fifo_is_written_in_place(study, tmp_path, cli):
    _, paths = study
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    out = cli("collect", paths.dir, "--format", "json", "--out", fifo)
    reader.join(60)
    assert out.returncode == 0, out.stderr
    assert fifo.is_fifo() and b'"views"' in got[0]


# ---------------------------------------------------------------- a study's own records
@pytest.mark.parametrize("target", ["tasks.jsonl", "study.json", "tasks/{task}/result.json", "tasks/{task}/new.html",
                                    "groups/x/r.html", "backends/local/r.html", "tasks"])
def test_report_never_replaces_a_record_of_the_study(study, cli, target):
    _, paths = study
    task = next(paths.tasks_dir.iterdir()).name
    before = {p: p.read_bytes() for p in paths.dir.rglob("*") if p.is_file()}
    out = cli("report", paths.dir, "--out", paths.dir / target.format(task=task))
    _one_line_exit_2(out, "--out")
    assert {p: p.read_bytes() for p in paths.dir.rglob("*") if p.is_file()} == before  # nothing written
    assert '"pending": 4' in cli("status", paths.dir, "--json").stdout  # the study is whole


def test_report_inside_a_task_folder_of_a_nested_path_is_refused(study, cli, tmp_path):
    """A symlink elsewhere that leads into a study's records is its record too."""
    _, paths = study
    (tmp_path / "link").symlink_to(paths.tasks_index)
    _one_line_exit_2(cli("report", paths.dir, "--out", tmp_path / "link"), "record of the study")
    assert paths.tasks_index.read_text().startswith("{")


def test_scripts_and_plots_into_a_studys_records_are_refused(study, cli, tmp_path):
    grid, paths = study
    _one_line_exit_2(cli("submit", grid, "--dry-run", "--backend", "local", "--scripts", paths.dir / "backends" / "x"),
                     "--scripts", "record of the study")
    _one_line_exit_2(cli("collect", paths.dir, "--plots", paths.tasks_dir), "--plots", "record of the study")
    assert not (paths.dir / "backends").exists()


def test_the_default_report_path_inside_the_study_is_written(study, cli):
    _, paths = study
    for _ in range(2):  # the second replaces the first: an earlier report
        out = cli("report", paths.dir)
        assert out.returncode == 0, out.stderr
    assert "hpcxfer report</title>" in paths.report.read_text()


# ---------------------------------------------------------------- replacing an existing file
@pytest.mark.parametrize("name, fmt", [("t.csv", "csv"), ("t.md", "markdown"), ("t.json", "json"), ("t.txt", "table")])
def test_collect_replaces_its_own_earlier_output(study, cli, tmp_path, name, fmt):
    _, paths = study
    target = tmp_path / name
    assert cli("collect", paths.dir, "--out", target).returncode == 0
    first = target.read_bytes()
    target.write_bytes(first + b"\n")
    out = cli("collect", paths.dir, "--out", target)
    assert out.returncode == 0, out.stderr
    assert target.read_bytes() == first


@pytest.mark.parametrize("name, body", [("notes.html", "<html>my notes</html>\n"), ("data.csv", "a;b\n1;2\n"),
                                        ("README.md", "# my project\n"), ("config.json", '{"lr": 0.1}\n'),
                                        ("todo.txt", "buy milk\n")])
def test_a_users_file_is_refused_without_force(study, cli, tmp_path, name, body):
    _, paths = study
    target = tmp_path / name
    target.write_text(body)
    command = ["report", paths.dir] if name.endswith(".html") else ["collect", paths.dir]
    _one_line_exit_2(cli(*command, "--out", target), "--out", "--force")
    assert target.read_text() == body
    out = cli(*command, "--out", target, "--force")
    assert out.returncode == 0, out.stderr
    assert target.read_text() != body


def test_a_format_other_than_the_files_is_refused(study, cli, tmp_path):
    _, paths = study
    target = tmp_path / "t.md"
    assert cli("collect", paths.dir, "--out", target).returncode == 0
    markdown = target.read_text()
    _one_line_exit_2(cli("collect", paths.dir, "--out", target, "--format", "csv"), "not an earlier csv output")
    assert target.read_text() == markdown


def test_an_empty_file_is_replaced(study, cli, tmp_path):
    _, paths = study
    target = tmp_path / "r.html"
    target.touch()
    assert cli("report", paths.dir, "--out", target).returncode == 0
    assert "hpcxfer report</title>" in target.read_text()


def test_a_symlink_to_an_output_replaces_its_target_and_stays_a_link(study, cli, tmp_path):
    _, paths = study
    real = tmp_path / "real.html"
    (tmp_path / "link.html").symlink_to(real)
    assert cli("report", paths.dir, "--out", tmp_path / "link.html").returncode == 0
    assert (tmp_path / "link.html").is_symlink() and "hpcxfer report</title>" in real.read_text()


def test_plots_never_replace_a_foreign_figure_name(study, cli, tmp_path):
    _, paths = study
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "fig1.png").write_text("my own picture")
    _one_line_exit_2(cli("collect", paths.dir, "--plots", plots), "--plots", "fig1.png")
    assert (plots / "fig1.png").read_text() == "my own picture"


def test_dry_run_scripts_replace_their_own_and_nothing_else(study, cli, tmp_path):
    grid, _ = study
    folder = tmp_path / "scripts"
    for _ in range(2):
        out = cli("submit", grid, "--dry-run", "--backend", "pbs", "--scripts", folder)
        assert out.returncode == 0, out.stderr
    written = sorted(folder.iterdir())
    assert written
    written[0].write_text("something of mine\n")
    _one_line_exit_2(cli("submit", grid, "--dry-run", "--backend", "pbs", "--scripts", folder), "--scripts")
    assert written[0].read_text() == "something of mine\n"
    assert cli("submit", grid, "--dry-run", "--backend", "pbs", "--scripts", folder, "--force").returncode == 0


# ---------------------------------------------------------------- refused before any work
@pytest.mark.parametrize("args", [["collect", "--format", "csv", "--out", "/proc/version"],
                                  ["collect", "--out", "/proc/x.csv"], ["collect", "--out", "/sys/kernel/x.json"],
                                  ["collect", "--plots", "/proc/self"], ["report", "--out", "/proc/version"],
                                  ["collect", "--out", "{tmp}"]])
def test_proc_sys_and_folders_are_refused_before_any_work(study, monkeypatch, capsys, tmp_path, args):
    """One line, exit 2, and the study never read: a refused path costs nothing."""
    from hpcxfer import cli, service

    _, paths = study

    def no_work(*a, **k):
        raise AssertionError("the study was read before the output was checked")

    monkeypatch.setattr(service, "collect", no_work)
    argv = [args[0], str(paths.dir), *(a.format(tmp=tmp_path) for a in args[1:])]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --"), err


def test_proc_version_is_one_line_from_the_command_line(study, cli):
    _, paths = study
    _one_line_exit_2(cli("collect", paths.dir, "--format", "csv", "--out", "/proc/version"), "--out", "/proc")
