"""Throughput of the procedural multi-view generator, op counts, and a sample grid.

Usage:
    python scripts/bench_procedural.py [--device cuda] [--modes eager static graphed compiled]
        [--sizes 32x8 64x4] [--res 256 256] [--repeats 5] [--warmup 2] [--count-ops [BxV]]
        [--capacity-stats BxV] [--grid grid.png [--grid-kinds K ...] [--grid-effects]] [--threads N]

Default: for each mode (``eager``: the default path, ``ProceduralConfig()``; ``static``: the
fixed-shape, sync-free path, ``static=True``; ``graphed``: that path captured in CUDA graphs,
``graphs=True``, eager static on the CPU; ``compiled``: ``compile=True``) and each batch shape
B x V at 256 x 256, the median time of a whole ``sample`` call over ``--repeats`` calls after
``--warmup`` warm-up calls (compiled and graphed: one more, so that compilation or capture is
never timed), CUDA-synchronised; then a final table of images/s. For static and graphed modes
the items dropped by capacities over all timed calls are reported (``overflow``; 0 means every
output is what the default path would give), and graphed is checked against eager static on
the first size and seed 0 (``max |diff|``; 0 expected).
``--capacity-stats BxV`` prints, for ``--stat-calls`` static calls of that size, the largest
and mean fraction per ray of every fixed-capacity selection next to its capacity fraction
(:data:`da3gs.data.procedural.static.CAPACITY`). ``--count-ops BxV`` also profiles one call per mode on the CPU side: top-level aten ops
dispatched, compiled-graph calls, host syncs (``nonzero``, ``item`` / ``bool`` / ``tolist``)
and, on CUDA, kernel launches (counts, not GPU time). ``--grid PATH`` writes a PNG (or JPEG
by extension) with, for a few scenes of each kind, rows of images, depth (turbo-like colour
map, sky black) and normals; ``--grid-effects`` adds a strip of the photographic effects.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import numpy as np
import torch
from PIL import Image

from da3gs.data.batch import ViewBatch
from da3gs.data.procedural import ProceduralConfig, ProceduralGenerator
from da3gs.data.procedural import primitives as procedural_primitives


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
    B, V = _bv(size)
    gen.sample(B, V, H, W)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        gen.sample(B, V, H, W)
        _sync(dev)
    key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60))


def count_ops(gen, B: int, V: int, H: int, W: int, dev) -> dict:
    """CPU-side counts for one ``sample`` call (after a warm-up call): top-level aten ops,
    compiled-graph calls, host syncs and (CUDA) kernel launches. Not a GPU measurement."""
    gen.sample(B, V, H, W)
    _sync(dev)
    hooks = Counter()
    orig = {n: getattr(torch.Tensor, n) for n in ("tolist", "item", "__bool__")}

    def wrap(n, f):
        def w(self, *a, **k):
            hooks[n] += 1
            return f(self, *a, **k)
        return w

    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    try:
        for n, f in orig.items():
            setattr(torch.Tensor, n, wrap(n, f))
        with torch.profiler.profile(activities=acts) as prof:
            gen.sample(B, V, H, W)
            _sync(dev)
    finally:
        for n, f in orig.items():
            setattr(torch.Tensor, n, f)
    ev = prof.events()
    names = Counter(e.name for e in ev)
    top = sum(1 for e in ev if e.name.startswith("aten::")
              and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))
    return {"aten_ops": top,
            "compiled_calls": sum(c for n, c in names.items() if n.startswith("Torch-Compiled Region")),
            "syncs": names["aten::nonzero"] + names["aten::_local_scalar_dense"] + hooks["tolist"],
            "launches": sum(c for n, c in names.items() if "LaunchKernel" in n) if dev.type == "cuda" else None}


_MODES = {"eager": {}, "static": {"static": True}, "graphed": {"graphs": True}, "compiled": {"compile": True}}


def capacity_stats(dev, B: int, V: int, H: int, W: int, calls: int, over: dict | None = None):
    """Largest and mean fraction per ray (pixel) of each static selection over ``calls`` seeded
    calls (capacities scaled by 8 so that no overflow biases the later counts)."""
    from da3gs.data.procedural.static import CAPACITY, DEFAULT_FRACTION
    gen = ProceduralGenerator(ProceduralConfig(**{**(over or {}), "static": True, "static_capacity": 8.0,
                                                  "static_min_capacity": 0}), device=dev)
    st: dict = {}
    for seed in range(calls):
        gen.sample(B, V, H, W, seed=seed)
        for name, count, _, per in gen.last_budget.counts:
            st.setdefault(name, []).append(int(count) / per)
    print(f"\nstatic selections, {calls} calls of {B}x{V} at {H}x{W} (items per ray; capacity = fraction * rays "
          f"+ static_min_capacity):\n| selection | mean | max | capacity fraction | max / capacity |\n|---|---|---|---|---|")
    for name in sorted(st):
        v, cap = st[name], CAPACITY.get(name, DEFAULT_FRACTION)
        print(f"| {name} | {statistics.mean(v):.4f} | {max(v):.4f} | {cap:.4f} | {max(v) / cap:.2f} |")


def _bv(size: str):
    B, V = (int(x) for x in size.lower().split("x"))
    return B, V


def _time(gen, B, V, H, W, dev, warmup, repeats):
    for _ in range(warmup):
        gen.sample(B, V, H, W)
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    ts = []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        gen.sample(B, V, H, W)
        _sync(dev)
        ts.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else float("nan")
    return statistics.median(ts), min(ts), max(ts), peak


_FX_OFF = dict(defocus_prob=0.0, motion_blur_prob=0.0, jpeg_prob=0.0, vignetting_prob=0.0, distortion_prob=0.0)
#: The effects strip: (label, config overrides), each effect alone and strong, then the default draws.
_FX_STRIP = (("none", {}), ("defocus", dict(defocus_prob=1.0, defocus=(0.012, 0.012))),
             ("motion blur", dict(motion_blur_prob=1.0, motion_blur=(0.04, 0.04))),
             ("vignetting", dict(vignetting_prob=1.0, vignetting=(0.45, 0.45))),
             ("JPEG q15", dict(jpeg_prob=1.0, jpeg_quality=(15.0, 15.0))),
             ("barrel 3%", dict(distortion_prob=1.0, distortion=(0.03, 0.03))),
             ("pincushion 3%", dict(distortion_prob=1.0, distortion=(-0.03, -0.03))),
             ("all", dict(defocus_prob=1.0, motion_blur_prob=1.0, jpeg_prob=1.0, vignetting_prob=1.0,
                          distortion_prob=1.0)))


def _select(batch, idx):
    sel = torch.tensor(idx, device=batch.images.device)
    return ViewBatch(images=batch.images[sel], depth=batch.depth[sel], valid=batch.valid[sel], c2w=batch.c2w[sel],
                     K=batch.K[sel], normals=batch.normals[sel], sky=batch.sky[sel],
                     scene_ids=[batch.scene_ids[i] for i in idx])


def _effects_strip(cfg, dev, gh: int, gw: int, seed: int, cols: int) -> np.ndarray:
    """One tabletop view with each photographic effect alone (strong), then all of them at the
    config's ranges, labelled; ``cols`` tiles per row."""
    from dataclasses import replace

    from PIL import ImageDraw

    from da3gs.data.procedural import SCENE_KINDS
    w = tuple(1.0 if k == "tabletop" else 0.0 for k in SCENE_KINDS)
    tiles = []
    for label, kw in _FX_STRIP:
        # "all": every effect on, at the config's own ranges
        c = replace(cfg, scene_kinds=w, **(kw if label == "all" else dict(_FX_OFF, **kw)))
        img = ProceduralGenerator(c, device=dev).sample(1, 1, gh, gw, seed=seed).images[0, 0]
        im = Image.fromarray((img.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8))
        ImageDraw.Draw(im).text((3, 2), label, fill=(255, 40, 40))
        tiles.append(np.asarray(im))
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % cols)
    rows = [np.concatenate(tiles[i:i + cols], 1) for i in range(0, len(tiles), cols)]
    return np.concatenate(rows, 0)


def write_grid(gen, path: str, scenes: int, views: int, gh: int, gw: int, kinds=None, effects: bool = False):
    """A grid of ``scenes`` scenes (equal numbers of each of ``kinds``, default: every kind with a
    positive weight in the config; kind k drawn with seed 7 + k from the config with that kind
    alone) x ``views`` views; ``effects``: an effects strip below (:data:`_FX_STRIP`, seed 3).
    PNG files are written with a 256-colour adaptive palette (small enough for the docs)."""
    from dataclasses import replace

    from da3gs.data.procedural import SCENE_KINDS
    cfg = gen.config
    kinds = list(kinds or [k for k, w in zip(SCENE_KINDS, cfg.scene_kinds) if w > 0])
    per = max(1, scenes // len(kinds))
    parts, ids = [], []
    for k in kinds:
        w = tuple(1.0 if x == k else 0.0 for x in SCENE_KINDS)
        seed = 7 + SCENE_KINDS.index(k)
        b = ProceduralGenerator(replace(cfg, scene_kinds=w), device=gen.device).sample(per, views, gh, gw, seed=seed)
        parts.append(make_grid(b, per, views))
        ids += list(b.scene_ids)
    sep = lambda a: np.full((4, a.shape[1], 3), 255, np.uint8)  # noqa: E731
    rows = []
    for p_ in parts:
        rows += [p_, sep(p_)]
    grid = np.concatenate(rows[:-1], 0)
    if effects:
        strip = _effects_strip(cfg, gen.device, gh, gw, seed=3, cols=max(views, 1))
        if strip.shape[1] != grid.shape[1]:  # pad the narrower one on the right
            wd = max(strip.shape[1], grid.shape[1])
            pad = lambda a: np.pad(a, ((0, 0), (0, wd - a.shape[1]), (0, 0)), constant_values=255)  # noqa: E731
            strip, grid = pad(strip), pad(grid)
        grid = np.concatenate([grid, np.full((8, grid.shape[1], 3), 255, np.uint8), strip], 0)
    im = Image.fromarray(grid)
    if path.lower().endswith((".jpg", ".jpeg")):
        im.save(path, quality=85)
    else:
        im.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)
    print(f"grid: {path} {grid.shape[1]}x{grid.shape[0]}  scenes: {ids}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--res", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    ap.add_argument("--sizes", nargs="+", default=["32x8", "64x4"], help="BxV batch shapes")
    ap.add_argument("--modes", nargs="+", default=["eager", "static", "graphed"], choices=list(_MODES))
    ap.add_argument("--compile", action="store_true", help="same as --modes compiled")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2, help="warm-up calls per size (compiled: one more)")
    ap.add_argument("--count-ops", nargs="?", const="32x8", default=None, metavar="BxV",
                    help="count CPU-side ops / syncs / launches of one call of this size per mode")
    ap.add_argument("--count-res", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="resolution for --count-ops (default --res; the counts barely depend on it)")
    ap.add_argument("--capacity-stats", default=None, metavar="BxV",
                    help="fractions of the static path's selections over --stat-calls calls of this size")
    ap.add_argument("--stat-calls", type=int, default=8)
    ap.add_argument("--static-capacity", type=float, default=1.0,
                    help="ProceduralConfig.static_capacity for the static and graphed modes (overflow is reported)")
    ap.add_argument("--profile", default=None, metavar="BxV", help="profile one call of this size (stages, top kernels)")
    ap.add_argument("--grid", default=None, help="write a sample grid image here")
    ap.add_argument("--grid-scenes", type=int, default=6)
    ap.add_argument("--grid-views", type=int, default=4)
    ap.add_argument("--grid-res", type=int, nargs=2, default=[160, 224], metavar=("H", "W"))
    ap.add_argument("--grid-kinds", nargs="+", default=None, help="scene kinds in the grid (default: all weighted)")
    ap.add_argument("--grid-effects", action="store_true", help="add a strip of the photographic effects")
    ap.add_argument("--compile-cpu", action="store_true", help="compiled mode compiles on the CPU too (op counts only)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="ProceduralConfig overrides for every mode (Python literals), e.g. jpeg_prob=0 "
                         "'scene_kinds=(1,0,0)'")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (the CPU proxy of docs/procedural.md uses 2)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.compile_cpu:
        procedural_primitives.COMPILE_ON_CPU = True
    if a.compile:
        a.modes = ["compiled"]
    dev = torch.device(a.device)
    H, W = a.res
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (compile applies to CUDA only)"
    print(f"device: {name}  torch {torch.__version__}  res {H}x{W}  modes {a.modes}")
    import ast
    over = {k: ast.literal_eval(v) for k, v in (x.split("=", 1) for x in a.set)}
    if over:
        print(f"config overrides: {over}")
    rows, counts, gen = [], [], None
    for mode in a.modes:
        kw = dict(_MODES[mode], **({"static_capacity": a.static_capacity} if mode in ("static", "graphed") else {}),
                  **over)
        gen = ProceduralGenerator(ProceduralConfig(**kw), device=dev)
        print(f"\n{mode}:\n| B x V | images | median s | images/s | min s | max s | peak GiB |\n|---|---|---|---|---|---|---|")
        for sz in a.sizes:
            B, V = _bv(sz)
            t0 = time.perf_counter()
            med, lo, hi, peak = _time(gen, B, V, H, W, dev, a.warmup + (mode in ("compiled", "graphed")), a.repeats)
            rows.append((mode, sz, B * V, med, peak))
            print(f"| {B}x{V} | {B * V} | {med:.4f} | {B * V / med:.0f} | {lo:.4f} | {hi:.4f} | {peak:.1f} |"
                  f"  (incl. warm-up {time.perf_counter() - t0:.0f} s)", flush=True)
        if mode in ("static", "graphed"):
            print(f"overflow (items dropped by capacities, all calls): {int(gen.overflow)}")
        if mode == "graphed":
            B, V = _bv(a.sizes[0])
            ref = ProceduralGenerator(ProceduralConfig(static=True, static_capacity=a.static_capacity, **over),
                                      device=dev).sample(B, V, H, W, seed=0)
            out = gen.sample(B, V, H, W, seed=0)
            diff = max(float((getattr(ref, k).float() - getattr(out, k).float()).abs().max())
                       for k in ("images", "depth", "normals", "c2w", "K", "valid"))
            print(f"graphed vs eager static, {B}x{V} seed 0: max |diff| {diff:.3g}, ids equal "
                  f"{list(ref.scene_ids) == list(out.scene_ids)}", flush=True)
        if a.count_ops:
            B, V = _bv(a.count_ops)
            ch, cw = a.count_res or (H, W)
            c = count_ops(gen, B, V, ch, cw, dev)
            counts.append((mode, f"{B}x{V} at {ch}x{cw}", c))
            print(f"CPU op count ({mode}, {B}x{V} at {ch}x{cw}, one call; not a GPU measurement): {c}", flush=True)
    print(f"\nSummary ({H}x{W}, {name}):\n| mode | B x V | images | median s | images/s | peak GiB |\n|---|---|---|---|---|---|")
    for mode, sz, n, med, peak in rows:
        print(f"| {mode} | {sz} | {n} | {med:.4f} | {n / med:.0f} | {peak:.1f} |")
    if counts:
        print("\nCPU op count per call (profiler, CPU side; not a GPU measurement):\n"
              "| mode | call | top-level aten ops | compiled-graph calls | host syncs | kernel launches |\n|---|---|---|---|---|---|")
        for mode, call, c in counts:
            print(f"| {mode} | {call} | {c['aten_ops']} | {c['compiled_calls']} | {c['syncs']} | {c['launches'] if c['launches'] is not None else 'n/a'} |")
    if a.capacity_stats:
        capacity_stats(dev, *_bv(a.capacity_stats), H, W, a.stat_calls, over)
    if a.grid:
        write_grid(gen, a.grid, a.grid_scenes, a.grid_views, *a.grid_res, kinds=a.grid_kinds, effects=a.grid_effects)
    if a.profile:
        try:
            _profile(gen, a.profile, H, W, dev)
        except Exception as e:  # noqa: BLE001 - the profile is optional
            print(f"profile failed: {e!r}")


if __name__ == "__main__":
    main()
