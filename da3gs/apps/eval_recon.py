"""``da3gs eval recon``: 3D reconstruction metrics of fused predicted depth, as the DA3 bench.

Predictions come from a ``da3gs render`` folder (``--pred``: ``cameras.json`` and
``depth/<name>.npy``, views matched to the scene's images by file stem) or from running the
model on the scene's views (``--views N``, ``--select``). For each ``--mode``:

* ``posed`` (the official ``recon_posed``): predicted depth at the images' size, scaled by the
  bench's Sim(3) (RANSAC Umeyama of predicted onto ground-truth camera centres), fused with the
  ground-truth cameras;
* ``unposed`` (``recon_unposed``): the same depth fused with the predicted cameras moved by
  that Sim(3), and the predicted intrinsics scaled to the images' size.

Where the scene has ground-truth depth maps, pixels without ground-truth depth are dropped
before fusion (as the bench's 7-Scenes / ScanNet++ readers). Fusion is TSDF
(:mod:`da3gs.metrics.tsdf`) with the ``--bench`` dataset's voxel size, truncation and depth
limit; ``--samples`` points are sampled from the mesh. The ground truth (``--gt``) is a PLY or
STL mesh (sampled the same way), a PLY point cloud (used as is), or ``depth``: the scene's
ground-truth depth maps fused with its cameras the same way (the chosen views). Accuracy,
completeness, overall (Chamfer), precision, recall and F-score follow
:func:`da3gs.metrics.recon.recon_metrics` at the bench's threshold and down-sampling. Every
parameter can be overridden; ``metrics.json`` records them all.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from da3gs.apps.common import Timer, check_number, load_job_model, resolve_device
from da3gs.apps.eval_common import eval_out_dir, infer_views, load_eval_scene, metrics_header, write_metrics
from da3gs.errors import Da3gsError

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


def _gt_valid(scene, idx):
    """Per view: ground-truth depth > 0 and finite (at the image size), or None."""
    if scene.depth_paths is None:
        return None, None
    depths, valid = [], []
    for i in idx:
        d = scene.load_depth(i)
        if tuple(d.shape) != tuple(scene.image_hw[i]):
            raise Da3gsError(f"--scene {scene.depth_paths[i]}: depth {d.shape[1]}x{d.shape[0]} differs from "
                             f"its image {scene.image_hw[i][1]}x{scene.image_hw[i][0]}")
        depths.append(d)
        valid.append(np.isfinite(d) & (d > 0))
    return depths, valid


def run_recon(args) -> dict:
    from da3gs.apps.eval import select_eval_views
    from da3gs.metrics.recon import RECON_MODES, crop_to_box, prepare_fusion, recon_metrics
    from da3gs.metrics.tsdf import fuse_depth_maps, marching_cubes_available, sample_points_uniformly

    t0, timer = time.perf_counter(), Timer()
    params = _params(args)
    if not marching_cubes_available():
        raise Da3gsError("eval recon: TSDF mesh extraction needs scikit-image "
                         "(pip install 'da3gs[recon]' or pip install scikit-image)")
    scene = load_eval_scene(args)
    gt_kind, gt_pts, gt_faces = _read_gt(args, scene)
    out = eval_out_dir(args, "recon")
    device = resolve_device(args.device)
    if args.pred is not None:
        idx, depth, pK, pc2w = _read_pred(args, scene)
        source = str(args.pred)
    else:
        idx = select_eval_views(args, scene)
        with timer("load_model"):
            model, source = load_job_model(args, device, job="eval")
        with timer("inference"):
            pred = infer_views(model, scene, idx, args, scene.background or (1.0, 1.0, 1.0), False, False)
        depth, pK, pc2w = pred.depth.float().cpu(), pred.K.double().cpu(), pred.c2w.double().cpu()
    if len(idx) < 3:
        raise Da3gsError(f"eval recon: needs at least 3 views (Sim(3) alignment of the cameras), got {len(idx)}")
    gt_c2w, gt_K = scene.c2w[idx], scene.K[idx]
    hw = [scene.image_hw[i] for i in idx]
    gen = torch.Generator().manual_seed(args.seed)
    fuse = dict(voxel_length=params.voxel_length, sdf_trunc=params.sdf_trunc,
                depth_trunc=params.max_depth, device=device)
    with timer("ground_truth"):
        gt_depths, valid = _gt_valid(scene, idx)
        if gt_kind == "depth":
            v, f = fuse_depth_maps(gt_depths, gt_K, torch.linalg.inv(gt_c2w), **fuse)
            gt_cloud = sample_points_uniformly(v, f, params.samples, gen)
        elif gt_kind == "mesh":
            gt_cloud = sample_points_uniformly(gt_pts, gt_faces, params.samples, gen)
        else:
            gt_cloud = torch.from_numpy(gt_pts)
    if gt_cloud.shape[0] == 0:
        raise Da3gsError(f"--gt {args.gt or 'depth'}: the ground truth gives no surface points")
    modes = list(RECON_MODES) if args.mode == "both" else [args.mode]
    results, sim = {}, None
    for mode in modes:
        with timer(f"fuse_{mode}"):
            depths, K, w2c, sim = prepare_fusion(depth, pK, pc2w, gt_c2w, gt_K, hw, mode, valid, sim)
            v, f = fuse_depth_maps(depths, K, w2c, **fuse)
            cloud = sample_points_uniformly(v, f, params.samples, gen)
        n_fused = int(cloud.shape[0])
        if params.crop_margin is not None:
            cloud = crop_to_box(cloud, gt_cloud, params.crop_margin)
        with timer(f"metrics_{mode}"):
            r = recon_metrics(cloud, gt_cloud, params.threshold, down_sample=params.down_sample or None)
        results[mode] = {**r, "mesh_vertices": int(v.shape[0]), "mesh_triangles": int(f.shape[0]),
                         "points": n_fused, "points_after_crop": int(cloud.shape[0])}
    m = metrics_header(args, "recon", scene, source, device)
    m.update({"views": idx, "view_names": [scene.names[i] for i in idx], "bench": args.bench,
              "params": params.as_dict(), "gt": {"kind": gt_kind, "source": str(args.gt or "depth"),
                                                 "points": int(gt_cloud.shape[0])},
              "predictions": "render folder" if args.pred is not None else "model",
              "gt_depth_mask": valid is not None,
              "alignment": {"scale": float(sim.s), "R": sim.R, "t": sim.t,
                            "method": "RANSAC Umeyama on camera centres (official align_poses_umeyama, seed 42)"},
              "comparable_with": "depth_anything_3.bench fuse3d + eval3d (evaluate_3d_reconstruction)",
              "metrics": results})
    write_metrics(out, m, t0, timer)
    if not args.quiet:
        for mode, r in results.items():
            print(f"da3gs eval recon ({mode}): {len(idx)} views  acc {r['acc']:.4f}  comp {r['comp']:.4f}  "
                  f"overall {r['overall']:.4f}  F@{params.threshold:g} {r['fscore']:.4f}")
        print(f"da3gs eval recon: -> {out}")
    return m
