"""SLURM at the process boundary, without a cluster: `sbatch`, `squeue`, `scancel`,
`scontrol` and `srun` stand-ins on PATH, and a driver that runs a submitted script's
elements with bash under the environment SLURM sets (SLURM_JOB_ID, SLURM_ARRAY_JOB_ID,
SLURM_ARRAY_TASK_ID, SLURM_RESTART_COUNT), its output in the file `--output` names.

`squeue -O 'ArrayJobID:|,ArrayTaskID:|,State:|,Reason:|,exit_code:'` prints what a real
squeue (slurm 22.05, without -r) prints: one line per element that started, with its exit's
wait status (75 << 8 for an exit 75), and the pending rest of an array as one line of ranges
(`4-7%2`). `scontrol show job` says an element's JobState, StartTime and TimeLimit (from
`--time`). sbatch refuses an array index at or above MaxArraySize, as SLURM does."""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

from pbs_standin import install_stand_ins, spooled_jobs

COMMON = r'''
import json, os, re, shlex, sys
spool = os.environ["SLURM_STANDIN_DIR"]
def jobs():
    folder = os.path.join(spool, "jobs")
    return [json.load(open(os.path.join(folder, f))) for f in sorted(os.listdir(folder), key=lambda f: int(f[:-5]))]
def save(job):
    json.dump(job, open(os.path.join(spool, "jobs", f"{job['id']}.json"), "w"))
def element(job, i):
    return job["id"] if i is None else f"{job['id']}_{i}"
def find(name):
    """(job, index key) of an element id, a job id or None."""
    for job in jobs():
        for key in job["elements"]:
            if name in (job["id"], element(job, None if key == "-" else key)):
                yield job, key
with open(os.path.join(spool, "calls.log"), "a") as log:
    log.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\n")
'''

SBATCH = r'''
script = sys.argv[-1]
opts = {}
for line in open(script):
    if line.startswith("#SBATCH "):
        for word in shlex.split(line[len("#SBATCH "):]):
            key, _, value = word.partition("=")
            opts[key] = value
n = len(jobs()) + 100
indices = None
if "--array" in opts:
    first, last = map(int, re.match(r"(\d+)-(\d+)", opts["--array"]).groups())
    if last >= int(os.environ["SLURM_STANDIN_MAX_ARRAY_SIZE"]):
        sys.exit("sbatch: error: Batch job submission failed: Invalid job array specification")
    indices = list(range(first, last + 1))
dep = opts.get("--dependency", "")
after = dep.split(":")[1:] if dep.startswith("afterok:") else []
save({"id": str(n), "script": os.path.abspath(script), "output": opts["--output"], "opts": opts, "after": after,
      "elements": {str(i) if indices is not None else "-": {"state": "PENDING", "restarts": 0} for i in indices or [None]}})
print(f"Submitted batch job {n}")
'''

SQUEUE = r'''
assert sys.argv[sys.argv.index("-O") + 1] == "ArrayJobID:|,ArrayTaskID:|,State:|,Reason:|,exit_code:", sys.argv
def ranges(keys):
    keys, out = sorted(map(int, keys)), []
    for k in keys:
        if out and out[-1][1] == k - 1:
            out[-1][1] = k
        else:
            out.append([k, k])
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in out)
by_element = {element(j, None if k == "-" else k): e for j in jobs() for k, e in j["elements"].items()}
for job in jobs():
    pending = [k for k, e in job["elements"].items() if e["state"] == "PENDING"]
    reason = "Dependency" if any(by_element.get(a, {}).get("state") != "COMPLETED" for a in job["after"]) else "None"
    throttle = re.search(r"%\d+", job["opts"].get("--array", ""))
    if pending and "-" not in job["elements"]:
        print(f"{job['id']}|{ranges(pending)}{throttle.group(0) if throttle else ''}|PENDING|{reason}|0")
    for key, e in job["elements"].items():
        if key == "-" or e["state"] != "PENDING":
            why = reason if e["state"] == "PENDING" else "NonZeroExitCode" if e.get("exit") else "None"
            print(f"{job['id']}|{'N/A' if key == '-' else key}|{e['state']}|{why}|{e.get('exit', 0) << 8}")
'''

SCANCEL = r'''
for name in sys.argv[1:]:
    for job, key in find(name):
        if job["elements"][key]["state"] in ("PENDING", "RUNNING"):
            job["elements"][key]["state"] = "CANCELLED"
            save(job)
'''

SCONTROL = r'''
if sys.argv[1:3] == ["show", "config"]:
    print("MaxArraySize            = " + os.environ["SLURM_STANDIN_MAX_ARRAY_SIZE"])
elif sys.argv[1:3] == ["show", "job"]:
    for job, key in find(sys.argv[-1]):
        e, minutes = job["elements"][key], int(job["opts"].get("--time", "60"))
        print(f"JobId={job['id']} JobState={e['state']} Restarts={e['restarts']} StartTime={e.get('start', 'Unknown')} "
              f"TimeLimit={minutes // 60:02d}:{minutes % 60:02d}:00")
elif sys.argv[1] == "requeue":
    for job, key in find(sys.argv[2]):
        job["elements"][key]["state"] = "PENDING"
        job["elements"][key]["restarts"] += 1
        save(job)
'''

SRUN = r'''
args = sys.argv[1:]
while args and args[0].startswith("-"):
    args.pop(0)
os.execvp(args[0], args)
'''


def install(tmp_path: Path, max_array_size: int = 1001) -> dict:
    """Stand-ins on PATH; returns the environment to run the CLI with."""
    scripts = {"sbatch": SBATCH, "squeue": SQUEUE, "scancel": SCANCEL, "scontrol": SCONTROL, "srun": SRUN}
    return install_stand_ins(tmp_path, "slurm", {k: f"{COMMON}\n{v}" for k, v in scripts.items()}, max_array_size)


def jobs(env: dict) -> list[dict]:
    return spooled_jobs(env["SLURM_STANDIN_DIR"])


def calls(env: dict, name: str) -> list[list[str]]:
    """The arguments of every call of the stand-in `name`, in order."""
    log = Path(env["SLURM_STANDIN_DIR"]) / "calls.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [argv[1:] for argv in map(json.loads, lines) if argv[0] == name]


def save(env: dict, job: dict) -> None:
    (Path(env["SLURM_STANDIN_DIR"]) / "jobs" / f"{job['id']}.json").write_text(json.dumps(job))


def run_element(env: dict, job_id: str, key: str = "-", started_s_ago: float = 0.0) -> int:
    """Run one element (`key`: its index, "-" for a plain job) to its end as slurmd would;
    `started_s_ago` sets its StartTime back, as if it had run that long already."""
    job = next(j for j in jobs(env) if j["id"] == job_id)
    elem = job["elements"][key]
    slurm_env = {**os.environ, **env, "SLURM_JOB_ID": job_id if key == "-" else str(int(job_id) * 1000 + int(key)),
                 "SLURM_CPUS_PER_TASK": job["opts"].get("--cpus-per-task", "1")}
    if elem["restarts"]:
        slurm_env["SLURM_RESTART_COUNT"] = str(elem["restarts"])
    if key != "-":
        slurm_env.update(SLURM_ARRAY_JOB_ID=job_id, SLURM_ARRAY_TASK_ID=key)
    fields = {"%A": job_id, "%a": key, "%j": slurm_env["SLURM_JOB_ID"], "%%": "%"}
    output = re.sub("%[Aaj%]", lambda m: fields[m.group(0)], job["output"])
    elem["state"] = "RUNNING"
    elem["start"] = (datetime.now() - timedelta(seconds=started_s_ago)).isoformat(timespec="seconds")
    save(env, job)
    with open(output, "ab") as log:
        code = subprocess.run(["bash", job["script"]], env=slurm_env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=300).returncode
    job = next(j for j in jobs(env) if j["id"] == job_id)
    if job["elements"][key]["state"] == "RUNNING":  # not requeued meanwhile
        job["elements"][key].update(state="COMPLETED" if code == 0 else "FAILED", exit=code)
        save(env, job)
    return code
