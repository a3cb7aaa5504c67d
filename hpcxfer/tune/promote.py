"""Starting a search, and what runs it on without a person: a promotion job on a
scheduler, the detached driver on the local backend.

`python -P -m hpcxfer.tune.promote STUDY_DIR` is a promotion job: one `advance` from the
study's own records (hpcxfer/tune/record.py), which decides what is ready, submits the
next stage and, if anything of it is held, the next promotion job. With `--drive` it is
the local backend's detached driver: `advance` and wait, stage after stage, to the end
(its log: tune/jobs/driver.log).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hpcxfer import service
from hpcxfer.errors import ConfigError, HpcxferError, StudyError
from hpcxfer.fileio import atomic_write_json, read_json
from hpcxfer.layout import StudyPaths
from hpcxfer.locks import submit_lock
from hpcxfer.procs import ProcessId
from hpcxfer.tune import record
from hpcxfer.tune.drive import LOCK_WAIT_S, Step, advance, run
from hpcxfer.tune.settings import Search, resolve

log = logging.getLogger(__name__)

#: Seconds `tune` watches the local driver it started before it returns.
DRIVER_CHECK_S = 2.0


class LogReport:
    """A submit's report (service.Reporter) as log lines, for a job with no terminal."""

    def estimate(self, line: str) -> None:
        if line:
            log.info("%s", line)

    def plan(self, plan: service.Plan) -> None:
        log.info("submitting %d of %d tasks to %s", len(plan.todo), len(plan.tasks), plan.backend)

    def submitted(self, sub: service.Submission) -> None:
        if sub.job_ids:
            log.info("submitted %d tasks as %s", len(sub.tasks), ", ".join(sub.job_ids))

    @contextmanager
    def watch(self, kind: str, paths: StudyPaths, wanted: set[str], total: int) -> Iterator[Callable[..., None]]:
        yield lambda *args, **kwargs: None


def begin(grid_file: str, backend: str | None, root: str | None) -> tuple[service.Request, Search]:
    """A search's request from the user's grid, checked as `submit` checks one and then
    recorded in the study (tune/grid.yaml, tune/search.json); nothing is written if a check
    fails, including settings that differ from those of the decisions on disk."""
    from hpcxfer.extras import require_train

    req = service.prepare(grid_file, backend, root)
    search = resolve(req.grid, req.tasks)
    record.check_settings(req.paths, search, grid_file)
    if req.placeholders:
        raise ConfigError(req.grid.source, req.placeholders[0].split()[0], "holds a placeholder: "
                          + "; ".join(req.placeholders) + " (set it to the real place, then tune)")
    require_train("hpcxfer tune (the workers it starts, and its check of the data set)")
    from hpcxfer.worker.protocol import check_inputs  # imports torch: after the grid is known to be good

    check_inputs(req.grid, req.tasks)
    record.write(req, search)
    return req, search


def preview(grid_file: str, backend: str | None, root: str | None) -> list[str]:
    """What runs a search on after `tune` returns, as `tune --dry-run` shows it: the promotion
    job's script on a scheduler (with its dependencies as a placeholder), the local driver."""
    from hpcxfer.backends import get_backend
    from hpcxfer.backends.scheduler import SchedulerBackend
    from hpcxfer.grid.load import load_grid
    from hpcxfer.study import study_paths

    chosen = get_backend(backend)
    grid = load_grid(grid_file)
    paths = study_paths(grid, root)
    if not isinstance(chosen, SchedulerBackend):
        return [(f"on {chosen.name}: without --wait, a detached driver runs every rung "
                f"(its log: {paths.driver_log})")]
    script = chosen.render_promotion(paths, grid, ["<rung-jobs>"], sys.executable)
    return [(f"on {chosen.name}: without --wait, each stage's jobs are followed by a promotion job "
            f"({paths.promotion_script('<n>')}) that decides the rung and submits the next:"), "",
            *script.splitlines()]


def detach(paths: StudyPaths) -> tuple[int, bool]:
    """Start the local driver of a search, unless one runs: (its pid, whether it is new)."""
    log_path = paths.driver_log
    with submit_lock(paths, wait_s=LOCK_WAIT_S, doing="start the search's driver"):
        try:
            last = read_json(paths.driver)
        except (OSError, ValueError):
            last = {}
        running = ProcessId.from_dict(last.get("driver")) if isinstance(last, dict) else None
        if running is not None and running.alive():
            return running.pid, False
        paths.promotion_dir.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:  # this interpreter: the one the user ran `tune` with
            proc = subprocess.Popen([sys.executable, "-P", "-m", "hpcxfer.tune.promote", str(paths.dir), "--drive"],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        atomic_write_json(paths.driver, {"driver": ProcessId.of(proc.pid).to_dict(), "log": str(log_path),
                                         "started": time.time()})
    try:  # one that cannot even read the study says so here, not in a log nobody reads
        code = proc.wait(timeout=DRIVER_CHECK_S)
    except subprocess.TimeoutExpired:
        code = 0
    if code != 0:
        raise StudyError(f"{paths.dir}: the search's driver exited at once (status {code}); see {log_path}")
    return proc.pid, True


def start(req: service.Request, search: Search, report: service.Reporter) -> Step | int:
    """`tune` without --wait: one advance, with a promotion job after the stage on a
    scheduler; on the local backend, the detached driver (its pid)."""
    if req.backend.in_process:
        return detach(req.paths)[0]
    return advance(req, search, report, retry_failed=True)


def _main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not argv or argv[0].startswith("-"):
        log.error("usage: python -m hpcxfer.tune.promote STUDY_DIR [--drive]")
        return 2
    drive = "--drive" in argv[1:]
    try:
        req, search = record.load(argv[0])
        if drive:
            outcome = run(req, search, LogReport(), by="local driver")
            log.info("search %s: %d finalists, %d not finished", "ended" if outcome.step and outcome.step.ended
                     else "stopped", len(outcome.finalists), len(outcome.unfinished))
            return 1 if outcome.unfinished else 0
        step = advance(req, search, LogReport(), by="promotion job")
    except HpcxferError as e:
        log.error("%s", e)
        return 2
    if step.ended:
        log.info("search ended: %d rungs decided, %d finalists trained", len(step.decided), len(step.members))
    else:
        log.info("stage %d (epoch %d): %d members, %d submitted now; %s", step.stage, step.target,
                 len(step.members), len(step.behind), step.note or "nothing follows")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
