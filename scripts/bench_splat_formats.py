#!/usr/bin/env python
"""Sizes and PSNR cost of the compact splat formats (SPZ v2/v3/v4, SOG, .splat) against the PLY.

For each scene the Gaussians are written as PLY, SPZ (versions 2, 3 and 4; 4 only with
``zstandard``), SOG (bundled ``.sog``) and .splat, read back, and rendered with
da3gs.render's torch backend at the scene's cameras; PSNR is against the render of the PLY's
Gaussians (so it measures only what the format loses). Prints markdown table rows:

    | scene | N | SH deg | format | bytes | x smaller | PSNR vs PLY (dB) | write (s) |

Scenes: ``render`` = the output of ``da3gs render --model random:tiny-gs`` on LLFF fern
(images_8, 3 views at 224 px; random weights, so the cloud is noisy but has da3gs's layout and scale);
``garden`` = gsplat's garden SfM points as isotropic Gaussians with SH degree 2 added (random
rest coefficients in [-0.3, 0.3]) at the dataset's first camera.

    python scripts/bench_splat_formats.py [--work DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from da3gs.io.cameras import read_cameras_json  # noqa: E402
from da3gs.io.splat_files import read_gaussians, write_gaussians  # noqa: E402
from da3gs.render import render  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).mean())
    return math.inf if mse == 0 else -10 * math.log10(mse)


def render_scene(work: Path):
    from da3gs.cli import main

    out = work / "fern_render"
    if not out.exists():
        rc = main(["render", "--views", str(SHARED / "llff_fern" / "images_8"), "--model",
                   "random:tiny-gs", "--device", "cpu", "--max-views", "3", "--process-res", "224", "--no-video",
                   "--no-colmap", "-q", "--splat-format", "ply", "--out", str(out)])
        assert rc == 0
    g = read_gaussians(out / "gaussians.ply")
    cams = read_cameras_json(out / "cameras.json")
    w2c = torch.linalg.inv(cams.c2w).float()
    h, w = cams.image_hw[0]
    return g, w2c[:1], cams.K[:1].float(), w, h  # one view: the torch rasterizer is slow on CPU


def garden_scene(work: Path):
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_render import garden_scene as make

    g, w2c, K = make(None, 640, 420, "cpu")
    gen = torch.Generator().manual_seed(0)
    rest = (torch.rand(len(g), 8, 3, generator=gen) - 0.5) * 0.6
    g.sh = torch.cat([g.sh, rest], dim=1)
    return g, w2c[None], K[None], 640, 420


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=None, help="folder for the files (default: a temporary one)")
    a = p.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="da3gs_splatbench_"))
    work.mkdir(parents=True, exist_ok=True)
    print("| scene | N | SH deg | format | bytes | x smaller | PSNR vs PLY (dB) | write (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, make in (("render", render_scene), ("garden", garden_scene)):
        g, w2c, K, w, h = make(work)
        ref = None
        variants = [("ply", "ply", None), ("spz v2", "spz", 2), ("spz v3", "spz", 3)]
        if importlib.util.find_spec("zstandard"):
            variants.append(("spz v4", "spz", 4))
        variants += [("sog", "sog", None), ("splat", "splat", None)]
        for label, fmt, version in variants:
            path = work / f"{name}{'_v' + str(version) if version else ''}.{fmt}"
            path.unlink(missing_ok=True)
            t0 = time.perf_counter()
            write_gaussians(path, g, fmt, spz_version=version)
            dt = time.perf_counter() - t0
            back = read_gaussians(path)
            with torch.no_grad():
                img = render(back, w2c, K, w, h, backend="torch").color
            ref = img if ref is None else ref
            size = path.stat().st_size
            ply_size = (work / f"{name}.ply").stat().st_size
            psnr = _psnr(img, ref)
            print(f"| {name} | {len(g)} | {g.sh_degree} | {label} | {size} | {ply_size / size:.1f} | "
                  f"{'ref' if fmt == 'ply' else f'{psnr:.1f}'} | {dt:.2f} |", flush=True)


if __name__ == "__main__":
    main()
