"""Cost of merging redundant pixel-aligned Gaussians across views, on geometry-correct Gaussians.

Random network weights make held-out PSNR meaningless, so the Gaussians here come from ground
truth: the ICL-NUIM living-room RGB-D frames of the shared data (5 frames with depth and poses).
Every pixel of the context views becomes a Gaussian at its ground-truth depth (isotropic, std
--sigma pixel footprints, opacity --opacity, the pixel's colour as SH degree 0), exactly the
pixel-aligned layout the network's GS head produces. The held-out frame is rendered with the
torch rasterizer (CPU) from the full cloud and from merged clouds (`da3gs.gaussians`:
footprint merge at several `merge_scale`, and a fixed world voxel for reference); the table
gives the Gaussian count, the time of the merge and the held-out PSNR against the real frame
(and against the unmerged render, which isolates what the merge changes), over the pixels where
the held-out frame has a valid depth (the frames lack depth along parts of their borders, where no
Gaussian can exist).

`--at-scale 32` instead times the default merge on 32 synthetic 504 x 336 views (5.4 M Gaussians).

Usage: python scripts/bench_merge.py [--data ../shared/data/icl_nuim_livingroom_rgbd5] [--down 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _load(data: Path, down: int):
    from PIL import Image

    from da3gs.data.rgbd import read_trajectory_log

    scene = read_trajectory_log(data)
    imgs, depths = [], []
    for i, p in enumerate(scene.image_paths):
        im = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0
        H, W = im.shape[0] // down, im.shape[1] // down
        imgs.append(im[:H * down, :W * down].reshape(H, down, W, down, 3).mean(axis=(1, 3)))
        d = scene.load_depth(i).astype(np.float32)
        # the depth at each block's centre pixel (no mixing across depth edges)
        depths.append(d[down // 2::down, down // 2::down][:H, :W])
    K = scene.K.clone()
    K[:, :2] /= down
    return (torch.from_numpy(np.stack(imgs)), torch.from_numpy(np.stack(depths)), scene.c2w.double(),
            K.double())


def _lift(imgs, depths, c2w, K, views, sigma: float, opacity: float):
    """Pixel-aligned Gaussians of ``views`` at ground-truth depth."""
    from da3gs.render.sh import rgb_to_sh0
    from da3gs.types import Gaussians

    parts = []
    V, H, W = depths.shape
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    for v in views:
        d = depths[v].double()
        ok = d > 0
        u = (cols + 0.5).double()[ok]
        w = (rows + 0.5).double()[ok]
        z = d[ok]
        Kv = K[v]
        x = torch.stack([(u - Kv[0, 2]) / Kv[0, 0] * z, (w - Kv[1, 2]) / Kv[1, 1] * z, z], dim=-1)
        world = x @ c2w[v, :3, :3].T + c2w[v, :3, 3]
        n = world.shape[0]
        s = (sigma * z / Kv[0, 0]).float()
        parts.append(Gaussians(
            means=world.float(), quats=torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4).clone(),
            scales=s[:, None].expand(n, 3).clone(), opacities=torch.full((n,), opacity),
            sh=rgb_to_sh0(imgs[v][ok])[:, None, :].float(),
            view=torch.full((n,), v, dtype=torch.long),
            pixel=torch.stack([rows[ok], cols[ok]], dim=-1)))
    return Gaussians.cat(parts)


def time_at_scale(views: int, h: int, w: int, repeats: int) -> None:
    """Time the default merge on ``views`` synthetic pixel-aligned views of a wavy wall (cameras
    on a 1 m line facing it at about 2 m), i.e. the cloud size of a real 32-view render."""
    from da3gs.gaussians import prune_gaussians

    K = torch.tensor([[0.8 * w, 0, w / 2], [0, 0.8 * w, h / 2], [0, 0, 1]], dtype=torch.float64).repeat(views, 1, 1)
    c2w = torch.eye(4, dtype=torch.float64).repeat(views, 1, 1)
    c2w[:, 0, 3] = torch.linspace(-0.5, 0.5, views, dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    rx, ry = (xx + 0.5 - K[0, 0, 2]) / K[0, 0, 0], (yy + 0.5 - K[0, 1, 2]) / K[0, 1, 1]
    depths = []
    for v in range(views):  # ray-cast the wall z = 2 + 0.1 sin(5X) cos(5Y) (fixed-point iteration)
        z = torch.full_like(rx, 2.0)
        for _ in range(30):
            z = 2 + 0.1 * torch.sin(5 * (c2w[v, 0, 3] + rx * z)) * torch.cos(5 * ry * z)
        depths.append(z)
    depths = torch.stack(depths).float()
    imgs = torch.rand(views, h, w, 3)
    g = _lift(imgs, depths, c2w, K, list(range(views)), 0.7, 0.95)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        m, _ = prune_gaussians(g, merge_scale=1.0, c2w=c2w, K=K)
        times.append(time.perf_counter() - t0)
    print(f"merge at scale: {views} views {w}x{h}, {len(g):,} -> {len(m):,} Gaussians "
          f"({len(g) / len(m):.2f}x fewer), median {statistics.median(times):.2f} s of {repeats} "
          f"({torch.get_num_threads()} threads)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "icl_nuim_livingroom_rgbd5"))
    ap.add_argument("--down", type=int, default=4, help="downscale factor of the 640x480 frames")
    ap.add_argument("--held-out", type=int, default=2, help="frame rendered (the others are context)")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument("--voxel", type=float, nargs="*", default=None,
                    help="fixed world voxel sizes for reference (default: the median footprint)")
    ap.add_argument("--sigma", type=float, default=0.7, help="Gaussian std in pixel footprints")
    ap.add_argument("--opacity", type=float, default=0.95)
    ap.add_argument("--repeats", type=int, default=3, help="repeats of each merge (timing median)")
    ap.add_argument("--at-scale", metavar="VIEWS", type=int, default=0,
                    help="only time the default merge on VIEWS synthetic 504x336 views (e.g. 32)")
    args = ap.parse_args()
    if args.at_scale:
        torch.set_grad_enabled(False)
        time_at_scale(args.at_scale, 336, 504, args.repeats)
        return
    from da3gs.geometry import c2w_to_w2c
    from da3gs.gaussians import prune_gaussians
    from da3gs.metrics.image import psnr
    from da3gs.render import render

    torch.set_grad_enabled(False)
    imgs, depths, c2w, K = _load(Path(args.data), args.down)
    V, H, W = depths.shape
    ctx = [v for v in range(V) if v != args.held_out]
    g = _lift(imgs, depths, c2w, K, ctx, args.sigma, args.opacity)
    t = args.held_out
    w2c = c2w_to_w2c(c2w[t:t + 1]).float()
    gt = imgs[t:t + 1].permute(0, 3, 1, 2)
    mask = (depths[t] > 0)[None]  # pixels the context can explain: the frame's valid depth

    def show(cloud):
        return render(cloud, w2c, K[t:t + 1].float(), W, H, backend="torch").color.clamp(0, 1).permute(0, 3, 1, 2)

    full = show(g)
    foot = (depths[ctx][depths[ctx] > 0].double() / K[0, 0, 0]).median().item()
    voxels = args.voxel if args.voxel is not None else [foot]
    print(f"ICL-NUIM living room, {W}x{H} (1/{args.down}), context frames {ctx}, held-out frame {t}; "
          f"Gaussians: std {args.sigma} px footprint, opacity {args.opacity}; torch rasterizer, CPU; "
          f"median footprint {foot:.4g} m")
    print("| merge | Gaussians | x fewer | merge s | held-out PSNR vs frame (dB) | delta vs unmerged (dB) | PSNR vs unmerged render (dB) |")
    print("|---|---|---|---|---|---|---|")
    base = psnr(full, gt, mask=mask).item()
    print(f"| none | {len(g):,} | 1.00 | - | {base:.2f} | 0 | inf |")
    configs = [(f"footprint, merge_scale {s:g}", {"merge_scale": s, "c2w": c2w, "K": K}) for s in args.scales]
    configs += [(f"world voxel {v:.4g} m", {"voxel_size": v}) for v in voxels]
    for name, kw in configs:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            m, _ = prune_gaussians(g, **kw)
            times.append(time.perf_counter() - t0)
        img = show(m)
        p = psnr(img, gt, mask=mask).item()
        print(f"| {name} | {len(m):,} | {len(g) / len(m):.2f} | {statistics.median(times):.3f} | {p:.2f} | "
              f"{p - base:+.2f} | {psnr(img, full, mask=mask).item():.2f} |", flush=True)


if __name__ == "__main__":
    main()
