"""Camera pose and intrinsics from a DA3 ray map (the official ``use_ray_pose`` path).

For every ray-map pixel, a normalised camera-plane point ``s = (2(j+.5)/w - 1,
2(i+.5)/h - 1, 1)`` and the predicted world direction ``d`` satisfy
``d ~ R K_n^-1 s`` (``K_n``: intrinsics in normalised units), a homography
``A = R U`` with ``U`` upper triangular. We fit ``A`` by confidence-weighted DLT
inside RANSAC (minimal samples of 8 drawn from the 30 % most confident rays,
100 iterations, inlier threshold 0.2 in the direction plane), refit on the
inliers with weights, fix the sign so that ``det A > 0`` and split ``A`` by a
QR decomposition with positive diagonal (this is the "RQ" split of
``K^-1``; the official QL trick coincides with it for a centred principal point).
The camera centre is the confidence-weighted mean of the ray origins.

Differences from the official code (deliberate): directions are first rotated
so that their confidence-weighted mean points along +z before the (x/z, y/z)
projection, so cameras looking along any world axis work (the official divides
by the world z); DLT points are Hartley-normalised and the fit runs in float64;
ties in confidence are broken randomly (seeded) when picking RANSAC candidates;
RANSAC hypotheses are scored on at most ``max_eval_points`` random valid rays.

Degenerate input: pixels whose ray or confidence is non-finite, whose
confidence is 0, or whose direction is zero or points away from the mean
direction are ignored. A view with fewer than 4 such valid rays, all-zero
confidence, collinear valid pixels, or an unusable fit returns
``valid=False`` with ``c2w = I``, ``K = I`` (placeholders) and
``inlier_ratio = 0``; with ``strict=True`` a :class:`GeometryError` is raised
instead (also for any NaN/Inf in the input). Results never contain NaN.
Negative confidences always raise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import GeometryError, check_finite, check_hw, check_shape

__all__ = ["RayPoseResult", "pose_from_ray_map"]


@dataclass
class RayPoseResult:
    """Output of :func:`pose_from_ray_map` (batch dims ``...`` of the ray map).

    Attributes:
        c2w: (..., 4, 4) OpenCV camera-to-world.
        K: (..., 3, 3) intrinsics in pixels of an image of size ``image_hw``.
        inlier_ratio: (...) fraction of valid rays within the threshold of the final fit.
        valid: (...) bool; False means placeholders ``c2w = I``, ``K = I``.
    """

    c2w: torch.Tensor
    K: torch.Tensor
    inlier_ratio: torch.Tensor
    valid: torch.Tensor


def _frame_from_axis(m: torch.Tensor) -> torch.Tensor:
    """Rotation (3, 3) whose third row is the unit vector ``m`` (maps m to +z)."""
    a = torch.zeros_like(m)
    a[0 if abs(float(m[0])) < 0.9 else 1] = 1.0
    e1 = a - (a @ m) * m
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(m, e1)
    return torch.stack([e1, e2, m])


def _dlt(src: torch.Tensor, dst: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted DLT homography ``dst ~ H src``. src, dst: (..., n, 2), w: (..., n).

    Returns H: (..., 3, 3) (unit Frobenius norm) and the eigenvalues (..., 9) of
    the normal matrix (ascending), used to detect ambiguous fits.
    """
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    z, o = torch.zeros_like(x), torch.ones_like(x)
    a1 = torch.stack([-x, -y, -o, z, z, z, x * u, y * u, u], dim=-1)
    a2 = torch.stack([z, z, z, -x, -y, -o, x * v, y * v, v], dim=-1)
    wt = w[..., None]
    M = (a1 * wt).transpose(-1, -2) @ a1 + (a2 * wt).transpose(-1, -2) @ a2
    evals, evecs = torch.linalg.eigh(M)
    return evecs[..., :, 0].reshape(evecs.shape[:-2] + (3, 3)), evals


def _transfer_error(H: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """|H(src) - dst| for H: (..., 3, 3), src/dst: (n, 2) -> (..., n); NaN where undefined."""
    p = src @ H[..., :, :2].transpose(-1, -2) + H[..., None, :, 2]
    return (p[..., :2] / p[..., 2:3] - dst).norm(dim=-1)


def _solve_one(src, d, o, w, hw, thr, n_iter, k, top_ratio, max_eval, gen):
    """One view. src (N, 2) normalised plane, d/o (N, 3) float64, w (N,) (0 = invalid).

    Returns (c2w (4, 4), K (3, 3), inlier_ratio float) or a failure reason string.
    """
    N = w.shape[0]
    dn = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    w = torch.where(d.norm(dim=-1) > 0, w, torch.zeros_like(w))
    w_sum = w.sum()
    if not float(w_sum) > 0:
        return "no valid rays (all confidences zero or inputs non-finite)"
    t = (o * w[:, None]).sum(0) / w_sum
    mean = (dn * w[:, None]).sum(0)
    if not float(mean.norm()) > 1e-6 * float(w_sum):
        return "ray directions cancel out (no common viewing direction)"
    Q0 = _frame_from_axis(mean / mean.norm())
    dr = dn @ Q0.T
    w = torch.where(dr[:, 2] > 1e-4, w, torch.zeros_like(w))
    valid = w > 0
    n_valid = int(valid.sum())
    if n_valid < 4:
        return f"fewer than 4 valid rays ({n_valid})"
    dst = dr[:, :2] / dr[:, 2:3].clamp_min(1e-4)

    # Hartley normalisation of the destination plane (src is already in [-1, 1]).
    c = (dst * w[:, None]).sum(0) / w.sum()
    s = ((((dst - c) ** 2).sum(-1) * w).sum() / w.sum()).sqrt().clamp_min(1e-12) / 2**0.5
    dst_n = (dst - c) / s
    T_inv = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=d.dtype, device=d.device)
    T_inv[0, 0] = T_inv[1, 1] = s
    T_inv[:2, 2] = c

    # RANSAC candidates: the top_ratio most confident rays (ties broken randomly).
    keys = torch.rand(N, generator=gen, dtype=torch.float64).to(d.device)
    perm = torch.argsort(keys)
    order = perm[torch.argsort(w[perm], descending=True, stable=True)]
    n_cand = min(max(k, int(N * top_ratio)), n_valid)
    k = min(k, n_cand)
    cand = order[:n_cand]
    if n_cand <= 4096:  # distinct indices per sample
        samples = torch.rand(n_iter, n_cand, generator=gen).argsort(-1)[:, :k]
    else:  # rare duplicates are harmless (k >= 4 distinct points remain likely), much cheaper
        samples = torch.randint(0, n_cand, (n_iter, k), generator=gen)
    idx = cand[samples.to(d.device)]  # (n_iter, k)
    H_hyp, _ = _dlt(src[idx], dst_n[idx], w[idx])
    H_hyp = T_inv @ H_hyp

    if n_valid > max_eval:  # score hypotheses on a random subset of the valid rays
        ev = torch.topk(torch.where(valid, keys, torch.full_like(keys, -1.0)), max_eval).indices
    else:
        ev = valid.nonzero().squeeze(-1)
    err = _transfer_error(H_hyp, src[ev], dst[ev])
    score = ((err < thr) * w[ev]).sum(-1)
    if not float(score.max()) > 0:
        return "no RANSAC hypothesis has inliers"
    H_best = H_hyp[torch.argmax(score)]

    # Refit on all inliers with weights.
    inl = (_transfer_error(H_best, src, dst) < thr) & valid
    if int(inl.sum()) < 4:
        return f"fewer than 4 inlier rays ({int(inl.sum())})"
    wi = w * inl
    sc = src - (src * wi[:, None]).sum(0) / wi.sum()
    cov = (sc[:, :, None] * sc[:, None, :] * wi[:, None, None]).sum(0) / wi.sum()
    ev2 = torch.linalg.eigvalsh(cov)
    if not float(ev2[0]) > 1e-10 * max(float(ev2[1]), 1e-300):
        return "valid rays come from collinear (or coincident) pixels"
    H_n, evals = _dlt(src, dst_n, wi)
    if not float(evals[1]) > 1e-12 * float(evals[-1]):
        return "homography fit is ambiguous (rank-deficient)"
    H_fin = T_inv @ H_n  # maps src to the rotated direction plane
    A = Q0.T @ H_fin
    det = torch.linalg.det(A)
    if not (torch.isfinite(A).all() and float(det.abs()) > 1e-12 * float(A.norm()) ** 3):
        return "fitted homography is singular"
    A = A * torch.sign(det)
    R, U = torch.linalg.qr(A)
    sgn = torch.where(torch.diagonal(U) < 0, -1.0, 1.0).to(A.dtype)
    R = R * sgn  # scales columns
    U = sgn[:, None] * U
    H, W = hw
    Nm = torch.tensor([[W / 2, 0.0, W / 2], [0.0, H / 2, H / 2], [0.0, 0.0, 1.0]], dtype=A.dtype, device=A.device)
    Uinv = torch.linalg.solve_triangular(U, torch.eye(3, dtype=A.dtype, device=A.device), upper=True)
    K = Nm @ Uinv
    K = torch.triu(K / K[2, 2])
    if not (torch.isfinite(K).all() and torch.isfinite(R).all() and torch.isfinite(t).all()):
        return "non-finite result"
    inlier_ratio = float(((_transfer_error(H_fin, src, dst) < thr) & valid).sum()) / n_valid
    c2w = torch.eye(4, dtype=A.dtype, device=A.device)
    c2w[:3, :3] = R
    c2w[:3, 3] = t
    return c2w, K, inlier_ratio


def pose_from_ray_map(
    rays: torch.Tensor,
    conf: torch.Tensor | None = None,
    image_hw=None,
    *,
    reproj_threshold: float = 0.2,
    n_iter: int = 100,
    sample_size: int = 8,
    top_ratio: float = 0.3,
    max_eval_points: int = 16384,
    seed: int = 0,
    generator: torch.Generator | None = None,
    strict: bool = False,
) -> RayPoseResult:
    """Recover camera-to-world pose and intrinsics from a ray map.

    Args:
        rays: (..., h, w, 6), channels 0:3 world direction (any positive scale
            per pixel), 3:6 origin (camera centre); see ``rays.ray_map``.
        conf: (..., h, w) non-negative confidence; None = all ones.
        image_hw: (H, W) of the image the returned ``K`` refers to; default (h, w).
        reproj_threshold: RANSAC inlier threshold in the direction plane (x/z, y/z).
        n_iter, sample_size, top_ratio: RANSAC iterations, minimal-sample size and
            fraction of most confident rays that samples are drawn from.
        max_eval_points: hypotheses are scored on at most this many random valid rays.
        seed / generator: randomness (a CPU ``torch.Generator`` overrides ``seed``);
            the result is deterministic for a given seed.
        strict: raise :class:`GeometryError` instead of returning ``valid=False``.
    Returns:
        :class:`RayPoseResult` in ``rays.dtype`` on ``rays.device``.
    """
    check_shape(rays, "rays", (None, None, 6))
    h, w = int(rays.shape[-3]), int(rays.shape[-2])
    batch = rays.shape[:-3]
    if conf is None:
        conf = torch.ones(rays.shape[:-1], dtype=rays.dtype, device=rays.device)
    check_shape(conf, "conf", (h, w))
    if conf.shape != rays.shape[:-1]:
        raise GeometryError(f"conf: expected shape {tuple(rays.shape[:-1])}, got {tuple(conf.shape)}")
    if bool((conf < 0).any()):
        raise GeometryError("conf: confidences must be non-negative")
    if strict:
        check_finite(rays, "rays")
        check_finite(conf, "conf")
    hw = check_hw((h, w) if image_hw is None else image_hw)
    if not (n_iter >= 1 and sample_size >= 4 and 0 < top_ratio <= 1 and reproj_threshold > 0 and max_eval_points >= 4):
        raise GeometryError("RANSAC parameters: need n_iter >= 1, sample_size >= 4, 0 < top_ratio <= 1, threshold > 0")
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)

    f64 = torch.float64
    r = rays.reshape(-1, h * w, 6).to(f64)
    cf = conf.reshape(-1, h * w).to(f64)
    ok = torch.isfinite(r).all(-1) & torch.isfinite(cf) & (cf > 0)
    r = torch.where(ok[..., None], r, torch.zeros_like(r))
    cf = torch.where(ok, cf, torch.zeros_like(cf))
    ys = (torch.arange(h, dtype=f64, device=rays.device) + 0.5) * (2.0 / h) - 1.0
    xs = (torch.arange(w, dtype=f64, device=rays.device) + 0.5) * (2.0 / w) - 1.0
    src = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)

    n = r.shape[0]
    c2w = torch.eye(4, dtype=f64, device=rays.device).repeat(n, 1, 1)
    K = torch.eye(3, dtype=f64, device=rays.device).repeat(n, 1, 1)
    ratio = torch.zeros(n, dtype=f64, device=rays.device)
    valid = torch.zeros(n, dtype=torch.bool, device=rays.device)
    for b in range(n):
        out = _solve_one(src, r[b, :, :3], r[b, :, 3:], cf[b], hw, reproj_threshold, n_iter,
                         sample_size, top_ratio, max_eval_points, gen)
        if isinstance(out, str):
            if strict:
                raise GeometryError(f"rays: view {b} of {n}: {out}")
            continue
        c2w[b], K[b], ratio[b], valid[b] = out[0], out[1], out[2], True
    dt = rays.dtype
    return RayPoseResult(
        c2w=c2w.to(dt).reshape(batch + (4, 4)),
        K=K.to(dt).reshape(batch + (3, 3)),
        inlier_ratio=ratio.to(dt).reshape(batch),
        valid=valid.reshape(batch),
    )
