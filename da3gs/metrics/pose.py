"""Camera pose metrics: relative rotation / translation errors, pose AUC, ATE.

Cameras are OpenCV ``c2w`` of shape (N, 4, 4) (or (N, 3, 4)); predicted and ground-truth views
correspond by index. The conventions follow the VGGT / DA3 evaluation code:

* Pairs: all unordered pairs ``i < j`` in ``torch.combinations`` order (0-1, 0-2, ..., 1-2, ...),
  ``P = N (N - 1) / 2``. The relative pose of the pair is ``w2c_i @ c2w_j`` (camera j in the frame
  of camera i): rotation ``R_i^T R_j``, translation ``R_i^T (C_j - C_i)``.
* Rotation error: geodesic angle of ``R_rel_gt^T R_rel_pred`` in degrees, in [0, 180]
  (computed with atan2, accurate near 0 and 180).
* Translation error: angle between the gt and predicted relative translation directions
  (scale-free), in degrees. With ``sign_ambiguity=True`` (VGGT's default, used for its AUC
  tables) a direction and its opposite count as equal: ``min(a, 180 - a)``, in [0, 90].
  Zero-length translations (norm <= ``zero_tol`` times the largest relative-translation norm of
  the same trajectory, e.g. coincident camera centres): both zero -> 0 degrees; only one zero ->
  90 degrees (VGGT's value for a zero vector, the largest error under the sign ambiguity).
* AUC@T (:func:`auc_from_errors`, VGGT's ``calculate_auc_np``): take ``e = max(rot, trans)`` per
  pair, histogram it in 1-degree bins [0,1), [1,2), ..., [T-1, T] (pairs above T fall outside),
  divide by P, take the cumulative sum and average over the T bins. This is the area under the
  accuracy curve ``acc(t) = frac(e < t)`` sampled at t = 1..T, normalised to [0, 1]; perfect poses
  give 1. ``T`` must be an integer number of degrees.
* ATE: RMSE of camera centres after aligning the predicted trajectory to the ground truth with
  Umeyama on the centres (Sim(3) by default; SE(3) or none on request), in gt units.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from da3gs.geometry import GeometryError, align_cameras, as_homogeneous, rotation_angle

from .image import MetricsError

__all__ = ["relative_pose_errors", "pose_auc", "auc_from_errors", "ate", "rotation_angle_deg"]


def _check_cams(c2w_pred, c2w_gt, min_n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    out = []
    for name, c in (("c2w_pred", c2w_pred), ("c2w_gt", c2w_gt)):
        if not isinstance(c, torch.Tensor) or not c.is_floating_point():
            raise MetricsError(f"{name}: expected a floating-point torch.Tensor (N, 4, 4)")
        if c.ndim != 3 or c.shape[-1] != 4 or c.shape[-2] not in (3, 4):
            raise MetricsError(f"{name}: expected shape (N, 4, 4) or (N, 3, 4), got {tuple(c.shape)}")
        if c.shape[0] < min_n:
            raise MetricsError(f"{name}: need at least {min_n} cameras, got {c.shape[0]}")
        if not bool(torch.isfinite(c).all()):
            raise MetricsError(f"{name}: contains NaN or Inf values")
        out.append(as_homogeneous(c).to(torch.float64))
    if out[0].shape[0] != out[1].shape[0]:
        raise MetricsError(f"c2w_pred/c2w_gt: camera counts differ, {out[0].shape[0]} vs {out[1].shape[0]}")
    return out[0], out[1]


def rotation_angle_deg(R: torch.Tensor) -> torch.Tensor:
    """Geodesic angle of rotations R: (..., 3, 3) -> (...) degrees (stable atan2 form,
    :func:`da3gs.geometry.rotation_angle`)."""
    return torch.rad2deg(rotation_angle(R))


def _direction_angle_deg(a: torch.Tensor, b: torch.Tensor, zero_tol: float, sign_ambiguity: bool) -> torch.Tensor:
    """Angle between rows of a, b: (P, 3) -> (P,) degrees, with the zero-length rules above."""
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    za = na <= zero_tol * na.max().clamp_min(torch.finfo(a.dtype).tiny)
    zb = nb <= zero_tol * nb.max().clamp_min(torch.finfo(b.dtype).tiny)
    ang = torch.rad2deg(torch.atan2(torch.linalg.cross(a, b).norm(dim=-1), (a * b).sum(-1)))
    if sign_ambiguity:
        ang = torch.minimum(ang, 180.0 - ang)
    ang = torch.where(za ^ zb, torch.full_like(ang, 90.0), ang)
    return torch.where(za & zb, torch.zeros_like(ang), ang)


def relative_pose_errors(
    c2w_pred: torch.Tensor,
    c2w_gt: torch.Tensor,
    sign_ambiguity: bool = True,
    zero_tol: float = 1e-9,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair relative rotation and translation-direction errors (module docstring).

    Args:
        c2w_pred, c2w_gt: (N, 4, 4) or (N, 3, 4), N >= 2.
        sign_ambiguity: fold translation errors to [0, 90] as VGGT does.
        zero_tol: relative threshold for zero-length relative translations.
    Returns:
        (rot_err_deg (P,), trans_err_deg (P,)), float64, P = N (N - 1) / 2, pairs i < j.
    """
    pred, gt = _check_cams(c2w_pred, c2w_gt)
    n = pred.shape[0]
    i, j = torch.combinations(torch.arange(n, device=pred.device), 2).unbind(-1)

    def rel(c):
        R, C = c[:, :3, :3], c[:, :3, 3]
        Ri_t = R[i].transpose(-1, -2)
        return Ri_t @ R[j], (Ri_t @ (C[j] - C[i])[..., None])[..., 0]

    Rg, tg = rel(gt)
    Rp, tp = rel(pred)
    rot = rotation_angle_deg(Rg.transpose(-1, -2) @ Rp)
    trans = _direction_angle_deg(tg, tp, zero_tol, sign_ambiguity)
    return rot, trans


def auc_from_errors(rot_err: torch.Tensor, trans_err: torch.Tensor, threshold: int) -> float:
    """VGGT's histogram AUC of ``max(rot_err, trans_err)`` up to ``threshold`` degrees, in [0, 1].

    rot_err, trans_err: (P,) degrees (tensors or arrays), P >= 1.
    """
    if isinstance(threshold, bool) or int(threshold) != threshold or threshold < 1:
        raise MetricsError(f"thresholds: expected positive integers (degrees), got {threshold!r}")
    r = np.asarray(torch.as_tensor(rot_err).detach().cpu(), dtype=np.float64).reshape(-1)
    t = np.asarray(torch.as_tensor(trans_err).detach().cpu(), dtype=np.float64).reshape(-1)
    if r.shape != t.shape or r.size == 0:
        raise MetricsError(f"rot_err/trans_err: expected equal non-empty lengths, got {r.size} and {t.size}")
    e = np.maximum(r, t)
    e = np.where(np.isnan(e), np.inf, e)  # a NaN error counts as a failure
    hist, _ = np.histogram(e, bins=np.arange(int(threshold) + 1))
    return float(np.mean(np.cumsum(hist.astype(np.float64) / e.size)))


def pose_auc(
    c2w_pred: torch.Tensor,
    c2w_gt: torch.Tensor,
    thresholds=(3, 5, 15, 30),
    sign_ambiguity: bool = True,
) -> dict[str, float]:
    """AUC of the pair-wise max(rotation, translation) error curve at each threshold.

    Args:
        c2w_pred, c2w_gt: (N, 4, 4), N >= 2 (scale and world frame of ``c2w_pred`` do not matter).
        thresholds: integer degrees.
    Returns:
        ``{"auc@3": ..., "auc@5": ..., ...}``, floats in [0, 1] (1 for perfect poses).
    """
    rot, trans = relative_pose_errors(c2w_pred, c2w_gt, sign_ambiguity=sign_ambiguity)
    return {f"auc@{int(t)}": auc_from_errors(rot, trans, t) for t in thresholds}


def ate(c2w_pred: torch.Tensor, c2w_gt: torch.Tensor, align: str = "sim3") -> float:
    """Absolute trajectory error: RMSE of camera centres after alignment, in gt units.

    Args:
        c2w_pred, c2w_gt: (N, 4, 4) or (N, 3, 4), N >= 1.
        align: ``"sim3"`` (Umeyama with scale, default), ``"se3"`` (no scale) or ``"none"``.
            With fewer than 3 non-collinear centres the alignment falls back to the camera
            orientations (``align_cameras(..., orientation_fallback=True)``).
    Returns:
        ``sqrt(mean_i ||C_i_aligned - C_i_gt||^2)`` as a float.
    """
    if align not in ("sim3", "se3", "none"):
        raise MetricsError(f"align: expected 'sim3', 'se3' or 'none', got {align!r}")
    pred, gt = _check_cams(c2w_pred, c2w_gt, min_n=1)
    if align != "none":
        try:
            _, pred = align_cameras(pred, gt, with_scale=align == "sim3", orientation_fallback=True)
        except GeometryError as e:
            raise MetricsError(f"c2w_pred/c2w_gt: cannot align trajectories ({e})") from None
    d = pred[:, :3, 3] - gt[:, :3, 3]
    return math.sqrt(float((d * d).sum(-1).mean()))
