"""``da3gs render``: photos in; Gaussians, depth, cameras and a fly-through video out.

Everything is written into a hidden temporary folder beside ``--out`` and renamed at the end,
so an interrupted or failed run leaves nothing half-made.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from da3gs.apps.common import (Progress, Timer, add_gpus_flag, add_model_flags,
                               add_refine_strategy_flags, add_run_flags, check_number, job_infer,
                               load_job_model, refine_strategy_kwargs, resolve_device,
                               sparse_attention_pattern, versions)
from da3gs.apps.view import add_view_flags, check_view_flags
from da3gs.errors import Da3gsError
from da3gs.geometry import unproject_depth
from da3gs.apps.outputs import WriterPool, check_output_dir, write_output_dir
from da3gs.io.images import list_images, skipped_note
from da3gs.types import Prediction


def add_render_parser(sub) -> None:
    """Register ``da3gs render`` on the top-level subparsers ``sub``."""
    p = sub.add_parser(
        "render", help="photos in; Gaussians, depth, cameras and a fly-through video out",
        description="Predict depth, cameras and 3D Gaussians from a folder of photos in one "
        "forward pass, then write gaussians.ply, video.mp4, depth/, cameras.json, "
        "transforms.json, colmap/ and summary.json into --out.")
    p.add_argument("--views", help="folder of input images (JPEG/PNG/...; default with a COLMAP "
                   "--poses: the images folder beside the model)")
    p.add_argument("--poses", help="known cameras: a transforms.json, a COLMAP model folder or "
                   "a poses_bounds.npy (default: none, the model predicts the cameras). Frames "
                   "are matched to --views by file name; extra frames are ignored")
    p.add_argument("--images", help="with a COLMAP --poses whose images are not in the usual "
                   "place: the folder of its images (same as --views)")
    add_model_flags(p)
    add_run_flags(p, "<views>_da3gs")
    add_gpus_flag(p)
    p.add_argument("--max-views", type=int, default=None,
                   help="use at most this many views, evenly spaced (default: all)")
    p.add_argument("--trajectory", default="interpolate", choices=["interpolate", "orbit", "extend"],
                   help="camera path of the video (default: interpolate through the inputs)")
    p.add_argument("--frames", type=int, default=120, help="video frames (default 120)")
    p.add_argument("--fps", type=int, default=30, help="video frame rate (default 30)")
    p.add_argument("--no-video", action="store_true", help="skip the fly-through video")
    p.add_argument("--video-depth", action="store_true", help="video shows RGB | depth side by side")
    p.add_argument("--video-scale", type=float, default=1.0,
                   help="video size relative to the processed images, in (0, 4] (default 1; 0.5 "
                   "renders a quarter of the pixels, 2 renders the splats at twice the size)")
    p.add_argument("--no-colmap", action="store_true", help="skip the COLMAP model")
    p.add_argument("--colmap-format", default="binary", choices=["binary", "text", "both"],
                   help="COLMAP model files: binary (default; cameras/images/points3D.bin, fast), "
                   "text (.txt) or both")
    p.add_argument("--prune-opacity", type=float, default=0.005,
                   help="drop Gaussians with opacity below this (default 0.005)")
    p.add_argument("--prune-conf", type=float, default=0.0,
                   help="drop Gaussians below this percentile of depth confidence (0-100)")
    p.add_argument("--prune-border", type=int, default=0,
                   help="drop Gaussians from pixels within this many pixels of the image border")
    p.add_argument("--merge-scale", type=float, default=1.0,
                   help="merge redundant Gaussians of different views: those in one cell of a grid "
                   "whose cell is this many pixel footprints wide (rounded to a power of 2) are "
                   "merged into one (default 1; 2x fewer Gaussians at no PSNR cost on the measured "
                   "scenes, docs/performance.md)")
    p.add_argument("--no-merge", action="store_true",
                   help="keep every pixel's Gaussian (no cross-view merge)")
    p.add_argument("--voxel", type=float, default=0.0,
                   help="merge Gaussians of all views falling in one voxel of this size (world units)")
    p.add_argument("--splat-format", default="both", choices=["ply", "spz", "both", "splat", "sog"],
                   help="Gaussians file(s) written: gaussians.ply, gaussians.spz (Niantic SPZ, "
                   "~10x smaller), both (default), gaussians.splat (antimatter15 viewers) or "
                   "gaussians.sog (PlayCanvas SOG, SuperSplat)")
    p.add_argument("--spz-version", type=int, choices=[2, 3, 4], default=3,
                   help="SPZ format version of gaussians.spz (default 3, which the bundled viewer "
                   "reads; 4: smaller, zstd, needs pip install 'da3gs[spz4]' and a newer viewer)")
    p.add_argument("--refine-steps", type=int, default=0,
                   help="test-time refinement steps of the pruned Gaussians on the input views "
                   "(default 0: none)")
    add_refine_strategy_flags(p)
    add_view_flags(p)


def _views_folder(args) -> Path:
    """``--views`` (``--images`` is the same folder, named as for COLMAP scenes)."""
    if args.views and args.images and Path(args.views).resolve() != Path(args.images).resolve():
        raise Da3gsError("--views and --images name different folders; give one of them")
    folder = args.views or args.images
    if not folder:
        raise Da3gsError("--views: required (the folder of input images)")
    return Path(folder)


def unique_stems(images: list[Path]) -> list[str]:
    """Output names: file stems, made unique (``a.jpg``, ``a.png`` -> ``a``, ``a_2``)."""
    used: set[str] = set()
    out = []
    for p in images:
        n, k = p.stem, 1
        while n in used:
            k += 1
            n = f"{p.stem}_{k}"
        used.add(n)
        out.append(n)
    return out


MIN_SIDE = 14  # one network patch


def check_image_sizes(images: list[Path]) -> None:
    """Refuse degenerate images (a side under one patch, e.g. 1x1) before the model loads."""
    from PIL import Image

    for p in images:
        try:
            with Image.open(p) as im:
                w, h = im.size
        except Exception:
            continue  # unreadable files are reported, with their path, when they are loaded
        if min(w, h) < MIN_SIDE:
            raise Da3gsError(f"{p}: image is {w}x{h} pixels; each side needs at least {MIN_SIDE}")


def check_render_args(args) -> None:
    """Flag values, checked before any file is read or the model loaded (errors name the flag)."""
    check_number(args.process_res, "--process-res", 14, what="an integer >= 14")
    check_number(args.max_views, "--max-views", 1, what="a positive number")
    if not args.no_video:
        check_number(args.frames, "--frames", 1, what="a positive number of frames")
        check_number(args.fps, "--fps", 0, lo_open=True, what="a positive frame rate")
        check_number(getattr(args, "video_scale", 1.0), "--video-scale", 0, 4, lo_open=True,
                     what="a scale in (0, 4]")
    check_number(args.prune_opacity, "--prune-opacity", 0, 1)
    check_number(args.prune_conf, "--prune-conf", 0, 100)
    check_number(args.prune_border, "--prune-border", 0, what="a non-negative number of pixels")
    check_number(args.voxel, "--voxel", 0, what="a voxel size >= 0 (0: no merging)")
    check_number(getattr(args, "merge_scale", 1.0), "--merge-scale", 0, lo_open=True,
                 what="a positive number of pixel footprints (--no-merge turns merging off)")
    check_number(getattr(args, "refine_steps", 0), "--refine-steps", 0,
                 what="a non-negative number of steps")
    if getattr(args, "spz_version", 3) == 4 and getattr(args, "splat_format", "both") in ("spz", "both"):
        from da3gs.io.spz import check_zstd

        check_zstd("--spz-version 4")
    refine_strategy_kwargs(args)
    sparse_attention_pattern(args)


def check_exports(args) -> dict[str, str]:
    """Optional exports, checked before the model loads: ``{export: note}`` for those that will be
    written differently (no ffmpeg: the fly-through becomes ``video.gif``). Required writers that
    are missing (``plyfile`` for the .ply files) are an error here, not after inference."""
    from da3gs.io import video

    try:
        import plyfile  # noqa: F401
    except ImportError:
        raise Da3gsError("writing gaussians.ply / points.ply needs plyfile: pip install plyfile") from None
    notes = {}
    if not args.no_video and not video.ffmpeg_available():
        notes["video"] = ("ffmpeg not found (pip install imageio-ffmpeg), so the fly-through is "
                          "written as video.gif instead of video.mp4")
    return notes


def optional_export(name: str, fn, summary: dict, leftovers=()) -> None:
    """Run ``fn()``, an optional export; if it fails, the run still finishes: one warning line, the
    reason in ``summary["exports_failed"][name]`` and partial files (``leftovers``) removed.
    Interrupts (Ctrl-C, SIGTERM) are not caught."""
    import shutil

    try:
        fn()
    except Exception as e:  # an optional output must never cost the user the finished run
        why = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        summary.setdefault("exports_failed", {})[name] = why
        for p in leftovers:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink()
        print(f"da3gs render: warning: {name} not written ({why}); the other outputs are complete",
              file=sys.stderr)


def select_views(images: list[Path], max_views: int | None) -> list[Path]:
    """At most ``max_views`` images, evenly spaced, first and last included."""
    if max_views is None or max_views >= len(images):
        return images
    if max_views < 1:
        raise Da3gsError(f"--max-views: expected a positive number, got {max_views}")
    idx = np.unique(np.round(np.linspace(0, len(images) - 1, max_views)).astype(int))
    return [images[i] for i in idx]


def match_poses(poses_path: str, images: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """c2w (V, 4, 4) and K (V, 3, 3) for ``images`` from a pose file or folder, K rescaled to
    the images' actual size. Frames are matched by file name (stem). For LLFF
    ``poses_bounds.npy`` the images are those of ``--views`` (any ``images_N`` folder)."""
    from PIL import Image

    from da3gs.data import load_scene
    from da3gs.data.scene import detect_format

    fmt = detect_format(poses_path)
    opts = {"images_dir": images[0].parent} if fmt in ("llff", "colmap") else {}
    if fmt in ("nerf", "colmap"):
        opts["skip_missing"] = True  # a pose file may list more frames than --views holds
    scene = load_scene(poses_path, **opts)
    by_name = {Path(p).stem: i for i, p in enumerate(scene.image_paths)}
    missing = [p.name for p in images if p.stem not in by_name]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise Da3gsError(f"--poses {poses_path}: no camera for {', '.join(missing[:3])}{more}")
    idx = [by_name[p.stem] for p in images]
    c2w, K = scene.c2w[idx].clone(), scene.K[idx].clone()
    for j, (i, p) in enumerate(zip(idx, images)):
        with Image.open(p) as im:
            w, h = im.size
        sh, sw = scene.image_hw[i]
        K[j, 0] *= w / sw
        K[j, 1] *= h / sh
    return c2w, K


def _point_cloud(pred: Prediction, conf_percentile: float = 30.0):
    """Coloured points from depth (for models without a GS head), low-confidence dropped."""
    pts = unproject_depth(pred.depth, pred.c2w, pred.K)  # (V, H, W, 3)
    cols = pred.images.permute(0, 2, 3, 1)
    keep = torch.ones_like(pred.depth, dtype=torch.bool)
    if pred.depth_conf is not None:
        keep = pred.depth_conf >= torch.quantile(pred.depth_conf.flatten()[::7].float(),
                                                 conf_percentile / 100)
    return pts[keep].cpu(), (cols[keep].clamp(0, 1) * 255).round().byte().cpu()


def run_render(args) -> dict:
    """Run the render job for parsed CLI ``args``; returns the summary dict."""
    timer = Timer()
    t_start = time.perf_counter()
    views = _views_folder(args)
    out = Path(args.out) if args.out else views.parent / f"{views.name}_da3gs"
    check_output_dir(out, {"--views": views, "--poses": args.poses,
                           "--checkpoint": args.checkpoint, "--model": args.model}, args.overwrite)
    check_render_args(args)
    check_view_flags(args)
    progress = Progress("render", args.quiet)
    export_notes = check_exports(args)
    if not args.quiet:
        for note in export_notes.values():
            print(f"da3gs render: note: {note}", file=sys.stderr)
    images, skipped = list_images(views)
    if skipped and not args.quiet:
        print(f"da3gs render: note: {skipped_note(skipped, views)}", file=sys.stderr)
    images = select_views(images, args.max_views)
    check_image_sizes(images)
    device = resolve_device(args.device)
    c2w = K = None
    if args.poses:
        c2w, K = match_poses(args.poses, images)
    progress.stage("loading the model")
    with timer("load_model"):
        model, source = load_job_model(args, device, job="render")
    progress.stage(f"inference on {len(images)} views ({device})")
    with timer("inference"):
        pred = job_infer(model, args, images, c2w, K, process_res=args.process_res,
                         ref_view=args.ref_view, infer_gs=model.has_gs_head)
    names = unique_stems(images)
    V, H, W = pred.depth.shape
    summary: dict = {
        "views": V, "processed_size": [H, W], "input_folder": str(views),
        "skipped_files": [p.name for p in skipped], "model": str(source),
        "preset": model.preset.name, "device": str(device), "pose_conditioned": pred.pose_conditioned,
        "is_metric": pred.is_metric, "versions": versions(),
    }
    if getattr(args, "process_group", None) is not None:  # context-parallel (--gpus, torchrun)
        import torch.distributed as dist

        summary["processes"] = dist.get_world_size(args.process_group)
    if export_notes:
        summary["export_notes"] = export_notes
    progress.stage(f"writing {out}")
    with write_output_dir(out, "render") as tmp, WriterPool() as pool:
        # Files are written on the pool's threads while this thread goes on computing (Gaussian
        # merge, the video); leaving the pool waits for them, before the folder is committed.
        with timer("queue_images_depth"):
            _write_images_and_depth(tmp, pred, names, pool)
        with timer("gaussians"):
            gaussians = _write_scene(tmp, pred, args, summary, pool)
        with timer("cameras"):
            pts, cols = _write_cameras(tmp, pred, names, gaussians, pool)
        if not args.no_colmap:
            pool.submit("colmap", optional_export, "colmap",
                        lambda: _write_colmap(tmp, pred, names, pts, cols, summary, args),
                        summary, leftovers=[tmp / "colmap"])
        if not args.no_video:
            with timer("video"):
                optional_export("video", lambda: _write_video(tmp, pred, gaussians, args, summary),
                                summary, leftovers=[tmp / "video.mp4", tmp / "video.gif"])
        with timer("write_wait"):
            pool.wait()
        if "splat_files" in summary:
            summary["splat_files"] = {name: (tmp / name).stat().st_size for name in summary["splat_files"]}
        timer.times["writer_threads"] = dict(sorted(pool.times.items()))
        summary["timings_s"] = timer.times
        summary["timings_s"]["total"] = round(time.perf_counter() - t_start, 4)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    if not args.quiet:
        n = summary.get("gaussians", {}).get("final", summary.get("points", 0))
        what = "Gaussians" if "gaussians" in summary else "points"
        print(f"da3gs render: {V} views -> {n} {what} in {out} "
              f"({summary['timings_s']['total']:.1f} s)")
        if "no_splats_reason" in summary:
            print(f"da3gs render: note: {summary['no_splats_reason']}")
    if getattr(args, "view", False):
        from da3gs.apps.view import serve

        serve(out, args.view_port, open_browser=not args.no_browser, command="render")
    return summary


def _write_images_and_depth(tmp: Path, pred: Prediction, names: list[str], pool: WriterPool) -> None:
    """Queue ``images/<name>.png`` and ``depth/<name>*`` of every view on ``pool`` (one task a view;
    the arrays are moved to the host here, in one transfer each)."""
    from PIL import Image

    from da3gs.io.depth import PNG_LEVEL, save_depth

    (tmp / "images").mkdir()
    rgb = (pred.images.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().cpu().numpy()
    depth = pred.depth.float().cpu().numpy()
    conf = None if pred.depth_conf is None else pred.depth_conf.float().cpu().numpy()

    def one(i: int, n: str) -> None:
        Image.fromarray(rgb[i]).save(tmp / "images" / f"{n}.png", compress_level=PNG_LEVEL)
        save_depth(tmp / "depth", n, depth[i], None if conf is None else conf[i])

    for i, n in enumerate(names):
        pool.submit("images_depth", one, i, n)


def _write_scene(tmp: Path, pred: Prediction, args, summary: dict, pool: WriterPool):
    import shutil

    from da3gs.gaussians import prune_gaussians
    from da3gs.io.ply import write_point_cloud_ply
    from da3gs.io.splat_files import write_gaussians
    from da3gs.viewer import VIEWER_HTML

    if pred.gaussians is None:
        pts, cols = _point_cloud(pred)
        pool.submit("points_ply", write_point_cloud_ply, tmp / "points.ply", pts, cols)
        summary["points"] = int(pts.shape[0])
        summary["no_splats_reason"] = ("the model has no Gaussian head, so no splats were made; "
                                       "points.ply holds the depth point cloud instead")
        return None
    g = pred.gaussians  # pruned and merged where the network ran (the GPU, when there is one)
    merge = 0.0 if getattr(args, "no_merge", False) or g.view is None else getattr(args, "merge_scale", 1.0)
    g, report = prune_gaussians(g, min_opacity=args.prune_opacity, conf_percentile=args.prune_conf,
                                border=args.prune_border, image_hw=tuple(pred.depth.shape[1:]),
                                voxel_size=args.voxel, merge_scale=merge, c2w=pred.c2w, K=pred.K)
    g = g.to("cpu")
    if getattr(args, "refine_steps", 0):  # after pruning: fewer Gaussians to optimise
        from da3gs.train.refine import refine_gaussians

        bar, on_step = Progress("render", args.quiet).steps(int(args.refine_steps), "refine")
        with bar:
            g, rep = refine_gaussians(g.to(summary["device"]), pred.images, pred.w2c, pred.K,
                                      int(args.refine_steps), seed=args.seed, on_step=on_step,
                                      **refine_strategy_kwargs(args))
        g = g.to("cpu")
        summary["refinement"] = rep.as_dict()
    fmt = getattr(args, "splat_format", "both")
    exts = {"both": ("ply", "spz")}.get(fmt, (fmt,))
    for e in exts:
        pool.submit(f"gaussians_{e}", write_gaussians, tmp / f"gaussians.{e}", g, e,
                    spz_version=getattr(args, "spz_version", None))
    summary["gaussians"] = report.as_dict()
    summary["splat_files"] = {f"gaussians.{e}": None for e in exts}  # sizes once written
    shutil.copyfile(VIEWER_HTML, tmp / "viewer.html")  # the page `da3gs view` serves
    return g


def _write_cameras(tmp: Path, pred: Prediction, names, gaussians, pool: WriterPool):
    """cameras.json, transforms.json and points.ply; returns the points ``(N, 3)`` and colours."""
    from da3gs.io.cameras import write_cameras_json, write_transforms_json

    hw = [tuple(pred.depth.shape[1:])] * pred.num_views
    files = [f"{n}.png" for n in names]
    c2w, K = pred.c2w.cpu().double(), pred.K.cpu().double()
    write_cameras_json(tmp / "cameras.json", c2w, K, hw, files)
    if gaussians is not None:  # a coloured point cloud for 3DGS trainers (nerfstudio init)
        from da3gs.io.ply import write_point_cloud_ply
        from da3gs.render.sh import sh0_to_rgb

        step = max(1, len(gaussians) // 200_000)
        pts = gaussians.means[::step]
        cols = (sh0_to_rgb(gaussians.sh[::step, 0]).clamp(0, 1) * 255).round().byte()
        pool.submit("points_ply", write_point_cloud_ply, tmp / "points.ply", pts, cols)
    else:
        pts, cols = _point_cloud(pred)
    write_transforms_json(tmp / "transforms.json", c2w, K, hw, files, ply_file_path="points.ply",
                          image_dir="images")
    return pts, cols


def _write_colmap(tmp: Path, pred: Prediction, names, pts, cols, summary: dict, args) -> None:
    from da3gs.io.cameras import colmap_text_ok, write_colmap

    hw = [tuple(pred.depth.shape[1:])] * pred.num_views
    files = [f"{n}.png" for n in names]
    c2w, K = pred.c2w.cpu().double(), pred.K.cpu().double()
    fmt = getattr(args, "colmap_format", "binary")
    if not colmap_text_ok(files):
        fmt = "binary"  # names with spaces only fit the binary model
    summary["colmap_format"] = write_colmap(tmp / "colmap", c2w, K, hw, files, points=pts, colors=cols,
                                            fmt=fmt)
    summary["colmap_points"] = int(pts.shape[0])


def _write_video(tmp: Path, pred: Prediction, gaussians, args, summary: dict) -> None:
    from da3gs.geometry.trajectory import extend_path, interpolate_path, orbit_path, path_intrinsics
    from da3gs.io.cameras import write_cameras_json
    from da3gs.io.depth import colorize_depth
    from da3gs.io.resize import scale_intrinsics
    from da3gs.io.video import side_by_side, write_video
    from da3gs.render import render

    if gaussians is None:
        summary["video"] = "skipped: no Gaussians to render"
        return
    c2w = pred.c2w.cpu().double()
    make = {"interpolate": interpolate_path, "orbit": orbit_path, "extend": extend_path}
    center_depth = float(pred.depth.median())
    path = make[args.trajectory](c2w, args.frames, center_depth=center_depth).float()
    Ks = path_intrinsics(path.double(), pred.K.cpu().double(), c2w).float()
    H, W = pred.depth.shape[1:]
    scale = float(getattr(args, "video_scale", 1.0))
    if scale != 1.0:
        h, w = max(1, round(H * scale)), max(1, round(W * scale))
        Ks = scale_intrinsics(Ks, w / W, h / H)
        H, W = h, w
    write_cameras_json(tmp / "video_cameras.json", path.double(), Ks.double(), [(H, W)] * len(path),
                       [f"frame_{i:04d}" for i in range(len(path))])  # the viewer shows the path
    dev = torch.device(summary["device"])  # where the model ran (outputs may be offloaded)
    g = gaussians.to(dev)
    from da3gs.geometry import c2w_to_w2c

    w2c = c2w_to_w2c(path).to(dev)
    Ks = Ks.to(dev)

    progress = Progress("render", args.quiet)

    def frames():
        t1 = None
        for i in progress.bar(range(len(path)), "video", unit="frame"):
            with torch.no_grad():
                r = render(g, w2c[i], Ks[i], W, H, background=torch.ones(3, device=dev))
            if i == 0:
                t1 = time.perf_counter()  # the first frame shares the CPU with the writers
            elif i == 2 and dev.type == "cpu" and len(path) > 3:
                eta = (time.perf_counter() - t1) / 2 * (len(path) - 3)
                if eta > 60:
                    progress.note(f"the video on the CPU takes about {eta / 60:.0f} min more "
                                   f"({len(path)} frames of {W}x{H}); --video-scale 0.5, fewer "
                                   "--frames or --no-video make it shorter")
            rgb = (r.color[0].clamp(0, 1) * 255).round().byte().cpu().numpy()
            if args.video_depth:
                vis = colorize_depth(r.depth[0, ..., 0].cpu().numpy(),
                                     mask=r.alpha[0, ..., 0].cpu().numpy() > 0.5)
                rgb = side_by_side(rgb, vis)
            yield rgb

    written = write_video(tmp / "video.mp4", frames(), fps=args.fps, fallback_gif=True)
    summary["video"] = {"file": Path(written).name, "frames": len(path), "fps": args.fps,
                        "size": [W, H],
                        "trajectory": args.trajectory}
