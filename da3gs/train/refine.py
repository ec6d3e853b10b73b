"""Test-time refinement of feed-forward Gaussians on their context views.

:func:`refine_gaussians` runs a short 3DGS-style optimisation of a predicted cloud against the
views it was predicted from: Adam on means, log-scales, quaternions (normalised in the forward
pass), logit opacities and SH (DC and higher bands with separate learning rates), loss
``(1 - w) * L1 + w * (1 - SSIM)`` (w = ``ssim_weight``, SSIM in the Gaussian-window
convention of :func:`da3gs.metrics.ssim`), one context view per step drawn by a seeded
generator (deterministic for a given seed, device and backend).

Learning rates follow the 3DGS defaults: means ``1.6e-4 * extent`` (``extent`` = 1.1 times the
largest distance of a camera centre from their mean, as 3DGS's ``cameras_extent``; with a
single camera the median distance of the Gaussians from it), scales 5e-3 (on log-scales),
quaternions 1e-3, opacity 5e-2 (on logits), SH DC 2.5e-3 and higher bands 2.5e-3 / 20.
3DGS decays the position rate exponentially over 30k steps; refinement runs are short
(hundreds of steps), so rates are constant.

Densification (``strategy``): ``"none"`` (default) keeps the cloud's size and only adjusts it,
as before; ``"default"`` and ``"mcmc"`` run gsplat's ``DefaultStrategy`` (3DGS clone / split /
prune, optional opacity reset) and ``MCMCStrategy`` (relocation of dead Gaussians, growth,
position noise) on CUDA and on the CPU (gsplat's strategy code is torch; the torch rasteriser
provides the ``info`` it reads), with the schedule scaled to the run length and never-contributing
Gaussians pruned (:mod:`da3gs.train.densify`: which gsplat code runs, what differs and why, and
:func:`~da3gs.train.densify.strategy_defaults` for the scaling rule). Parameters live in a
``torch.nn.ParameterDict`` with one Adam per parameter (gsplat's strategy contract: the
strategies replace parameters and their Adam moments when the cloud grows or shrinks); with
``"none"`` this is numerically the same optimisation as one Adam over the parameter groups. The
strategies' random draws (split offsets, MCMC sampling and noise) use torch's global generator,
seeded from ``seed`` inside a forked RNG state (the caller's state is left as it was).

Optional camera refinement (``refine_cameras=True``): each context view but view 0 gets an
se(3) correction (axis-angle ``omega``, translation ``tau``) applied on the camera side,
``w2c_v <- [exp(omega_v) | tau_v] @ w2c_v``, learnt with small rates. View 0 stays fixed,
which removes the gauge freedom of moving all cameras and the cloud together (the scale gauge
is held by the cloud itself).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from da3gs.errors import Da3gsError

__all__ = ["RefineReport", "STRATEGIES", "refine_gaussians", "scene_extent", "so3_exp"]

#: densification strategies of :func:`refine_gaussians` (:mod:`da3gs.train.densify`)
STRATEGIES = ("none", "default", "mcmc")


@dataclass
class RefineReport:
    """What a refinement run did.

    Fields:
      steps: optimisation steps run.
      loss: per-step training loss.
      psnr_before / psnr_after: mean PSNR (dB) over the context views, renders clamped to [0, 1].
      psnr_before_per_view / psnr_after_per_view: per context view.
      time_s: wall time of the optimisation loop (without the before/after renders).
      num_gaussians: size of the cloud.
      extent: scene extent used to scale the position learning rate.
      lrs: learning rates used.
      refine_cameras: whether cameras were refined.
      camera_rotation_deg / camera_translation: size of each view's camera correction
        (0 for view 0), when cameras were refined.
      w2c: (V, 4, 4) refined cameras (the input cameras when not refined); not serialised.
      strategy: densification strategy ("none", "default", "mcmc").
      strategy_params: the strategy's parameters (scaled defaults and overrides).
      num_gaussians_before: size of the input cloud (``num_gaussians`` is the output's).
      densify_stats: counts of what the strategy did (grown, pruned, unseen pruned, resets,
        relocated, added).
    """

    steps: int
    loss: list[float] = field(default_factory=list)
    psnr_before: float = float("nan")
    psnr_after: float = float("nan")
    psnr_before_per_view: list[float] = field(default_factory=list)
    psnr_after_per_view: list[float] = field(default_factory=list)
    time_s: float = 0.0
    num_gaussians: int = 0
    extent: float = 0.0
    lrs: dict = field(default_factory=dict)
    refine_cameras: bool = False
    camera_rotation_deg: list[float] | None = None
    camera_translation: list[float] | None = None
    w2c: torch.Tensor | None = None
    strategy: str = "none"
    strategy_params: dict = field(default_factory=dict)
    num_gaussians_before: int = 0
    densify_stats: dict = field(default_factory=dict)

    def as_dict(self, curve_points: int = 100) -> dict:
        """JSON-ready summary; the loss curve is averaged into at most ``curve_points`` bins
        (``[[last step of the bin, mean loss], ...]``, steps counted from 1)."""
        n = len(self.loss)
        curve = []
        if n:
            bins = min(curve_points, n)
            for b in range(bins):
                lo, hi = b * n // bins, (b + 1) * n // bins
                curve.append([hi, round(sum(self.loss[lo:hi]) / (hi - lo), 6)])
        d = {
            "steps": self.steps, "psnr_before": round(self.psnr_before, 4),
            "psnr_after": round(self.psnr_after, 4),
            "psnr_before_per_view": [round(v, 4) for v in self.psnr_before_per_view],
            "psnr_after_per_view": [round(v, 4) for v in self.psnr_after_per_view],
            "loss_first": self.loss[0] if n else None, "loss_last": self.loss[-1] if n else None,
            "loss_curve": curve, "time_s": round(self.time_s, 4),
            "num_gaussians": self.num_gaussians, "extent": self.extent, "lrs": self.lrs,
            "refine_cameras": self.refine_cameras, "densification": self.strategy != "none",
            "strategy": self.strategy, "strategy_params": self.strategy_params,
            "num_gaussians_before": self.num_gaussians_before,
            "densify_stats": self.densify_stats,
        }
        if self.refine_cameras:
            d["camera_rotation_deg"] = self.camera_rotation_deg
            d["camera_translation"] = self.camera_translation
        return d


def so3_exp(omega: torch.Tensor) -> torch.Tensor:
    """Rodrigues: axis-angle ``(..., 3)`` -> rotation ``(..., 3, 3)``, smooth at 0."""
    t2 = (omega * omega).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    theta = t2.clamp_min(1e-12).sqrt()
    small = t2 < 1e-8
    a = torch.where(small, 1 - t2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - t2 / 24, (1 - torch.cos(theta)) / theta.square())
    x, y, z = omega.unbind(-1)
    zero = torch.zeros_like(x)
    hat = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(omega.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand_as(hat)
    return eye + a * hat + b * (hat @ hat)


def scene_extent(w2c: torch.Tensor, means: torch.Tensor) -> float:
    """3DGS ``cameras_extent``: 1.1 x the largest camera-centre distance from their mean;
    for one camera (or coincident ones) the median distance of ``means`` from the cameras."""
    R, t = w2c[:, :3, :3].double(), w2c[:, :3, 3].double()
    centres = -(R.transpose(1, 2) @ t[..., None])[..., 0]
    ext = 1.1 * float((centres - centres.mean(0)).norm(dim=-1).max())
    if ext <= 1e-9:
        ext = float((means.double() - centres.mean(0)).norm(dim=-1).median()) if len(means) else 1.0
    return ext if ext > 1e-9 else 1.0


def _check(g, images, w2c, K, steps, strategy="none"):
    if strategy not in STRATEGIES:
        raise Da3gsError(f"refine strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not isinstance(steps, int) or steps < 0:
        raise Da3gsError(f"refine steps: expected a non-negative integer, got {steps!r}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise Da3gsError(f"refine: images must be (V, 3, H, W), got {tuple(images.shape)}")
    V = images.shape[0]
    if tuple(w2c.shape) != (V, 4, 4) or tuple(K.shape) != (V, 3, 3):
        raise Da3gsError(f"refine: expected w2c ({V}, 4, 4) and K ({V}, 3, 3), got "
                         f"{tuple(w2c.shape)} and {tuple(K.shape)}")
    if len(g) == 0:
        raise Da3gsError("refine: the Gaussian cloud is empty")


@torch.no_grad()
def _psnr_views(g, images, w2c, K, backend, bg) -> list[float]:
    from da3gs.metrics import psnr
    from da3gs.render import render

    H, W = images.shape[-2:]
    out = []
    for v in range(images.shape[0]):
        c = render(g, w2c[v], K[v], W, H, backend=backend, background=bg).color
        out.append(float(psnr(c[0].permute(2, 0, 1).clamp(0, 1), images[v])[0]))
    return out


def refine_gaussians(g, images: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor, steps: int,
                     lr: dict | None = None, refine_cameras: bool = False, backend: str = "auto",
                     ssim_weight: float = 0.2, on_step=None, background=None,
                     seed: int = 0, extent: float | None = None,
                     lr_camera_rot: float = 1e-3, lr_camera_trans: float = 1e-3,
                     strategy: str = "none", strategy_options: dict | None = None):
    """Fit Gaussians ``g`` to context views for ``steps`` Adam steps (module docstring).

    Args:
      g: :class:`~da3gs.types.Gaussians` (its device is used for everything).
      images: (V, 3, H, W) target colours in [0, 1] (composited on ``background``).
      w2c: (V, 4, 4) OpenCV world-to-camera; K: (V, 3, 3) intrinsics in pixels of ``images``.
      steps: optimisation steps (0: only the PSNR of the input cloud is measured).
      lr: overrides of the rates ``{"means", "scales", "quats", "opacities", "sh_dc",
        "sh_rest"}``; ``means`` is multiplied by ``extent``.
      refine_cameras: also learn per-view se(3) corrections (view 0 fixed).
      backend: renderer (``auto``: gsplat on CUDA, torch elsewhere).
      ssim_weight: w in ``(1 - w) L1 + w (1 - SSIM)``.
      on_step: optional ``on_step(step, steps, loss)`` called after every step (the
        commands drive their progress bar with it; library code prints nothing).
      background: (3,) colour under the splats (None: black), as in the images.
      seed: seed of the view sampler (and of the strategy's random draws).
      extent: scene extent for the position rate (default: :func:`scene_extent`); also the
        strategies' ``scene_scale`` (gsplat's: 1.1 x the cameras' largest distance from their
        mean, the same quantity).
      lr_camera_rot, lr_camera_trans: camera rates (radians; translation times ``extent``).
      strategy: densification, ``"none"`` | ``"default"`` | ``"mcmc"`` (module docstring).
      strategy_options: overrides of the strategy's parameters (names of gsplat's
        ``DefaultStrategy`` / ``MCMCStrategy`` fields, e.g. ``{"grow_grad2d": 4e-4,
        "reset_every": 100}``, plus ``prune_unseen`` and, for MCMC, ``opacity_reg`` /
        ``scale_reg``); defaults: :func:`da3gs.train.densify.strategy_defaults`.
    Returns:
      (refined Gaussians (detached; with a strategy the per-pixel fields ``conf``, ``view``,
      ``pixel`` are dropped, the cloud no longer maps to pixels), :class:`RefineReport`).
    """
    from da3gs.metrics import ssim
    from da3gs.render import render
    from da3gs.types import Gaussians

    _check(g, images, w2c, K, steps, strategy)
    dev = g.means.device
    images = images.to(dev, torch.float32)
    w2c, K = w2c.to(dev, torch.float32), K.to(dev, torch.float32)
    bg = None if background is None else torch.as_tensor(background, dtype=torch.float32, device=dev)
    V, _, H, W = images.shape
    ext = float(extent) if extent is not None else scene_extent(w2c, g.means.detach())
    rates = {"means": 1.6e-4, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2,
             "sh_dc": 2.5e-3, "sh_rest": 2.5e-3 / 20}
    unknown = set(lr or {}) - set(rates)
    if unknown:
        raise Da3gsError(f"refine lr: unknown groups {sorted(unknown)}; expected {sorted(rates)}")
    rates.update(lr or {})
    strat = None
    if strategy != "none" or strategy_options:
        from da3gs.train.densify import make_strategy

        strat = make_strategy(strategy, steps, len(g), dev, strategy_options)
    report = RefineReport(steps=steps, num_gaussians=len(g), extent=ext, refine_cameras=refine_cameras,
                          lrs={**rates, "means_scaled": rates["means"] * ext}, strategy=strategy,
                          num_gaussians_before=len(g))
    if strat is not None:
        report.strategy_params = {k: getattr(strat, k) for k in strat.__dataclass_fields__
                                  if k not in ("verbose", "key_for_gradient")}
    report.psnr_before_per_view = _psnr_views(g, images, w2c, K, backend, bg)

    f32 = dict(dtype=torch.float32, device=dev)
    # (N, 3) means, (N, 3) log-scales, (N, 4) quats, (N,) logit opacities, (N, 1, 3) SH DC,
    # (N, K - 1, 3) higher SH bands
    P = torch.nn.ParameterDict({
        "means": g.means.detach().to(**f32).clone(),
        "scales": g.scales.detach().to(**f32).clamp_min(1e-10).log(),
        "quats": g.quats.detach().to(**f32).clone(),
        "opacities": torch.logit(g.opacities.detach().to(**f32).clamp(1e-4, 1 - 1e-4)),
        "sh_dc": g.sh.detach()[:, :1].to(**f32).clone(),
        "sh_rest": g.sh.detach()[:, 1:].to(**f32).clone(),
    })
    # one Adam per parameter (gsplat's strategy contract); per group the same maths as one Adam
    opts = {k: torch.optim.Adam([{"params": [p], "lr": rates[k] * (ext if k == "means" else 1.0),
                                  "name": k}], eps=1e-15) for k, p in P.items()}
    omega = torch.zeros(max(V - 1, 0), 3, **f32, requires_grad=True)
    tau = torch.zeros(max(V - 1, 0), 3, **f32, requires_grad=True)
    cam_opt = None
    if refine_cameras and V > 1:
        cam_opt = torch.optim.Adam([{"params": [omega], "lr": lr_camera_rot, "name": "cam_rot"},
                                    {"params": [tau], "lr": lr_camera_trans * ext,
                                     "name": "cam_trans"}], eps=1e-15)
    gen = torch.Generator().manual_seed(int(seed))
    sstate = None
    if strat is not None:
        strat.check_sanity(P, opts)
        sstate = (strat.initialize_state(scene_scale=ext) if strategy == "default"
                  else strat.initialize_state())
    keep_pixels = strat is None

    def current() -> Gaussians:
        q = P["quats"] / P["quats"].norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return Gaussians(means=P["means"], quats=q, scales=P["scales"].exp(),
                         opacities=torch.sigmoid(P["opacities"]),
                         sh=torch.cat([P["sh_dc"], P["sh_rest"]], 1),
                         conf=g.conf if keep_pixels else None, view=g.view if keep_pixels else None,
                         pixel=g.pixel if keep_pixels else None)

    def cameras() -> torch.Tensor:
        if not (refine_cameras and V > 1):
            return w2c
        top = torch.cat([so3_exp(omega), tau[..., None]], -1)  # (V - 1, 3, 4)
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], **f32).expand(V - 1, 1, 4)
        delta = torch.cat([top, bottom], 1)
        return torch.cat([w2c[:1], delta @ w2c[1:]], 0)

    all_opts = list(opts.values()) + ([cam_opt] if cam_opt is not None else [])
    rng = (torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else [])
           if strat is not None else contextlib.nullcontext())
    t0 = time.perf_counter()
    with rng:
        if strat is not None:
            torch.manual_seed(int(seed))
        for step in range(1, steps + 1):
            v = int(torch.randint(V, (1,), generator=gen))
            cams = cameras()
            info: dict | None = {} if strat is not None else None
            out = render(current(), cams[v], K[v], W, H, backend=backend, background=bg, info=info)
            pred = out.color[0].permute(2, 0, 1)[None]
            gt = images[v][None]
            loss = (1 - ssim_weight) * (pred - gt).abs().mean()
            if ssim_weight > 0:
                loss = loss + ssim_weight * (1 - ssim(pred, gt, mode="gaussian")[0])
            report.loss.append(float(loss.detach()))
            if loss.requires_grad:  # False when no Gaussian reaches this view: nothing to learn
                if strat is not None:
                    loss = loss + _strategy_regularisers(strat, P)
                    info.update(view=v, n_views=V)
                    if strategy == "default":
                        strat.step_pre_backward(P, opts, sstate, step, info)
                    else:
                        info["means2d"].retain_grad()  # for never-contributing Gaussians
                for o in all_opts:
                    o.zero_grad(set_to_none=True)
                loss.backward()
                for o in all_opts:
                    o.step()
                if strat is not None:  # after the optimiser step, as gsplat's simple_trainer
                    packed = info.get("gaussian_ids") is not None
                    if strategy == "default":
                        strat.step_post_backward(P, opts, sstate, step, info, packed=packed)
                    else:
                        strat.step_post_backward(P, opts, sstate, step, info,
                                                 lr=opts["means"].param_groups[0]["lr"], packed=packed)
            if on_step is not None:
                on_step(step, steps, report.loss[-1])
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    report.time_s = time.perf_counter() - t0
    if sstate is not None:
        report.densify_stats = {k: v for k, v in sstate.items() if k.startswith("n_")}

    with torch.no_grad():
        out_g = current().detach()
        out_g = Gaussians(**{k: (v.clone() if isinstance(v, torch.Tensor) else v)
                             for k, v in out_g.__dict__.items()})
        cams = cameras().detach()
    report.num_gaussians = len(out_g)
    report.w2c = cams
    report.psnr_after_per_view = _psnr_views(out_g, images, cams, K, backend, bg)
    report.psnr_before = sum(report.psnr_before_per_view) / V
    report.psnr_after = sum(report.psnr_after_per_view) / V
    if refine_cameras:
        rel = cams @ torch.linalg.inv(w2c)
        from da3gs.geometry import rotation_angle

        ang = torch.rad2deg(rotation_angle(rel[:, :3, :3]))
        report.camera_rotation_deg = [round(float(a), 6) for a in ang]
        report.camera_translation = [round(float(d), 8) for d in rel[:, :3, 3].norm(dim=-1)]
    return out_g.to(g.means.device), report


def _strategy_regularisers(strat, P) -> torch.Tensor | float:
    """MCMC's ``opacity_reg * mean(opacity) + scale_reg * mean(scale)`` (gsplat simple_trainer's
    MCMC recipe); 0 for strategies without them."""
    reg = 0.0
    if getattr(strat, "opacity_reg", 0.0):
        reg = reg + strat.opacity_reg * torch.sigmoid(P["opacities"]).mean()
    if getattr(strat, "scale_reg", 0.0):
        reg = reg + strat.scale_reg * torch.exp(P["scales"]).mean()
    return reg
