"""``da3gs eval nvs``: the command of the novel-view synthesis protocol (:mod:`da3gs.eval.nvs`;
flags in :mod:`da3gs.apps.eval`).

``--init model`` (default) scores the network's Gaussians (optionally refined); ``--init random``
is the per-scene optimisation baseline (:func:`da3gs.eval.nvs.random_init`); no network is
loaded. This module turns the flags into :class:`~da3gs.eval.nvs.NVSOptions`, loads the model
and LPIPS, and writes and prints the metrics.
"""

from __future__ import annotations

import sys
import time

from da3gs.apps.common import Progress, Timer, load_job_model, refine_strategy_kwargs, resolve_device
from da3gs.apps.eval_common import eval_hooks, eval_out_dir, load_eval_scene, metrics_header, write_metrics
from da3gs.errors import Da3gsError
from da3gs.eval.nvs import NVSOptions, check_nvs_options, check_refine, evaluate_nvs, plan_nvs, score_views

__all__ = ["run_nvs", "score_views", "nvs_options"]


def _background(args) -> tuple[float, float, float] | None:
    """``--background R,G,B`` (None: the scene's)."""
    if args.background is None:
        return None
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


def _fmt(mean: dict, before: dict | None) -> str:
    parts = []
    for k, label, f in (("psnr", "PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"),
                        ("lpips_vgg", "LPIPS-vgg", "{:.4f}"), ("lpips_alex", "LPIPS-alex", "{:.4f}")):
        if k in mean:
            val = f.format(mean[k])
            parts.append(f"{label} {f.format(before[k])} -> {val}" if before else f"{label} {val}")
    return " | ".join(parts)


def nvs_options(args, select: str, strategy: dict, background=None) -> NVSOptions:
    """The :class:`NVSOptions` of parsed ``eval nvs`` flags (``select`` and the refinement
    ``strategy`` kwargs already resolved; ``--lpips`` is loaded by the command itself)."""
    return NVSOptions(
        targets=args.targets, max_targets=args.max_targets, context=args.context, select=select,
        context_list=args.context_list, pose_mode=args.pose_mode or "free",
        init=getattr(args, "init", "model"), init_points=getattr(args, "init_points", 100_000),
        init_extent=getattr(args, "init_extent", 3.0), align=args.align, refine_steps=args.refine_steps,
        refine_cameras=args.refine_cameras, refine_strategy=strategy["strategy"],
        refine_strategy_options=strategy["strategy_options"], lpips=(), ssim_mode=args.ssim_mode,
        background=background, seed=args.seed, process_res=args.process_res,
        ref_view=args.ref_view)


def run_nvs(args) -> dict:
    t0, timer = time.perf_counter(), Timer()
    check_refine(args.refine_steps, args.refine_cameras)
    strategy = refine_strategy_kwargs(args)
    random_init = getattr(args, "init", "model") == "random"
    check_nvs_options(nvs_options(args, "fps", strategy))
    if random_init and args.pose_mode is not None and not args.quiet:
        print(f"da3gs eval nvs: note: --init random uses the scene's context cameras; "
              f"--pose-mode {args.pose_mode} is ignored", file=sys.stderr)
    args.pose_mode = args.pose_mode or "free"
    if args.context_list is not None and args.select not in (None, "list"):
        raise Da3gsError(f"--context-list picks the context itself; drop --select {args.select}")
    select = "list" if args.context_list is not None else (args.select or "fps")
    scene = load_eval_scene(args, args.targets)
    out = eval_out_dir(args, "nvs")
    opts = nvs_options(args, select, strategy)
    plan = plan_nvs(scene, opts)
    for n in plan.notes:
        print(f"da3gs eval nvs: {n}", file=sys.stderr)
    opts = nvs_options(args, select, strategy, _background(args))
    device = resolve_device(args.device)
    lp = _lpips_models(args.lpips, device)
    model, source = None, "random-init"
    if not random_init:
        with timer("load_model"):
            model, source = load_job_model(args, device, need_gs=True, job="eval nvs")
    r = evaluate_nvs(model, scene, opts, plan, device, lp,
                     eval_hooks(args, timer, Progress("eval nvs", args.quiet)))
    m = metrics_header(args, "nvs", scene, source, device)
    m.update(r.metrics)
    write_metrics(out, m, t0, timer, r.panels)
    if not args.quiet:
        conditioned = opts.pose_mode == "conditioned"
        mode = ("random init, GT cameras" if random_init
                else "pose-free" if not conditioned else "conditioned")
        ref = f", {args.refine_steps} refine steps" if args.refine_steps else ""
        print(f"da3gs eval nvs: {_fmt(m['mean'], m.get('mean_before_refinement'))} "
              f"({len(plan.targets)} targets, {len(plan.context)} context, {mode}{ref}) -> {out}")
    return m
