"""``da3gs render``: photos in; Gaussians, depth, cameras and a fly-through video out.

Everything is written into a hidden temporary folder beside ``--out`` and renamed at the end,
so an interrupted or failed run leaves nothing half-made.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from da3gs import __version__
from da3gs.errors import Da3gsError
from da3gs.geometry import unproject_depth
from da3gs.apps.outputs import check_output_dir, write_output_dir
from da3gs.io.images import list_images
from da3gs.types import Prediction


class _Timer:
    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                timer.times[name] = round(time.perf_counter() - self.t, 4)

        return _Ctx()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise Da3gsError(f"--device: unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise Da3gsError(f"--device {name}: CUDA is not available on this machine")
    return dev


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

    opts = {"images_dir": images[0].parent} if detect_format(poses_path) == "llff" else {}
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


def _versions() -> dict[str, str]:
    v = {"da3gs": __version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import gsplat

        v["gsplat"] = gsplat.__version__
    except Exception:
        pass
    return v


def run_render(args) -> dict:
    """Run the render job for parsed CLI ``args``; returns the summary dict."""
    from da3gs import load_model
    from da3gs.cli import DEFAULT_MODEL

    timer = _Timer()
    t_start = time.perf_counter()
    views = Path(args.views)
    out = Path(args.out) if args.out else views.parent / f"{views.name}_da3gs"
    check_output_dir(out, {"--views": views, "--poses": args.poses,
                           "--checkpoint": args.checkpoint, "--model": args.model}, args.overwrite)
    images, skipped = list_images(views)
    images = select_views(images, args.max_views)
    device = resolve_device(args.device)
    c2w = K = None
    if args.poses:
        c2w, K = match_poses(args.poses, images)
    source = args.checkpoint or args.model or DEFAULT_MODEL
    torch.manual_seed(args.seed)
    with timer("load_model"):
        model = load_model(source, device=device)
    if not model.has_cameras:
        raise Da3gsError(f"model {source}: preset {model.preset.name} predicts depth only (no "
                         "cameras); use an any-view model such as depth-anything/DA3-GIANT")
    with timer("inference"):
        pred = model.infer(images, c2w, K, process_res=args.process_res, ref_view=args.ref_view,
                           infer_gs=model.has_gs_head)
    names = [p.stem for p in images]
    V, H, W = pred.depth.shape
    summary: dict = {
        "views": V, "processed_size": [H, W], "input_folder": str(views),
        "skipped_files": [p.name for p in skipped], "model": str(source),
        "preset": model.preset.name, "device": str(device), "pose_conditioned": pred.pose_conditioned,
        "is_metric": pred.is_metric, "versions": _versions(),
    }
    with write_output_dir(out, "render") as tmp:
        with timer("write_images_depth"):
            _write_images_and_depth(tmp, pred, names)
        with timer("write_gaussians"):
            gaussians = _write_scene(tmp, pred, args, summary)
        with timer("write_cameras"):
            _write_cameras(tmp, pred, names, gaussians, summary, not args.no_colmap)
        if not args.no_video:
            with timer("video"):
                _write_video(tmp, pred, gaussians, args, summary)
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
    return summary


def _write_images_and_depth(tmp: Path, pred: Prediction, names: list[str]) -> None:
    from PIL import Image

    from da3gs.io.depth import save_depth

    (tmp / "images").mkdir()
    for i, n in enumerate(names):
        arr = (pred.images[i].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy()
        Image.fromarray(arr).save(tmp / "images" / f"{n}.png")
        conf = None if pred.depth_conf is None else pred.depth_conf[i].cpu().numpy()
        save_depth(tmp / "depth", n, pred.depth[i].cpu().numpy(), conf)


def _write_scene(tmp: Path, pred: Prediction, args, summary: dict):
    from da3gs.io.ply import write_ply, write_point_cloud_ply
    from da3gs.io.prune import prune_gaussians

    if pred.gaussians is None:
        pts, cols = _point_cloud(pred)
        write_point_cloud_ply(tmp / "points.ply", pts, cols)
        summary["points"] = int(pts.shape[0])
        summary["no_splats_reason"] = ("the model has no Gaussian head, so no splats were made; "
                                       "points.ply holds the depth point cloud instead")
        return None
    g, report = prune_gaussians(pred.gaussians.to("cpu"), min_opacity=args.prune_opacity,
                                conf_percentile=args.prune_conf, border=args.prune_border,
                                image_hw=tuple(pred.depth.shape[1:]), voxel_size=args.voxel)
    if getattr(args, "refine_steps", 0):  # after pruning: fewer Gaussians to optimise
        from da3gs.train.refine import refine_gaussians

        g, rep = refine_gaussians(g.to(pred.depth.device), pred.images, pred.w2c, pred.K,
                                  int(args.refine_steps), seed=args.seed,
                                  log_every=0 if args.quiet else max(1, args.refine_steps // 10))
        g = g.to("cpu")
        summary["refinement"] = rep.as_dict()
    write_ply(tmp / "gaussians.ply", g)
    summary["gaussians"] = report.as_dict()
    return g


def _write_cameras(tmp: Path, pred: Prediction, names, gaussians, summary, colmap: bool) -> None:
    from da3gs.io.cameras import write_cameras_json, write_colmap_text, write_transforms_json

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
        write_point_cloud_ply(tmp / "points.ply", pts, cols)
    else:
        pts, cols = _point_cloud(pred)
    write_transforms_json(tmp / "transforms.json", c2w, K, hw, files, ply_file_path="points.ply",
                          image_dir="images")
    if colmap:
        write_colmap_text(tmp / "colmap", c2w, K, hw, files, points=pts, colors=cols)
        summary["colmap_points"] = int(pts.shape[0])


def _write_video(tmp: Path, pred: Prediction, gaussians, args, summary: dict) -> None:
    from tqdm import tqdm

    from da3gs.geometry.trajectory import extend_path, interpolate_path, orbit_path, path_intrinsics
    from da3gs.io.depth import colorize_depth
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
    dev = pred.depth.device
    g = gaussians.to(dev)
    from da3gs.geometry import c2w_to_w2c

    w2c = c2w_to_w2c(path).to(dev)
    Ks = Ks.to(dev)

    def frames():
        for i in tqdm(range(len(path)), desc="video", unit="frame", disable=args.quiet):
            with torch.no_grad():
                r = render(g, w2c[i], Ks[i], W, H, background=torch.ones(3, device=dev))
            rgb = (r.color[0].clamp(0, 1) * 255).round().byte().cpu().numpy()
            if args.video_depth:
                vis = colorize_depth(r.depth[0, ..., 0].cpu().numpy(),
                                     mask=r.alpha[0, ..., 0].cpu().numpy() > 0.5)
                rgb = side_by_side(rgb, vis)
            yield rgb

    written = write_video(tmp / "video.mp4", frames(), fps=args.fps)
    summary["video"] = {"file": Path(written).name, "frames": len(path), "fps": args.fps,
                        "trajectory": args.trajectory}
