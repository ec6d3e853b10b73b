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

The protocols themselves are :mod:`da3gs.eval` (model, scene and options in, metrics out); this
module and :mod:`da3gs.apps.eval_nvs` / :mod:`da3gs.apps.eval_recon` turn the flags into their
options and add the output folder and the printing.

Every task writes ``metrics.json`` into ``--out`` atomically (hidden temporary folder renamed
at the end); an existing folder is only replaced with ``--overwrite``.
"""

from __future__ import annotations

import sys
import time

from da3gs.apps.common import Timer, add_refine_strategy_flags, load_job_model, resolve_device
from da3gs.apps.eval_common import (add_eval_flags, check_eval_args, eval_hooks, eval_out_dir,
                                    load_eval_scene, metrics_header, scene_errors, write_metrics)
from da3gs.eval import views as ev
from da3gs.eval.depth import DepthOptions, check_depth_scene, evaluate_depth
from da3gs.eval.pose import PoseOptions, check_pose_views, evaluate_pose
from da3gs.metrics.depth import ALIGN_MODES

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
    t0, timer = time.perf_counter(), Timer()
    scene = load_eval_scene(args)
    out = eval_out_dir(args, "pose")
    idx = select_eval_views(args, scene)
    check_pose_views(idx)
    device = resolve_device(args.device)
    with timer("load_model"):
        model, source = load_job_model(args, device, job="eval")
    opts = PoseOptions(process_res=args.process_res, ref_view=args.ref_view,
                       auc_mode=getattr(args, "auc_mode", "bench"), select=args.select)
    m = metrics_header(args, "pose", scene, source, device)
    m.update(evaluate_pose(model, scene, idx, opts, eval_hooks(args, timer)))
    write_metrics(out, m, t0, timer)
    if not args.quiet:
        a = m["auc"]
        print(f"da3gs eval pose: {len(idx)} views  AUC@3 {a['auc@3']:.3f}  AUC@5 {a['auc@5']:.3f}  "
              f"AUC@15 {a['auc@15']:.3f}  AUC@30 {a['auc@30']:.3f}  ATE {m['ate']:.4g} -> {out}")
    return m


def run_depth(args) -> dict:
    t0, timer = time.perf_counter(), Timer()
    scene = load_eval_scene(args)
    with scene_errors(args):
        check_depth_scene(scene)
    out = eval_out_dir(args, "depth")
    idx = select_eval_views(args, scene)
    device = resolve_device(args.device)
    with timer("load_model"):
        model, source = load_job_model(args, device, job="eval")
    opts = DepthOptions(process_res=args.process_res, ref_view=args.ref_view,
                        pose_mode=args.pose_mode, align=args.align, resize=args.resize,
                        select=args.select)
    with scene_errors(args):
        r = evaluate_depth(model, scene, idx, opts, eval_hooks(args, timer))
    m = metrics_header(args, "depth", scene, source, device)
    m.update(r)
    write_metrics(out, m, t0, timer)
    if not args.quiet:
        mean = m["mean"]
        print(f"da3gs eval depth: {m['n_images']} views  AbsRel {mean['abs_rel']:.4f}  "
              f"delta1 {mean['delta1']:.4f} ({args.align} alignment) -> {out}")
    return m
