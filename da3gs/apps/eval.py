"""``da3gs eval nvs | pose | depth | recon``: benchmark protocols on posed scenes.

nvs: predict Gaussians from context views (pose-free or pose-conditioned), render the held-out
target views with their ground-truth cameras at the images' on-disk resolution, score PSNR,
SSIM and LPIPS per view, then the mean. Pose-free predictions live in the network's own frame:
a Sim(3) fitted (Umeyama, no RANSAC) on the context camera centres, predicted -> ground truth
(camera orientations for fewer than 3 or collinear centres), moves the cameras and the Gaussians
into the scene's frame, as feed-forward NVS papers do. Optional test-time refinement
(:mod:`da3gs.train.refine`) fits the cloud to the context views with their ground-truth cameras
before the targets are scored (before and after are both reported). ``--init random`` is the
per-scene optimisation baseline: no network, randomly initialised Gaussians
(:func:`da3gs.gaussians.random_gaussians`, as gsplat's ``simple_trainer`` from random init) fitted
by the same refinement to the context views with their ground-truth cameras, scored the same way.

Background: ``--background``, else the scene's (Blender: white), else black (the 3DGS default
for real scenes); ground-truth RGBA images are composited on the same colour.

pose: pose-free prediction on N views, pose AUC@3/5/15/30 and ATE after Sim(3). The AUC is the
official DA3 benchmark's (``--auc-mode bench``, default; :mod:`da3gs.metrics.pose`), comparable
with published tables; ``--auc-mode relative`` gives the physical relative-pose variant.
depth: predicted depth resized to the ground truth's size (bilinear by default, ``--resize
nearest`` to avoid blending across depth edges), AbsRel / delta1 ... after per-image alignment
(``--align``, :data:`da3gs.metrics.depth.ALIGN_MODES`): ``median`` scale (default; the multi-view
convention), ``lstsq`` scale and shift (the monocular, affine-invariant convention),
``lstsq_scale`` (least-squares scale only) or ``none`` (metric depth); ``metrics.json`` names
the alignment (``align``) and states its formula (``align_formula``).

recon: fused predicted depth against a ground-truth mesh, point cloud or depth maps, as the
official bench's ``evaluate_3d_reconstruction`` (:mod:`da3gs.apps.eval_recon`).

Every task writes ``metrics.json`` into ``--out`` atomically (hidden temporary folder renamed
at the end); an existing folder is only replaced with ``--overwrite``.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch

from da3gs.apps import eval_views as ev
from da3gs.apps.common import Timer, add_refine_strategy_flags, load_job_model, resolve_device
from da3gs.apps.eval_common import (add_eval_flags, check_eval_args, eval_out_dir, infer_views,
                                    load_eval_scene, metrics_header, pose_errors, write_metrics)
from da3gs.errors import Da3gsError
from da3gs.metrics.depth import ALIGN_FORMULAS, ALIGN_MODES

__all__ = ["add_eval_parser", "run_eval"]

def add_eval_parser(sub) -> None:
    """Register ``da3gs eval {nvs,pose,depth,recon}`` on the top-level subparsers ``sub``."""
    p = sub.add_parser("eval", help="benchmarks: novel views, poses, depth, 3D reconstruction",
                       description="Evaluate a model on a posed scene; writes metrics.json.")
    tasks = p.add_subparsers(dest="eval_task", required=True, metavar="TASK")
    n = tasks.add_parser("nvs", help="novel-view synthesis: PSNR / SSIM / LPIPS on held-out views")
    add_eval_flags(n)
    n.add_argument("--targets", default="every8",
                   help="held-out views: everyN (LLFF: index %% N == 0; default every8), "
                   "split:NAME (e.g. split:test) or list:I,J,...")
    n.add_argument("--max-targets", type=int, default=None,
                   help="score at most N of the targets, evenly spaced (quick checks; the "
                   "context is chosen as for the full target set)")
    n.add_argument("--context", type=int, default=None,
                   help=f"number of context views (default: all non-targets, at most "
                   f"{ev.DEFAULT_MAX_CONTEXT})")
    n.add_argument("--select", default=None, choices=["fps", "every-nth", "list"],
                   help="context choice: farthest-point sampling on camera centres (default), "
                   "evenly spaced, or --context-list")
    n.add_argument("--context-list", default=None, help="explicit context indices, e.g. 0,3,7")
    n.add_argument("--pose-mode", default=None, choices=["free", "conditioned"],
                   help="free (default): images only, Sim(3)-aligned to the scene; conditioned: "
                   "the scene's context cameras condition the network (ignored by --init random)")
    n.add_argument("--init", default="model", choices=["model", "random"],
                   help="model (default): the network's Gaussians; random: per-scene optimisation "
                   "baseline, randomly initialised Gaussians (no network) fitted to the context "
                   "views with their ground-truth cameras for --refine-steps (> 0) steps")
    n.add_argument("--init-points", type=int, default=100_000,
                   help="--init random: number of Gaussians (default 100000, gsplat's init_num_pts)")
    n.add_argument("--init-extent", type=float, default=3.0,
                   help="--init random: half-side of the cube of centres, in units of the context "
                   "cameras' extent (1.1 x their largest distance from their mean; default 3, "
                   "gsplat's init_extent)")
    n.add_argument("--align", default="orientations", choices=["orientations", "centres"],
                   help="pose-free alignment of the predicted context cameras to the scene's: "
                   "rotation from their orientations, scale and translation from their centres "
                   "(default; robust with few views), or Umeyama Sim(3) on the centres alone")
    n.add_argument("--refine-steps", type=int, default=0,
                   help="test-time refinement steps on the context views (default 0)")
    n.add_argument("--refine-cameras", action="store_true", help="also refine context cameras")
    add_refine_strategy_flags(n)
    n.add_argument("--lpips", default="vgg,alex",
                   help="LPIPS nets: vgg,alex (default, also 'both'), vgg, alex or none")
    n.add_argument("--ssim-mode", default="gaussian", choices=["gaussian", "skimage"])
    n.add_argument("--background", default=None, help="R,G,B in [0, 1] (default: the scene's)")
    for name, h in (("pose", "camera poses: AUC@3/5/15/30, ATE"),
                    ("depth", "depth: AbsRel, delta1 after scale alignment"),
                    ("recon", "3D reconstruction: TSDF-fused depth vs a ground-truth mesh, cloud or "
                              "depth maps; accuracy, completeness, Chamfer, F-score")):
        t = tasks.add_parser(name, help=h)
        add_eval_flags(t)
        t.add_argument("--views", type=int, default=None, help="views to use (default: all, at most 32)")
        t.add_argument("--select", default="fps", choices=["fps", "every-nth"])
        if name == "pose":
            t.add_argument("--auc-mode", default="bench", choices=["bench", "relative"],
                           help="pose AUC definition: bench (official DA3 benchmark, default) or "
                                "relative (physical relative poses; not comparable with papers)")
        if name == "depth":
            t.add_argument("--pose-mode", default="free", choices=["free", "conditioned"])
            t.add_argument("--align", default="median", choices=list(ALIGN_MODES),
                           help="per-image alignment before the metrics: median scale (multi-view "
                                "convention), lstsq scale+shift (monocular convention), "
                                "lstsq_scale, none (metric)")
            t.add_argument("--resize", default="bilinear", choices=["bilinear", "nearest"],
                           help="how the prediction is resized to the ground-truth size")
        if name == "recon":
            from da3gs.apps.eval_recon import add_recon_flags

            add_recon_flags(t)


def run_eval(args) -> dict:
    """Dispatch ``da3gs eval TASK`` for parsed CLI ``args``; returns the metrics dict."""
    from da3gs.apps.eval_nvs import run_nvs

    check_eval_args(args)
    if args.eval_task == "nvs":
        return run_nvs(args)
    if args.eval_task == "recon":
        from da3gs.apps.eval_recon import run_recon

        return run_recon(args)
    return (run_pose if args.eval_task == "pose" else run_depth)(args)


def select_eval_views(args, scene) -> list[int]:
    """``--views N`` (default all, at most 32) of the scene by ``--select``."""
    n = args.views if args.views is not None else min(len(scene), 32)
    if args.views is None and len(scene) > 32 and not args.quiet:
        print(f"da3gs eval: note: using 32 of {len(scene)} views ({args.select}); pass --views N",
              file=sys.stderr)
    return ev.pick_views(scene, list(range(len(scene))), n, args.select)


def run_pose(args) -> dict:
    from da3gs.geometry import align_cameras
    from da3gs.metrics import ate, pose_auc

    t0, timer = time.perf_counter(), Timer()
    scene = load_eval_scene(args)
    out = eval_out_dir(args, "pose")
    idx = select_eval_views(args, scene)
    if len(idx) < 2:
        raise Da3gsError("eval pose: needs at least 2 views (relative poses)")
    device = resolve_device(args.device)
    with timer("load_model"):
        model, source = load_job_model(args, device, job="eval")
    with timer("inference"):
        pred = infer_views(model, scene, idx, args, scene.background or (1.0, 1.0, 1.0), False, False)
    pc, gc = pred.c2w.double().cpu(), scene.c2w[idx]
    auc_mode = getattr(args, "auc_mode", "bench")
    sim, aligned = align_cameras(pc, gc, orientation_fallback=True)
    m = metrics_header(args, "pose", scene, source, device)
    m.update({"views": idx, "view_names": [scene.names[i] for i in idx], "select": args.select,
              "auc_mode": auc_mode,
              "auc": pose_auc(pc, gc, thresholds=(3, 5, 15, 30), mode=auc_mode),
              "ate": ate(pc, gc, "sim3"),
              "alignment_scale": float(sim.s), "aligned_errors": pose_errors(aligned, gc)})
    write_metrics(out, m, t0, timer)
    if not args.quiet:
        a = m["auc"]
        print(f"da3gs eval pose: {len(idx)} views  AUC@3 {a['auc@3']:.3f}  AUC@5 {a['auc@5']:.3f}  "
              f"AUC@15 {a['auc@15']:.3f}  AUC@30 {a['auc@30']:.3f}  ATE {m['ate']:.4g} -> {out}")
    return m


def run_depth(args) -> dict:
    import torch.nn.functional as F

    from da3gs.metrics import depth_metrics

    t0, timer = time.perf_counter(), Timer()
    scene = load_eval_scene(args)
    if scene.depth_paths is None:
        raise Da3gsError(f"--scene {args.scene}: the {scene.format} scene has no depth maps (use an "
                         "RGB-D scene: TUM groundtruth.txt, ICL/Open3D trajectory.log, or "
                         "nerfstudio depth_file_path)")
    out = eval_out_dir(args, "depth")
    idx = select_eval_views(args, scene)
    device = resolve_device(args.device)
    with timer("load_model"):
        model, source = load_job_model(args, device, job="eval")
    with timer("inference"):
        pred = infer_views(model, scene, idx, args, scene.background or (1.0, 1.0, 1.0),
                      args.pose_mode == "conditioned", False)
    per_view = []
    kw = {"mode": "nearest"} if args.resize == "nearest" else {"mode": "bilinear", "align_corners": False}
    with timer("metrics"):
        for j, i in enumerate(idx):
            gt = torch.from_numpy(scene.load_depth(i))
            p = F.interpolate(pred.depth[j][None, None].float().cpu(), size=tuple(gt.shape), **kw)[0, 0]
            r = depth_metrics(p, gt, align=args.align, reduction="none")
            per_view.append({"index": i, "name": scene.names[i],
                             **{k: float(v[0]) for k, v in r.items()}})
    keys = [k for k in per_view[0] if k not in ("index", "name")]
    valid = [v for v in per_view if not math.isnan(v["abs_rel"])]
    if not valid:
        raise Da3gsError(f"--scene {args.scene}: no valid ground-truth depth in the chosen views")
    mean = {k: float(np.mean([v[k] for v in valid])) for k in keys}
    m = metrics_header(args, "depth", scene, source, device)
    m.update({"views": idx, "select": args.select, "pose_mode": args.pose_mode,
              "align": args.align, "align_formula": ALIGN_FORMULAS[args.align],
              "resize": args.resize, "per_view": per_view, "mean": mean, "n_images": len(valid)})
    write_metrics(out, m, t0, timer)
    if not args.quiet:
        print(f"da3gs eval depth: {len(valid)} views  AbsRel {mean['abs_rel']:.4f}  "
              f"delta1 {mean['delta1']:.4f} ({args.align} alignment) -> {out}")
    return m
