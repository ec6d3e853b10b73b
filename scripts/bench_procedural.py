"""Throughput of the procedural multi-view generator, and a sample grid.

Usage:
    python scripts/bench_procedural.py [--device cuda] [--repeats 5] [--grid grid.png]
        [--sizes 16x8 32x8 16x16 64x4] [--res 256 256] [--compile]

Prints images/s (median over repeats after a warm-up, CUDA-synchronised) for each batch size
B x V at the given resolution; ``--grid PATH`` writes a PNG (or JPEG by extension) with, for a
few scenes, rows of images, depth (turbo-like colour map, sky black) and normals.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from da3gs.data.batch import ViewBatch
from da3gs.data.procedural import ProceduralConfig, ProceduralGenerator


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _colormap(x: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8, a cheap perceptual-ish blue-green-yellow-red map."""
    stops = np.array([[48, 18, 59], [40, 120, 240], [30, 200, 160], [160, 230, 50], [250, 170, 30], [180, 20, 10]], float)
    p = np.clip(x, 0, 1) * (len(stops) - 1)
    i = np.clip(np.floor(p).astype(int), 0, len(stops) - 2)
    f = (p - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


def make_grid(batch, n_scenes: int, n_views: int) -> np.ndarray:
    """Rows per scene: images, depth (inverse, per-scene normalised), normals; views as columns."""
    rows = []
    for b in range(min(n_scenes, batch.images.shape[0])):
        img = batch.images[b, :n_views].permute(0, 2, 3, 1).cpu().numpy()
        dep = batch.depth[b, :n_views].cpu().numpy()
        val = batch.valid[b, :n_views].cpu().numpy()
        nrm = batch.normals[b, :n_views].permute(0, 2, 3, 1).cpu().numpy()
        inv = np.where(val, 1.0 / np.maximum(dep, 1e-6), 0)
        lo, hi = np.percentile(inv[val], [2, 98]) if val.any() else (0, 1)
        r_img = np.concatenate([(np.clip(x, 0, 1) * 255).astype(np.uint8) for x in img], 1)
        r_dep = np.concatenate([np.where(v[..., None], _colormap((x - lo) / max(hi - lo, 1e-9)), 0).astype(np.uint8)
                                for x, v in zip(inv, val)], 1)
        # normals in OpenCV camera frame: x right, y down, z forward; show (x, -y, -z) as RGB
        r_nrm = np.concatenate([((np.stack([x[..., 0], -x[..., 1], -x[..., 2]], -1) * 0.5 + 0.5) * 255 * v[..., None])
                                .astype(np.uint8) for x, v in zip(nrm, val)], 1)
        rows += [r_img, r_dep, r_nrm, np.full((4, r_img.shape[1], 3), 255, np.uint8)]
    return np.concatenate(rows[:-1], 0)


def _profile(gen, size: str, H: int, W: int, dev):
    """Print the profiler's table (stages are labelled procedural.*) for one call."""
    B, V = (int(x) for x in size.lower().split("x"))
    gen.sample(B, V, H, W)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        gen.sample(B, V, H, W)
        _sync(dev)
    key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--res", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    ap.add_argument("--sizes", nargs="+", default=["16x4", "16x8", "32x8", "64x4"], help="BxV batch shapes")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile the intersection kernels")
    ap.add_argument("--profile", default=None, metavar="BxV", help="profile one call of this size (stages, top kernels)")
    ap.add_argument("--grid", default=None, help="write a sample grid image here")
    ap.add_argument("--grid-scenes", type=int, default=6)
    ap.add_argument("--grid-views", type=int, default=4)
    ap.add_argument("--grid-res", type=int, nargs=2, default=[160, 224], metavar=("H", "W"))
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    gen = ProceduralGenerator(ProceduralConfig(compile=a.compile), device=dev)
    H, W = a.res
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"device: {name}  torch {torch.__version__}  res {H}x{W}  compile={a.compile}")
    print("| B x V | images | median s | images/s | min s | max s | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for sz in a.sizes:
        B, V = (int(x) for x in sz.lower().split("x"))
        for _ in range(a.warmup):
            gen.sample(B, V, H, W)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        ts = []
        for _ in range(a.repeats):
            _sync(dev)
            t0 = time.perf_counter()
            gen.sample(B, V, H, W)
            _sync(dev)
            ts.append(time.perf_counter() - t0)
        med = statistics.median(ts)
        peak = torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else float("nan")
        print(f"| {B}x{V} | {B * V} | {med:.4f} | {B * V / med:.0f} | {min(ts):.4f} | {max(ts):.4f} | {peak:.1f} |", flush=True)
    if a.grid:
        gh, gw = a.grid_res
        batch = gen.sample(3 * a.grid_scenes, a.grid_views, gh, gw, seed=7)
        # the same number of scenes of each kind, in kind order
        kinds = [s.split("/")[1] for s in batch.scene_ids]
        per = max(1, a.grid_scenes // 3)
        pick = [i for k in ("room", "ground_sky", "backdrop") for i in [j for j, x in enumerate(kinds) if x == k][:per]]
        sel = torch.tensor(pick, device=batch.images.device)
        batch = ViewBatch(images=batch.images[sel], depth=batch.depth[sel], valid=batch.valid[sel], c2w=batch.c2w[sel],
                          K=batch.K[sel], normals=batch.normals[sel], sky=batch.sky[sel],
                          scene_ids=[batch.scene_ids[i] for i in pick])
        grid = make_grid(batch, len(pick), a.grid_views)
        im = Image.fromarray(grid)
        if a.grid.lower().endswith((".jpg", ".jpeg")):
            im.save(a.grid, quality=85)
        else:
            im.save(a.grid)
        print(f"grid: {a.grid} {grid.shape[1]}x{grid.shape[0]}  scenes: {batch.scene_ids}")
    if a.profile:
        try:
            _profile(gen, a.profile, H, W, dev)
        except Exception as e:  # noqa: BLE001 - the profile is optional
            print(f"profile failed: {e!r}")

if __name__ == "__main__":
    main()
