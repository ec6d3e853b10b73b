"""Ground truth in the training frame: view 0's camera, divided by the paper's per-sample scale.

DA3 (arXiv 2511.10647, section 3): all ground-truth signals are divided by one scale factor,
"the mean l2 norm of the valid reprojected point maps P". Here, per sample ``b``:

1. Re-base every camera on view 0: ``c2w'_v = c2w_0^{-1} c2w_v`` (so ``c2w'_0 = I``; this is the
   world frame the network predicts in with ``ref_view_strategy="first"``).
2. Lift valid depth to points in that frame, ``P = t'_v + D_v d'_v`` (``d' = R' K^-1 p``).
3. ``scale_b = mean_{valid p, all views} |P_p|_2``. A sample without valid depth uses the mean
   distance of its camera centres from view 0 instead, and 1 when that is zero too (one view).
4. Divide depth and camera translations (hence points) by ``scale_b``. Intrinsics, images,
   camera-frame normals and masks are unchanged.

The operation is idempotent (a normalised batch has view 0 at the identity and scale 1), so the
losses re-apply it safely to a batch the trainer already normalised for pose conditioning.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from da3gs.data.batch import ViewBatch
from da3gs.geometry import c2w_to_w2c
from da3gs.geometry.rays import _camera_directions

__all__ = ["camera_points", "normalize_batch", "supervised_mask"]


def _f(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a float tensor of at least float32 precision (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def supervised_mask(batch: ViewBatch) -> torch.Tensor:
    """(B, V, H, W) bool: ``valid``, not sky, finite positive depth."""
    m = batch.valid.bool() & torch.isfinite(batch.depth) & (batch.depth > 0)
    if batch.sky is not None:
        m = m & ~batch.sky.bool()
    return m


def camera_points(depth: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """World points ``P = t + D * R K^-1 p`` (pixel centres at +0.5), no validation/syncs.

    depth: (..., H, W); c2w: (..., 4, 4); K: (..., 3, 3). Returns (..., H, W, 3).
    """
    H, W = depth.shape[-2:]
    dcam = _camera_directions(K, H, W, 0.5, depth.dtype)  # (..., H, W, 3), z = 1
    d = dcam @ c2w[..., :3, :3].transpose(-1, -2)[..., None, :, :]
    return c2w[..., None, None, :3, 3] + depth[..., None] * d


def normalize_batch(batch: ViewBatch, eps: float = 1e-8) -> tuple[ViewBatch, torch.Tensor]:
    """Express the batch in view 0's camera frame and divide by the per-sample point scale.

    Args:
        batch: a :class:`ViewBatch` (depth (B, V, H, W), c2w (B, V, 4, 4), K (B, V, 3, 3)).
    Returns:
        (batch', scale): batch' with ``c2w'`` re-based on view 0 and translations / depth
        divided by ``scale``; invalid depth is set to 0. ``scale``: (B,) float, the factor
        that was divided out (multiply predictions by it to return to the input units).
    """
    depth = _f(batch.depth)
    c2w = _f(batch.c2w)
    w2c0 = c2w_to_w2c(c2w[:, 0], check=False)  # (B, 4, 4); no value check (no sync)
    c2w_rel = w2c0[:, None] @ c2w
    m = supervised_mask(batch)
    depth = torch.where(m, depth, torch.zeros_like(depth))
    pts = camera_points(depth, c2w_rel, _f(batch.K))  # (B, V, H, W, 3)
    mf = m.to(depth.dtype)
    cnt = mf.flatten(1).sum(1)
    mean_pt = (pts.norm(dim=-1) * mf).flatten(1).sum(1) / cnt.clamp_min(1.0)
    cam_dist = c2w_rel[..., :3, 3].norm(dim=-1).mean(1)
    fallback = torch.where(cam_dist > eps, cam_dist, torch.ones_like(cam_dist))
    scale = torch.where((cnt > 0) & (mean_pt > eps), mean_pt, fallback)
    c2w_n = c2w_rel.clone()
    c2w_n[..., :3, 3] = c2w_rel[..., :3, 3] / scale[:, None, None]
    # exact identity for view 0 (c2w_0^-1 c2w_0 carries rounding noise)
    c2w_n[:, 0] = torch.eye(4, dtype=c2w_n.dtype, device=c2w_n.device)
    out = replace(batch, depth=depth / scale[:, None, None, None], c2w=c2w_n, valid=m)
    return out, scale
