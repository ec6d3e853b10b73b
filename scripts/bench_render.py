#!/usr/bin/env python
"""Benchmark da3gs.render: gsplat on CUDA at 1920x1080, the torch backend on the CPU.

Prints one markdown table row per measurement (median of --repeats, CUDA-synchronised):

    | backend | device | scene | N | W x H | ms/frame | Msplats/s | visible |

Examples:
    python scripts/bench_render.py                      # gsplat 1.35M and 5M + torch CPU
    python scripts/bench_render.py --n 1000000 --repeats 20 --backward
    python scripts/bench_render.py --skip-gsplat        # only the CPU torch backend
    python scripts/bench_render.py --scene garden       # gsplat's garden points (if present)
    python scripts/bench_render.py --skip-gsplat --torch-output out/toy_scene --torch-tiles 4 8
        # the torch backend on a `da3gs render` output (its gaussians.ply seen from the first
        # --torch-frames cameras of its video_cameras.json), one row per tile size

``--torch-tiles`` calls the torch rasteriser directly with each tile size (its images do not
depend on it), so the rows compare tilings in one run; without it the torch row goes through
``da3gs.render.render`` and the backend's default tiling.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from da3gs.io.resize import scale_intrinsics  # noqa: E402
from da3gs.render import render  # noqa: E402
from da3gs.render.sh import rgb_to_sh0  # noqa: E402
from da3gs.types import Gaussians  # noqa: E402

GARDEN = Path(os.environ.get("DA3GS_GARDEN_NPZ") or Path(__file__).resolve().parents[1] / ".."
               / "shared" / "data" / "gsplat_garden" / "test_garden.npz")


def random_scene(n: int, width: int, height: int, device, sh_degree: int = 3, seed: int = 0):
    """n Gaussians in front of an identity camera, depths 2..20, ~1-3 px footprints."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    f = 0.9 * width
    z = 2 + 18 * torch.rand(n, generator=g) ** 2
    u, v = torch.rand(n, generator=g) * width, torch.rand(n, generator=g) * height
    means = torch.stack([(u - width / 2) * z / f, (v - height / 2) * z / f, z], -1)
    scales = (0.3 + 1.2 * torch.rand(n, 3, generator=g)) * (z / f)[:, None]
    sh = 0.1 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g)
    sh[:, 0] = rgb_to_sh0(torch.rand(n, 3, generator=g))
    gs = Gaussians(means=means, quats=torch.randn(n, 4, generator=g), scales=scales,
                   opacities=0.2 + 0.8 * torch.rand(n, generator=g), sh=sh).to(device)
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], device=device)
    return gs, torch.eye(4, device=device), K


def garden_scene(n: int | None, width: int, height: int, device, seed: int = 0):
    """gsplat's garden SfM points as isotropic Gaussians (jittered copies up to n)."""
    import numpy as np

    d = np.load(GARDEN)
    pts = torch.from_numpy(d["means3d"]).float()
    rgb = torch.from_numpy(d["colors"]).float() / 255.0
    g = torch.Generator().manual_seed(seed)
    sub = pts[torch.randperm(len(pts), generator=g)[:4000]]
    spacing = torch.cdist(sub, sub).topk(2, largest=False).values[:, 1].median().item()
    if n and n > len(pts):
        rep = math.ceil(n / len(pts))
        pts = pts.repeat(rep, 1)[:n] + 0.5 * spacing * torch.randn(n, 3, generator=g)
        rgb = rgb.repeat(rep, 1)[:n]
    N = len(pts)
    gs = Gaussians(means=pts, quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(N, 1),
                   scales=torch.full((N, 3), 0.7 * spacing), opacities=torch.full((N,), 0.8),
                   sh=rgb_to_sh0(rgb)[:, None]).to(device)
    K = torch.from_numpy(d["Ks"][0]).float()
    sx, sy = width / float(d["width"]), height / float(d["height"])
    K[0] *= sx
    K[1] *= sy
    return gs, torch.from_numpy(d["viewmats"][0]).float().to(device), K.to(device)


def output_scene(folder: Path, frames: int):
    """A `da3gs render` output: its Gaussians and the first `frames` video cameras."""
    import json

    from da3gs.io.ply import read_ply

    gs = read_ply(folder / "gaussians.ply")
    cams = json.loads((folder / "video_cameras.json").read_text())[:frames]
    w2c = torch.tensor([c["w2c"] for c in cams], dtype=torch.float32)
    K = torch.tensor([c["K"] for c in cams], dtype=torch.float32)
    return gs, w2c, K, int(cams[0]["width"]), int(cams[0]["height"])


def draw_tiles(tile):
    """A ``draw(gs, w2c, K, width, height)`` through the torch rasteriser with one tile size."""
    from da3gs.render.torch_rasterizer import rasterize

    def draw(gs, w2c, K, width, height):
        color, _, depth, radii = rasterize(gs.means, gs.quats, gs.scales, gs.opacities, gs.sh,
                                           w2c, K, width, height, tile_size=tile)
        return color, depth, radii

    return draw


def draw_backend(backend):
    """A ``draw(gs, w2c, K, width, height)`` through :func:`da3gs.render.render`."""
    def draw(gs, w2c, K, width, height):
        out = render(gs, w2c, K, width, height, backend=backend)
        return out.color, out.depth, out.radii

    return draw


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_render(draw, gs, w2c, K, width, height, repeats, warmup, backward=False):
    """Median seconds per frame of ``draw`` (+ backward) and the visible Gaussians per frame."""
    if backward:
        for name in ("means", "quats", "scales", "opacities", "sh"):
            getattr(gs, name).requires_grad_(True)
    times = []
    for i in range(warmup + repeats):
        _sync(gs.means.device)
        t0 = time.perf_counter()
        with torch.set_grad_enabled(backward):
            color, depth, radii = draw(gs, w2c, K, width, height)
            if backward:
                (color.mean() + depth.mean()).backward()
        _sync(gs.means.device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    frames = color.shape[0]
    return statistics.median(times) / frames, int((radii > 0).all(-1).sum()) // frames


def row(kind, device, scene, n, w, h, sec, vis, backward):
    kind += " fwd+bwd" if backward else ""
    return (f"| {kind} | {device} | {scene} | {n:,} | {w}x{h} | {1000 * sec:.2f} | "
            f"{n / sec / 1e6:.1f} | {vis:,} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="device for the gsplat timings (default: cuda when available)")
    p.add_argument("--n", type=int, nargs="+", default=[1_350_000, 5_000_000],
                   help="Gaussian counts for gsplat (default: 1350000 5000000)")
    p.add_argument("--repeats", type=int, default=10, help="timed repeats (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--scene", choices=["random", "garden"], default="random")
    p.add_argument("--backward", action="store_true", help="also time forward + backward")
    p.add_argument("--torch-n", type=int, default=100_000, help="Gaussians for the CPU torch run")
    p.add_argument("--torch-size", type=int, default=256, help="image side for the CPU torch run")
    p.add_argument("--torch-repeats", type=int, default=3)
    p.add_argument("--torch-output", type=Path, default=None, metavar="DIR",
                   help="torch run on a `da3gs render` output folder instead of random Gaussians")
    p.add_argument("--torch-frames", type=int, default=4, help="video cameras per repeat (--torch-output)")
    p.add_argument("--torch-tiles", nargs="+", default=None, metavar="T",
                   help="torch run: one row per rasteriser tile size, or 'auto' (its per-camera "
                   "choice) (default: one row through da3gs.render.render)")
    p.add_argument("--torch-scale", type=float, default=1.0,
                   help="--torch-output: render at this multiple of the cameras' size (larger splats)")
    p.add_argument("--skip-gsplat", action="store_true")
    p.add_argument("--skip-torch", action="store_true")
    a = p.parse_args(argv)

    print("| backend | device | scene | N | W x H | ms/frame | Msplats/s | visible |")
    print("|---|---|---|---|---|---|---|---|")
    if not a.skip_gsplat:
        if torch.device(a.device).type != "cuda":
            print(f"(gsplat skipped: device {a.device} is not CUDA)", file=sys.stderr)
        else:
            for n in a.n:
                make = garden_scene if a.scene == "garden" else random_scene
                if a.scene == "garden" and not GARDEN.exists():
                    print(f"(garden scene missing: {GARDEN})", file=sys.stderr)
                    break
                gs, w2c, K = make(n, a.width, a.height, a.device)
                for bwd in ([False, True] if a.backward else [False]):
                    sec, vis = time_render(draw_backend("gsplat"), gs, w2c, K, a.width, a.height,
                                           a.repeats, a.warmup, bwd)
                    print(row("gsplat", torch.cuda.get_device_name(a.device), a.scene, len(gs),
                              a.width, a.height, sec, vis, bwd), flush=True)
                del gs
                torch.cuda.empty_cache()
    if not a.skip_torch:
        if a.torch_output is not None:
            for f in ("gaussians.ply", "video_cameras.json"):
                if not (a.torch_output / f).is_file():
                    p.error(f"--torch-output: {a.torch_output / f} not found (a `da3gs render` output folder)")
            gs, w2c, K, W, H = output_scene(a.torch_output, a.torch_frames)
            if a.torch_scale != 1.0:
                w, h = round(W * a.torch_scale), round(H * a.torch_scale)
                K = scale_intrinsics(K, w / W, h / H)
                W, H = w, h
            scene = f"{a.torch_output.name} ({w2c.shape[0]} video cameras)"
        else:
            W = H = a.torch_size
            gs, w2c, K = random_scene(a.torch_n, W, H, "cpu", sh_degree=0)
            w2c, K, scene = w2c[None], K[None], "random"
        name = f"cpu ({torch.get_num_threads()} threads)"
        draws = [("torch", draw_backend("torch"))]
        if a.torch_tiles:
            bad = [t for t in a.torch_tiles if t != "auto" and not t.isdigit()]
            if bad:
                p.error(f"--torch-tiles: expected positive integers or 'auto', got {bad[0]!r}")
            draws = [(f"torch tile {t}", draw_tiles(None if t == "auto" else int(t)))
                     for t in a.torch_tiles]
        for bwd in ([False, True] if a.backward else [False]):
            for kind, draw in draws:
                sec, vis = time_render(draw, gs, w2c, K, W, H, a.torch_repeats, 1, bwd)
                print(row(kind, name, scene, len(gs), W, H, sec, vis, bwd), flush=True)


if __name__ == "__main__":
    main()
