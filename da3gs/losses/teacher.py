"""Losses of the monocular teacher trained on synthetic (procedural) depth (DA3 section 4).

    L_T = w_grad L_grad + L_gl + w_normal L_N + w_sky L_sky        (w_grad = 0.5, others 1)

Depth representation. The mono network predicts depth through ``exp`` (its DPT head ends in
``torch.exp``), i.e. the network's raw output is log-depth and ``D^ = exp(raw)`` is always
positive ("exponential depth"). The loss is scale-and-shift invariant in depth: every term
compares the *aligned* prediction ``A = s D^ + t`` with the GT depth ``D``, ``(s, t)`` fitted
per image (or per crop) and detached. Errors are relative (divided by ``D``), so the loss is
also invariant to the GT's scale.

With ``m`` the supervised mask (valid, not sky, depth > 0) of each image:

* ``L_gl`` (MoGe-style global-local, with a simplified ROE alignment): ``(s, t)`` is the
  weighted-L1 optimum ``argmin_{s>0,t} sum_p m_p |s D^_p + t - D_p| / D_p`` (the ROE objective;
  solved by IRLS in :func:`da3gs.geometry.depth_align.l1_scale_shift`, where MoGe enumerates
  candidate solutions exactly). Global term: ``mean_m |A_p - D_p| / D_p``. Local term: for each
  crop size ``f * min(H, W)`` in ``local_sizes``, ``local_crops`` random square crops per image,
  each re-aligned on its own pixels, same relative L1 inside the crop, averaged over crops with
  at least ``min_local_pixels`` supervised pixels (MoGe samples spheres in 3D; square image
  crops are the documented simplification). ``L_gl = global + w_local * local``.
* ``L_grad = mean_{x-pairs} |dx A - dx D| / Dbar + mean_{y-pairs} |dy A - dy D| / Dbar``
  (forward differences, pairs of supervised pixels, ``Dbar`` the pair's mean GT depth).
* ``L_N`` exactly as DESIGN.md states: both depths are lifted to camera-frame points with
  ``K`` (``P = D K^-1 p``); at each pixel whose 4 neighbours are supervised, the edge vectors
  ``e_r, e_d, e_l, e_u`` give four triangle normals (unnormalised, camera-facing)
  ``n_1 = e_d x e_r, n_2 = e_l x e_d, n_3 = e_u x e_l, n_4 = e_r x e_u``; the weighted mean normal
  ``n_m = sum_i w_i n_i / |n_i|`` with ``w_i = sum_j |n_j| - |n_i|`` down-weights the large
  triangles that straddle depth edges. ``L_N = mean_pixels E(n^_m, n_m) + sum_i E(n^_i, n_i)``
  with ``E`` the angle between the vectors (radians). ``n^`` from ``A``, ``n`` from ``D`` (or,
  with ``normal_target="normals"``, ``n_m`` = the batch's GT normals).
* ``L_sky = mean_pixels (sky^_p - 1[sky_p])^2`` on the head's ReLU sky map (the paper trains
  its masks "by MSE"; the inference threshold 0.3 then separates the two targets 0 and 1).
  Skipped when the batch has no sky mask.
* ``L_obj`` is omitted: :class:`ViewBatch` carries no object mask and the mono network has no
  object head.

``out`` keys used: ``depth`` (B, V, H, W) and ``sky`` (B, V, H, W). Every term is a mean over
pixels (then images), so magnitudes do not depend on resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from da3gs.data.batch import ViewBatch
from da3gs.geometry.depth_align import l1_scale_shift
from da3gs.losses.normalize import _f, camera_points, supervised_mask
from da3gs.losses.stage1 import masked_mean

__all__ = [
    "TeacherLossConfig",
    "align_depth",
    "angle",
    "global_local_loss",
    "normal_loss",
    "relative_gradient_loss",
    "sky_loss",
    "teacher_loss",
    "triangle_normals",
]


@dataclass
class TeacherLossConfig:
    """Weights and sampling of the teacher loss.

    Fields:
      w_grad: weight of L_grad (paper: 0.5).
      w_gl, w_normal, w_sky: weights of L_gl, L_N, L_sky (paper: 1).
      w_local: weight of the local part inside L_gl (global part weight 1).
      local_sizes: crop sides as fractions of ``min(H, W)``.
      local_crops: random crops per image and size.
      min_local_pixels: crops with fewer supervised pixels are skipped.
      align_iters: IRLS iterations of the weighted-L1 alignment.
      normal_target: ``"depth"`` (GT normals from GT depth, like the prediction's) or
        ``"normals"`` (``n_m`` target = ``batch.normals`` when present).
    """

    w_grad: float = 0.5
    w_gl: float = 1.0
    w_normal: float = 1.0
    w_sky: float = 1.0
    w_local: float = 1.0
    local_sizes: tuple[float, ...] = field(default_factory=lambda: (0.5, 0.25))
    local_crops: int = 4
    min_local_pixels: int = 16
    align_iters: int = 10
    normal_target: str = "depth"


def align_depth(pred: torch.Tensor, gt: torch.Tensor, m: torch.Tensor, iters: int = 10):
    """Per-image ROE-style alignment: ``pred, gt, m: (N, H, W)`` -> ``A = s pred + t`` (N, H, W).

    ``(s, t)`` minimise ``sum m |s pred + t - gt| / gt`` (detached, ``s > 0``); returns (A, s, t).
    """
    w = torch.where(m, 1.0 / gt.clamp_min(1e-12), torch.zeros_like(gt))
    s, t = l1_scale_shift(pred.flatten(1), gt.flatten(1), m.flatten(1), w.flatten(1), iters)
    return s[:, None, None] * pred + t[:, None, None], s, t


def _rel_l1(a, gt, m):
    return torch.where(m, (a - gt).abs() / gt.clamp_min(1e-12), torch.zeros_like(gt))


def global_local_loss(pred, gt, m, cfg: TeacherLossConfig, generator=None):
    """L_gl on ``(N, H, W)`` inputs; returns (global, local, aligned A)."""
    N, H, W = pred.shape
    A, _, _ = align_depth(pred, gt, m, cfg.align_iters)
    glob = masked_mean(_rel_l1(A, gt, m), m)[0]
    local_terms = []
    for f in cfg.local_sizes:
        c = max(2, min(H, W, round(f * min(H, W))))
        n = cfg.local_crops
        y0 = torch.randint(0, H - c + 1, (N, n), generator=generator).to(pred.device)
        x0 = torch.randint(0, W - c + 1, (N, n), generator=generator).to(pred.device)
        ar = torch.arange(c, device=pred.device)
        rows = (y0[..., None] + ar)[..., :, None]  # (N, n, c, 1)
        cols = (x0[..., None] + ar)[..., None, :]  # (N, n, 1, c)
        bi = torch.arange(N, device=pred.device)[:, None, None, None]
        pc, gc, mc = (x[bi, rows, cols].reshape(N * n, c, c) for x in (pred, gt, m))
        keep = mc.flatten(1).sum(1) >= cfg.min_local_pixels
        mc = mc & keep[:, None, None]
        Ac, _, _ = align_depth(pc, gc, mc, cfg.align_iters)
        local_terms.append(masked_mean(_rel_l1(Ac, gc, mc), mc)[0])
    local = torch.stack(local_terms).mean() if local_terms else pred.new_zeros(())
    return glob, local, A


def relative_gradient_loss(A, gt, m):
    """``mean |dx A - dx D| / Dbar`` over x-pairs plus the same over y-pairs, (N, H, W)."""
    mx = m[..., :, 1:] & m[..., :, :-1]
    my = m[..., 1:, :] & m[..., :-1, :]
    ex = ((A[..., :, 1:] - A[..., :, :-1]) - (gt[..., :, 1:] - gt[..., :, :-1])).abs()
    ey = ((A[..., 1:, :] - A[..., :-1, :]) - (gt[..., 1:, :] - gt[..., :-1, :])).abs()
    dx = 0.5 * (gt[..., :, 1:] + gt[..., :, :-1])
    dy = 0.5 * (gt[..., 1:, :] + gt[..., :-1, :])
    ex = torch.where(mx, ex / dx.clamp_min(1e-12), torch.zeros_like(ex))
    ey = torch.where(my, ey / dy.clamp_min(1e-12), torch.zeros_like(ey))
    return masked_mean(ex, mx)[0] + masked_mean(ey, my)[0]


def triangle_normals(points: torch.Tensor) -> torch.Tensor:
    """Four camera-facing triangle normals at each interior pixel of ``points (N, H, W, 3)``.

    Returns ``(N, H-2, W-2, 4, 3)``: ``[e_d x e_r, e_l x e_d, e_u x e_l, e_r x e_u]`` with
    ``e_r = P[i, j+1] - P[i, j]`` etc. (unnormalised; norm = twice the triangle's area).
    """
    c = points[:, 1:-1, 1:-1]
    e_r = points[:, 1:-1, 2:] - c
    e_l = points[:, 1:-1, :-2] - c
    e_d = points[:, 2:, 1:-1] - c
    e_u = points[:, :-2, 1:-1] - c
    x = torch.linalg.cross
    return torch.stack([x(e_d, e_r), x(e_l, e_d), x(e_u, e_l), x(e_r, e_u)], dim=-2)


def _mean_normal(n: torch.Tensor) -> torch.Tensor:
    """``n_m = sum_i w_i n_i / |n_i|``, ``w_i = sum_j |n_j| - |n_i|``; n: (..., 4, 3)."""
    norm = n.norm(dim=-1, keepdim=True)
    w = norm.sum(-2, keepdim=True) - norm
    return (w * n / norm.clamp_min(1e-20)).sum(-2)


def angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle in radians between vectors ``a, b: (..., 3)`` (any lengths), ``atan2(|a x b|, a.b)``
    on the unit vectors (finite gradients when they are parallel)."""
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-20)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-20)
    cr = torch.linalg.cross(a, b)
    return torch.atan2(torch.sqrt((cr * cr).sum(-1) + 1e-20), (a * b).sum(-1))


def normal_loss(A, gt, m, K, gt_normals=None):
    """L_N on ``A, gt, m: (N, H, W)``, ``K: (N, 3, 3)``; ``gt_normals``: (N, H, W, 3) or None."""
    eye = torch.eye(4, dtype=A.dtype, device=A.device).expand(A.shape[0], 4, 4)
    n_hat = triangle_normals(camera_points(A, eye, K))
    n_gt = triangle_normals(camera_points(gt, eye, K))
    mi = (m[:, 1:-1, 1:-1] & m[:, 1:-1, 2:] & m[:, 1:-1, :-2] & m[:, 2:, 1:-1] & m[:, :-2, 1:-1])
    nm_gt = _mean_normal(n_gt) if gt_normals is None else gt_normals[:, 1:-1, 1:-1]
    e = angle(_mean_normal(n_hat), nm_gt) + angle(n_hat, n_gt).sum(-1)
    return masked_mean(torch.where(mi, e, torch.zeros_like(e)), mi)[0]


def sky_loss(sky_pred: torch.Tensor, sky_gt: torch.Tensor) -> torch.Tensor:
    """``mean (sky^ - 1[sky])^2`` over all pixels."""
    return ((sky_pred - sky_gt.to(sky_pred.dtype)) ** 2).mean()


def teacher_loss(out: dict, batch: ViewBatch, cfg: TeacherLossConfig | None = None,
                 generator: torch.Generator | None = None,
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The teacher loss (module docstring) of mono outputs ``out`` against ``batch``.

    ``generator`` (a CPU ``torch.Generator``) draws the local crops; None uses the global RNG.
    Returns ``(total, parts)`` with detached scalars ``global``, ``local``, ``gl``, ``grad``,
    ``normal``, ``sky`` (when the batch has a sky mask) and ``total``.
    """
    cfg = cfg or TeacherLossConfig()
    B, V, H, W = batch.shape
    N = B * V
    pred = _f(out["depth"]).reshape(N, H, W)
    gt = torch.where(supervised_mask(batch), _f(batch.depth), torch.zeros_like(_f(batch.depth)))
    gt = gt.reshape(N, H, W)
    m = supervised_mask(batch).reshape(N, H, W)
    glob, local, A = global_local_loss(pred, gt, m, cfg, generator)
    parts = {"global": glob, "local": local, "gl": glob + cfg.w_local * local}
    parts["grad"] = relative_gradient_loss(A, gt, m)
    gn = None
    if cfg.normal_target == "normals" and batch.normals is not None:
        gn = _f(batch.normals).reshape(N, 3, H, W).permute(0, 2, 3, 1)
    elif cfg.normal_target not in ("depth", "normals"):
        raise ValueError(f"normal_target: expected 'depth' or 'normals', got {cfg.normal_target!r}")
    parts["normal"] = normal_loss(A, gt, m, _f(batch.K).reshape(N, 3, 3), gn)
    total = cfg.w_gl * parts["gl"] + cfg.w_grad * parts["grad"] + cfg.w_normal * parts["normal"]
    if batch.sky is not None and "sky" in out:
        parts["sky"] = sky_loss(_f(out["sky"]), batch.sky)
        total = total + cfg.w_sky * parts["sky"]
    parts["total"] = total
    return total, {k: v.detach() for k, v in parts.items()}
