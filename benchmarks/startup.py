"""Start-up of a task: process start -> first training step, as the worker records it
(`startup_s` in result.json), beside the cost of `import torch` alone on the same machine.

    PYTHONPATH=. python -m benchmarks.startup [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.end_to_end import make_study
from hpcxfer.fileio import read_json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    env = {**os.environ, "HPCXFER_THREADS": "1"}
    startups, imports = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            began = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import torch"], check=True, env=env)
            imports.append(time.perf_counter() - began)
            study, ids = make_study(Path(tmp), f"s{i}", 10, 1, {"eval_every": 1})
            subprocess.run([sys.executable, "-m", "hpcxfer", "run-task", str(study), ids[1]], check=True, env=env)
            startups.append(read_json(study / "tasks" / ids[1] / "result.json")["startup_s"])
    med = statistics.median
    print(f"load average {os.getloadavg()[0]:.1f}; median of {args.repeat}: process start -> first step "
          f"{med(startups):.2f} s (min {min(startups):.2f}); `python -c 'import torch'` {med(imports):.2f} s "
          f"(min {min(imports):.2f})")


if __name__ == "__main__":
    main()
