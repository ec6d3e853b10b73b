"""Stage-1 (student, multi-view) losses of DA3 (arXiv 2511.10647, section 3).

    L = w_D L_D + w_M L_M + w_P L_P + beta L_C + alpha L_grad          (alpha = beta = 1)

computed on ground truth normalised by :func:`da3gs.losses.normalize.normalize_batch` (view 0's
camera frame, divided by the mean norm of the valid points; re-applied here, it is idempotent).
With ``m`` the supervised mask (valid, not sky, depth > 0), per sample ``b``:

* ``L_D = (1 / Z) sum_p m_p (c_p |D^_p - D_p| - lambda_c log c_p)``, ``Z = sum_p m_p``
  (``c = out["depth_conf"]``, >= 1 by construction).
* ``L_grad = mean_{x-pairs} |dx D^ - dx D| + mean_{y-pairs} |dy D^ - dy D|``: forward
  differences between horizontal (vertical) neighbours, a pair counted only where both pixels
  are supervised.
* ``L_M = mean_{all pixels of the h x w ray grid} c^r_p |R^_p - M_p|_1 - lambda_c log c^r_p``
  (``conf_rays``; else plain ``|R^_p - M_p|_1``). ``M`` = GT ray map ``[R K'^-1 p, t]`` at the
  ray grid, pixel centres ``(j + 0.5, i + 0.5)`` of that grid and ``K'`` = K with rows 0 / 1
  scaled by ``w / W`` / ``h / H`` (see :func:`gt_ray_map`). Rays are defined at every pixel, sky
  and missing depth included.
* ``L_P = (1 / Z) sum_p m_p |t^_p + D^_p d^_p - P_p|_1`` with the predicted ray map brought to
  ``H x W`` by :func:`upsample_ray_map` (exact for any affine ray field) and
  ``P = t + D R K^-1 p`` from the GT.
* ``L_C = mean_views |t^ - t|_1 + min(|q^ - q|_1, |q^ + q|_1) + |f^ - f|_1`` on the camera head's
  raw 9-D output ``out["pose_enc"] = [t (3), q xyzw (4), fov_h, fov_w]`` against
  ``encode_pose(c2w', K, (H, W))`` (``q ~ -q`` handled by the min).

``|.|_1`` sums the absolute values of a vector's components. Each term is a per-sample mean,
then averaged over the samples it applies to (a sample without supervised depth contributes
to ``L_M`` and ``L_C`` only), so magnitudes do not depend on resolution or view count.

``lambda_c = 0.2``: the paper does not state it; 0.2 is DUSt3R's confidence-loss ``alpha``
(``ConfLoss(..., alpha=0.2)`` in its training command), the same
``C |err| - alpha log C`` form with ``C = 1 + exp(x)`` as here. With ``c >= 1`` the optimum is
``c = lambda_c / |err|`` where ``|err| < lambda_c`` and ``c = 1`` elsewhere, so 0.2 (a fifth of
the mean point distance after normalisation) separates confident from unconfident pixels at a
meaningful error level.

``out`` keys used: ``depth``, ``depth_conf`` (B, V, H, W); ``ray`` (B, V, h, w, 6), ``ray_conf``
(B, V, h, w); ``pose_enc`` (B, V, 9).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from da3gs.data.batch import ViewBatch
from da3gs.geometry import encode_pose, ray_map
from da3gs.losses.normalize import _f, camera_points, normalize_batch

__all__ = [
    "Stage1LossConfig",
    "camera_loss",
    "depth_conf_loss",
    "gradient_loss",
    "gt_ray_map",
    "masked_mean",
    "point_loss",
    "ray_loss",
    "stage1_loss",
    "upsample_ray_map",
]


@dataclass
class Stage1LossConfig:
    """Weights of the stage-1 loss.

    Fields:
      alpha: weight of L_grad (paper: 1).
      beta: weight of L_C (paper: 1).
      lambda_c: weight of the ``-log(confidence)`` terms (not in the paper; 0.2 as DUSt3R).
      w_depth, w_ray, w_point: weights of L_D, L_M, L_P (paper: 1).
      conf_rays: weight L_M by ``ray_conf`` with the same log term (True: the network emits a
        ray confidence, which would otherwise never be trained); False: plain L1.
      normalize: re-apply ``normalize_batch`` to the batch (idempotent; turn off only when the
        batch is already normalised, to save the work).
    """

    alpha: float = 1.0
    beta: float = 1.0
    lambda_c: float = 0.2
    w_depth: float = 1.0
    w_ray: float = 1.0
    w_point: float = 1.0
    conf_rays: bool = True
    normalize: bool = True


def masked_mean(x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample masked mean of ``x, m: (B, ...)`` and the mean over samples with any mask.

    Returns (loss scalar, per-sample count (B,)). With no masked element at all the loss is
    ``0 * x.sum()`` (keeps the graph, no NaN).
    """
    mf = m.to(x.dtype)
    cnt = mf.flatten(1).sum(1)
    per = (torch.where(m, x, torch.zeros_like(x))).flatten(1).sum(1) / cnt.clamp_min(1.0)
    has = (cnt > 0).to(x.dtype)
    n = has.sum()
    loss = (per * has).sum() / n.clamp_min(1.0)
    return loss + 0.0 * torch.where(torch.isfinite(x), x, torch.zeros_like(x)).sum(), cnt


def gt_ray_map(c2w: torch.Tensor, K: torch.Tensor, image_hw, ray_hw) -> torch.Tensor:
    """GT ray map at the ray grid: (..., h, w, 6) = [R K'^-1 p (3), t (3)].

    ``K`` is in pixels of the ``image_hw = (H, W)`` image; ``K' = diag(w/W, h/H, 1) K`` is the
    same camera in pixels of the ``h x w`` grid, whose pixel centres are ``(j + 0.5, i + 0.5)``.
    """
    H, W = image_hw
    h, w = ray_hw
    Ks = K.clone()
    Ks[..., 0, :] = K[..., 0, :] * (w / W)
    Ks[..., 1, :] = K[..., 1, :] * (h / H)
    return ray_map(c2w, Ks, h, w, check=False)  # no value checks: no device sync


def upsample_ray_map(ray: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Bilinear resampling of a ray map ``(B, V, h, w, C)`` to ``(B, V, H, W, C)``.

    Output pixel centre ``u = j + 0.5`` maps to ``u * w / W`` on the grid; the grid is first
    padded by one cell with linear extrapolation (``2 x_0 - x_1``), so an affine field (any
    exact pinhole ray map) is reproduced exactly, borders included. Differentiable.
    """
    B, V, h, w, C = ray.shape
    if (h, w) == (H, W):
        return ray
    x = ray.permute(0, 1, 4, 2, 3).reshape(B * V, C, h, w)
    if w > 1:
        x = torch.cat([2 * x[..., :1] - x[..., 1:2], x, 2 * x[..., -1:] - x[..., -2:-1]], -1)
    else:
        x = torch.cat([x, x, x], -1)
    if h > 1:
        x = torch.cat([2 * x[..., :1, :] - x[..., 1:2, :], x, 2 * x[..., -1:, :] - x[..., -2:-1, :]], -2)
    else:
        x = torch.cat([x, x, x], -2)
    dt, dev = x.dtype, x.device
    gx = (torch.arange(W, device=dev, dtype=dt) + 0.5) * (w / W) + 0.5  # index in the padded grid
    gy = (torch.arange(H, device=dev, dtype=dt) + 0.5) * (h / H) + 0.5
    gx = 2 * gx / (w + 1) - 1
    gy = 2 * gy / (h + 1) - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], -1)
    y = F.grid_sample(x, grid[None].expand(B * V, H, W, 2), mode="bilinear", align_corners=True)
    return y.reshape(B, V, C, H, W).permute(0, 1, 3, 4, 2)


def depth_conf_loss(depth, conf, gt, m, lambda_c: float):
    """L_D: ``mean_m (c |D^ - D| - lambda_c log c)`` per sample, (B, V, H, W) inputs."""
    return masked_mean(conf * (depth - gt).abs() - lambda_c * torch.log(conf), m)[0]


def gradient_loss(pred, gt, m):
    """L_grad: masked L1 of forward differences along x plus along y, (B, V, H, W) inputs."""
    dxp, dxg = pred[..., :, 1:] - pred[..., :, :-1], gt[..., :, 1:] - gt[..., :, :-1]
    dyp, dyg = pred[..., 1:, :] - pred[..., :-1, :], gt[..., 1:, :] - gt[..., :-1, :]
    mx = m[..., :, 1:] & m[..., :, :-1]
    my = m[..., 1:, :] & m[..., :-1, :]
    return masked_mean((dxp - dxg).abs(), mx)[0] + masked_mean((dyp - dyg).abs(), my)[0]


def ray_loss(ray, ray_conf, gt_ray, lambda_c: float, conf: bool = True):
    """L_M: per-pixel ``|R^ - M|_1`` (6 channels), optionally confidence-weighted, mean."""
    err = (ray - gt_ray).abs().sum(-1)
    if conf and ray_conf is not None:
        err = ray_conf * err - lambda_c * torch.log(ray_conf)
    return err.mean()


def point_loss(depth, ray, gt_points, m):
    """L_P: ``mean_m |t^ + D^ d^ - P|_1`` with ``ray`` (B, V, h, w, 6) upsampled to H x W."""
    H, W = depth.shape[-2:]
    r = upsample_ray_map(ray, H, W)
    pts = r[..., 3:6] + depth[..., None] * r[..., 0:3]
    return masked_mean((pts - gt_points).abs().sum(-1), m)[0]


def camera_loss(pose_enc, gt_enc):
    """L_C parts on (B, V, 9) encodings: (translation, quaternion, fov), each a mean over views."""
    lt = (pose_enc[..., :3] - gt_enc[..., :3]).abs().sum(-1).mean()
    q, qg = pose_enc[..., 3:7], gt_enc[..., 3:7]
    lq = torch.minimum((q - qg).abs().sum(-1), (q + qg).abs().sum(-1)).mean()
    lf = (pose_enc[..., 7:9] - gt_enc[..., 7:9]).abs().sum(-1).mean()
    return lt, lq, lf


def stage1_loss(out: dict, batch: ViewBatch, cfg: Stage1LossConfig | None = None,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The stage-1 loss (module docstring) of network outputs ``out`` against ``batch``.

    Returns ``(total, parts)``; ``parts`` holds detached scalars ``depth``, ``grad``, ``ray``,
    ``point``, ``cam_t``, ``cam_q``, ``cam_fov``, ``cam`` (their sum) and ``total``.
    Terms whose ``out`` keys are missing (e.g. ``pose_enc``) are skipped.
    """
    cfg = cfg or Stage1LossConfig()
    if cfg.normalize:
        batch, _ = normalize_batch(batch)
    _, _, H, W = batch.shape
    m = batch.valid.bool() & (batch.depth > 0)
    if batch.sky is not None:
        m = m & ~batch.sky.bool()
    gt_d = _f(batch.depth)
    c2w, K = _f(batch.c2w), _f(batch.K)
    depth = _f(out["depth"])
    parts: dict[str, torch.Tensor] = {}
    total = depth.new_zeros(())
    if "depth_conf" in out:
        parts["depth"] = depth_conf_loss(depth, _f(out["depth_conf"]), gt_d, m, cfg.lambda_c)
    else:
        parts["depth"] = masked_mean((depth - gt_d).abs(), m)[0]
    total = total + cfg.w_depth * parts["depth"]
    parts["grad"] = gradient_loss(depth, gt_d, m)
    total = total + cfg.alpha * parts["grad"]
    if "ray" in out:
        ray = _f(out["ray"])
        h, w = ray.shape[2:4]
        gt_ray = gt_ray_map(c2w, K, (H, W), (h, w))
        rc = out.get("ray_conf")
        parts["ray"] = ray_loss(ray, None if rc is None else _f(rc), gt_ray, cfg.lambda_c,
                                cfg.conf_rays)
        parts["point"] = point_loss(depth, ray, camera_points(gt_d, c2w, K), m)
        total = total + cfg.w_ray * parts["ray"] + cfg.w_point * parts["point"]
    if "pose_enc" in out:
        gt_enc = encode_pose(c2w, K, (H, W), keep_dtype=True)
        lt, lq, lf = camera_loss(_f(out["pose_enc"]), gt_enc)
        parts.update(cam_t=lt, cam_q=lq, cam_fov=lf, cam=lt + lq + lf)
        total = total + cfg.beta * parts["cam"]
    parts["total"] = total
    return total, {k: v.detach() for k, v in parts.items()}
