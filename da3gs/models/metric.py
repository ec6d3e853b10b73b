"""Metric scaling and sky handling of the monocular / metric / nested models.

Deviation from the official code, on purpose: quantiles are computed exactly (the official code
sub-samples 100k random elements for large inputs, which makes results non-deterministic). For
inputs below 100k elements both agree exactly.
"""

from __future__ import annotations

import torch

from da3gs.errors import Da3gsError

SKY_THRESHOLD = 0.3  # sky map values at or above this are sky
METRIC_FOCAL = 300.0  # the metric head predicts depth for a focal length of 300 px


def quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Exact linear-interpolated quantile of all elements (works beyond torch.quantile's size cap)."""
    x = x.reshape(-1).float()
    if x.numel() <= 16_000_000:
        return torch.quantile(x, q)
    s, _ = torch.sort(x)
    pos = q * (s.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, s.numel() - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def fill_sky(depth: torch.Tensor, sky: torch.Tensor, conf: torch.Tensor | None = None,
             cap: float | None = None):
    """Set sky pixels to the 99th percentile of non-sky depth (capped at ``cap``).

    ``depth, sky, conf: (B, V, H, W)``. Returns (depth, conf); unchanged when fewer than 11 sky
    or non-sky pixels exist. Sky confidence becomes 1.
    """
    non_sky = sky < SKY_THRESHOLD
    if non_sky.sum() <= 10 or (cap is None and (~non_sky).sum() <= 10):
        return depth, conf
    far = quantile(depth[non_sky], 0.99)
    if cap is not None:
        far = torch.clamp(far, max=cap)
    depth = torch.where(non_sky, depth, far.to(depth.dtype))
    if conf is not None:
        conf = torch.where(non_sky, conf, torch.ones_like(conf))
    return depth, conf


def metric_scale(depth: torch.Tensor, conf: torch.Tensor, metric_depth: torch.Tensor,
                 sky: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Least-squares scale taking relative ``depth`` to metric.

    ``metric_depth`` (normalised to a 300 px focal length) is rescaled by the predicted focal
    length; the fit uses non-sky pixels with at least median confidence and positive depths.
    Returns a scalar tensor. Raises Da3gsError when too few non-sky pixels remain.
    """
    focal = (K[..., 0, 0] + K[..., 1, 1]) / 2
    metric_depth = metric_depth * (focal[..., None, None] / METRIC_FOCAL)
    non_sky = sky < SKY_THRESHOLD
    if non_sky.sum() <= 10:
        raise Da3gsError("the metric model found (almost) only sky; cannot scale depth to metres")
    median_conf = quantile(conf[non_sky], 0.5)
    mask = (conf >= median_conf) & non_sky & (metric_depth > 1e-2) & (depth > 1e-3)
    a, b = metric_depth[mask].reshape(-1), depth[mask].reshape(-1)
    return torch.dot(a, b) / torch.dot(b, b).clamp_min(1e-12)
