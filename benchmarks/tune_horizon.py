"""Short-horizon bias: does an early rung rank the candidates as the last epoch does?

Reads a finished full-grid study (every fine-tuning task trained to its last epoch, metrics
recorded every `runtime.eval_every` epochs, e.g. the full half of benchmarks/tune_fmnist.py)
and, per target size:

- the Spearman correlation between the candidates' mean metric at each evaluated epoch and
  at the last one;
- the rank, by the search's own rule (hpcxfer/tune/rule.py), of the final best candidate at
  each evaluated epoch: a first rung keeps the best ceil(k / eta), so a rank beyond that
  there means the search would prune the winner;
- for each rung ladder given, the successive-halving search replayed on the recorded metrics
  (a search's candidate at a rung is the same task at that epoch, bit for bit, so the replay
  is what `hpcxfer tune` would decide): its winner, whether that is the grid's best or tied
  with it (the paired 95 % interval of their final difference includes 0), and the share of
  the grid's fine-tuning images it trains.

    PYTHONPATH=. python -m benchmarks.tune_horizon STUDY [--eta 4] [--ladder 5:2,10:12 --ladder 20,30 ...]
"""

from __future__ import annotations

import argparse
import json
import sys

from scipy.stats import spearmanr

from hpcxfer.collect.paired import paired_stats
from hpcxfer.layout import StudyPaths
from hpcxfer.study import load_tasks, metrics_records
from hpcxfer.tune.rule import decide
from hpcxfer.tune.settings import GENTLE_ETA, LAST_ETA, Search, alive_per_stage, candidates


def label(task) -> str:
    """A candidate's short name: its protocol as the task ids spell it (n h d f)."""
    return (f"n{task.transfer_layers}h{task.high_lr_layers}d{task.initial_decay_epochs}"
            f"f{task.frozen_layers}")


def curves(paths: StudyPaths, metric: str) -> dict:
    """size -> candidate -> (split, seed) -> {epoch: metric}; candidates by their short name
    where that tells them apart (their protocols differ and nothing else), else in full."""
    out: dict = {}
    for size, cands in candidates(load_tasks(paths)).items():
        short = {c: label(ts[0]) for c, ts in cands.items()}
        if len(set(short.values())) < len(short):
            short = {c: c for c in cands}
        out[size] = {short[c]: {(t.split, t.seed): {r["epoch"]: r[metric] for r in metrics_records(paths.task(t.task_id))
                                                    if metric in r and isinstance(r.get("epoch"), int)}
                                for t in ts} for c, ts in cands.items()}
    return out


def at(cands: dict, epoch: int) -> dict:
    return {c: {m: rec.get(epoch) for m, rec in members.items()} for c, members in cands.items()}


def mean(values: dict) -> float:
    vs = [v for v in values.values() if v is not None]
    return sum(vs) / len(vs)


def replay(cands: dict, search: Search, higher: bool) -> tuple[str, list[list[str]]]:
    """The winner of a search with these rungs, and who was alive at each rung."""
    alive, history = sorted(cands), []
    for i, r in enumerate(search.rungs):
        history.append(alive)
        standings = decide(at({c: cands[c] for c in alive}, r), search.keep(len(alive), i), higher)
        alive = [s.candidate for s in standings if s.kept]
    final = decide(at({c: cands[c] for c in alive}, search.epochs), 1, higher)
    return final[0].candidate, history


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("study")
    p.add_argument("--eta", type=int, default=None,
                   help="one eta at every rung (default: the search's default etas, docs/design.md §12)")
    p.add_argument("--metric", default="val_acc")
    p.add_argument("--ladder", action="append", default=[],
                   help="rung epochs, comma separated, each optionally epoch:eta (repeatable; default: a few)")
    args = p.parse_args()
    paths = StudyPaths.existing(args.study)
    higher = args.metric != "val_loss"
    out = {"study": str(paths.dir), "eta": args.eta, "metric": args.metric, "sizes": []}
    for size, cands in curves(paths, args.metric).items():
        epochs = sorted({e for ms in cands.values() for rec in ms.values() for e in rec})
        last = epochs[-1]
        finals = {c: mean(at(cands, last)[c]) for c in cands}
        sign = 1 if higher else -1
        best = max(finals, key=lambda c: (sign * finals[c], c))
        keep = -(-len(cands) // (args.eta or GENTLE_ETA))  # what a first rung keeps
        row = {"examples_per_class": size, "candidates": len(cands), "best": best,
               "final_means": {c: round(v, 4) for c, v in sorted(finals.items(), key=lambda kv: -sign * kv[1])},
               "by_epoch": []}
        for e in epochs[:-1]:
            now = at(cands, e)
            rho = spearmanr([mean(now[c]) for c in sorted(cands)], [finals[c] for c in sorted(cands)]).statistic
            rank = next(s.rank for s in decide(now, keep, higher) if s.candidate == best)
            row["by_epoch"].append({"epoch": e, "spearman": round(float(rho), 3), "best_rank_by_rule": rank,
                                    "best_kept": rank <= keep})
        ladders = args.ladder or ["5:4,10:4", "5,10", "5:3,10", "10,20", "20,30"]
        row["ladders"] = []
        for ladder in ladders:
            points = [x.split(":") for x in ladder.split(",")]
            rungs = tuple(int(p[0]) for p in points)
            default = (GENTLE_ETA,) * (len(rungs) - 1) + (LAST_ETA,) if args.eta is None else (args.eta,) * len(rungs)
            etas = tuple(int(p[1]) if len(p) > 1 else e for p, e in zip(points, default))
            search = Search(etas, rungs, args.metric, 1, last)
            winner, history = replay(cands, search, higher)
            diff = paired_stats([cands[winner][m][last] - cands[best][m][last] for m in cands[best]
                                 if last in cands[winner][m] and last in cands[best][m]])
            share = sum(alive * (reach - done) for (alive, reach), done in
                        zip(alive_per_stage(search, len(cands)), (0, *rungs))) / (len(cands) * last)
            row["ladders"].append({
                "rungs": list(rungs), "etas": list(etas), "winner": winner, "winner_is_best": winner == best,
                "tied_with_best": winner == best or (diff["ci_low"] is not None and diff["ci_low"] <= 0 <= diff["ci_high"]),
                "winner_minus_best": diff["mean_diff"], "images_share": round(share, 3),
                "alive": [len(a) for a in history]})
        out["sizes"].append(row)
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
