"""Similarity (Sim(3)) alignment: Umeyama and camera-trajectory alignment.

Convention: a :class:`Sim3` maps points ``p`` of the source frame to
``s R p + t`` in the destination frame. Applied to a camera, it maps the
source ``c2w`` to ``[R R_i | s R t_i + t]`` (the rotation stays orthonormal).

Degenerate input: :func:`umeyama` raises :class:`GeometryError` when the
rotation is ambiguous, i.e. fewer than 3 points with positive weight, or
collinear / coincident points in either set (rank of the cross-covariance
< 2, relative tolerance ``rank_tol``). :func:`align_cameras` can instead fall
back to the camera orientations (``orientation_fallback=True``), which makes
1- and 2-view alignment (and straight-line trajectories) well defined.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .conventions import as_homogeneous
from .errors import GeometryError, check_finite, check_shape

__all__ = ["Sim3", "umeyama", "align_cameras", "align_cameras_batched", "apply_sim3_to_c2w",
           "max_trace_rotation"]


@dataclass
class Sim3:
    """``x -> s R x + t``. R: (..., 3, 3), t: (..., 3), s: (...)."""

    R: torch.Tensor
    t: torch.Tensor
    s: torch.Tensor

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        """points: (..., N, 3) -> (..., N, 3)."""
        check_shape(points, "points", (None, 3))
        R, t, s = self.R.to(points.dtype), self.t.to(points.dtype), self.s.to(points.dtype)
        return s[..., None, None] * (points @ R.transpose(-1, -2)) + t[..., None, :]

    def matrix(self) -> torch.Tensor:
        """(..., 4, 4) homogeneous matrix ``[[s R, t], [0, 1]]``."""
        return as_homogeneous(torch.cat([self.s[..., None, None] * self.R, self.t[..., :, None]], dim=-1))

    def inverse(self) -> "Sim3":
        Rt = self.R.transpose(-1, -2)
        return Sim3(Rt, -(Rt @ self.t[..., :, None])[..., 0] / self.s[..., None], 1.0 / self.s)


def umeyama(
    src: torch.Tensor,
    dst: torch.Tensor,
    weights: torch.Tensor | None = None,
    with_scale: bool = True,
    rank_tol: float = 1e-8,
) -> Sim3:
    """Least-squares similarity with ``dst ~= s R src + t`` (Umeyama 1991).

    Args:
        src, dst: (..., N, 3) corresponding points.
        weights: (..., N) non-negative, or None for uniform.
        with_scale: if False, ``s = 1`` (rigid alignment).
        rank_tol: the second singular value of the weighted cross-covariance
            must exceed ``rank_tol`` times the first.
    Returns:
        :class:`Sim3` with batch dims ``...``, computed in float64 and returned
        in the promoted dtype of ``src``/``dst``.
    Raises:
        GeometryError: bad shapes, non-finite values, negative weights, or an
            ambiguous rotation (fewer than 3 weighted points, collinear or
            coincident points).
    """
    check_shape(src, "src", (None, 3))
    check_shape(dst, "dst", (None, 3))
    if src.ndim < 2 or src.shape != dst.shape:
        raise GeometryError(f"src/dst: expected equal shapes (..., N, 3), got {tuple(src.shape)} and {tuple(dst.shape)}")
    check_finite(src, "src")
    check_finite(dst, "dst")
    out_dtype = torch.promote_types(src.dtype, dst.dtype)
    f64 = torch.float64
    x, y = src.to(f64), dst.to(f64)
    if weights is None:
        w = torch.ones(src.shape[:-1], dtype=f64, device=src.device)
    else:
        check_shape(weights, "weights", (src.shape[-2],))
        if weights.shape != src.shape[:-1]:
            raise GeometryError(f"weights: expected shape {tuple(src.shape[:-1])}, got {tuple(weights.shape)}")
        check_finite(weights, "weights")
        if bool((weights < 0).any()):
            raise GeometryError("weights: must be non-negative")
        w = weights.to(f64)
    n_pos = (w > 0).sum(-1)
    if bool((n_pos < 3).any()):
        raise GeometryError(
            f"src/dst: need at least 3 non-collinear points with positive weight, got {int(n_pos.min())}"
        )
    w = w / w.sum(-1, keepdim=True)
    mu_x = (w[..., None] * x).sum(-2)
    mu_y = (w[..., None] * y).sum(-2)
    xc, yc = x - mu_x[..., None, :], y - mu_y[..., None, :]
    var_x = (w * (xc * xc).sum(-1)).sum(-1)
    cov = (yc * w[..., None]).transpose(-1, -2) @ xc  # (..., 3, 3)
    U, D, Vh = torch.linalg.svd(cov)
    if not bool((D[..., 1] > rank_tol * D[..., 0]).all()):
        raise GeometryError(
            "src/dst: need at least 3 non-collinear points (collinear or coincident points "
            "make the rotation ambiguous)"
        )
    S = torch.ones_like(D)
    S[..., 2] = torch.sign(torch.linalg.det(U) * torch.linalg.det(Vh))
    S[..., 2] = torch.where(S[..., 2] == 0, torch.ones_like(S[..., 2]), S[..., 2])
    R = U @ (S[..., :, None] * Vh)
    s = (D * S).sum(-1) / var_x if with_scale else torch.ones_like(var_x)
    t = mu_y - s[..., None] * (R @ mu_x[..., :, None])[..., 0]
    return Sim3(R.to(out_dtype), t.to(out_dtype), s.to(out_dtype))


def apply_sim3_to_c2w(sim3: Sim3, c2w: torch.Tensor) -> torch.Tensor:
    """Transform cameras: ``c2w: (..., 4, 4)`` -> (..., 4, 4) ``[R R_i | s R t_i + t]``.

    Batch dims of ``sim3`` broadcast against those of ``c2w`` (right-aligned).
    """
    check_shape(c2w, "c2w", (4, 4))
    R, t, s = sim3.R.to(c2w.dtype), sim3.t.to(c2w.dtype), sim3.s.to(c2w.dtype)
    Rn = R @ c2w[..., :3, :3]
    tn = s[..., None] * (R @ c2w[..., :3, 3:])[..., 0] + t
    return as_homogeneous(torch.cat([Rn, tn[..., None]], dim=-1))


def _project_so3(M: torch.Tensor) -> torch.Tensor:
    """Nearest rotation to ``M: (..., 3, 3)`` (Frobenius), by SVD (the per-sample path)."""
    U, _, Vh = torch.linalg.svd(M)
    S = torch.ones(M.shape[:-1], dtype=M.dtype, device=M.device)
    S[..., 2] = torch.where(torch.linalg.det(U @ Vh) >= 0, 1.0, -1.0)
    return U @ (S[..., :, None] * Vh)


def _horn_matrix(M: torch.Tensor) -> torch.Tensor:
    """``M: (..., 3, 3)`` -> the symmetric ``(..., 4, 4)`` N with ``q^T N q = tr(R(q)^T M)`` for
    unit wxyz quaternions q (Horn 1987): its top eigenvector is the rotation maximising the
    trace, its top eigenvalue that maximum."""
    m = M.unbind(-2)
    (m00, m01, m02), (m10, m11, m12), (m20, m21, m22) = (r.unbind(-1) for r in m)
    rows = ((m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01),
            (m21 - m12, m00 - m11 - m22, m01 + m10, m02 + m20),
            (m02 - m20, m01 + m10, m11 - m00 - m22, m12 + m21),
            (m10 - m01, m02 + m20, m12 + m21, m22 - m00 - m11))
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def max_trace_rotation(M: torch.Tensor, squarings: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotation ``R`` in SO(3) maximising ``tr(R^T M)`` and that maximum, per matrix of
    ``M: (..., 3, 3)``, without SVD or eigensolvers (whose CUDA versions read a convergence
    flag on the host): the top eigenvector of Horn's 4x4 matrix, by power iteration through
    ``squarings`` repeated squarings of its shifted, normalised form (power ``2**squarings``),
    then two plain iterations. Equals the SVD solution ``U diag(1, 1, det(U V^T)) V^T`` (the
    maximum is ``s1 + s2 + sign(det M) s3``) wherever the top eigenvalue is simple, to the
    dtype's precision; where it is not (the rotation is ambiguous, e.g. ``M`` of rank <= 1),
    one of the maximisers. Returns ``(R (..., 3, 3), max (...))`` in ``M``'s dtype."""
    from .quaternion import quat_to_mat

    N = _horn_matrix(M)
    tiny = torch.finfo(M.dtype).tiny
    eye = torch.eye(4, dtype=M.dtype, device=M.device)
    # eigenvalues of N / |N|_F lie in [-1, 1]: A is positive semi-definite, same eigenvectors
    A = N / N.flatten(-2).norm(dim=-1).clamp_min(tiny)[..., None, None] + eye
    P = A
    for _ in range(squarings):
        P = P @ P
        P = P / P.flatten(-2).norm(dim=-1).clamp_min(tiny)[..., None, None]
    # P ~ v v^T: its column of largest diagonal entry is v scaled by |v_j| >= 1/2
    j = P.diagonal(dim1=-2, dim2=-1).argmax(dim=-1)
    q = torch.take_along_dim(P, j[..., None, None].expand(*P.shape[:-1], 1), dim=-1)
    for _ in range(2):
        q = A @ q
        q = q / q.norm(dim=-2, keepdim=True).clamp_min(tiny)
    q = q[..., 0]
    return quat_to_mat(q), (q * (N @ q[..., None])[..., 0]).sum(-1)


def _align_with_orientations(c2w_src, c2w_dst, cs, cd, with_scale, lsq_scale=False,
                             project=_project_so3) -> Sim3:
    """Rotation = chordal mean of ``R_dst_i R_src_i^T``; scale from the centre spreads, or
    (``lsq_scale``) the one minimising ``sum |s R c_src_i + t - c_dst_i|^2`` for that rotation
    when it is positive (else the spread ratio); 1 when the source centres coincide (spread
    below ``max(1e-20, (100 eps)^2)`` of their squared norms). The translation maps the source
    centroid onto the destination's.

    Batched over leading dims (``c2w_*: (..., N, 4, 4)``, ``cs, cd: (..., N, 3)``) and free of
    host reads (branches are ``torch.where``); ``project`` maps ``(..., 3, 3)`` to the nearest
    rotation (SVD, or :func:`max_trace_rotation` on the device)."""
    M = (c2w_dst[..., :3, :3] @ c2w_src[..., :3, :3].transpose(-1, -2)).sum(-3)
    R = project(M)
    mu_s, mu_d = cs.mean(-2), cd.mean(-2)
    xs, xd = cs - mu_s[..., None, :], cd - mu_d[..., None, :]
    var_s = (xs**2).sum((-1, -2))
    one = torch.ones_like(var_s)
    s = one
    if with_scale:  # coincident centres: spread at the level of the centroid's rounding
        rel = max(1e-20, (100 * torch.finfo(cs.dtype).eps) ** 2)
        spread = var_s > rel * torch.maximum((cs**2).sum((-1, -2)), one)
        var = torch.where(spread, var_s, one)
        s = ((xd**2).sum((-1, -2)) / var).sqrt()
        if lsq_scale:
            s_lsq = (xd * (xs @ R.transpose(-1, -2))).sum((-1, -2)) / var
            s = torch.where(s_lsq > 0, s_lsq, s)
        s = torch.where(spread, s, one)
    return Sim3(R, mu_d - s[..., None] * (R @ mu_s[..., :, None])[..., 0], s)


def _ransac_sim3(cs, cd, with_scale, seed, n_iters, sub_n, inlier_thresh) -> Sim3:
    n = cs.shape[0]
    sub_n = max(3, (n + 1) // 2) if sub_n is None else max(3, min(sub_n, n))
    sim0 = umeyama(cs, cd, with_scale=with_scale)
    if inlier_thresh is None:  # median distance of aligned src centres to their nearest dst centre
        inlier_thresh = float(torch.cdist(sim0.apply(cs), cd).min(-1).values.median())
    gen = torch.Generator().manual_seed(seed)
    best, best_inl, best_key = sim0, None, (-1, float("inf"))
    for _ in range(n_iters):
        idx = torch.randperm(n, generator=gen)[:sub_n].to(cs.device)
        try:
            sim = umeyama(cs[idx], cd[idx], with_scale=with_scale)
        except GeometryError:
            continue
        err = (sim.apply(cs) - cd).norm(dim=-1)
        inl = err <= inlier_thresh
        k = int(inl.sum())
        mean_err = float(err[inl].mean()) if k > 0 else float("inf")
        if k > best_key[0] or (k == best_key[0] and mean_err < best_key[1]):
            best, best_inl, best_key = sim, inl, (k, mean_err)
    if best_inl is not None and int(best_inl.sum()) >= 3:
        try:
            return umeyama(cs[best_inl], cd[best_inl], with_scale=with_scale)
        except GeometryError:
            pass
    return best


def align_cameras(
    c2w_src: torch.Tensor,
    c2w_dst: torch.Tensor,
    ransac: bool = False,
    seed: int = 0,
    with_scale: bool = True,
    orientation_fallback: bool = False,
    ransac_iters: int = 10,
    sub_n: int | None = None,
    inlier_thresh: float | None = None,
    rotation: str = "centres",
) -> tuple[Sim3, torch.Tensor]:
    """Align a source trajectory to a destination one by their camera centres (or, with
    ``rotation="orientations"``, by their orientations and centres).

    Args:
        c2w_src, c2w_dst: (N, 4, 4) corresponding OpenCV camera-to-world poses.
        ransac: robust variant of the official DA3 evaluation: ``ransac_iters``
            Umeyama fits on random subsets of ``sub_n`` (default
            ``max(3, ceil(N/2))``) centres, inliers within ``inlier_thresh``
            (default: median nearest-centre distance after a plain Umeyama
            pre-alignment), refit on the best inlier set. Deterministic in ``seed``.
        with_scale: estimate the scale (Sim(3)) or not (SE(3)).
        orientation_fallback: when the centres are degenerate (N < 3, collinear
            or coincident), take the rotation as the chordal mean of
            ``R_dst R_src^T``, the scale as the ratio of centre spreads (1 if
            none) and the translation from the centroids, instead of raising.
        rotation: ``"centres"`` (Umeyama / RANSAC on the centres alone: the official
            evaluation's alignment) or ``"orientations"``: the rotation is the chordal mean
            of ``R_dst R_src^T`` (every camera's orientation votes), then scale and
            translation are the least-squares fit of the centres for that rotation. For
            rendering held-out views through aligned predicted cameras: with few views, or
            predicted centres that are nearly coincident or collinear, a centre-only fit
            leaves the rotation almost free and can turn the scene away from the targets;
            with accurate predictions both give the same result. ``ransac`` is ignored.
    Returns:
        (sim3, c2w_aligned) with ``c2w_aligned = apply_sim3_to_c2w(sim3, c2w_src)``
        (N, 4, 4) ~= ``c2w_dst``; ``sim3`` is float64 and ``c2w_aligned`` has
        ``c2w_src.dtype``.
    """
    for name, c in (("c2w_src", c2w_src), ("c2w_dst", c2w_dst)):
        check_shape(c, name, (4, 4))
        if c.ndim != 3 or c.shape[0] < 1:
            raise GeometryError(f"{name}: expected shape (N, 4, 4) with N >= 1, got {tuple(c.shape)}")
        check_finite(c, name)
    if c2w_src.shape != c2w_dst.shape:
        raise GeometryError(f"c2w_src/c2w_dst: shapes differ, {tuple(c2w_src.shape)} vs {tuple(c2w_dst.shape)}")
    a, b = c2w_src.to(torch.float64), c2w_dst.to(torch.float64)
    cs, cd = a[:, :3, 3], b[:, :3, 3]
    if rotation not in ("centres", "orientations"):
        raise GeometryError(f"rotation: expected 'centres' or 'orientations', got {rotation!r}")
    if rotation == "orientations":
        sim = _align_with_orientations(a, b, cs, cd, with_scale, lsq_scale=True)
        return sim, apply_sim3_to_c2w(sim, c2w_src)
    try:
        if ransac:
            sim = _ransac_sim3(cs, cd, with_scale, seed, ransac_iters, sub_n, inlier_thresh)
        else:
            sim = umeyama(cs, cd, with_scale=with_scale)
    except GeometryError as e:
        if not orientation_fallback:
            raise GeometryError(
                "c2w_src/c2w_dst: need at least 3 non-collinear camera centres "
                f"({e}); pass orientation_fallback=True to use camera orientations"
            ) from None
        sim = _align_with_orientations(a, b, cs, cd, with_scale)
    return sim, apply_sim3_to_c2w(sim, c2w_src)


def align_cameras_batched(c2w_src: torch.Tensor, c2w_dst: torch.Tensor,
                          rotation: str = "orientations", with_scale: bool = True,
                          rank_tol: float = 1e-8) -> tuple[Sim3, torch.Tensor]:
    """:func:`align_cameras` for a batch of trajectories, on their device, with no host reads
    (no ``float(tensor)``, no checks of values), so a training step can align every sample
    without a device sync.

    Args:
        c2w_src, c2w_dst: ``(..., N, 4, 4)`` corresponding OpenCV camera-to-world poses,
            float32 or float64 (computed in that dtype; float64 costs little on these sizes).
        rotation: ``"orientations"``: as ``align_cameras(..., rotation="orientations")``
            (rotation = chordal mean of ``R_dst R_src^T``, scale and translation the least
            squares of the centres for it); ``"centres"``: as ``align_cameras(...,
            orientation_fallback=True)`` without RANSAC: Umeyama on the centres, or the
            orientation fallback for samples whose centres are degenerate (N < 3, collinear or
            coincident: the second singular value of the cross-covariance is at most
            ``max(rank_tol, 100 eps)`` times the first, judged from its 2x2 minors).
        with_scale: Sim(3) (True) or SE(3).
    Returns:
        ``(sim3, c2w_aligned)``: :class:`Sim3` with batch dims ``...`` and ``(..., N, 4, 4)``
        aligned cameras, both in the input dtype. Non-finite input gives non-finite output
        (no error). The nearest rotations come from :func:`max_trace_rotation` instead of an
        SVD; agreement with the per-sample float64 :func:`align_cameras` is to the dtype's
        precision (tests/geometry/test_align.py).
    Raises:
        GeometryError: bad shapes or ``rotation``.
    """
    for name, c in (("c2w_src", c2w_src), ("c2w_dst", c2w_dst)):
        if c.ndim < 3 or c.shape[-2:] != (4, 4) or c.shape[-3] < 1:
            raise GeometryError(f"{name}: expected shape (..., N, 4, 4) with N >= 1, got "
                                f"{tuple(c.shape)}")
    if c2w_src.shape != c2w_dst.shape:
        raise GeometryError(f"c2w_src/c2w_dst: shapes differ, {tuple(c2w_src.shape)} vs "
                            f"{tuple(c2w_dst.shape)}")
    if rotation not in ("centres", "orientations"):
        raise GeometryError(f"rotation: expected 'centres' or 'orientations', got {rotation!r}")
    dtype = torch.promote_types(c2w_src.dtype, c2w_dst.dtype)
    a, b = c2w_src.to(dtype), c2w_dst.to(dtype)
    cs, cd = a[..., :3, 3], b[..., :3, 3]
    project = lambda M: max_trace_rotation(M)[0]  # noqa: E731
    orient = _align_with_orientations(a, b, cs, cd, with_scale, lsq_scale=rotation != "centres",
                                      project=project)
    if rotation == "orientations":
        return orient, _apply_per_sample(orient, a)
    # Umeyama with uniform weights: s = max_R tr(R^T cov) / var_src (= sum(D * S) / var_x)
    n = cs.shape[-2]
    mu_s, mu_d = cs.mean(-2), cd.mean(-2)
    xs, xd = cs - mu_s[..., None, :], cd - mu_d[..., None, :]
    var_s = (xs**2).sum((-1, -2)) / n
    cov = xd.transpose(-1, -2) @ xs / n
    R, trace = max_trace_rotation(cov)
    s = trace / var_s.clamp_min(torch.finfo(dtype).tiny) if with_scale else torch.ones_like(trace)
    # rank >= 2 <=> s1 s2 > 0: sum of squared 2x2 minors (s1 s2)^2 + ... against |cov|_F^4
    r0, r1, r2 = cov.unbind(-2)
    minors = torch.stack([torch.linalg.cross(r1, r2), torch.linalg.cross(r2, r0),
                          torch.linalg.cross(r0, r1)], dim=-2)
    tol = max(rank_tol, 100 * torch.finfo(dtype).eps)
    ok = (minors**2).sum((-1, -2)) > tol**2 * (cov**2).sum((-1, -2)) ** 2
    if n < 3:
        ok = torch.zeros_like(ok)
    R = torch.where(ok[..., None, None], R, orient.R)
    s = torch.where(ok, s, orient.s)
    sim = Sim3(R, mu_d - s[..., None] * (R @ mu_s[..., :, None])[..., 0], s)
    return sim, _apply_per_sample(sim, a)


def _apply_per_sample(sim3: Sim3, c2w: torch.Tensor) -> torch.Tensor:
    """``sim3`` with batch dims ``...`` applied to every camera of ``c2w: (..., N, 4, 4)``."""
    return apply_sim3_to_c2w(Sim3(sim3.R[..., None, :, :], sim3.t[..., None, :],
                                  sim3.s[..., None]), c2w)
