"""PBS at the process boundary: `qsub`, `qstat` and `qdel` stand-ins on PATH, and a
driver that runs the submitted scripts with bash under the environment PBS sets
(PBS_JOBID, PBS_ARRAY_INDEX, PBS_O_WORKDIR, PBS_JOBFS, TMPDIR), honouring `-W
depend=afterok`, and can kill a job the way PBS does at walltime (SIGTERM to every
process of the job, SIGKILL after kill_delay). No PBS server can run here."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

QSUB = r'''
import json, os, re, sys
spool = os.environ["PBS_STANDIN_DIR"]
script = open(sys.argv[-1]).read()
jobs = sorted(os.listdir(os.path.join(spool, "jobs")))
n = len(jobs) + 100
array = re.search(r"^#PBS -J (\d+)-(\d+)", script, re.M)
depend = re.search(r"^#PBS -W depend='?afterok:([^'\n]*)'?", script, re.M)
job_id = f"{n}[].pbs" if array else f"{n}.pbs"
record = {"id": job_id, "script": os.path.abspath(sys.argv[-1]), "state": "Q", "exit": None,
          "indices": list(range(int(array.group(1)), int(array.group(2)) + 1)) if array else None,
          "subjobs": {}, "after": depend.group(1).split(":") if depend else [], "argv": sys.argv[1:]}
json.dump(record, open(os.path.join(spool, "jobs", f"{n}.json"), "w"))
print(job_id)
'''

QSTAT = r'''
import json, os, sys
spool = os.environ["PBS_STANDIN_DIR"]
if "-Bf" in sys.argv:
    print("Server: standin\n    max_array_size = " + os.environ.get("PBS_STANDIN_MAX_ARRAY_SIZE", "10000"))
    sys.exit(0)
wanted = [a for a in sys.argv[1:] if not a.startswith("-") and a != "json"]
out = {}
for f in sorted(os.listdir(os.path.join(spool, "jobs"))):
    job = json.load(open(os.path.join(spool, "jobs", f)))
    if job["id"] not in wanted:
        continue
    info = {"job_state": job["state"]}
    if job["exit"] is not None:
        info["Exit_status"] = job["exit"]
    out[job["id"]] = info
    for i, sub in job["subjobs"].items():
        out[job["id"].replace("[]", f"[{i}]")] = {"job_state": sub["state"], "Exit_status": sub.get("exit", 0)}
    for i in job["indices"] or []:
        out.setdefault(job["id"].replace("[]", f"[{i}]"), {"job_state": job["state"]})
known = set(out)
for job_id in wanted:
    if job_id not in known:
        print(f"qstat: Unknown Job Id {job_id}", file=sys.stderr)
if out:
    print(json.dumps({"Jobs": out}))
sys.exit(153 if set(wanted) - known else 0)
'''

QDEL = r'''
import json, os, sys
spool = os.environ["PBS_STANDIN_DIR"]
for f in sorted(os.listdir(os.path.join(spool, "jobs"))):
    path = os.path.join(spool, "jobs", f)
    job = json.load(open(path))
    if job["id"] in sys.argv[1:] and job["state"] == "Q":
        job.update(state="F", exit=271)
        json.dump(job, open(path, "w"))
'''


def install_stand_ins(tmp_path: Path, kind: str, scripts: dict[str, str], max_array_size: int) -> dict:
    """Python scripts (name -> body) as commands in tmp_path/<kind>-bin and an empty spool
    tmp_path/<kind>-spool/jobs; returns the environment to run them with: PATH,
    <KIND>_STANDIN_DIR (the spool) and <KIND>_STANDIN_MAX_ARRAY_SIZE."""
    bindir, spool = tmp_path / f"{kind}-bin", tmp_path / f"{kind}-spool"
    (spool / "jobs").mkdir(parents=True)
    bindir.mkdir()
    for name, body in scripts.items():
        f = bindir / name
        f.write_text(f"#!{sys.executable}\n{body}")
        f.chmod(f.stat().st_mode | stat.S_IXUSR)
    prefix = f"{kind.upper()}_STANDIN"
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", f"{prefix}_DIR": str(spool),
            f"{prefix}_MAX_ARRAY_SIZE": str(max_array_size)}


def spooled_jobs(spool: str) -> list[dict]:
    """The jobs of a stand-in spool (<n>.json each), in order of submission."""
    folder = Path(spool) / "jobs"
    return [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"), key=lambda f: int(f.stem))]


def install(tmp_path: Path, max_array_size: int = 10000) -> dict:
    """Stand-in qsub/qstat/qdel on PATH; returns the environment to run the CLI with."""
    return install_stand_ins(tmp_path, "pbs", {"qsub": QSUB, "qstat": QSTAT, "qdel": QDEL}, max_array_size)


def jobs(env: dict) -> list[dict]:
    return spooled_jobs(env["PBS_STANDIN_DIR"])


def save(env: dict, job: dict) -> None:
    n = re.match(r"\d+", job["id"]).group(0)
    (Path(env["PBS_STANDIN_DIR"]) / "jobs" / f"{n}.json").write_text(json.dumps(job))


def start(env: dict, job: dict, index: int | None, workdir: Path) -> subprocess.Popen:
    """The job script under bash with PBS's environment, in a session of its own."""
    element = job["id"].replace("[]", f"[{index}]") if index is not None else job["id"]
    jobfs = workdir / "jobfs" / element
    jobfs.mkdir(parents=True, exist_ok=True)
    pbs_env = {**os.environ, **env, "PBS_JOBID": element, "PBS_O_WORKDIR": str(workdir), "PBS_JOBFS": str(jobfs),
               "TMPDIR": str(jobfs), "PBS_ENVIRONMENT": "PBS_BATCH", "PBS_JOBNAME": "hpcxfer"}
    if index is not None:
        pbs_env["PBS_ARRAY_INDEX"] = str(index)
    log = open(workdir / f"{element}.out", "ab")
    return subprocess.Popen(["bash", job["script"]], cwd=workdir, env=pbs_env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def finish(env: dict, job: dict, index: int | None, code: int) -> None:
    # PBS reports a job killed by signal s as 256 + s.
    status = code if code >= 0 else 256 - code
    if index is None:
        job.update(state="F", exit=status)
    else:
        job["subjobs"][str(index)] = {"state": "X", "exit": status}
        if len(job["subjobs"]) == len(job["indices"]):
            job.update(state="F", exit=max(s["exit"] for s in job["subjobs"].values()))
    save(env, job)


def _ready(env: dict, job: dict) -> bool | None:
    by_id = {j["id"]: j for j in jobs(env)}
    states = [by_id[a] for a in job["after"]]
    if any(s["state"] == "F" and s["exit"] != 0 for s in states):
        return None  # afterok can never be satisfied: PBS deletes the job
    return all(s["state"] == "F" for s in states)


def run_queued(env: dict, workdir: Path, timeout: float = 300) -> list[dict]:
    """Run every queued job to the end: in waves of every job whose afterok is satisfied,
    all subjobs of an array at once (as PBS would on a free cluster)."""
    while True:
        wave = []
        for job in jobs(env):
            if job["state"] != "Q":
                continue
            ready = _ready(env, job)
            if ready is None:
                job.update(state="F", exit=-1)
                save(env, job)
            elif ready:
                job["state"] = "R"
                save(env, job)
                wave += [(job, i, start(env, job, i, workdir)) for i in job["indices"] or [None]]
        if not wave:
            return jobs(env)
        for job, i, proc in wave:
            code = proc.wait(timeout=timeout)
            finish(env, next(j for j in jobs(env) if j["id"] == job["id"]), i, code)


def kill_at_walltime(env: dict, job: dict, proc: subprocess.Popen, kill_delay: float = 10) -> int:
    """What PBS does at walltime: SIGTERM to the whole job, SIGKILL after kill_delay."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(timeout=kill_delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
    finish(env, job, None, -signal.SIGTERM)
    return code


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
