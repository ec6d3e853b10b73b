"""Scale-and-shift alignment of relative depth to a target: least squares, weighted L1 and RANSAC.

All fits solve ``target ~= s * pred + t`` over the masked elements of the last dimension:

* :func:`lstsq_scale_shift`: weighted least squares, closed form, batched over leading dims.
* :func:`l1_scale_shift`: weighted L1, ``argmin_{s > 0, t} sum_i w_i |s p_i + t - g_i|``, by
  iteratively reweighted least squares (IRLS), batched. This is the documented simplification of
  MoGe's ROE solver (which finds the exact L1 optimum by enumerating candidate solutions): both
  minimise the same weighted-L1 objective; IRLS reaches it to a tolerance after a few iterations.
* :func:`robust_scale_shift`: RANSAC least squares with ``s > 0`` for sparse, outlier-ridden
  metric depth (SfM points, sensor depth), as in the DA3 paper (section 4, teacher labels):
  ``(s, t) = argmin_{s > 0, t} sum_p m_p (s D~_p + t - D_p)^2`` with an inlier threshold equal to
  the mean absolute deviation of the residuals from their median.
"""

from __future__ import annotations

import torch

from .errors import GeometryError

__all__ = ["l1_scale_shift", "lstsq_scale_shift", "robust_scale_shift"]


def _flat(pred, target, mask, weight):
    if pred.shape != target.shape:
        raise GeometryError(f"pred/target: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    w = torch.ones_like(pred) if weight is None else weight.to(pred.dtype).expand_as(pred)
    if mask is not None:
        if mask.shape != pred.shape:
            raise GeometryError(f"mask: expected shape {tuple(pred.shape)}, got {tuple(mask.shape)}")
        w = w * mask.to(pred.dtype)
    return w


def lstsq_scale_shift(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                      weight: torch.Tensor | None = None, eps: float = 1e-12,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least squares ``argmin_{s,t} sum_i w_i (s p_i + t - g_i)^2`` over the last dim.

    Args:
        pred, target: (..., N); mask: (..., N) bool or None; weight: (..., N) >= 0 or None.
    Returns:
        s, t: (...). ``s = cov_w(p, g) / var_w(p)``, ``t = mean_w(g) - s mean_w(p)``; with no
        spread in ``p`` (or fewer than 2 samples) ``s = 0`` and ``t = mean_w(g)``; with no
        samples at all ``s = 1, t = 0``. Differentiable.
    """
    w = _flat(pred, target, mask, weight)
    W = w.sum(-1)
    Wc = W.clamp_min(eps)
    mp = (w * pred).sum(-1) / Wc
    mg = (w * target).sum(-1) / Wc
    dp = pred - mp[..., None]
    var = (w * dp * dp).sum(-1)
    cov = (w * dp * (target - mg[..., None])).sum(-1)
    ok = var > eps * (1.0 + (w * pred * pred).sum(-1))
    s = torch.where(ok, cov / torch.where(ok, var, torch.ones_like(var)), torch.zeros_like(var))
    t = mg - s * mp
    empty = W <= 0
    s = torch.where(empty, torch.ones_like(s), s)
    t = torch.where(empty, torch.zeros_like(t), t)
    return s, t


def l1_scale_shift(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                   weight: torch.Tensor | None = None, iters: int = 10, min_scale: float = 1e-6,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted-L1 fit ``argmin_{s >= min_scale, t} sum_i w_i |s p_i + t - g_i|`` (IRLS).

    Starts from the weighted least-squares fit, then ``iters`` times re-solves least squares
    with weights ``w_i / max(|r_i|, delta)`` (``delta`` = 1e-6 times the mean absolute
    residual of the start). A scale below ``min_scale`` is clamped and ``t`` re-fitted as the
    weighted mean of ``g - s p``. Runs without gradient: the result is an alignment, not a
    path for gradients (at the L1 optimum the gradient through (s, t) vanishes anyway).

    Args: as :func:`lstsq_scale_shift`. Returns s, t: (...), detached.
    """
    with torch.no_grad():
        p, g = pred.detach(), target.detach()
        w = _flat(p, g, mask, None if weight is None else weight.detach())
        s, t = lstsq_scale_shift(p, g, None, w)
        r0 = ((s[..., None] * p + t[..., None] - g).abs() * w).sum(-1) / w.sum(-1).clamp_min(1e-12)
        delta = (1e-6 * r0).clamp_min(1e-12)[..., None]
        for _ in range(iters):
            r = (s[..., None] * p + t[..., None] - g).abs()
            s, t = lstsq_scale_shift(p, g, None, w / torch.maximum(r, delta))
        low = s < min_scale
        if bool(low.any()):
            s = torch.where(low, torch.full_like(s, min_scale), s)
            t_re = (w * (g - s[..., None] * p)).sum(-1) / w.sum(-1).clamp_min(1e-12)
            t = torch.where(low, t_re, t)
    return s, t


def robust_scale_shift(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                       iters: int = 100, generator: torch.Generator | None = None,
                       sample_size: int = 3, max_eval: int = 20000, refine: int = 3,
                       return_inliers: bool = False):
    """RANSAC least-squares scale and shift with ``s > 0``: ``target ~= s * pred + t``.

    1. ``iters`` hypotheses, each the least-squares fit on ``sample_size`` random masked
       elements; hypotheses with ``s <= 0`` are discarded.
    2. Each hypothesis is scored by the median absolute residual ``median_i |s p_i + t - g_i|``
       (least median of squares) over the masked elements (a random subset of ``max_eval``
       elements when there are more). The best one wins.
    3. Inlier threshold (DA3 paper): the mean absolute deviation of the winner's residuals
       ``r_i`` from their median, ``tau = mean_i |r_i - median(r)|``; inliers ``|r_i| <= tau``
       (at least the ``sample_size`` best-fitting elements are kept).
    4. Least-squares refit on the inliers. Steps 3-4 run ``refine`` times; from the second
       round on, the threshold is the same statistic over the current inliers' residuals only
       (the first round's threshold, inflated by the outliers, still admits those that happen
       to lie near the line; re-estimating it removes them). A refit with ``s <= 0`` stops
       the refinement and keeps the previous fit.

    Args:
        pred, target: any shape, e.g. (H, W) or (N,); mask: same shape, bool, or None (all).
        iters: number of hypotheses; generator: torch RNG for reproducible sampling
            (default: a fresh generator seeded with 0, so calls are deterministic).
        return_inliers: also return the inlier mask (same shape as ``pred``).
    Returns:
        (s, t) as 0-d float64 tensors, or (s, t, inliers) with the inliers of the final fit
        (all valid elements when no refit succeeded).
    Raises:
        GeometryError: shapes differ, or fewer than 2 finite masked elements with ``pred``
            spread (the fit is undetermined), or no hypothesis with ``s > 0``.
    """
    if pred.shape != target.shape:
        raise GeometryError(f"pred/target: shapes differ, {tuple(pred.shape)} vs {tuple(target.shape)}")
    m = torch.isfinite(pred) & torch.isfinite(target)
    if mask is not None:
        if mask.shape != pred.shape:
            raise GeometryError(f"mask: expected shape {tuple(pred.shape)}, got {tuple(mask.shape)}")
        m = m & mask.bool()
    idx = m.reshape(-1).nonzero().squeeze(-1)
    n = int(idx.numel())
    if n < 2:
        raise GeometryError(f"robust_scale_shift: need at least 2 valid elements, got {n}")
    p = pred.reshape(-1)[idx].double()
    g = target.reshape(-1)[idx].double()
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    k = max(2, min(sample_size, n))
    samp = torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(iters)]).to(p.device)
    s_h, t_h = lstsq_scale_shift(p[samp], g[samp])  # (iters,)
    ok = s_h > 0
    if not bool(ok.any()):
        s_all, t_all = lstsq_scale_shift(p, g)
        if not bool(s_all > 0):
            raise GeometryError("robust_scale_shift: no fit with a positive scale")
        s_h, t_h, ok = s_all[None], t_all[None], torch.ones(1, dtype=torch.bool, device=p.device)
    s_h, t_h = s_h[ok], t_h[ok]
    ev = torch.randperm(n, generator=gen)[:max_eval].to(p.device) if n > max_eval else slice(None)
    score = (s_h[:, None] * p[ev][None] + t_h[:, None] - g[ev][None]).abs().median(-1).values
    best = int(score.argmin())
    s, t = s_h[best], t_h[best]
    inl = torch.ones_like(p, dtype=torch.bool)
    for _ in range(max(1, refine)):
        r = s * p + t - g
        rin = r[inl]
        tau = (rin - rin.median()).abs().mean()
        cand = r.abs() <= tau
        if int(cand.sum()) < k:
            cand = torch.zeros_like(cand)
            cand[r.abs().argsort()[:k]] = True
        s2, t2 = lstsq_scale_shift(p, g, cand)
        if not bool(s2 > 0):
            break
        s, t, inl = s2, t2, cand
    if not return_inliers:
        return s, t
    full = torch.zeros(pred.numel(), dtype=torch.bool, device=pred.device)
    full[idx[inl.to(idx.device)]] = True
    return s, t, full.reshape(pred.shape)
