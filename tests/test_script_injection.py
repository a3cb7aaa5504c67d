"""No root can inject a command into a job script, whichever backend writes it.

Each hostile root goes through `hpcxfer submit --dry-run` (in process) for the local,
SLURM, PBS and Gadi backends. A root with a line break (or any control character) is
refused, given on the command line or in the grid: exit 2, one line naming `--root` or
the grid's `root`, nothing written. Every other root is accepted, and what was rendered
is then run by bash in a scratch folder, with the launch stubbed out (`srun` and the
Python interpreter replaced by a stub that records its arguments): nothing may run but the
stub, and the stub must receive the study directory exactly as written.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from hpcxfer import cli
from hpcxfer.backends.slurm import slurm_escape

GRID = {
    "study": "inj",
    "data": {"dataset": "fashion-mnist"},
    "pretrain": {"epochs": 1, "batch_size": 50, "examples_per_class": 20},
    "finetune": {"split": [0], "seed": [0, 1], "examples_per_class": [10], "epochs": 1, "batch_size": 10,
                 "protocol": "common"},
    "runtime": {"threads": 1},
    "pbs": {"max_array_size": 1000},  # no `qstat -Bf` to ask here
    "gadi": {"project": "ab12", "max_jobs": 1},
}

#: name -> root, relative to the scratch folder the CLI runs in.
ROOTS = {
    "newline": "runs/x\ntouch pwned #",
    "carriage-return": "runs/x\rtouch pwned #",
    "line-separator": "runs/x\u2028touch pwned",
    "paragraph-separator": "runs/x\u2029touch pwned",
    "next-line": "runs/x\x85touch pwned",
    "tab": "runs/x\ttouch pwned",
    "command-substitution": "runs/$(touch pwned)",
    "backticks": "runs/`touch pwned`",
    "semicolon": "runs/x;touch pwned;",
    "single-quote": "runs/x';touch pwned;'",
    "double-quote": 'runs/x";touch pwned;"',
    "variables": "runs/${IFS}touch${IFS}pwned$IFS",
    "percent-j": "runs/%j",
    "percent-others": "runs/50%x %u %% %b %",
    "hash": "runs/x #touch pwned",
    "spaces": "runs/a b  c",
    "operators": "runs/x&touch pwned|tee pwned>pwned",
    "glob-and-tilde": "runs/~*?[a]{b,c}",
    "leading-dash": "-rf --version",
    "backslash": "runs/a\\b\\n",
    "unicode": "runs/étude—ü",
}
#: Refused everywhere: a line break or another control character.
CONTROL = {"newline", "carriage-return", "line-separator", "paragraph-separator", "next-line", "tab"}
#: Refused by one backend: a backslash turns off SLURM's patterns (%A_%a in the log path).
REFUSED_BY = {"slurm": {"backslash"}}
BACKENDS = ("local", "slurm", "pbs", "gadi")

STUB = """#!/bin/sh
# records its own name and arguments, one per NUL-terminated field; runs nothing
printf '%s\\0' "$(basename "$0")" "$@" > "$STUB_LOG/$(basename "$0").$$"
"""


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """The folder the CLI runs in, stubs on PATH (the SLURM script runs `srun`), and the
    in-process CLI printing plain text."""
    work, stubs, log = tmp_path / "work", tmp_path / "stubs", tmp_path / "argv"
    for d in (work, stubs, log):
        d.mkdir()
    for name in ("srun", "sbatch", "qsub", "python"):
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(0o755)
    monkeypatch.chdir(work)
    monkeypatch.setenv("PATH", f"{stubs}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr("hpcxfer.backends.slurm.max_array_size", lambda retry=True: 1001)
    monkeypatch.setattr(cli, "err_console", Console(stderr=True, markup=False, highlight=False, emoji=False,
                                                    soft_wrap=True), raising=False)
    return work, stubs, log


def refused(root_name: str, backend: str) -> bool:
    return root_name in CONTROL or root_name in REFUSED_BY.get(backend, set())


def write_grid(path: Path, **over) -> Path:
    path.write_text(yaml.safe_dump({**GRID, **over}, allow_unicode=False))
    return path


def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(ROOTS))
def test_hostile_roots(name, backend, scratch, tmp_path, capsys):
    work, stubs, log = scratch
    root = ROOTS[name]
    grid = write_grid(tmp_path / "grid.yaml")
    in_grid = write_grid(tmp_path / "in_grid.yaml", root=root)
    before = files_under(tmp_path)
    if refused(name, backend):
        for argv, names in ((["submit", grid, f"--root={root}"], ["--root"]),
                            (["submit", in_grid], [str(in_grid), "root"])):
            code = cli.main([str(a) for a in argv] + ["--backend", backend, "--dry-run"])
            err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
            assert code == 2 and len(err) == 1, err
            assert all(n in err[0] for n in names) and "Traceback" not in err[0], err[0]
        assert files_under(tmp_path) == before, "a refused root wrote something"
        return

    scripts_dir = tmp_path / "scripts"
    code = cli.main(["submit", str(grid), "--backend", backend, f"--root={root}", "--dry-run",
                     f"--scripts={scripts_dir}"])
    out = capsys.readouterr()
    assert code == 0, out.err
    study = Path(os.path.abspath(root)) / "inj"
    assert str(study).startswith(str(work)) and not study.exists()  # a dry run writes no study
    if backend != "local":  # where the real submit writes them, as the scripts read them there
        lists = study / "backends" / backend / "lists"
        lists.mkdir(parents=True)
        for f in scripts_dir.iterdir():
            shutil.copy(f, lists / f.name)
    if backend == "local":
        python = shlex.quote(sys.executable)
        commands = [line for line in out.out.splitlines() if line.startswith(python + " ")]
        assert len(commands) == 3  # one pre-training, two fine-tuning tasks
        scripts = [line.replace(python, shlex.quote(str(stubs / "python")), 1) for line in commands]
    else:
        suffix = ".sbatch" if backend == "slurm" else ".pbs"
        files = sorted((study / "backends" / backend / "lists").glob(f"*{suffix}"))
        assert len(files) == 2  # pre-training, fine-tuning
        scripts = [f.read_text().replace(sys.executable, str(stubs / "python")) for f in files]
        if backend == "slurm":
            check_sbatch_logs(files, study)

    env = {"PATH": f"{stubs}{os.pathsep}/usr/bin:/bin", "STUB_LOG": str(log), "HOME": str(tmp_path),
           "PBS_JOBID": "1.standin", "PBS_ARRAY_INDEX": "0", "PBS_JOBFS": str(tmp_path)}
    for script in scripts:
        ran = subprocess.run(["bash", "-c", script] if backend == "local" else ["bash", "-s"], input=script,
                             cwd=work, env=env, capture_output=True, text=True, timeout=30)
        assert ran.returncode == 0, ran.stderr
    assert not list(tmp_path.rglob("pwned")), "a script ran a command from the root"
    calls = [f.read_bytes().split(b"\0")[:-1] for f in sorted(log.iterdir())]
    assert len(calls) == len(scripts), calls
    for argv in (map(os.fsdecode, call) for call in calls):
        argv = list(argv)
        if argv[0] == "srun":  # the element runner after srun's options: study, task list, requeues
            lists = f"{study}/backends/slurm/lists"
            assert argv[-7:-3] == [str(stubs / "python"), "-P", "-m", "hpcxfer.backends.slurm_element"], argv
            assert argv[-3] == str(study), argv
            assert argv[-2].startswith(lists + "/") and argv[-1] == "10", argv
        else:
            assert argv[0] == "python" and str(study) in argv, argv


def check_sbatch_logs(files: list[Path], study: Path) -> None:
    """The #SBATCH log path: the study directory's own `%` doubled, SLURM's patterns not."""
    folder = slurm_escape(f"{study}/backends/slurm/logs")
    for f in files:
        lines = {line.split("=", 1)[0]: shlex.split(line.split("=", 1)[1])[0]
                 for line in f.read_text().splitlines() if line.startswith(("#SBATCH --output", "#SBATCH --error"))}
        job = "%A_%a" if "#SBATCH --array" in f.read_text() else "%j"
        assert lines == {"#SBATCH --output": f"{folder}/{job}.log"}, lines


def test_every_backend_and_root_is_covered():
    assert len(ROOTS) * len(BACKENDS) >= 80
    assert CONTROL <= set(ROOTS) and all(REFUSED_BY[b] <= set(ROOTS) for b in REFUSED_BY)


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\u2028b", "a\x85b", "a\x00b"])
def test_the_renderer_refuses_control_characters_itself(value):
    """Defence in depth: whatever reaches the templates with a line break is refused."""
    from hpcxfer.backends.render import ScriptValueError, directives, quote, render

    with pytest.raises(ScriptValueError):
        directives("#PBS", {"-o": value})
    with pytest.raises(ScriptValueError):
        directives("#PBS", {value: True})
    with pytest.raises(ScriptValueError):
        quote(value)
    context = {"directives": [], "version": "0", "study_dir": "/s", "what": "x", "threads": 1, "worker": "/py",
               "list_file": "/l", "array": False, "task_id": "t"}
    with pytest.raises(ScriptValueError):
        render("pbs_array.sh.j2", **{**context, "study_dir": value})
    with pytest.raises(ScriptValueError):
        render("pbs_array.sh.j2", **{**context, "what": value})  # unquoted, in a comment
    assert "exec /py" in render("pbs_array.sh.j2", **context)
