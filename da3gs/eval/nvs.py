"""Novel-view synthesis protocol: PSNR, SSIM and LPIPS of held-out views.

Predict Gaussians from context views (pose-free or pose-conditioned), render the held-out
target views with their ground-truth cameras at the images' on-disk resolution, score PSNR,
SSIM and LPIPS per view, then the mean. Pose-free predictions live in the network's own frame:
a Sim(3) fitted (Umeyama, no RANSAC) on the context camera centres, predicted -> ground truth
(camera orientations for fewer than 3 or collinear centres), moves the cameras and the Gaussians
into the scene's frame, as feed-forward NVS papers do. Optional test-time refinement
(:mod:`da3gs.train.refine`) fits the cloud to the context views with their ground-truth cameras
before the targets are scored (before and after are both reported).

``init="model"`` (default) scores the network's Gaussians (optionally refined); ``init="random"``
is the per-scene optimisation baseline: randomly initialised Gaussians (:func:`random_init`,
as gsplat's ``simple_trainer`` from random init) refined by the same
:func:`~da3gs.train.refine.refine_gaussians` on the context views with their ground-truth
cameras, then scored by the same :func:`score_views`; no network is used.

Background: :attr:`NVSOptions.background`, else the scene's (Blender: white), else black (the
3DGS default for real scenes); ground-truth RGBA images are composited on the same colour.
Targets and context: :mod:`da3gs.eval.views`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from da3gs.errors import Da3gsError
from da3gs.eval import views as ev
from da3gs.eval.common import Hooks, infer_views, pose_errors

__all__ = ["NVSOptions", "NVSPlan", "NVSResult", "check_refine", "check_nvs_options", "plan_nvs",
           "resolve_background", "score_views", "random_init", "evaluate_nvs", "mean_scores",
           "RANDOM_INIT_SH_DEGREE"]

RANDOM_INIT_SH_DEGREE = 3  # 3DGS / gsplat default; higher bands start at zero


@dataclass(frozen=True)
class NVSOptions:
    """Options of the NVS protocol (:func:`plan_nvs`, :func:`evaluate_nvs`).

    Attributes:
        targets: held-out views: ``everyN`` (LLFF: index % N == 0), ``split:NAME`` or
            ``list:I,J,...`` (:func:`da3gs.eval.views.parse_targets`).
        max_targets: score at most this many targets, evenly spaced (None: all).
        context: number of context views (None: all candidates, at most
            :data:`~da3gs.eval.views.DEFAULT_MAX_CONTEXT`).
        select: context choice: ``"fps"``, ``"every-nth"`` or ``"list"`` (``context_list``).
        context_list: explicit context indices, e.g. ``"0,3,7"`` (None: chosen by ``select``).
        pose_mode: ``"free"`` (images only, Sim(3)-aligned to the scene) or ``"conditioned"``
            (the scene's context cameras condition the network); unused with ``init="random"``.
        init: ``"model"`` (the network's Gaussians) or ``"random"`` (per-scene baseline).
        init_points: ``init="random"``: number of Gaussians.
        init_extent: ``init="random"``: half-side of the cube of centres in camera extents.
        align: pose-free alignment: ``"orientations"`` (rotation from the camera orientations,
            scale and translation from the centres) or ``"centres"`` (Umeyama on the centres).
        refine_steps: test-time refinement steps on the context views (0: none).
        refine_cameras: also refine the context cameras.
        refine_strategy: densification during refinement (``da3gs.train.refine.STRATEGIES``).
        refine_strategy_options: parameters of that strategy (None: its scaled defaults).
        lpips: LPIPS nets to score with (``"vgg"``, ``"alex"``); empty: no LPIPS.
        ssim_mode: ``"gaussian"`` or ``"skimage"`` (:func:`da3gs.metrics.ssim`).
        background: R, G, B in [0, 1] (None: the scene's, else black).
        seed: random seed (random init, refinement).
        process_res: network input size (longest side).
        ref_view: reference-view strategy of the model.
    """

    targets: str = "every8"
    max_targets: int | None = None
    context: int | None = None
    select: str = "fps"
    context_list: str | None = None
    pose_mode: str = "free"
    init: str = "model"
    init_points: int = 100_000
    init_extent: float = 3.0
    align: str = "orientations"
    refine_steps: int = 0
    refine_cameras: bool = False
    refine_strategy: str = "none"
    refine_strategy_options: Mapping | None = None
    lpips: tuple[str, ...] = ("vgg", "alex")
    ssim_mode: str = "gaussian"
    background: tuple[float, float, float] | None = None
    seed: int = 0
    process_res: int = 504
    ref_view: str = "saddle_balanced"


@dataclass(frozen=True)
class NVSPlan:
    """The views of one NVS evaluation (:func:`plan_nvs`).

    Attributes:
        targets: scored target indices (after ``max_targets``).
        targets_available: number of targets before ``max_targets``.
        context: context view indices (ascending).
        overlap: whether context views are also targets (explicit ``context_list`` only).
        select: the context choice used.
        notes: advice for the user (``note: ...`` / ``warning: ...``).
    """

    targets: list[int]
    targets_available: int
    context: list[int]
    overlap: bool
    select: str
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NVSResult:
    """What :func:`evaluate_nvs` returns.

    Attributes:
        metrics: the task fields of ``metrics.json``: ``protocol`` (views, modes, background,
            initialisation ...), ``preset``, ``num_gaussians``, ``notes``, ``alignment``
            (pose-free: the Sim(3) and the context pose errors; else None), ``scale_factor``,
            ``refinement`` (:meth:`RefineReport.as_dict` or None), ``per_view`` (``index``,
            ``name``, ``psnr``, ``ssim``, ``lpips_<net>``, after refinement with
            ``before_refinement``), ``mean`` and, with refinement, ``mean_before_refinement``.
        panels: ``views/<name>.png`` -> prediction | truth | error panel, (H, 3W, 3) uint8.
    """

    metrics: dict
    panels: dict[str, np.ndarray]


def check_refine(refine_steps: int, refine_cameras: bool) -> None:
    """Refinement options, before any work."""
    if refine_steps < 0:
        raise Da3gsError(f"--refine-steps: expected a non-negative number, got {refine_steps}")
    if refine_cameras and refine_steps == 0:
        raise Da3gsError("--refine-cameras needs --refine-steps K > 0")


def check_nvs_options(o: NVSOptions) -> None:
    """Refinement and initialisation options, before any work (errors name the CLI flag)."""
    check_refine(o.refine_steps, o.refine_cameras)
    if o.init not in ("model", "random"):
        raise Da3gsError(f"--init: expected model or random, got {o.init!r}")
    if o.init != "random":
        return
    if o.refine_steps <= 0:
        raise Da3gsError("--init random needs --refine-steps K > 0 (random Gaussians are only "
                         "a starting point for per-scene optimisation)")
    if o.init_points < 4:
        raise Da3gsError(f"--init-points: expected at least 4, got {o.init_points}")
    if not (np.isfinite(o.init_extent) and o.init_extent > 0):
        raise Da3gsError(f"--init-extent: expected a positive number, got {o.init_extent}")


def plan_nvs(scene, o: NVSOptions) -> NVSPlan:
    """Targets and context of ``scene`` for the options (notes for the user included)."""
    targets = ev.parse_targets(o.targets, scene)
    cands = ev.context_candidates(scene, targets, o.targets)
    ctx, overlap, notes = ev.select_context(scene, cands, targets, o.context, o.select, o.context_list)
    n_all = len(targets)
    if o.max_targets is not None:
        if o.max_targets < 1:
            raise Da3gsError(f"--max-targets: expected a positive number, got {o.max_targets}")
        if o.max_targets < n_all:
            targets = [targets[i] for i in np.round(np.linspace(0, n_all - 1, o.max_targets)).astype(int)]
            notes.append(f"note: scoring {len(targets)} of {n_all} targets (--max-targets)")
    if scene.distortion is not None:
        notes.append("note: the scene's lens distortion is ignored (pinhole rendering)")
    return NVSPlan(targets, n_all, ctx, overlap, o.select, notes)


def resolve_background(background, scene) -> tuple[float, float, float]:
    """``background``, else the scene's, else black."""
    if background is None:
        return tuple(scene.background) if scene.background is not None else (0.0, 0.0, 0.0)
    return tuple(float(v) for v in background)


def score_views(g, scene, targets, bg, ssim_mode: str, lpips_models: dict, keep: bool = False,
                progress=None):
    """Render each target with its scene camera at the stored size and score it (a progress bar
    on ``progress``, e.g. :class:`Hooks` or ``da3gs.apps.common.Progress``, when given).

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


def mean_scores(rows: list[dict]) -> dict:
    """Mean of every float score of the per-view rows."""
    keys = [k for k, v in rows[0].items() if k not in ("index", "name") and isinstance(v, float)]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def _refine(g, scene, ctx, bg, o: NVSOptions, hooks: Hooks):
    from da3gs.geometry import c2w_to_w2c
    from da3gs.train.refine import refine_gaussians

    sizes = {scene.image_hw[i] for i in ctx}
    if len(sizes) != 1:
        raise Da3gsError(f"--refine-steps: context views have different sizes {sorted(sizes)}; "
                         "refinement needs one image size")
    imgs = torch.from_numpy(np.stack(scene.subset(ctx).load_images(bg))).permute(0, 3, 1, 2)
    w2c = c2w_to_w2c(scene.c2w[ctx].float())
    bar, on_step = hooks.steps(int(o.refine_steps), "refine")
    opts = dict(o.refine_strategy_options) if o.refine_strategy_options is not None else None
    with hooks.stage("refine"), bar:
        return refine_gaussians(g, imgs, w2c, scene.K[ctx].float(), int(o.refine_steps),
                                refine_cameras=o.refine_cameras, background=bg, seed=o.seed,
                                on_step=on_step, strategy=o.refine_strategy, strategy_options=opts)


def random_init(scene, ctx, o: NVSOptions, device):
    """Randomly initialised Gaussians for the per-scene baseline: ``init_points`` centres in a
    cube around the context cameras' mean, half-side ``init_extent`` x their extent (3DGS's
    ``cameras_extent``, :func:`~da3gs.train.refine.scene_extent`), as gsplat's ``simple_trainer``
    with ``init_type="random"`` (:func:`da3gs.gaussians.random_gaussians`).

    Returns (Gaussians on ``device``, protocol dict of the initialisation)."""
    from da3gs.gaussians import random_gaussians
    from da3gs.geometry import c2w_to_w2c
    from da3gs.train.refine import scene_extent

    c2w = scene.c2w[ctx].double()
    centres = c2w[:, :3, 3]
    if len(ctx) < 2 or float((centres - centres.mean(0)).norm(dim=-1).max()) <= 1e-9:
        raise Da3gsError("--init random: needs at least 2 context views at distinct positions "
                         "(the cube of initial Gaussians is sized by the cameras' spread)")
    ext = scene_extent(c2w_to_w2c(c2w), centres)
    centre, half = centres.mean(0), float(o.init_extent) * ext
    g = random_gaussians(int(o.init_points), centre, half, sh_degree=RANDOM_INIT_SH_DEGREE,
                         seed=o.seed, device=device)
    info = {"init": "random", "init_points": int(o.init_points), "seed": int(o.seed),
            "init_extent": float(o.init_extent), "camera_extent": ext,
            "box_centre": [float(v) for v in centre], "box_half_size": half,
            "sh_degree": RANDOM_INIT_SH_DEGREE, "opacity": 0.1, "rotations": "identity",
            "scales": "sqrt(mean squared distance to the 3 nearest centres)",
            "colours": "uniform [0, 1]", "cameras": "ground truth (--pose-mode ignored)",
            "reference": "gsplat examples/simple_trainer.py init_type=random; 3DGS random init"}
    return g, info


def evaluate_nvs(model, scene, options: NVSOptions = NVSOptions(), plan: NVSPlan | None = None,
                 device=None, lpips_models: dict | None = None, hooks: Hooks = Hooks()) -> NVSResult:
    """Score novel views of ``scene`` (module docstring).

    Args:
        model: a :class:`~da3gs.models.DA3Model` with a GS head; None with ``init="random"``.
        scene: the :class:`~da3gs.data.Scene`.
        options: :class:`NVSOptions`.
        plan: the views (default: :func:`plan_nvs` of the options).
        device: where random Gaussians and LPIPS live (default: the model's, else CPU).
        lpips_models: ``{net: LPIPS}`` already loaded (default: loaded for ``options.lpips``).
        hooks: timing, progress and inference hooks of the caller.
    """
    from da3gs.geometry import GeometryError, align_cameras, umeyama
    from da3gs.geometry.gaussians import transform_gaussians

    check_nvs_options(options)
    plan = plan if plan is not None else plan_nvs(scene, options)
    random = options.init == "random"
    if device is None:
        device = next(model.parameters()).device if model is not None else torch.device("cpu")
    if lpips_models is None:
        from da3gs.metrics import lpips_models as load_lpips

        lpips_models = load_lpips(list(options.lpips), device) if options.lpips else {}
    lp = lpips_models
    bg = resolve_background(options.background, scene)
    ctx, targets = plan.context, plan.targets
    conditioned = options.pose_mode == "conditioned"
    alignment, pred, init_info = None, None, {"init": "model"}
    if random:
        with hooks.stage("random_init"):
            g, init_info = random_init(scene, ctx, options, device)
    else:
        if model is None:
            raise Da3gsError("eval nvs: init='model' needs a model")
        with hooks.stage("inference"):
            pred = infer_views(model, scene, ctx, bg, conditioned, True, options.process_res,
                               options.ref_view, hooks)
        g = pred.gaussians
    if not conditioned and not random:
        with hooks.stage("align"):
            pc, gc = pred.c2w.double().cpu(), scene.c2w[ctx]
            if options.align == "orientations":
                method = "sim3_orientations_then_centres"
            else:
                try:
                    umeyama(pc[:, :3, 3], gc[:, :3, 3])
                    method = "umeyama_sim3_camera_centres"
                except GeometryError:
                    method = "orientation_fallback"
            sim, aligned = align_cameras(pc, gc, orientation_fallback=True, rotation=options.align)
            g = transform_gaussians(g, sim)
            alignment = {"method": method, "scale": float(sim.s),
                         "rotation": sim.R.tolist(), "translation": sim.t.tolist(),
                         "context_pose_errors": pose_errors(aligned, gc)}
    progress = hooks if hooks.progress is not None else None
    keep = options.refine_steps == 0
    with hooks.stage("render_score"):
        rows, imgs = score_views(g, scene, targets, bg, options.ssim_mode, lp, keep=keep,
                                 progress=progress)
    before, refinement = None, None
    if options.refine_steps > 0:
        g, rep = _refine(g, scene, ctx, bg, options, hooks)
        refinement = rep.as_dict()
        before = rows
        with hooks.stage("render_score_refined"):
            rows, imgs = score_views(g, scene, targets, bg, options.ssim_mode, lp, keep=True,
                                     progress=progress)
        for r, b in zip(rows, before):
            r["before_refinement"] = {k: v for k, v in b.items() if k not in ("index", "name")}
    used: set[str] = set()
    panels = {f"views/{ev.view_file_name(scene.names[i], used)}.png": ev.comparison_panel(p, t)
              for i, (p, t) in zip(targets, imgs)}
    m = {"protocol": {
        "targets": options.targets, "target_indices": targets,
        "targets_available": plan.targets_available,
        "target_names": [scene.names[i] for i in targets], "context_select": plan.select,
        "context_indices": ctx, "context_names": [scene.names[i] for i in ctx],
        "overlap": plan.overlap, "pose_mode": "gt" if random else options.pose_mode,
        "background": list(bg), "ssim_mode": options.ssim_mode, "lpips_nets": list(lp),
        "render_size": "stored image size",
        "alignment": ("none (random init, ground-truth cameras)" if random
                      else f"Sim(3) of the context cameras ({options.align})" if not conditioned
                      else "none (conditioned)"),
        **init_info}}
    m.update({"preset": model.preset.name if model is not None and not random else None,
              "num_gaussians": len(g), "notes": plan.notes, "alignment": alignment,
              "scale_factor": pred.scale_factor if pred is not None else None,
              "refinement": refinement, "per_view": rows, "mean": mean_scores(rows)})
    if before is not None:
        m["mean_before_refinement"] = mean_scores(before)
    return NVSResult(m, panels)
