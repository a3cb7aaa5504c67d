"""Installed anywhere: what the wheel holds, what it declares, and the wheel itself built,
installed into a fresh virtual environment (the base install, without torch) and run from
outside the clone: init, plan, a dry run on every backend, status, collect and report; a
task refused in one line naming the `train` extra."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from hpcxfer import shipped

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: import name -> distribution name, where they differ
DIST = {"yaml": "pyyaml", "PIL": "pillow", "markupsafe": "markupsafe", "jinja2": "jinja2", "sklearn": "scikit-learn"}


def declared() -> dict[str, set[str]]:
    """distribution names (lower case) -> where declared: "base" or the extra's name."""
    out: dict[str, set[str]] = {}

    def name(req: str) -> str:
        return req.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].split("~")[0].strip().lower()

    for req in PYPROJECT["project"]["dependencies"]:
        out.setdefault(name(req), set()).add("base")
    for extra, reqs in PYPROJECT["project"]["optional-dependencies"].items():
        for req in reqs:
            out.setdefault(name(req), set()).add(extra)
    return out


def imported() -> dict[str, set[str]]:
    """Top-level modules outside the standard library that hpcxfer's code imports -> the files."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "hpcxfer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for n in names:
                top = n.split(".")[0]
                if top not in sys.stdlib_module_names and top != "hpcxfer":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_module_is_declared():
    have = declared()
    missing = {m: files for m, files in imported().items() if DIST.get(m, m).lower().replace("_", "-") not in have}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    # What a task needs is in the train extra; the analysis needs none of it.
    for dist in ("torch", "torchvision", "tensorboard", "pillow"):
        assert "train" in have[dist] and "base" not in have[dist], dist
    assert "scipy" in have and "base" not in have["scipy"]  # imported only for the ImageNet devkit's meta.mat
    assert "examples" in have["scikit-learn"] and "base" not in have["scikit-learn"]  # only `init dissimilar`


def test_python_range_is_the_one_tested():
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"  # workers run `python -P` (3.11+)
    assert sys.version_info >= (3, 11)


def test_every_package_and_shipped_folder_is_in_the_wheel_configuration():
    config = PYPROJECT["tool"]["setuptools"]
    packages = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "hpcxfer").rglob("__init__.py")}
    assert found <= packages, f"packages missing from pyproject.toml: {sorted(found - packages)}"
    assert config["package-dir"] == {"hpcxfer.pbs_templates": "pbs_templates", "hpcxfer.jobs": "jobs"}
    for name, files in shipped.EXAMPLES.items():
        for rel in files:
            assert (ROOT / "jobs" / rel).is_file(), rel
    assert shipped.folder("pbs_templates") == ROOT / "pbs_templates"  # a checkout reads its own folders


def test_init_writes_an_example_and_never_overwrites(cli, tmp_path):
    out = cli("init", "plested2019", tmp_path / "grids")
    assert out.returncode == 0, out.stderr
    written = sorted(p.relative_to(tmp_path / "grids").as_posix() for p in (tmp_path / "grids").rglob("*.*"))
    assert written == sorted(shipped.EXAMPLES["plested2019"])
    assert (tmp_path / "grids/plested2019/base.yaml").read_bytes() == (ROOT / "jobs/plested2019/base.yaml").read_bytes()
    plan = cli("plan", tmp_path / "grids/plested2019/all.yaml", "--limit", "0")
    assert plan.returncode == 0 and "1180 tasks" in plan.stdout, plan.stderr

    (tmp_path / "grids/plested2019/base.yaml").write_text("mine\n")
    again = cli("init", "plested2019", tmp_path / "grids")
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert "base.yaml" in again.stderr or "all.yaml" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "grids/plested2019/base.yaml").read_text() == "mine\n"  # nothing written
    assert cli("init", "plested2019", tmp_path / "grids", "--force").returncode == 0
    assert (tmp_path / "grids/plested2019/base.yaml").read_bytes() == (ROOT / "jobs/plested2019/base.yaml").read_bytes()

    (tmp_path / "afile").write_text("")
    bad = cli("init", "quickstart", tmp_path / "afile")
    assert bad.returncode == 2 and "is a file" in bad.stderr
    assert cli("init", "nonesuch", tmp_path).returncode == 2


def test_run_task_without_torch_is_one_line_naming_the_extra(tmp_path):
    """torch hidden from the interpreter: one line, exit 2, nothing touched."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
    out = subprocess.run([sys.executable, "-m", "hpcxfer", "run-task", str(tmp_path / "nostudy"), "0"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert "pip install 'hpcxfer[train]'" in line and "torch" in line and "Traceback" not in line


def _tracked_copy(dest: Path) -> Path:
    """The clone's tracked files (what a wheel is built from), copied to `dest`."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to list the clone's files")
def test_wheel_installs_in_a_fresh_venv_and_runs_outside_the_clone(tmp_path):
    """The base install (no torch): about a minute, most of it pip resolving the dependencies."""
    t0 = time.monotonic()
    src = _tracked_copy(tmp_path / "src")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                            str(src)], capture_output=True, text=True, env=env, timeout=600)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("hpcxfer-*.whl")
    base = getattr(sys, "_base_executable", sys.executable)
    venv = tmp_path / "venv"
    subprocess.run([base, "-m", "venv", str(venv)], check=True, env=env, timeout=300)
    pip = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", str(wheel)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert pip.returncode == 0, pip.stderr
    installed = time.monotonic() - t0

    work = tmp_path / "elsewhere"  # not the clone, not its copy
    work.mkdir()
    tools = tmp_path / "tools"  # PATH without sbatch, scontrol, squeue, qsub, qstat: no scheduler here
    tools.mkdir()
    run_env = {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{tools}", "HOME": str(tmp_path / "home"),
               "HPCXFER_CACHE": str(tmp_path / "cache")}

    def hpcxfer(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([str(venv / "bin/hpcxfer"), *args], capture_output=True, text=True, cwd=work,
                             env=run_env, timeout=300)
        if ok:
            assert out.returncode == 0, (args, out.stdout, out.stderr)
        return out

    where = subprocess.run([str(venv / "bin/python"), "-P", "-c", "import hpcxfer, importlib.util as u; "
                            "print(hpcxfer.__file__); print(u.find_spec('torch'))"],
                           capture_output=True, text=True, cwd=work, env=run_env, check=True).stdout.split()
    assert where[0].startswith(str(venv)) and where[1] == "None", where  # the wheel's copy; no torch

    assert hpcxfer("init", "quickstart").returncode == 0 and (work / "quickstart.yaml").is_file()
    hpcxfer("init", "plested2019")
    plan = hpcxfer("plan", "plested2019/all.yaml", "--limit", "1")
    for queue in ("gpuvolta", "dgxa100", "gpuhopper"):
        assert queue in plan.stdout
    assert "1180 tasks" in plan.stdout

    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "venv" not in p.parts)
    for grid in ("quickstart.yaml", "plested2019/all.yaml"):
        for backend in ("local", "slurm", "pbs", "gadi"):
            dry = hpcxfer("submit", grid, "--backend", backend, "--dry-run")
            assert "nothing was submitted" in dry.stdout and "data not checked" in dry.stdout
            if backend != "local":
                assert dry.stdout.count("#!/bin/bash") >= 2, dry.stdout  # pre-training and fine-tuning jobs
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if "venv" not in p.parts)
    assert after == before, "a dry run wrote something"

    real = hpcxfer("submit", "quickstart.yaml", "--backend", "local", ok=False)
    assert real.returncode == 2 and "pip install 'hpcxfer[train]'" in real.stderr, real.stderr
    assert not (work / "runs").exists()

    # Analysis of a finished study needs no torch: a synthetic one, status, collect, report.
    # The writer is a benchmark fixture, not in the wheel: a copy of it, beside no hpcxfer
    # source, runs on the installed package.
    study, fixture = tmp_path / "study", tmp_path / "fixture"
    fixture.mkdir()
    shutil.copy(ROOT / "benchmarks" / "synthetic.py", fixture)
    subprocess.run([str(venv / "bin/python"), "-P", "-c",
                    "import sys; sys.path.insert(0, sys.argv[2]); "
                    "from synthetic import finetune_task, pretrain_task, write_study; "
                    "write_study(sys.argv[1], [pretrain_task(0)] + [finetune_task(s, 10, n) for s in (0, 1) "
                    "for n in (0, 7)])", str(study), str(fixture)], check=True, cwd=work, env=run_env, timeout=120)
    assert "5 done" in hpcxfer("status", str(study)).stdout
    assert "val acc" in hpcxfer("collect", str(study)).stdout
    hpcxfer("report", str(study), "--out", str(tmp_path / "r.html"))
    assert (tmp_path / "r.html").stat().st_size > 1000

    task = hpcxfer("run-task", str(study), "0", ok=False)
    assert task.returncode == 2 and "pip install 'hpcxfer[train]'" in task.stderr
    print(f"wheel built and installed in {installed:.0f} s; whole test {time.monotonic() - t0:.0f} s")


# ---------------------------------------------------------------- scripts/setup.sh and the Makefile
def _setup(tmp_path: Path, *level: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """scripts/setup.sh run in a copy of the clone with apt-get, dpkg-query, sudo and the
    venv's python stood in for by scripts that log their arguments (nothing installed);
    the log: one line per call."""
    repo, bin_dir, log = tmp_path / "repo", tmp_path / "bin", tmp_path / "calls.log"
    (repo / "scripts").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", repo / "scripts" / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    (repo / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(exist_ok=True)
    log.write_text("")
    stubs = {bin_dir / "apt-get": 'echo "apt-get $*" >> LOG',
             bin_dir / "dpkg-query": "exit 1",  # nothing installed
             bin_dir / "sudo": '"$@"',
             # imports (and PyTorch's index) fail, so that every install step runs; pip succeeds
             repo / ".venv" / "bin" / "python": 'echo "python $*" >> LOG; [ "$1" != -c ]'}
    for path, body in stubs.items():
        path.write_text(f"#!/bin/sh\n{body.replace('LOG', str(log))}\n")
        path.chmod(0o755)
    out = subprocess.run(["bash", str(repo / "scripts" / "setup.sh"), *level], check=False, capture_output=True,
                         text=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=60)
    return out, log.read_text().splitlines()


def test_quickstart_setup_installs_only_what_the_quick_start_needs(tmp_path):
    out, calls = _setup(tmp_path, "quickstart")
    assert out.returncode == 0, out.stderr
    (apt,) = [c for c in calls if c.startswith("apt-get install")]
    assert apt.split()[-1] == "dataset-fashion-mnist" and "slurm" not in apt and "munge" not in apt
    installs = [c for c in calls if " -m pip install" in c and " -e " in c]
    assert installs == ["python -m pip install -q -e .[train]"]
    if not shutil.which("nvidia-smi") and not Path("/proc/driver/nvidia/version").exists():
        # no GPU: torch's CPU build is tried first; here its index is not reached, and the log says so
        assert any("import urllib.request" in c and "download.pytorch.org/whl/cpu" in c for c in calls)
        assert "cannot be reached: pip's default torch (on PyPI a CUDA build of several GB)" in out.stdout

    out, calls = _setup(tmp_path, "test")
    assert out.returncode == 0, out.stderr
    (apt,) = [c for c in calls if c.startswith("apt-get install")]
    assert apt.split()[-3:] == ["dataset-fashion-mnist", "slurm-wlm", "munge"]
    assert [c for c in calls if " -m pip install" in c and " -e " in c] == ["python -m pip install -q -e .[train,test]"]

    bad = _setup(tmp_path, "everything")[0]
    assert bad.returncode == 2 and "unknown level 'everything'" in bad.stderr


def test_make_quickstart_and_make_test_use_their_own_setup_level():
    def dry(target: str) -> str:
        out = subprocess.run(["make", "-n", "-C", str(ROOT), target], check=False, capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    quick, test = dry("quickstart"), dry("test")
    assert "./scripts/setup.sh quickstart" in quick and "setup.sh test" not in quick
    assert "./scripts/setup.sh test" in test and "pytest" in test
    assert "make test" in (ROOT / ".ci" / "run").read_text()
