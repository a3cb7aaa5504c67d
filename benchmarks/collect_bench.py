"""Collect on a large synthetic study, against pandas on the same files.

    PYTHONPATH=$PWD python benchmarks/collect_bench.py [--tasks 10000] [--records 100] [--dir DIR]

Builds (once, cached in --dir) a study of --tasks tasks, each with --records metrics records
(10,000 x 100 = a million lines) and a result.json, the way the worker writes them
(benchmarks/synthetic.py). Then each method runs in its own process, so that its peak
resident memory is its own:

  collect            what `hpcxfer collect` does by default: tasks.jsonl + every result.json
                     -> cells (mean ± std over splits)
  pandas results     tasks via pandas.read_json(lines=True), each result.json via json.load,
                     a merge and a groupby
  curves jobs=N      hpcxfer's merge of every metrics record into per-(cell, epoch) mean ± std
                     (tasks.jsonl + every metrics.jsonl, as the pandas methods read)
  pandas per file    pandas.read_json(lines=True) of each metrics.jsonl, concat, groupby
                     (cell, epoch): the obvious pandas script
  pandas one buffer  every metrics file's bytes joined and parsed by one pandas.read_json
                     (the fastest pandas form we found; it stops at the first damaged line)

Each method's answer is checked against collect's (means agree to 1e-9). pandas is needed
here only: `pip install -e .[bench]`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

STUDY = "bench"


def build(folder: Path, tasks: int, records: int) -> Path:
    from benchmarks import synthetic

    root = folder / f"{STUDY}-{tasks}x{records}"
    if (root / ".complete").exists():
        return root
    start = time.perf_counter()
    synthetic.write_study(root, synthetic.big_grid(tasks), records=records)
    (root / ".complete").write_text("")
    print(f"built {root} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return root


# ---------------------------------------------------------------- methods (each in its own process)
def m_collect(root: Path, jobs: int) -> dict:
    from hpcxfer.collect.build import collect
    from hpcxfer.layout import StudyPaths

    cells = collect(StudyPaths(root)).cells
    return {(c["examples_per_class"], c["protocol"]): c["val_acc_mean"] for c in cells}


def _cells_frame(root: Path):
    import pandas as pd

    from hpcxfer.collect.aggregate import DEFAULT_BY, protocol_label

    tasks = pd.read_json(root / "tasks.jsonl", lines=True, dtype=False)
    tasks = tasks[tasks["stage"] == "finetune"].copy()
    tasks["examples_per_class"] = tasks["examples_per_class"].astype(str)
    tasks["cell"] = tasks.groupby(list(DEFAULT_BY), sort=False).ngroup()
    labels = {r.cell: (r.examples_per_class, protocol_label({**r._asdict(), "examples_per_class": _size(r.examples_per_class)}))
              for r in tasks.itertuples()}
    return tasks, labels


def _size(s: str):
    return s if s == "full" else int(s)


def m_pandas_results(root: Path, jobs: int) -> dict:
    import pandas as pd

    tasks, labels = _cells_frame(root)
    results = []
    for task_id in tasks["task_id"]:
        with open(root / "tasks" / task_id / "result.json", "rb") as f:
            results.append(json.load(f))
    frame = tasks[["task_id", "cell"]].merge(pd.DataFrame(results)[["task_id", "val_acc"]], on="task_id")
    means = frame.groupby("cell")["val_acc"].agg(["mean", "std", "count"])
    return {(_size(labels[c][0]), labels[c][1]): m for c, m in means["mean"].items()}


def m_curves(root: Path, jobs: int) -> dict:
    from hpcxfer.collect.metrics import merge_metrics
    from hpcxfer.collect.read import Skipped, StudyRecords, load_task_index
    from hpcxfer.layout import StudyPaths

    paths, skipped = StudyPaths(root), Skipped()
    curves = merge_metrics(StudyRecords(paths, load_task_index(paths, skipped), {}, [], skipped), jobs=jobs)
    return {(c.cell["examples_per_class"], c.cell["protocol"], int(e)): float(c.mean[i, 0])
            for c in curves for i, e in enumerate(c.epochs)}


def _curve_answer(frame, labels) -> dict:
    means = frame.groupby(["cell", "epoch"])["val_acc"].agg(["mean", "std", "count"])
    return {(_size(labels[c][0]), labels[c][1], int(e)): m for (c, e), m in means["mean"].items()}


def m_pandas_per_file(root: Path, jobs: int) -> dict:
    import pandas as pd

    tasks, labels = _cells_frame(root)
    frames = []
    for task_id, cell in zip(tasks["task_id"], tasks["cell"]):
        f = pd.read_json(root / "tasks" / task_id / "metrics.jsonl", lines=True)
        f["cell"] = cell
        frames.append(f)
    return _curve_answer(pd.concat(frames, ignore_index=True), labels)


def m_pandas_one_buffer(root: Path, jobs: int) -> dict:
    import numpy as np
    import pandas as pd

    tasks, labels = _cells_frame(root)
    chunks, counts = [], []
    for task_id in tasks["task_id"]:
        data = (root / "tasks" / task_id / "metrics.jsonl").read_bytes()
        chunks.append(data)
        counts.append(data.count(b"\n"))
    frame = pd.read_json(io.BytesIO(b"".join(chunks)), lines=True)
    frame["cell"] = np.repeat(tasks["cell"].to_numpy(), counts)
    return _curve_answer(frame, labels)


METHODS = {"collect": m_collect, "pandas results": m_pandas_results, "curves": m_curves,
           "pandas per file": m_pandas_per_file, "pandas one buffer": m_pandas_one_buffer}


#: What each method imports before its clock starts (start-up is not what is compared).
IMPORTS = {"collect": ["hpcxfer.collect.build"], "curves": ["hpcxfer.collect.metrics"]}


def measure(name: str, root: Path, jobs: int, answer: Path) -> None:
    import importlib

    for module in IMPORTS.get(name, ["pandas", "hpcxfer.collect.aggregate"]):
        importlib.import_module(module)
    cpu_before = _cpu()
    start = time.perf_counter()
    result = METHODS[name](root, jobs)
    seconds = time.perf_counter() - start
    cpu = _cpu() - cpu_before
    rss = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    answer.write_text(json.dumps([[list(k), v] for k, v in result.items()]))
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": rss}))


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the curves merge's workers):
    on a shared machine wall time measures the neighbours as much as the code."""
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def run(name: str, root: Path, jobs: int, answer: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", name, "--dir", str(root), "--jobs", str(jobs),
                          "--answer", str(answer)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def agree(a: Path, b: Path) -> float:
    """Largest difference between two methods' means (both must cover the same keys)."""
    x = {tuple(k): v for k, v in json.loads(a.read_text())}
    y = {tuple(k): v for k, v in json.loads(b.read_text())}
    if set(x) != set(y):
        raise SystemExit(f"{a.name} and {b.name} disagree on which cells exist")
    return max(abs(x[k] - y[k]) for k in x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--records", type=int, default=100)
    p.add_argument("--dir", default="/tmp/hpcxfer-collect-bench", help="where the synthetic study is cached")
    p.add_argument("--jobs", type=int, default=0, help="processes for the curves merge (0: one per core)")
    p.add_argument("--skip", action="append", default=[], help="a method to leave out (repeatable)")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--answer", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        measure(args.measure, Path(args.dir), args.jobs, Path(args.answer))
        return

    from hpcxfer.collect.metrics import default_jobs

    root = build(Path(args.dir), args.tasks, args.records)
    n_tasks = sum(1 for _ in open(root / "tasks.jsonl"))
    lines = sum(1 for _ in root.glob("tasks/*/metrics.jsonl")) * args.records
    jobs = args.jobs or default_jobs()
    print(f"study: {n_tasks:,} tasks, {lines:,} metrics lines; {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}; python {sys.version.split()[0]}")
    plan = [("collect", 1, "collect"), ("pandas results", 1, "collect"), ("curves", 1, "curves")]
    if jobs > 1:
        plan.append(("curves", jobs, "curves"))
    plan += [("pandas one buffer", 1, "curves"), ("pandas per file", 1, "curves")]
    answers, times = Path(args.dir), {}
    print(f"{'method':<22}{'wall s':>9}{'CPU s':>9}{'peak MB':>9}  check")
    for name, j, ref in plan:
        if name in args.skip:
            continue
        label = f"{name} jobs={j}" if name == "curves" else name
        answer = answers / f"answer-{label.replace(' ', '_')}.json"
        r = run(name, root, j, answer)
        times[label] = r["cpu_seconds"]
        ref_answer = answers / f"answer-{ref if ref == 'collect' else 'curves_jobs=1'}.json"
        check = "" if answer == ref_answer else f"max |diff| vs {ref}: {agree(answer, ref_answer):.1e}"
        print(f"{label:<22}{r['seconds']:>9.2f}{r['cpu_seconds']:>9.2f}{r['peak_rss_mb']:>9.0f}  {check}", flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hpcxfer", "collect", str(root), "--format", "json"], check=True,
                   stdout=subprocess.DEVNULL)
    print(f"{'hpcxfer collect (CLI)':<22}{time.perf_counter() - start:>9.2f}                    "
          "the whole command, start-up included")
    for ours, theirs in (("collect", "pandas results"), ("curves jobs=1", "pandas per file"),
                         ("curves jobs=1", "pandas one buffer"), (f"curves jobs={jobs}", "pandas per file"),
                         (f"curves jobs={jobs}", "pandas one buffer")):
        if ours in times and theirs in times and ours != theirs:
            print(f"CPU time {theirs} / {ours}: {times[theirs] / times[ours]:.1f}x")


if __name__ == "__main__":
    main()
