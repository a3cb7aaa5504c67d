"""Where a study's numbers come from, for the head of its report: when (the study's latest
record, so that the same study always gives the same report), the grid as written, the
versions, git revisions, hosts, devices and reproducibility settings its results record
(hpcxfer/worker/env.py), and the compute they used.

Compute is summed from result.json's `wall_s`: a protocol group's members share one run
(and record its wall time), so a group counts once. GPU-hours are those of results on a
CUDA device; SU are charged at the Gadi queue rate of the result's GPU model
(docs/design.md §4, hpcxfer/backends/resources.py): one GPU with its CPUs, per hour.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hpcxfer.collect.read import StudyRecords
from hpcxfer.fileio import read_json
from hpcxfer.sites import GADI_QUEUES


@dataclass
class Provenance:
    date: str | None  # the latest record's time, UTC
    grids: list[tuple[str, str | None]]  # (path, its text, or None where it cannot be read)
    facts: list[tuple[str, str]] = field(default_factory=list)  # (what, the values with their task counts)
    compute: list[tuple[str, str]] = field(default_factory=list)


def _counted(values: Counter) -> str:
    """`a (12 tasks); b (3 tasks)`, most frequent first, then by name (a fixed order)."""
    if not values:
        return "no result yet"
    items = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))
    return "; ".join(f"{v} ({n} task{'s' * (n != 1)})" for v, n in items)


def _versions(v) -> str | None:
    if not isinstance(v, dict) or not v:
        return None
    return ", ".join(f"{k} {v[k]}" for k in sorted(v))


def _determinism(result: dict) -> str | None:
    d = result.get("deterministic")
    if not isinstance(d, dict):
        return None
    return ", ".join(f"{k} {'on' if v else 'off'}" for k, v in sorted(d.items()))


def queue_of(device: str) -> str | None:
    """The Gadi queue whose GPU `device` (`cuda: Tesla V100-SXM2-32GB`) is, or None."""
    name = device.lower()
    return next((q for q, spec in sorted(GADI_QUEUES.items()) if spec.device in name), None)


def compute(results: dict[str, dict]) -> list[tuple[str, str]]:
    """Task-hours, GPU-hours and SU at Gadi's rates, each run (a task, or a group) counted once."""
    runs: dict[str, tuple[float, str]] = {}
    for task_id, r in sorted(results.items()):
        wall = r.get("wall_s")
        if not isinstance(wall, (int, float)):
            continue
        runs.setdefault(str(r.get("group") or task_id), (float(wall), str(r.get("device") or "")))
    hours = sum(w for w, _ in runs.values()) / 3600
    gpu = {d: 0.0 for _, d in runs.values() if d.startswith("cuda")}
    for w, d in runs.values():
        if d in gpu:
            gpu[d] += w / 3600
    su, unpriced = 0.0, []
    for d, h in sorted(gpu.items()):
        q = queue_of(d)
        if q is None:
            unpriced.append(d)
        else:
            su += h * GADI_QUEUES[q].su_per_hour(1)
    out = [("runs", f"{len(runs)} ({len(results)} results; a protocol group's members share one run)"),
           ("wall time", f"{hours:.3f} h summed over runs")]
    out.append(("GPU-hours", f"{sum(gpu.values()):.3f}" + (" (" + "; ".join(
        f"{d}: {h:.3f}" for d, h in sorted(gpu.items())) + ")" if gpu else " (no result ran on a GPU)")))
    if gpu:
        rates = ", ".join(sorted({f"{q} {GADI_QUEUES[q].su_per_hour(1):g} SU per GPU-hour"
                                  for d in gpu if (q := queue_of(d))}))
        out.append(("SU", f"{su:.1f} at Gadi's rates ({rates or 'no Gadi GPU'})"
                    + (f"; not priced: {', '.join(unpriced)}" if unpriced else "")))
    return out


def latest_record_time(records: StudyRecords, info: dict) -> float | None:
    """The modification time of the newest result.json, else study.json's (`info`) `updated`."""
    times = []
    for task_id in records.results:
        try:
            times.append(records.paths.task(task_id).result.stat().st_mtime)
        except OSError:
            pass
    if times:
        return max(times)
    stamp = info.get("updated") or info.get("created")
    return float(stamp) if isinstance(stamp, (int, float)) else None


def _study_json(path: Path) -> dict:
    try:
        info = read_json(path)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def provenance(records: StudyRecords) -> Provenance:
    info = _study_json(records.paths.study_json)
    stamp = latest_record_time(records, info)
    date = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp)) if stamp is not None else None
    grids = [(g, _read(g)) for g in sorted(info.get("grids") or [])
             if isinstance(g, str)]
    results = [records.results[t] for t in sorted(records.results)]

    def count(get) -> Counter:
        return Counter(get(r) or "not recorded" for r in results)

    def revision(r: dict) -> str | None:
        return (r["git_revision"] or "not a checkout") if "git_revision" in r else None

    facts = [
        ("versions", _counted(count(lambda r: _versions(r.get("versions"))))),
        ("git revision", _counted(count(revision))),
        ("hosts", _counted(count(lambda r: r.get("host")))),
        ("devices", _counted(count(lambda r: r.get("device")))),
        ("CPU threads", _counted(count(lambda r: str(r["threads"]) if "threads" in r else None))),
        ("deterministic settings", _counted(count(_determinism))),
    ]
    return Provenance(date, grids, facts, compute(records.results))
