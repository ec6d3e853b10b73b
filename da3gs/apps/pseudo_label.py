"""``da3gs pseudo-label``: dense metric depth for a user's posed scene, from a teacher model.

For every view of the scene (any format :func:`da3gs.data.load_scene` reads):

1. The teacher (any model ``load_model`` accepts: mono, metric or any-view, run on one view at
   a time) predicts relative depth ``D~`` at its processing resolution; it is resampled
   (bilinear) to the image's own resolution, undoing the resize/crop of the preprocessing.
2. Sparse metric depth ``D`` for that view: the COLMAP model's 3D points projected into the view
   (z-depth of points in front of the camera, inside the image; ``--sparse colmap``), or the
   scene's sensor depth (RGB-D readers, e.g. TUM; pixels with a measurement; ``--sparse
   sensor``). ``auto`` takes the points when the scene has them, else sensor depth.
3. ``(s, t) = argmin_{s>0,t} sum (s D~ + t - D)^2`` by RANSAC least squares with the DA3 MAD
   inlier threshold (:func:`da3gs.geometry.depth_align.robust_scale_shift`).
4. ``s D~ + t`` is written as ``depth/<image name>.npy`` (float32, ``(H, W)`` of the image on disk,
   metres or the scene's units; non-positive values set to 0 = invalid).

``summary.json`` records per view ``s``, ``t``, the number of sparse samples and inliers, the
inliers' median absolute relative error, and views skipped for lack of sparse depth
(fewer than ``--min-points``). The output folder is written atomically through
:mod:`da3gs.apps.outputs` (hidden temporary renamed into place; an existing folder only
replaced with ``--overwrite`` and only if da3gs wrote it; never inside or around the scene).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from da3gs.apps.common import resolve_device
from da3gs.apps.outputs import (
    check_output_dir,
    terminate_as_exception,
    write_output_dir,
)
from da3gs.errors import Da3gsError
from da3gs.geometry import c2w_to_w2c, project_points
from da3gs.geometry.depth_align import robust_scale_shift

__all__ = ["DEFAULT_TEACHER", "add_pseudo_label_parser", "run_pseudo_label"]

DEFAULT_TEACHER = "depth-anything/DA3MONO-LARGE"


def add_pseudo_label_parser(sub) -> None:
    """Register ``da3gs pseudo-label`` on the top-level subparsers ``sub``."""
    p = sub.add_parser(
        "pseudo-label", help="teacher depth aligned to sparse metric depth, for fine-tuning",
        description="Run a teacher depth model on a posed scene's images, align each view's depth "
        "to the scene's sparse metric depth (COLMAP points or sensor depth) by RANSAC scale and "
        "shift, and write depth/<name>.npy plus summary.json into --out.")
    p.add_argument("--scene", required=True, help="scene folder or camera file (COLMAP with "
                   "points3D, or an RGB-D scene with depth images)")
    p.add_argument("--format", default="auto", help="scene format (default: auto)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help="teacher: a Hugging Face repo id, a local "
                     f"folder or 'random:PRESET' (default: {DEFAULT_TEACHER})")
    src.add_argument("--checkpoint", help="a da3gs checkpoint (.safetensors file or folder)")
    p.add_argument("--sparse", default="auto", choices=["auto", "colmap", "sensor"],
                   help="sparse metric depth: COLMAP points, sensor depth, or auto (points first)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out folder (only one that da3gs wrote)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--process-res", type=int, default=504,
                   help="longest image side fed to the teacher, a multiple of 14 (default 504)")
    p.add_argument("--iters", type=int, default=100, help="RANSAC hypotheses (default 100)")
    p.add_argument("--min-points", type=int, default=20,
                   help="skip views with fewer sparse depth samples (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of RANSAC (and of random: models)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")


def dense_at_original(pred, hw: tuple[int, int]) -> torch.Tensor:
    """Predicted depth of a one-view :class:`Prediction` resampled to the original ``hw``.

    Original pixel centre ``u`` lands at ``u' = u * sx - left`` in the processed image
    (pixel-edge convention); sampled bilinearly (border values beyond the edges).
    """
    d = pred.depth[0].float()  # (h, w)
    h, w = d.shape
    (sx, sy), (left, top) = pred.resize_scale[0], pred.crop_offsets[0]
    H, W = hw
    u = (torch.arange(W, dtype=torch.float32) + 0.5) * sx - left
    v = (torch.arange(H, dtype=torch.float32) + 0.5) * sy - top
    grid = torch.stack(torch.meshgrid(2 * v / h - 1, 2 * u / w - 1, indexing="ij")[::-1], -1)
    out = F.grid_sample(d[None, None].cpu(), grid[None], mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[0, 0]


def sparse_from_points(points: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor,
                       hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world ``points (M, 3)`` into a view: returns (flat pixel indices (N,), z (N,))
    of the points in front of the camera whose projection falls inside the ``hw`` image."""
    H, W = hw
    uv, z = project_points(points.double(), c2w_to_w2c(c2w.double()), K.double())
    ok = (z > 0) & torch.isfinite(uv).all(-1) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & \
        (uv[:, 1] >= 0) & (uv[:, 1] < H)
    uv, z = uv[ok], z[ok]
    idx = uv[:, 1].floor().long() * W + uv[:, 0].floor().long()
    return idx, z


def sparse_from_sensor(depth: np.ndarray, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sensor depth ``(h, w)`` (0 = none) -> (flat pixel indices in the ``hw`` image, depth);
    a depth map of another size is mapped by its pixel centres (nearest pixel)."""
    H, W = hw
    d = torch.from_numpy(np.asarray(depth, dtype=np.float64))
    h, w = d.shape
    ii, jj = torch.nonzero((d > 0) & torch.isfinite(d), as_tuple=True)
    z = d[ii, jj]
    r = ((ii.double() + 0.5) * H / h).floor().long().clamp(0, H - 1)
    c = ((jj.double() + 0.5) * W / w).floor().long().clamp(0, W - 1)
    return r * W + c, z


def _npy_name(name: str) -> str:
    p = Path(name)
    parts = [x for x in p.with_suffix(".npy").parts if x not in ("..", ".", "/")]
    return "/".join(parts)


def run_pseudo_label(args) -> dict:
    """Run the job (see the module docstring); returns the summary written to summary.json."""
    from da3gs.data import load_scene
    from da3gs.models.loading import load_model

    t0 = time.perf_counter()
    if args.iters < 1:
        raise Da3gsError(f"--iters: expected a value >= 1, got {args.iters}")
    if args.min_points < 2:
        raise Da3gsError(f"--min-points: expected a value >= 2, got {args.min_points}")
    if args.process_res < 14:
        raise Da3gsError(f"--process-res: expected a value >= 14, got {args.process_res}")
    out = check_output_dir(args.out, {"--scene": args.scene, "--checkpoint": args.checkpoint},
                           args.overwrite)
    scene = load_scene(args.scene, args.format)
    mode = args.sparse
    if mode == "auto":
        mode = "colmap" if scene.points is not None else "sensor"
    if mode == "colmap" and (scene.points is None or len(scene.points) == 0):
        raise Da3gsError(f"--scene {args.scene}: no sparse 3D points (a COLMAP model with "
                         "points3D is needed for --sparse colmap)")
    if mode == "sensor" and scene.depth_paths is None:
        raise Da3gsError(f"--scene {args.scene}: no sparse metric depth (neither COLMAP points "
                         "nor sensor depth images)")
    dev = resolve_device(args.device)
    source = args.checkpoint or args.model or DEFAULT_TEACHER
    torch.manual_seed(args.seed)
    model = load_model(source, device=dev)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    views, n_ok = [], 0
    with terminate_as_exception(), write_output_dir(out, "pseudo-label") as tmp:
        for i, path in enumerate(scene.image_paths):
            hw = scene.image_hw[i]
            entry = {"name": scene.names[i]}
            if mode == "colmap":
                idx, z = sparse_from_points(scene.points, scene.c2w[i], scene.K[i], hw)
            else:
                idx, z = sparse_from_sensor(scene.load_depth(i), hw)
            entry["points"] = int(idx.numel())
            if idx.numel() < args.min_points:
                entry["status"] = f"skipped: {idx.numel()} sparse samples < --min-points {args.min_points}"
                views.append(entry)
                log(f"pseudo-label: {scene.names[i]}: {entry['status']}")
                continue
            pred = model.infer([path], process_res=args.process_res)
            dense = dense_at_original(pred, hw).double()
            gen = torch.Generator().manual_seed(args.seed + i)
            try:
                s, t, inl = robust_scale_shift(dense.reshape(-1)[idx], z, iters=args.iters,
                                               generator=gen, return_inliers=True)
            except Da3gsError as e:
                entry["status"] = f"skipped: {e}"
                views.append(entry)
                continue
            aligned = (s * dense + t).float()
            nonpos = int((aligned <= 0).sum())
            aligned = torch.where(aligned > 0, aligned, torch.zeros_like(aligned))
            fit = (s * dense.reshape(-1)[idx] + t)[inl]
            rel = ((fit - z[inl]).abs() / z[inl]).median()
            rel_file = _npy_name(scene.names[i])
            dst = tmp / "depth" / rel_file
            dst.parent.mkdir(parents=True, exist_ok=True)
            np.save(dst, aligned.numpy())
            entry.update(status="ok", file=f"depth/{rel_file}", s=float(s), t=float(t),
                         inliers=int(inl.sum()), inlier_median_abs_rel=float(rel),
                         nonpositive_pixels=nonpos, height=hw[0], width=hw[1])
            views.append(entry)
            n_ok += 1
            log(f"pseudo-label: {scene.names[i]}: s={float(s):.4g} t={float(t):.4g} "
                f"inliers {int(inl.sum())}/{idx.numel()}")
        if n_ok == 0:
            raise Da3gsError(f"--scene {args.scene}: no view had at least --min-points "
                             f"{args.min_points} sparse depth samples; nothing written")
        summary = {"command": "pseudo-label", "scene": str(args.scene), "format": scene.format,
                   "model": str(source), "preset": model.preset.name, "sparse": mode,
                   "ransac_iters": args.iters, "seed": args.seed, "views_written": n_ok,
                   "views_skipped": len(views) - n_ok, "views": views,
                   "seconds": round(time.perf_counter() - t0, 3)}
        if any(not math.isfinite(v.get("s", 0.0)) for v in views):
            raise Da3gsError("pseudo-label: a non-finite alignment came out; nothing written")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
