"""The one owner of the on-disk layout. Nothing else builds these paths.

    <root>/<study>/
        study.json            what the study is: name, grid sources and their sub-grids'
                              task ids (recorded at submit), runtime, data
        tasks.jsonl           every task of the study, one per line; the line number is the
                              task's index for scheduler arrays (append-only)
        .submit.lock          held by the `submit` deciding what to submit, and by `cancel`
                              (hpcxfer.locks)
        .runner.key           the study's secret (mode 0600) that seals its local run files
                              (hpcxfer.trust)
        report.html           `hpcxfer report`'s page, unless --out puts it elsewhere
        backends/<name>/      what one backend writes (BackendPaths):
            submissions.jsonl one line per job a scheduler backend submitted
            requeues.jsonl    SLURM: one line per requeue an element asked for, and why
            lists/            each job's task list (<batch>-<stage>-<n>.txt) and script
                              (.pbs, .sbatch)
            logs/             the jobs' logs (SLURM: one per array element, <array>_<i>.log)
            runs/             the local backend's run files (<run>.json), its runners'
                              logs beside runs/ (<run>.log)
        tasks/<task_id>/
            task.json         the resolved task, its data location and runtime settings
            metrics.jsonl     one record per evaluation
            result.json       written last, once the task is finished (a damaged one is
                              moved to result.damaged.json when the task trains again)
            failed.json       written when the task failed for a real error
            running.json      the task's lock: host, pid and start time of the process
                              running it, touched as a heartbeat (hpcxfer.locks)
            checkpoint.pt     the newest checkpoint (checkpoint.prev.pt: the one before)
            checkpoint.json   where checkpoint.pt stands (epoch, step), read without torch
            model.pt          a pre-training task's final weights, which fine-tuning loads
            log.txt           the worker's log
            tb/               TensorBoard scalars
        groups/<group_id>/    a protocol group: group.json (its members), its checkpoint, its log
        tune/                 a search (hpcxfer.tune): rung-<i>.json (each rung's decision),
                              search.json and grid.yaml (recorded by `tune`), promotions.jsonl
                              (each promotion job), driver.json (the local driver), jobs/
                              (their scripts and logs)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hpcxfer.errors import StudyError


def cache_root() -> Path:
    """hpcxfer's cache folder: $HPCXFER_CACHE, else $XDG_CACHE_HOME/hpcxfer, else
    ~/.cache/hpcxfer (decoded data sets, file indexes of folder data sets)."""
    base = os.environ.get("HPCXFER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hpcxfer")
    return Path(base)


def _component(name: str, what: str) -> None:
    """Refuse a name that would not be one folder of the study (empty, a path, hidden)."""
    if not name or "/" in name or name.startswith("."):
        raise StudyError(f"{name!r} is not a {what}")


@dataclass(frozen=True)
class _WorkerPaths:
    """What every worker's folder holds, a task's or a protocol group's."""

    dir: Path

    @property
    def checkpoint(self) -> Path:
        """The newest checkpoint (a group's: of every member and the shared position)."""
        return self.dir / "checkpoint.pt"

    @property
    def checkpoint_prev(self) -> Path:
        return self.dir / "checkpoint.prev.pt"

    @property
    def checkpoint_new(self) -> Path:
        """Where a checkpoint is written before it replaces `checkpoint` (hpcxfer/worker/checkpoint.py)."""
        return self.dir / "checkpoint.pt.new"

    @property
    def log(self) -> Path:
        return self.dir / "log.txt"

    @property
    def profile(self) -> Path:
        """A torch.profiler trace of a few steps, when `runtime.profile` asks."""
        return self.dir / "profile"


@dataclass(frozen=True)
class TaskPaths(_WorkerPaths):
    @property
    def task_id(self) -> str:
        return self.dir.name

    @property
    def config(self) -> Path:
        return self.dir / "task.json"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def result(self) -> Path:
        return self.dir / "result.json"

    @property
    def checkpoint_position(self) -> Path:
        """{"epoch", "step", "bytes", "mtime_ns"} of the checkpoint.pt it was written beside:
        where a task's own checkpoint stands, for submit, which does not load torch."""
        return self.dir / "checkpoint.json"

    @property
    def progress(self) -> Path:
        """{"epoch": epochs completed, "epochs": total, "time": unix time}, at every epoch end."""
        return self.dir / "progress.json"

    @property
    def interruptions(self) -> Path:
        """{"interruptions": n}: how often the task's workers stopped (exit 75) or died before it finished."""
        return self.dir / "interruptions.json"

    @property
    def result_damaged(self) -> Path:
        """Where a result.json that failed validation is moved when the task trains again."""
        return self.dir / "result.damaged.json"

    @property
    def failed(self) -> Path:
        return self.dir / "failed.json"

    @property
    def running(self) -> Path:
        """The task's lock: the worker that runs it (hpcxfer/locks.py)."""
        return self.dir / "running.json"

    @property
    def weights(self) -> Path:
        return self.dir / "model.pt"

    @property
    def tensorboard(self) -> Path:
        return self.dir / "tb"

    @property
    def rung(self) -> Path:
        """A search's stop request: {"stop_after": epoch} (hpcxfer/tune/drive.py)."""
        return self.dir / "rung.json"

    @property
    def pruned(self) -> Path:
        """A search stopped this task at a rung: the rung and its standing there."""
        return self.dir / "pruned.json"


@dataclass(frozen=True)
class GroupPaths(_WorkerPaths):
    """A protocol group's own files (hpcxfer/grid/groups.py); its members write their
    records in their own task folders."""

    @property
    def group_id(self) -> str:
        return self.dir.name

    @property
    def config(self) -> Path:
        """group.json: {"group_id", "members": [task ids]}, written by submit."""
        return self.dir / "group.json"


@dataclass(frozen=True)
class BackendPaths:
    """backends/<name>/: the files one backend writes for the study."""

    dir: Path

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def submissions(self) -> Path:
        """One JSON line per job submitted (hpcxfer/backends/records.py)."""
        return self.dir / "submissions.jsonl"

    @property
    def requeues(self) -> Path:
        """One JSON line per requeue a SLURM element asked for, and why
        (hpcxfer/backends/slurm_element.py counts those at the time limit)."""
        return self.dir / "requeues.jsonl"

    @property
    def lists_dir(self) -> Path:
        return self.dir / "lists"

    def task_list(self, batch: int, stage: str, chunk: int) -> Path:
        """The task list of chunk `chunk` of `stage` in the backend's `batch`-th submit
        (counted from 0 over its submissions): line i+1 is array element i's unit."""
        return self.lists_dir / f"{batch:03d}-{stage}-{chunk}.txt"

    def job_script(self, task_list: Path, suffix: str) -> Path:
        """The job script that runs `task_list`, beside it: `suffix` is the scheduler's
        (".pbs", ".sbatch")."""
        return self.lists_dir / (task_list.stem + suffix)

    @property
    def logs(self) -> Path:
        """Where the jobs write their output: PBS and Gadi (`-o logs/`), SLURM (one file per
        array element)."""
        return self.dir / "logs"

    def element_log(self, element: str, escape=str) -> str:
        """SLURM's log of `element` (`<array>_<index>`, a job id, or sbatch's `%A_%a` / `%j`
        patterns); `escape` is applied to the folder's own text only (SLURM expands `%` in
        the rest)."""
        return f"{escape(str(self.logs))}/{element}.log"

    @property
    def runs(self) -> Path:
        """The local backend's run files: one per runner that holds tasks now."""
        return self.dir / "runs"

    def run_file(self, run_id: str) -> Path:
        return self.runs / f"{run_id}.json"

    def run_log(self, run_id: str) -> Path:
        """A detached local runner's own log."""
        return self.dir / f"{run_id}.log"


@dataclass(frozen=True)
class StudyPaths:
    dir: Path

    @classmethod
    def of(cls, root: str | Path, study: str) -> StudyPaths:
        return cls(Path(root).absolute() / study)

    @classmethod
    def existing(cls, path: str | Path) -> StudyPaths:
        """A study directory given on the command line; a clear error if it is not one."""
        paths = cls(Path(path).absolute())
        if not paths.study_json.is_file():
            raise StudyError(f"{path}: not a study directory (no study.json); run `hpcxfer submit GRID.yaml` first")
        return paths

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def study_json(self) -> Path:
        return self.dir / "study.json"

    @property
    def tasks_index(self) -> Path:
        return self.dir / "tasks.jsonl"

    @property
    def tasks_dir(self) -> Path:
        return self.dir / "tasks"

    @property
    def submit_lock(self) -> Path:
        return self.dir / ".submit.lock"

    @property
    def runner_key(self) -> Path:
        """The study's secret key (mode 0600) that seals its local run files (hpcxfer/trust.py)."""
        return self.dir / ".runner.key"

    @property
    def records(self) -> tuple[Path, ...]:
        """What holds the study itself: no output of a command may replace any of it."""
        return (self.study_json, self.tasks_index, self.submit_lock, self.tasks_dir, self.groups_dir,
                self.dir / "backends", self.runner_key)

    @property
    def report(self) -> Path:
        """`hpcxfer report`'s default output."""
        return self.dir / "report.html"

    def backend(self, backend: str) -> BackendPaths:
        _component(backend, "backend name")
        return BackendPaths(self.dir / "backends" / backend)

    @property
    def groups_dir(self) -> Path:
        return self.dir / "groups"

    @property
    def tune_dir(self) -> Path:
        """A search's decisions, one file per rung (hpcxfer/tune/drive.py)."""
        return self.dir / "tune"

    def rung_decision(self, index: int) -> Path:
        return self.tune_dir / f"rung-{index}.json"

    @property
    def search_record(self) -> Path:
        """A search's settings, backend and interpreter as `tune` recorded them."""
        return self.tune_dir / "search.json"

    @property
    def search_grid(self) -> Path:
        """The grid a search was started from, as validated: what its promotion jobs read."""
        return self.tune_dir / "grid.yaml"

    @property
    def promotions(self) -> Path:
        """One line per promotion job submitted: its id, the stage and the jobs it follows."""
        return self.tune_dir / "promotions.jsonl"

    @property
    def driver(self) -> Path:
        """The local backend's detached driver of a search: its process."""
        return self.tune_dir / "driver.json"

    @property
    def promotion_dir(self) -> Path:
        """Promotion jobs' scripts (promote-<n>.sh) and logs, and the local driver's log."""
        return self.tune_dir / "jobs"

    def promotion_script(self, n: int | str) -> Path:
        return self.promotion_dir / f"promote-{n}.sh"

    def promotion_log(self, job: str, escape=str) -> str:
        """A promotion job's log (`job`: its id, or SLURM's `%j`); `escape` is applied to the
        folder's own text only, as in `BackendPaths.element_log`."""
        return f"{escape(str(self.promotion_dir))}/promote-{job}.log"

    @property
    def driver_log(self) -> Path:
        """The local driver's log."""
        return self.promotion_dir / "driver.log"

    def group(self, group_id: str) -> GroupPaths:
        _component(group_id, "group id")
        return GroupPaths(self.groups_dir / group_id)

    def task(self, task_id: str) -> TaskPaths:
        _component(task_id, "task id")
        return TaskPaths(self.tasks_dir / task_id)
