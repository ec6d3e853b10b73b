"""Speed of `da3gs render`'s file writers on a synthetic scene, before/after in one run.

The scene is what `da3gs render` writes for 32 views at 504 x 336 with a giant-size GS head:
--gaussians (default 4.5 M) degree-2 Gaussians (gaussians.ply + gaussians.spz), 200k of them as
points.ply and COLMAP points, and per view the image PNG and the depth maps (.npy, conf .npy,
16-bit PNG, preview PNG). Each writer is timed alone, then the whole write stage as render runs
it: one after the other (as before) and on the WriterPool of `da3gs.apps.outputs` (when the
imported da3gs has it). Files go to a temporary folder under --tmp, removed after each repeat.

`--compare REV` runs the same measurements against the package as it was at git revision REV
(extracted with `git archive` into a temporary folder and run in a subprocess) and prints the two
side by side; `--src DIR` imports da3gs from DIR (what --compare does for the old side). Medians
of --repeats. The sizes of gaussians.ply / gaussians.spz are printed after the table.

Usage: python scripts/bench_writers.py --compare b5cc6f9 [--gaussians 4.5e6] [--repeats 3]
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


def _scene(n: int, views: int, h: int, w: int, seed: int = 0):
    import numpy as np
    import torch

    from da3gs.types import Gaussians

    g = torch.Generator().manual_seed(seed)
    gs = Gaussians(means=torch.randn(n, 3, generator=g), quats=torch.randn(n, 4, generator=g),
                   scales=torch.rand(n, 3, generator=g) * 0.01 + 1e-4,
                   opacities=torch.rand(n, generator=g) * 0.98 + 0.01,
                   sh=torch.randn(n, 9, 3, generator=g) * 0.3)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    depth = np.stack([(2 + np.sin(xx / 37 + i) + np.cos(yy / 23)).astype(np.float32) for i in range(views)])
    conf = (1 + rng.random((views, h, w))).astype(np.float32)
    rgb = np.stack([((np.sin(xx / (5 + i)) + 1) * 90 + rng.integers(0, 60, (h, w)))
                    .astype(np.uint8)[..., None].repeat(3, -1) for i in range(views)])
    c2w = torch.eye(4, dtype=torch.float64).repeat(views, 1, 1)
    c2w[:, 0, 3] = torch.arange(views, dtype=torch.float64) * 0.1
    K = torch.tensor([[400.0, 0, w / 2], [0, 400.0, h / 2], [0, 0, 1]], dtype=torch.float64)
    step = max(1, n // 200_000)
    pts = gs.means[::step]
    cols = (torch.rand(len(pts), 3, generator=g) * 255).byte()
    return gs, depth, conf, rgb, c2w, K, pts, cols


def _tasks(out: Path, scene, colmap_fmt: str):
    """(name, fn) for every file render writes, as render calls the writers."""
    from PIL import Image

    from da3gs.io import depth as depth_io
    from da3gs.io.cameras import write_colmap
    from da3gs.io.ply import write_point_cloud_ply
    from da3gs.io.splat_files import write_gaussians

    gs, depth, conf, rgb, c2w, K, pts, cols = scene
    V, H, W = depth.shape
    png = {"compress_level": depth_io.PNG_LEVEL} if hasattr(depth_io, "PNG_LEVEL") else {}
    names = [f"{i:04d}" for i in range(V)]

    def view(i):
        (out / "images").mkdir(exist_ok=True)
        Image.fromarray(rgb[i]).save(out / "images" / f"{names[i]}.png", **png)
        depth_io.save_depth(out / "depth", names[i], depth[i], conf[i])

    def colmap():
        files = [f"{n}.png" for n in names]
        try:
            write_colmap(out / "colmap", c2w, K, (H, W), files, points=pts, colors=cols, fmt=colmap_fmt)
        except TypeError:  # before write_colmap(fmt=): text
            write_colmap(out / "colmap", c2w, K, (H, W), files, points=pts, colors=cols)

    tasks = [(f"view{i}", lambda i=i: view(i)) for i in range(V)]
    tasks += [("ply", lambda: write_gaussians(out / "gaussians.ply", gs, "ply")),
              ("spz", lambda: write_gaussians(out / "gaussians.spz", gs, "spz")),
              ("points_ply", lambda: write_point_cloud_ply(out / "points.ply", pts, cols)),
              ("colmap", colmap)]
    return tasks


def measure(args) -> dict:
    if args.src:
        sys.path.insert(0, str(Path(args.src).resolve()))
    else:
        sys.path.insert(0, str(ROOT))
    import da3gs

    scene = _scene(int(float(args.gaussians)), args.views, args.height, args.width)
    try:
        from da3gs.apps.outputs import WriterPool
    except ImportError:
        WriterPool = None
    colmap_fmt = "binary" if WriterPool is not None else "text"
    res: dict = {"da3gs_from": str(Path(da3gs.__file__).parent), "colmap": colmap_fmt}
    base = Path(tempfile.mkdtemp(prefix="bench_writers_", dir=args.tmp))
    times: dict[str, list[float]] = {}

    def timed(key, fn):
        t = time.perf_counter()
        fn()
        times.setdefault(key, []).append(time.perf_counter() - t)

    try:
        for r in range(args.repeats):
            out = base / f"r{r}"
            out.mkdir()
            tasks = _tasks(out, scene, colmap_fmt)
            views = [fn for name, fn in tasks if name.startswith("view")]
            timed("depth+images (all views)", lambda: [f() for f in views])
            for name, fn in tasks:
                if not name.startswith("view") and name in args.writers:
                    timed(name, fn)
                    if name in ("ply", "spz"):
                        res.setdefault("bytes", {})[f"gaussians.{name}"] = (out / f"gaussians.{name}").stat().st_size
            shutil.rmtree(out)
            out.mkdir()
            chosen = [(n, f) for n, f in _tasks(out, scene, colmap_fmt)
                      if n.startswith("view") or n in args.writers]
            timed("stage, one after the other", lambda: [f() for _, f in chosen])
            shutil.rmtree(out)
            if WriterPool is not None:
                out.mkdir()
                chosen = [(n, f) for n, f in _tasks(out, scene, colmap_fmt)
                          if n.startswith("view") or n in args.writers]
                big = [t for t in chosen if t[0] in ("ply", "spz")]  # longest first
                order = big + [t for t in chosen if t not in big]

                def pooled():
                    with WriterPool() as pool:
                        for n, f in order:
                            pool.submit(n, f)

                timed("stage, WriterPool", pooled)
                shutil.rmtree(out)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    res["median_s"] = {k: round(statistics.median(v), 3) for k, v in times.items()}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gaussians", default="4.5e6")
    ap.add_argument("--views", type=int, default=32)
    ap.add_argument("--height", type=int, default=336)
    ap.add_argument("--width", type=int, default=504)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--writers", nargs="+", default=["ply", "spz", "points_ply", "colmap"],
                    help="whole-cloud writers included (depth/images always are)")
    ap.add_argument("--tmp", default=None, help="folder for the temporary outputs (default: system temp)")
    ap.add_argument("--src", help="import da3gs from this folder (a checkout of another revision)")
    ap.add_argument("--compare", metavar="REV", help="also measure the package at git revision REV")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    results = {}
    if args.compare:
        src = Path(tempfile.mkdtemp(prefix="bench_writers_src_"))
        try:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.compare, "da3gs"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
            js = src / "before.json"
            cmd = [sys.executable, __file__, "--src", str(src), "--json", str(js), "--gaussians",
                   str(args.gaussians), "--views", str(args.views), "--height", str(args.height),
                   "--width", str(args.width), "--repeats", str(args.repeats), "--writers", *args.writers]
            if args.tmp:
                cmd += ["--tmp", args.tmp]
            subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONPATH=str(src)))
            results[f"before ({args.compare})"] = json.loads(js.read_text())["this"]
        finally:
            shutil.rmtree(src, ignore_errors=True)
    results["after" if args.compare else "this"] = measure(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.src:
        return
    import torch

    print(f"{int(float(args.gaussians)):,} Gaussians (SH degree 2), {args.views} views {args.width}x{args.height}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, median of {args.repeats}")
    cols = list(results)
    print("| writer | " + " | ".join(f"{c} s" for c in cols) + (" | speed-up |" if len(cols) == 2 else " |"))
    print("|---" * (len(cols) + 1 + (len(cols) == 2)) + "|")
    keys = list(dict.fromkeys(k for c in cols for k in results[c]["median_s"]))
    for k in keys:
        vals = [results[c]["median_s"].get(k) for c in cols]
        row = f"| {k} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in vals)
        if len(cols) == 2:
            before = vals[0] if vals[0] is not None else results[cols[0]]["median_s"].get("stage, one after the other")
            row += f" | {before / vals[1]:.1f}x" if before and vals[1] else " | -"
        print(row + " |")
    print("COLMAP model: " + ", ".join(f"{c}: {results[c]['colmap']}" for c in cols))
    for c in cols:
        if results[c].get("bytes"):
            print(f"bytes ({c}): " + ", ".join(f"{k} {v:,}" for k, v in results[c]["bytes"].items()))


if __name__ == "__main__":
    main()
