"""Camera pose metrics: pair-wise rotation / translation errors, pose AUC, ATE.

Cameras are OpenCV ``c2w`` of shape (N, 4, 4) (or (N, 3, 4)) unless ``convention="w2c"``;
predicted and ground-truth views correspond by index. Pairs are all unordered ``i < j`` in
``torch.combinations`` order (0-1, 0-2, ..., 1-2, ...), ``P = N (N - 1) / 2``. All arithmetic is
float64.

Two definitions of the pair errors (``mode``):

``mode="bench"`` (default): the official Depth Anything 3 benchmark
(``depth_anything_3.bench.utils.compute_pose``, itself VGGT's protocol), reproduced operation by
operation so that AUCs equal the official ones (tested to 1e-6 against the official functions):

* ``E_k`` = w2c extrinsics; ``inv`` is the closed-form rigid inverse ``[R^T | -R^T t]``.
* First-camera alignment: ``E'_k = E_k @ inv(E_0)`` (the world frame becomes camera 0's).
* Pair "relative pose": ``T_ij = inv(E'_i) @ E'_j = [R_ij | t_ij]``, for prediction and gt.
* Rotation error: ``q`` = unit quaternion of ``R_ij`` (:func:`da3gs.geometry.mat_to_quat`,
  bit-identical to the official one); ``l = max(1 - (q_pred . q_gt)^2, 1e-15)``;
  ``err_R = arccos(1 - 2 l)`` in degrees (the geodesic angle of ``R_gt^T R_pred``; the clamp puts
  a floor of about 3.6e-6 degrees under it).
* Translation error: ``u = t / (|t| + 1e-15)`` for each of pred and gt;
  ``l = max(1 - (u_pred . u_gt)^2, 1e-15)``; ``err_t = arccos(sqrt(1 - l))`` in degrees, i.e.
  the angle between the directions folded to [0, 90] (a direction and its opposite are equal).
  A zero translation (either side, or both: e.g. identical cameras, a pure rotation about a
  common centre, the pair (0, j) after alignment when j sits at camera 0) has ``u = 0`` and so
  gets 90 degrees: such a pair is a failure at every threshold below 90. Non-finite results
  get ``1e6`` radians (in degrees), as in the official code.
* Non-finite predicted cameras are accepted (a diverged prediction is scored, not refused): the
  affected pairs get NaN errors and count as failures; ground truth must be finite.

``mode="relative"``: the physical relative pose of the pair, ``w2c_i @ c2w_j`` (camera j in
the frame of camera i): rotation ``R_i^T R_j`` and translation ``R_i^T (C_j - C_i)`` with c2w
rotations ``R`` and centres ``C``. Unlike the bench definition it does not depend on which view
comes first, and coincident camera centres are not failures. Rotation error: geodesic angle of
``R_rel_gt^T R_rel_pred`` (atan2 form, accurate near 0 and 180). Translation error: the angle
between the directions, folded with ``min(a, 180 - a)`` when ``sign_ambiguity`` (default).
Zero-length translations (norm <= ``zero_tol`` times the largest relative-translation norm of
the same trajectory): both zero -> 0 degrees; only one zero -> 90 degrees. Numbers from this mode
are not comparable with published tables.

AUC@T (:func:`auc_from_errors`, the official ``calculate_auc_np``): ``e = max(err_R, err_t)`` per
pair; histogram of ``e`` in the 1-degree bins [0,1), [1,2), ..., [T-1, T] (last bin closed;
pairs above T or NaN fall outside but still count in ``P``); ``AUC@T = mean_k cumsum(hist / P)_k``
over the T bins, i.e. ``(1/T) sum_{t=1..T} frac(e < t)`` (``e <= T`` for the last), in [0, 1].
``T`` must be an integer number of degrees. The official output keys ``auc03, auc05, auc15,
auc30`` are ours ``auc@3, auc@5, auc@15, auc@30``.

ATE: RMSE of camera centres after aligning the predicted trajectory to the ground truth with
Umeyama on the centres (Sim(3) by default; SE(3) or none on request), in gt units.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from da3gs.geometry import GeometryError, align_cameras, as_homogeneous, mat_to_quat, rotation_angle

from .image import MetricsError

__all__ = ["relative_pose_errors", "pose_auc", "auc_from_errors", "ate", "rotation_angle_deg",
           "POSE_MODES"]

POSE_MODES = ("bench", "relative")
_BENCH_EPS = 1e-15  # the official clamp / division epsilon
_BENCH_BAD_RAD = 1e6  # the official value for non-finite translation errors (radians)


def _check_cams(c2w_pred, c2w_gt, min_n: int = 2, names=("c2w_pred", "c2w_gt"),
                finite_pred: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    out = []
    for k, (name, c) in enumerate(zip(names, (c2w_pred, c2w_gt))):
        if not isinstance(c, torch.Tensor) or not c.is_floating_point():
            raise MetricsError(f"{name}: expected a floating-point torch.Tensor (N, 4, 4)")
        if c.ndim != 3 or c.shape[-1] != 4 or c.shape[-2] not in (3, 4):
            raise MetricsError(f"{name}: expected shape (N, 4, 4) or (N, 3, 4), got {tuple(c.shape)}")
        if c.shape[0] < min_n:
            raise MetricsError(f"{name}: need at least {min_n} cameras, got {c.shape[0]}")
        if (k == 1 or finite_pred) and not bool(torch.isfinite(c).all()):
            raise MetricsError(f"{name}: contains NaN or Inf values")
        out.append(as_homogeneous(c).to(torch.float64))
    if out[0].shape[0] != out[1].shape[0]:
        raise MetricsError(f"{names[0]}/{names[1]}: camera counts differ, "
                           f"{out[0].shape[0]} vs {out[1].shape[0]}")
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


def _rigid_inv(m: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse ``[R^T | -R^T t]`` of (..., 4, 4), as the official
    ``closed_form_inverse_se3`` (no finiteness check: NaN propagates)."""
    Rt = m[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(m)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -(Rt @ m[..., :3, 3:])
    out[..., 3, 3] = 1.0
    return out


def _bench_errors(w2c_pred: torch.Tensor, w2c_gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Official bench pair errors (module docstring) from w2c (N, 4, 4) float64 -> ((P,), (P,))."""
    n = w2c_pred.shape[0]
    i, j = torch.combinations(torch.arange(n), 2).unbind(-1)

    def rel(E):
        E = E @ _rigid_inv(E[:1])  # align to the first camera
        T = _rigid_inv(E[i]) @ E[j]
        return T[:, :3, :3], T[:, :3, 3]

    Rp, tp = rel(w2c_pred)
    Rg, tg = rel(w2c_gt)
    dq = (mat_to_quat(Rp) * mat_to_quat(Rg)).sum(-1)
    rot = torch.rad2deg(torch.arccos(1 - 2 * (1 - dq * dq).clamp(min=_BENCH_EPS)))
    up = tp / (tp.norm(dim=-1, keepdim=True) + _BENCH_EPS)
    ug = tg / (tg.norm(dim=-1, keepdim=True) + _BENCH_EPS)
    lt = (1.0 - (up * ug).sum(-1) ** 2).clamp_min(_BENCH_EPS)
    trans = torch.acos(torch.sqrt(1 - lt))
    trans = torch.where(torch.isfinite(trans), trans, torch.full_like(trans, _BENCH_BAD_RAD))
    return rot, torch.rad2deg(trans)


def _relative_errors(pred: torch.Tensor, gt: torch.Tensor, zero_tol: float,
                     sign_ambiguity: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``mode="relative"`` pair errors (module docstring) from c2w (N, 4, 4) float64."""
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


def relative_pose_errors(
    c2w_pred: torch.Tensor,
    c2w_gt: torch.Tensor,
    sign_ambiguity: bool = True,
    zero_tol: float = 1e-9,
    mode: str = "bench",
    convention: str = "c2w",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair rotation and translation-direction errors (definitions in the module docstring).

    Args:
        c2w_pred, c2w_gt: (N, 4, 4) or (N, 3, 4), N >= 2; c2w, or w2c extrinsics with
            ``convention="w2c"`` (what the official bench reads). With ``mode="bench"`` the
            prediction may contain NaN/Inf (those pairs fail).
        sign_ambiguity: ``mode="relative"`` only: fold translation errors to [0, 90]
            (the bench always folds; ``False`` with it is an error).
        zero_tol: ``mode="relative"`` only: relative threshold for zero-length translations.
        mode: ``"bench"`` (official DA3 / VGGT protocol, default) or ``"relative"``.
        convention: ``"c2w"`` (default) or ``"w2c"``.
    Returns:
        (rot_err_deg (P,), trans_err_deg (P,)), float64, P = N (N - 1) / 2, pairs i < j.
    """
    if mode not in POSE_MODES:
        raise MetricsError(f"mode: expected one of {', '.join(POSE_MODES)}, got {mode!r}")
    if convention not in ("c2w", "w2c"):
        raise MetricsError(f"convention: expected 'c2w' or 'w2c', got {convention!r}")
    names = (f"{convention}_pred", f"{convention}_gt")
    pred, gt = _check_cams(c2w_pred, c2w_gt, names=names, finite_pred=mode != "bench")
    if mode == "bench":
        if not sign_ambiguity:
            raise MetricsError("sign_ambiguity=False: only with mode='relative' (the bench folds to [0, 90])")
        if convention == "c2w":
            pred, gt = _rigid_inv(pred), _rigid_inv(gt)
        return _bench_errors(pred, gt)
    if convention == "w2c":
        pred, gt = _rigid_inv(pred), _rigid_inv(gt)
    return _relative_errors(pred, gt, zero_tol, sign_ambiguity)


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
    mode: str = "bench",
    convention: str = "c2w",
) -> dict[str, float]:
    """AUC of the pair-wise max(rotation, translation) error curve at each threshold.

    By default the official DA3 benchmark's number (``compute_pose``; module docstring):
    ``E' = E @ inv(E_0)``, pairs ``inv(E'_i) @ E'_j`` (i < j), ``e = max(err_R, err_t)``,
    ``AUC@T = (1/T) sum_{t=1..T} frac(e in [0, t))``.

    Args:
        c2w_pred, c2w_gt: (N, 4, 4) or (N, 3, 4), N >= 2 (scale and world frame of the prediction
            do not matter); w2c with ``convention="w2c"``.
        thresholds: integer degrees.
        sign_ambiguity, mode, convention: as in :func:`relative_pose_errors`.
    Returns:
        ``{"auc@3": ..., "auc@5": ..., ...}``, floats in [0, 1] (1 for perfect poses with
        non-zero baselines; official key ``aucNN`` = ours ``auc@N``).
    """
    rot, trans = relative_pose_errors(c2w_pred, c2w_gt, sign_ambiguity=sign_ambiguity, mode=mode,
                                      convention=convention)
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
