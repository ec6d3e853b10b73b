#!/usr/bin/env python
"""Does ``--compile`` pay on the first run? Cold and warm compile, each in a new process.

    python scripts/bench_compile_cache.py [--model random:large] [--views 32] [--size 504x336]
        [--cache DIR] [--repeats 3] [--also-views 16]

Every measurement is its own Python process (as a user's ``da3gs render --compile`` is), in
this order, all in one run:
  1. ``plain``: no compile (the baseline): first forward, then the median of ``--repeats``;
  2. ``cold``: ``--compile`` with an empty compile cache (a fresh folder under ``--cache``):
     the first forward includes the whole compile;
  3. ``warm``: ``--compile`` again in a new process with the cache the cold one filled
     (:func:`da3gs.models.compile_cache.use_compile_cache`): what a second render pays;
  4. ``warm, other views`` (``--also-views``): a view count the cache has not seen (Dynamo
     marks the view axis dynamic after the first recompile; the cache keeps that decision).
The forward is ``DA3Model.infer(..., infer_gs=<model has a GS head>)`` on random images, what
``da3gs render`` runs. Reported: model load, first forward (s), steady forward (median s), and
"adds" = first forward minus the plain run's first forward: the compile's cost to one render.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, statistics, sys, time
import torch
args = json.loads(sys.argv[1])
t0 = time.perf_counter()
from da3gs.models.loading import load_model
dev = "cuda" if torch.cuda.is_available() else "cpu"
model = load_model(args["model"], device=dev)
if args["compile"]:
    model.enable_compile()
def sync():
    if dev == "cuda":
        torch.cuda.synchronize()
sync(); t_load = time.perf_counter() - t0
H, W = args["size"]
out = {"load_s": t_load}
for V in args["views"]:
    imgs = torch.rand(V, 3, H, W, generator=torch.Generator().manual_seed(0)).to(dev)
    times = []
    for _ in range(1 + args["repeats"]):
        sync(); t = time.perf_counter()
        model.infer(imgs, process_res=max(H, W), infer_gs=model.has_gs_head)
        sync(); times.append(time.perf_counter() - t)
    out[str(V)] = {"first_s": times[0], "steady_s": statistics.median(times[1:])}
print("RESULT " + json.dumps(out))
"""


def run_child(spec: dict, cache: str | None) -> dict:
    env = dict(os.environ)
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    env.pop("TRITON_CACHE_DIR", None)
    if cache:
        env["DA3GS_COMPILE_CACHE"] = cache
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], env=env,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode != 0 or not line:
        sys.exit(f"child failed ({spec}):\n{r.stderr[-3000:]}")
    res = json.loads(line[0][len("RESULT "):])
    res["process_s"] = wall
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="random:large")
    ap.add_argument("--views", type=int, default=32)
    ap.add_argument("--also-views", type=int, default=0, help="a view count the cache has not seen")
    ap.add_argument("--size", default="504x336", help="W x H of the random images")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", default=None,
                    help="parent of the fresh cache folder (default: a temporary folder, removed)")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args(argv)
    W, H = (int(x) for x in args.size.lower().split("x"))
    base = {"model": args.model, "size": [H, W], "repeats": args.repeats}
    parent = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="da3gs-ccbench-"))
    parent.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=parent))  # empty: a cold start
    views = [args.views]
    rows = [("plain", run_child({**base, "compile": False, "views": views}, None), args.views)]
    rows.append(("cold", run_child({**base, "compile": True, "views": views}, str(cache)), args.views))
    rows.append(("warm", run_child({**base, "compile": True, "views": views}, str(cache)), args.views))
    if args.also_views:
        v2 = [args.also_views]
        rows.append(("plain, other views", run_child({**base, "compile": False, "views": v2}, None),
                     args.also_views))
        rows.append(("warm, other views", run_child({**base, "compile": True, "views": v2},
                                                    str(cache)), args.also_views))
    plain_first = {v: r[str(v)]["first_s"] for name, r, v in rows if name.startswith("plain")}
    dev = "cuda" if __import__("torch").cuda.is_available() else "cpu"
    print(f"\n{args.model}, {args.size}, device {dev}; cache {cache}")
    print(f"{'run':20s} {'views':>5s} {'load s':>7s} {'first s':>8s} {'steady s':>9s} "
          f"{'adds s':>7s} {'process s':>9s}")
    for name, r, v in rows:
        m = r[str(v)]
        adds = m["first_s"] - plain_first.get(v, float("nan"))
        print(f"{name:20s} {v:5d} {r['load_s']:7.2f} {m['first_s']:8.2f} {m['steady_s']:9.4f} "
              f"{adds:7.2f} {r['process_s']:9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps([{"run": n, "views": v, **r} for n, r, v in rows],
                                              indent=1))
    if not args.cache:
        shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    main()
