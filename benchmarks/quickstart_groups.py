"""The quick start twice, back to back on one machine: with protocol groups (the default)
and with every task alone (`runtime.group_max: 1`). Prints the time of each fine-tuning
phase (from the last pre-training result to the last fine-tuning result, read off the
files) and whether the two collected tables are identical.

    PYTHONPATH=. python -m benchmarks.quickstart_groups [--grid jobs/quickstart.yaml] [--root DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def run(grid: Path, root: Path) -> tuple[float, float, dict]:
    """(wall s of the submit, fine-tuning phase s, collected cells as JSON)."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hpcxfer", "submit", str(grid), "--backend", "local", "--wait",
                    "--root", str(root)], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    study = next(p for p in root.iterdir() if (p / "study.json").exists())
    results = {p.parent.name: p.stat().st_mtime for p in study.glob("tasks/*/result.json")}
    pre = max(t for name, t in results.items() if name.startswith("pt-"))
    fine = max(t for name, t in results.items() if name.startswith("ft-"))
    out = subprocess.run([sys.executable, "-m", "hpcxfer", "collect", str(study), "--format", "json"],
                         check=True, capture_output=True, text=True).stdout
    return wall, fine - pre, json.loads(out)["views"]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--grid", default="jobs/quickstart.yaml")
    p.add_argument("--root", help="where the two studies go (default: a temporary folder)")
    args = p.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="hpcxfer-groups-"))
    grid = Path(args.grid).absolute()
    alone_grid = root / "alone.yaml"
    alone_grid.write_text(yaml.safe_dump({"extends": str(grid), "runtime": {"group_max": 1}}))
    rows = {}
    for name, path in (("grouped", grid), ("alone", alone_grid)):
        rows[name] = run(path, root / name)
        print(f"{name}: submit --wait {rows[name][0]:.1f} s, fine-tuning phase {rows[name][1]:.1f} s", flush=True)
    same = rows["grouped"][2] == rows["alone"][2]
    print(f"fine-tuning phase alone / grouped: {rows['alone'][1] / rows['grouped'][1]:.2f}x; "
          f"collected tables identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
