"""Loss curves of two (or more) training runs side by side, from their ``metrics.jsonl``.

Usage:
    python scripts/compare_runs.py RUN_A RUN_B [...] [--key loss] [--every 1] [--window 5]

Prints, for every step that all runs logged (``kind == "train"``), each run's value of
``--key`` and the relative difference of each run from the first; then a summary: the mean
of each run over the first and last ``--window`` logged steps, the mean absolute relative
difference, and the largest one. Used to check that two step implementations (e.g.
``run.graphs=off`` and ``on`` from one seed) train the same within noise
(docs/benchmarks.md, issue 20).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def read_curve(run: Path, key: str) -> dict[int, float]:
    """``{step: value}`` of ``key`` in the run folder's (or file's) train records."""
    path = run / "metrics.jsonl" if run.is_dir() else run
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "train" and key in rec:
            out[int(rec["step"])] = float(rec[key])
    return out


def compare(runs: list[Path], key: str = "loss", every: int = 1, window: int = 5) -> dict:
    curves = [read_curve(r, key) for r in runs]
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    if not steps:
        raise SystemExit(f"compare_runs: no step logged {key!r} in every run")
    names = [r.name for r in runs]
    print(f"{'step':>6s} " + " ".join(f"{n[:14]:>14s}" for n in names)
          + "".join(f" {'rel ' + n[:9]:>13s}" for n in names[1:]))
    rels: list[list[float]] = [[] for _ in runs[1:]]
    for i, s in enumerate(steps):
        vals = [c[s] for c in curves]
        for j, v in enumerate(vals[1:]):
            rels[j].append(abs(v - vals[0]) / max(abs(vals[0]), 1e-12))
        if i % every == 0 or s == steps[-1]:
            print(f"{s:6d} " + " ".join(f"{v:14.5f}" for v in vals)
                  + "".join(f" {r[-1]:13.4f}" for r in rels))
    w = min(window, len(steps))
    summary = {"steps": len(steps)}
    for n, c in zip(names, curves):
        first = statistics.mean(c[s] for s in steps[:w])
        last = statistics.mean(c[s] for s in steps[-w:])
        summary[n] = (first, last)
        print(f"{n}: mean {key} over the first {w} logged steps {first:.5f}, last {w} {last:.5f}")
    for n, r in zip(names[1:], rels):
        summary[f"rel_{n}"] = (statistics.mean(r), max(r))
        print(f"{n} vs {names[0]}: mean |relative difference| {statistics.mean(r):.4f}, "
              f"max {max(r):.4f}")
    return summary


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--key", default="loss")
    ap.add_argument("--every", type=int, default=1, help="print every N-th common step")
    ap.add_argument("--window", type=int, default=5)
    args = ap.parse_args(argv)
    if len(args.runs) < 2:
        sys.exit("compare_runs: give at least two runs")
    compare(args.runs, args.key, args.every, args.window)


if __name__ == "__main__":
    main()
