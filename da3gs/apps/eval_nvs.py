"""``da3gs eval nvs``: novel-view synthesis protocol (see :mod:`da3gs.apps.eval`).

``--init model`` (default) scores the network's Gaussians (optionally refined); ``--init random``
is the per-scene optimisation baseline: randomly initialised Gaussians (:func:`_random_init`)
refined by the same :func:`~da3gs.train.refine.refine_gaussians` on the context views with their
ground-truth cameras, then scored by the same :func:`score_views`; no network is loaded.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from da3gs.apps import eval_views as ev
from da3gs.apps.common import Progress, Timer, load_job_model, refine_strategy_kwargs, resolve_device
from da3gs.apps.eval_common import (eval_out_dir, infer_views, load_eval_scene,
                                    metrics_header, pose_errors, write_metrics)
from da3gs.errors import Da3gsError

__all__ = ["run_nvs", "score_views"]


def _background(args, scene) -> tuple[float, float, float]:
    if args.background is None:
        return tuple(scene.background) if scene.background is not None else (0.0, 0.0, 0.0)
    try:
        bg = tuple(float(v) for v in str(args.background).split(","))
    except ValueError:
        bg = ()
    if len(bg) != 3 or not all(0 <= v <= 1 for v in bg):
        raise Da3gsError(f"--background: expected R,G,B in [0, 1], got {args.background!r}")
    return bg


def _lpips_models(spec: str, device) -> dict:
    """``--lpips`` -> ``{net: LPIPS}`` (:func:`da3gs.metrics.lpips_models`); errors name the flag."""
    from da3gs.metrics import LPIPSWeightsError, lpips_models, parse_lpips_nets
    from da3gs.metrics.image import MetricsError

    try:
        nets = parse_lpips_nets(spec)
    except MetricsError as e:
        raise Da3gsError(f"--lpips: {e}") from None
    try:
        return lpips_models(nets, device)
    except LPIPSWeightsError as e:
        raise Da3gsError(f"{e}; or pass --lpips none") from None


def score_views(g, scene, targets, bg, ssim_mode: str, lpips_models: dict, keep: bool = False,
                progress: Progress | None = None):
    """Render each target with its scene camera at the stored size and score it (a progress bar
    on ``progress`` when given).

    Returns (per-view metric dicts, list of (prediction, truth) float arrays when ``keep``)."""
    from da3gs.geometry import c2w_to_w2c
    from da3gs.io.images import read_image
    from da3gs.metrics import psnr, ssim
    from da3gs.render import render

    dev = g.means.device
    bgt = torch.tensor(bg, dtype=torch.float32, device=dev)
    rows, imgs = [], []
    for i in (progress.bar(targets, "scoring", unit="view") if progress else targets):
        H, W = scene.image_hw[i]
        gt_np = read_image(scene.image_paths[i], background=bg)
        if gt_np.shape[:2] != (H, W):
            raise Da3gsError(f"{scene.image_paths[i]}: image is {gt_np.shape[1]}x{gt_np.shape[0]} "
                             f"after EXIF rotation, the scene's cameras expect {W}x{H}")
        w2c = c2w_to_w2c(scene.c2w[i].float()).to(dev)
        with torch.no_grad():
            out = render(g, w2c, scene.K[i].float().to(dev), W, H, background=bgt)
        p = out.color[0].permute(2, 0, 1).clamp(0, 1)[None]
        t = torch.from_numpy(gt_np).permute(2, 0, 1)[None].to(dev, torch.float32)
        row = {"index": int(i), "name": scene.names[i], "psnr": float(psnr(p, t)[0]),
               "ssim": float(ssim(p, t, mode=ssim_mode)[0])}
        with torch.no_grad():
            for net, model in lpips_models.items():
                row[f"lpips_{net}"] = float(model(p, t)[0])
        rows.append(row)
        if keep:
            imgs.append((p[0].permute(1, 2, 0).cpu().numpy(), gt_np))
    return rows, imgs


def _mean(rows: list[dict]) -> dict:
    keys = [k for k, v in rows[0].items() if k not in ("index", "name") and isinstance(v, float)]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def _fmt(mean: dict, before: dict | None) -> str:
    parts = []
    for k, label, f in (("psnr", "PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"),
                        ("lpips_vgg", "LPIPS-vgg", "{:.4f}"), ("lpips_alex", "LPIPS-alex", "{:.4f}")):
        if k in mean:
            val = f.format(mean[k])
            parts.append(f"{label} {f.format(before[k])} -> {val}" if before else f"{label} {val}")
    return " | ".join(parts)


def _refine(g, scene, ctx, bg, args, timer):
    from da3gs.geometry import c2w_to_w2c
    from da3gs.train.refine import refine_gaussians

    sizes = {scene.image_hw[i] for i in ctx}
    if len(sizes) != 1:
        raise Da3gsError(f"--refine-steps: context views have different sizes {sorted(sizes)}; "
                         "refinement needs one image size")
    imgs = torch.from_numpy(np.stack(scene.subset(ctx).load_images(bg))).permute(0, 3, 1, 2)
    w2c = c2w_to_w2c(scene.c2w[ctx].float())
    bar, on_step = Progress("eval nvs", args.quiet).steps(int(args.refine_steps), "refine")
    with timer("refine"), bar:
        return refine_gaussians(g, imgs, w2c, scene.K[ctx].float(), int(args.refine_steps),
                                refine_cameras=args.refine_cameras, background=bg, seed=args.seed,
                                on_step=on_step, **refine_strategy_kwargs(args))


RANDOM_INIT_SH_DEGREE = 3  # 3DGS / gsplat default; higher bands start at zero


def _check_init(args) -> None:
    """``--init`` and its flags, before any work."""
    init = getattr(args, "init", "model")
    if init not in ("model", "random"):
        raise Da3gsError(f"--init: expected model or random, got {init!r}")
    if init != "random":
        return
    if args.refine_steps <= 0:
        raise Da3gsError("--init random needs --refine-steps K > 0 (random Gaussians are only "
                         "a starting point for per-scene optimisation)")
    if args.init_points < 4:
        raise Da3gsError(f"--init-points: expected at least 4, got {args.init_points}")
    if not (np.isfinite(args.init_extent) and args.init_extent > 0):
        raise Da3gsError(f"--init-extent: expected a positive number, got {args.init_extent}")


def _random_init(scene, ctx, args, device):
    """Randomly initialised Gaussians for the per-scene baseline: ``--init-points`` centres in a
    cube around the context cameras' mean, half-side ``--init-extent`` x their extent (3DGS's
    ``cameras_extent``, :func:`~da3gs.train.refine.scene_extent`), as gsplat's ``simple_trainer``
    with ``init_type="random"`` (:func:`da3gs.gaussians.random_gaussians`).

    Returns (Gaussians on ``device``, protocol dict of the initialisation)."""
    from da3gs.geometry import c2w_to_w2c
    from da3gs.gaussians import random_gaussians
    from da3gs.train.refine import scene_extent

    c2w = scene.c2w[ctx].double()
    centres = c2w[:, :3, 3]
    if len(ctx) < 2 or float((centres - centres.mean(0)).norm(dim=-1).max()) <= 1e-9:
        raise Da3gsError("--init random: needs at least 2 context views at distinct positions "
                         "(the cube of initial Gaussians is sized by the cameras' spread)")
    ext = scene_extent(c2w_to_w2c(c2w), centres)
    centre, half = centres.mean(0), float(args.init_extent) * ext
    g = random_gaussians(int(args.init_points), centre, half, sh_degree=RANDOM_INIT_SH_DEGREE,
                         seed=args.seed, device=device)
    info = {"init": "random", "init_points": int(args.init_points), "seed": int(args.seed),
            "init_extent": float(args.init_extent), "camera_extent": ext,
            "box_centre": [float(v) for v in centre], "box_half_size": half,
            "sh_degree": RANDOM_INIT_SH_DEGREE, "opacity": 0.1, "rotations": "identity",
            "scales": "sqrt(mean squared distance to the 3 nearest centres)",
            "colours": "uniform [0, 1]", "cameras": "ground truth (--pose-mode ignored)",
            "reference": "gsplat examples/simple_trainer.py init_type=random; 3DGS random init"}
    return g, info


def run_nvs(args) -> dict:
    from da3gs.geometry import GeometryError, align_cameras, umeyama
    from da3gs.geometry.gaussians import transform_gaussians

    t0, timer = time.perf_counter(), Timer()
    if args.refine_steps < 0:
        raise Da3gsError(f"--refine-steps: expected a non-negative number, got {args.refine_steps}")
    if args.refine_cameras and args.refine_steps == 0:
        raise Da3gsError("--refine-cameras needs --refine-steps K > 0")
    refine_strategy_kwargs(args)
    _check_init(args)
    random_init = getattr(args, "init", "model") == "random"
    if random_init and args.pose_mode is not None and not args.quiet:
        print(f"da3gs eval nvs: note: --init random uses the scene's context cameras; "
              f"--pose-mode {args.pose_mode} is ignored", file=sys.stderr)
    args.pose_mode = args.pose_mode or "free"
    if args.context_list is not None and args.select not in (None, "list"):
        raise Da3gsError(f"--context-list picks the context itself; drop --select {args.select}")
    select = "list" if args.context_list is not None else (args.select or "fps")
    scene = load_eval_scene(args, args.targets)
    out = eval_out_dir(args, "nvs")
    targets = ev.parse_targets(args.targets, scene)
    cands = ev.context_candidates(scene, targets, args.targets)
    ctx, overlap, notes = ev.select_context(scene, cands, targets, args.context, select,
                                            args.context_list)
    n_all = len(targets)
    if args.max_targets is not None:
        if args.max_targets < 1:
            raise Da3gsError(f"--max-targets: expected a positive number, got {args.max_targets}")
        if args.max_targets < n_all:
            targets = [targets[i] for i in np.round(np.linspace(0, n_all - 1, args.max_targets)).astype(int)]
            notes.append(f"note: scoring {len(targets)} of {n_all} targets (--max-targets)")
    if scene.distortion is not None:
        notes.append("note: the scene's lens distortion is ignored (pinhole rendering)")
    for n in notes:
        print(f"da3gs eval nvs: {n}", file=sys.stderr)
    bg = _background(args, scene)
    device = resolve_device(args.device)
    lp = _lpips_models(args.lpips, device)
    conditioned = args.pose_mode == "conditioned"
    alignment, pred, model, init_info = None, None, None, {"init": "model"}
    if random_init:
        source = "random-init"
        with timer("random_init"):
            g, init_info = _random_init(scene, ctx, args, device)
    else:
        with timer("load_model"):
            model, source = load_job_model(args, device, need_gs=True, job="eval nvs")
        with timer("inference"):
            pred = infer_views(model, scene, ctx, args, bg, conditioned, True)
        g = pred.gaussians
    if not conditioned and not random_init:
        with timer("align"):
            pc, gc = pred.c2w.double().cpu(), scene.c2w[ctx]
            if args.align == "orientations":
                method = "sim3_orientations_then_centres"
            else:
                try:
                    umeyama(pc[:, :3, 3], gc[:, :3, 3])
                    method = "umeyama_sim3_camera_centres"
                except GeometryError:
                    method = "orientation_fallback"
            sim, aligned = align_cameras(pc, gc, orientation_fallback=True, rotation=args.align)
            g = transform_gaussians(g, sim)
            alignment = {"method": method, "scale": float(sim.s),
                         "rotation": sim.R.tolist(), "translation": sim.t.tolist(),
                         "context_pose_errors": pose_errors(aligned, gc)}
    keep = args.refine_steps == 0
    with timer("render_score"):
        rows, imgs = score_views(g, scene, targets, bg, args.ssim_mode, lp, keep=keep,
                                 progress=Progress("eval nvs", args.quiet))
    before, refinement = None, None
    if args.refine_steps > 0:
        g, rep = _refine(g, scene, ctx, bg, args, timer)
        refinement = rep.as_dict()
        before = rows
        with timer("render_score_refined"):
            rows, imgs = score_views(g, scene, targets, bg, args.ssim_mode, lp, keep=True,
                                     progress=Progress("eval nvs", args.quiet))
        for r, b in zip(rows, before):
            r["before_refinement"] = {k: v for k, v in b.items() if k not in ("index", "name")}
    used: set[str] = set()
    files = {f"views/{ev.view_file_name(scene.names[i], used)}.png": ev.comparison_panel(p, t)
             for i, (p, t) in zip(targets, imgs)}
    m = metrics_header(args, "nvs", scene, source, device)
    m["protocol"] = {
        "targets": args.targets, "target_indices": targets, "targets_available": n_all,
        "target_names": [scene.names[i] for i in targets], "context_select": select,
        "context_indices": ctx, "context_names": [scene.names[i] for i in ctx],
        "overlap": overlap, "pose_mode": "gt" if random_init else args.pose_mode,
        "background": list(bg), "ssim_mode": args.ssim_mode, "lpips_nets": list(lp),
        "render_size": "stored image size",
        "alignment": ("none (random init, ground-truth cameras)" if random_init
                      else f"Sim(3) of the context cameras ({args.align})" if not conditioned
                      else "none (conditioned)"),
        **init_info}
    m.update({"preset": model.preset.name if model is not None else None,
              "num_gaussians": len(g), "notes": notes, "alignment": alignment,
              "scale_factor": pred.scale_factor if pred is not None else None,
              "refinement": refinement, "per_view": rows, "mean": _mean(rows)})
    if before is not None:
        m["mean_before_refinement"] = _mean(before)
    write_metrics(out, m, t0, timer, files)
    if not args.quiet:
        mode = ("random init, GT cameras" if random_init
                else "pose-free" if not conditioned else "conditioned")
        ref = f", {args.refine_steps} refine steps" if args.refine_steps else ""
        print(f"da3gs eval nvs: {_fmt(m['mean'], m.get('mean_before_refinement'))} "
              f"({len(targets)} targets, {len(ctx)} context, {mode}{ref}) -> {out}")
    return m
