"""``da3gs eval recon``: 3D reconstruction metrics of fused predicted depth, as the DA3 bench
(the protocol: :mod:`da3gs.eval.recon`).

Predictions come from a ``da3gs render`` folder (``--pred``: ``cameras.json`` and
``depth/<name>.npy``, views matched to the scene's images by file stem) or from running the
model on the scene's views (``--views N``, ``--select``); ``--mode`` posed, unposed or both.
Fusion uses the ``--bench`` dataset's voxel size, truncation and depth limit; ``--samples``
points are sampled from each mesh. The ground truth (``--gt``) is a PLY or STL mesh, a PLY point
cloud, or ``depth``: the scene's ground-truth depth maps fused with its cameras. Every
parameter can be overridden; ``metrics.json`` records them all.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from da3gs.apps.common import Timer, check_number, load_job_model, resolve_device
from da3gs.apps.eval_common import eval_hooks, eval_out_dir, load_eval_scene, metrics_header, write_metrics
from da3gs.errors import Da3gsError
from da3gs.eval.recon import (ReconGroundTruth, ReconOptions, ReconPrediction, evaluate_recon,
                              predict_recon)

__all__ = ["add_recon_flags", "run_recon"]


def add_recon_flags(t) -> None:
    """The ``eval recon`` flags beyond the shared eval flags."""
    from da3gs.metrics.recon import BENCH_RECON

    t.add_argument("--gt", default=None,
                   help="ground truth: a PLY or STL mesh, a PLY point cloud, or 'depth' (the "
                        "scene's depth maps fused with its cameras; default when it has them)")
    t.add_argument("--pred", default=None,
                   help="a 'da3gs render' output folder to evaluate (default: run the model)")
    t.add_argument("--mode", default="both", choices=["posed", "unposed", "both"],
                   help="fuse with ground-truth cameras (posed), aligned predicted ones "
                        "(unposed) or both (default)")
    t.add_argument("--bench", default="7scenes", choices=sorted(BENCH_RECON),
                   help="dataset protocol whose parameters are used (default 7scenes)")
    t.add_argument("--voxel-length", type=float, default=None, help="TSDF voxel size (m)")
    t.add_argument("--sdf-trunc", type=float, default=None, help="TSDF truncation (m)")
    t.add_argument("--max-depth", type=float, default=None, help="depths beyond are not fused (m)")
    t.add_argument("--samples", type=int, default=None, help="points sampled from each mesh")
    t.add_argument("--threshold", type=float, default=None, help="F-score distance (m)")
    t.add_argument("--down-sample", type=float, default=None,
                   help="voxel size both clouds are down-sampled with (0: none)")
    t.add_argument("--crop-margin", type=float, default=None,
                   help="crop the prediction to the ground truth's box grown by this (m; "
                        "negative: no crop)")


def _params(args):
    from dataclasses import replace

    from da3gs.metrics.recon import BENCH_RECON

    for flag, v, lo_open in (("--voxel-length", args.voxel_length, True), ("--sdf-trunc", args.sdf_trunc, True),
                             ("--max-depth", args.max_depth, True), ("--threshold", args.threshold, True),
                             ("--down-sample", args.down_sample, False)):
        check_number(v, flag, 0, lo_open=lo_open)
    check_number(args.samples, "--samples", 1, what="a positive integer")
    check_number(args.crop_margin, "--crop-margin")
    over = {k: getattr(args, k) for k in ("voxel_length", "sdf_trunc", "max_depth", "samples",
                                          "threshold", "down_sample", "crop_margin")
            if getattr(args, k) is not None}
    if "crop_margin" in over and over["crop_margin"] < 0:
        over["crop_margin"] = None
    return replace(BENCH_RECON[args.bench], **over)


def _read_gt(args, scene):
    """``("mesh" | "points" | "depth", points, faces)``, read before any expensive work."""
    from da3gs.io.mesh import read_geometry

    gt = args.gt
    if gt is None:
        if scene.depth_paths is None:
            raise Da3gsError(f"--gt: required: the {scene.format} scene at {args.scene} has no depth "
                             "maps (give a PLY or STL mesh or point cloud)")
        gt = "depth"
    if gt == "depth":
        if scene.depth_paths is None:
            raise Da3gsError(f"--gt depth: the {scene.format} scene at {args.scene} has no depth maps")
        return "depth", None, None
    pts, faces = read_geometry(gt)
    if faces is not None and len(faces) == 0:
        raise Da3gsError(f"--gt {gt}: the mesh has a face element but no triangles")
    return ("points" if faces is None else "mesh"), pts, faces


def _read_pred(args, scene):
    """Render-folder predictions matched to scene views: (idx, depth (V,h,w), K, c2w)."""
    from da3gs.apps.render import unique_stems
    from da3gs.io.cameras import read_cameras_json
    from da3gs.io.depth import load_depth

    root = Path(args.pred)
    if not root.is_dir():
        raise Da3gsError(f"--pred {root}: not a folder (expected a 'da3gs render' output)")
    cams = read_cameras_json(root / "cameras.json")
    stems = {s: i for i, s in enumerate(unique_stems(scene.image_paths))}
    idx, missing = [], []
    for n in cams.names:
        i = stems.get(Path(n).stem)
        (missing.append(n) if i is None else idx.append(i))
    if missing:
        raise Da3gsError(f"--pred {root}: views {', '.join(missing[:3])} match no image of --scene "
                         f"{args.scene} (by file stem)")
    depths = []
    for n in cams.names:
        p = root / "depth" / f"{Path(n).stem}.npy"
        depths.append(load_depth(p))
    shapes = {d.shape for d in depths}
    if len(shapes) != 1:
        raise Da3gsError(f"--pred {root}: depth maps of different sizes {sorted(shapes)}")
    hw = {tuple(h) for h in cams.image_hw}
    if hw != shapes:
        raise Da3gsError(f"--pred {root}: cameras.json sizes {sorted(hw)} differ from the depth maps' {sorted(shapes)}")
    return idx, torch.from_numpy(np.stack(depths)), cams.K, cams.c2w


def run_recon(args) -> dict:
    from da3gs.apps.eval import select_eval_views
    from da3gs.metrics.tsdf import marching_cubes_available

    t0, timer = time.perf_counter(), Timer()
    params = _params(args)
    if not marching_cubes_available():
        raise Da3gsError("eval recon: TSDF mesh extraction needs scikit-image "
                         "(pip install 'da3gs[recon]' or pip install scikit-image)")
    scene = load_eval_scene(args)
    gt_kind, gt_pts, gt_faces = _read_gt(args, scene)
    gt = ReconGroundTruth(gt_kind, gt_pts, gt_faces, str(args.gt or "depth"))
    out = eval_out_dir(args, "recon")
    device = resolve_device(args.device)
    opts = ReconOptions(params=params, bench=args.bench, mode=args.mode, seed=args.seed,
                        process_res=args.process_res, ref_view=args.ref_view)
    hooks = eval_hooks(args, timer)
    if args.pred is not None:
        idx, depth, pK, pc2w = _read_pred(args, scene)
        pred, source = ReconPrediction(idx, depth, pK, pc2w, "render folder"), str(args.pred)
    else:
        idx = select_eval_views(args, scene)
        with timer("load_model"):
            model, source = load_job_model(args, device, job="eval")
        pred = predict_recon(model, scene, idx, opts, hooks)
    m = metrics_header(args, "recon", scene, source, device)
    m.update(evaluate_recon(scene, pred, gt, opts, device, hooks))
    write_metrics(out, m, t0, timer)
    if not args.quiet:
        for mode, r in m["metrics"].items():
            print(f"da3gs eval recon ({mode}): {len(idx)} views  acc {r['acc']:.4f}  comp {r['comp']:.4f}  "
                  f"overall {r['overall']:.4f}  F@{params.threshold:g} {r['fscore']:.4f}")
        print(f"da3gs eval recon: -> {out}")
    return m
