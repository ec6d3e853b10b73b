"""Depth metrics (AbsRel, SqRel, RMSE, log RMSE, delta < 1.25^k), per image then averaged.

Valid pixels: ``gt`` finite and > 0, and ``mask`` (if given) true / > 0. ``pred`` is not masked
on its values: a NaN prediction at a valid pixel makes that image's metrics NaN (bugs stay
visible).

Alignment (per image, on valid pixels, before the metrics):

* ``"median"``: ``pred *= median(gt) / median(pred)`` (torch's lower median for even counts);
* ``"lstsq"``: ``pred = s * pred`` minimising ``sum (s pred - gt)^2``; with ``shift=True``
  ``pred = s * pred + t`` (ordinary least squares on ``[pred, 1]``);
* ``"none"``: metric depth as given.

Metrics, with ``p`` the aligned prediction and ``g`` the gt over valid pixels: ``abs_rel =
mean(|p - g| / g)``, ``sq_rel = mean((p - g)^2 / g)``, ``rmse = sqrt(mean((p - g)^2))``,
``log_rmse = sqrt(mean((log p - log g)^2))``, ``delta_k = mean(max(p / g, g / p) < 1.25^k)``.
For ``log_rmse`` and the deltas ``p`` is clamped to >= 1e-8 (a non-positive prediction counts
as a large error rather than a NaN). All sums run in float64.
"""

from __future__ import annotations

import torch

from .image import MetricsError

__all__ = ["depth_metrics", "align_depth", "DEPTH_METRICS"]

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "log_rmse", "delta1", "delta2", "delta3")
_EPS = 1e-8


def _as_maps(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise MetricsError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise MetricsError(f"{name}: expected shape (B, H, W), (B, 1, H, W) or (H, W), got {tuple(x.shape)}")
        x = x[:, 0]
    elif x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise MetricsError(f"{name}: expected shape (B, H, W), (B, 1, H, W) or (H, W), got {tuple(x.shape)}")
    return x


def _fit(p: torch.Tensor, g: torch.Tensor, align: str, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and shift ``(s, t)`` with ``s p + t ~ g``. p, g: (M,) valid pixels of one image."""
    one, zero = p.new_ones(()), p.new_zeros(())
    if align == "median":
        mp = p.median()
        return (g.median() / mp if mp != 0 else one), zero
    if align == "lstsq":
        if shift:
            A = torch.stack([p, torch.ones_like(p)], -1)
            s, t = torch.linalg.lstsq(A, g[:, None]).solution[:, 0]
            return s, t
        den = (p * p).sum()
        return ((p * g).sum() / den if den > 0 else one), zero
    return one, zero


def align_depth(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, align: str = "median", shift: bool = False) -> torch.Tensor:
    """Aligned copy of ``pred`` (e.g. for visualisation).

    pred, gt: (B, H, W); valid: (B, H, W) bool -> (B, H, W) float64. The scale (and shift) fitted
    on the valid pixels is applied to the whole map; images without valid pixels are unchanged.
    """
    out = pred.to(torch.float64).clone()
    for b in range(out.shape[0]):
        if bool(valid[b].any()):
            s, t = _fit(out[b][valid[b]], gt[b][valid[b]].to(torch.float64), align, shift)
            out[b] = s * out[b] + t
    return out


def depth_metrics(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor | None = None,
    align: str = "median",
    shift: bool = False,
    reduction: str = "mean",
) -> dict:
    """Depth errors per image, then averaged over images that have valid pixels.

    Args:
        pred, gt: (B, H, W), (B, 1, H, W) or (H, W), same shape, depth (z) maps.
        mask: optional (B, H, W) / (B, 1, H, W) / (H, W) bool or weights (> 0 = valid), ANDed
            with the valid-gt test.
        align: ``"median"`` (default), ``"lstsq"`` or ``"none"`` (module docstring).
        shift: with ``align="lstsq"``, also fit an additive shift.
        reduction: ``"mean"`` -> dict of floats (plus ``"n_images"``, the images averaged);
            ``"none"`` -> dict of (B,) float64 tensors, NaN for images without valid pixels.
    Raises:
        MetricsError: bad shapes / options, or no valid pixel in any image (``"mean"``).
    """
    if align not in ("median", "lstsq", "none"):
        raise MetricsError(f"align: expected 'median', 'lstsq' or 'none', got {align!r}")
    if shift and align != "lstsq":
        raise MetricsError("shift: only meaningful with align='lstsq'")
    if reduction not in ("mean", "none"):
        raise MetricsError(f"reduction: expected 'mean' or 'none', got {reduction!r}")
    p, g = _as_maps(pred, "pred"), _as_maps(gt, "gt")
    if p.shape != g.shape:
        raise MetricsError(f"pred/gt: shapes differ, {tuple(pred.shape)} vs {tuple(gt.shape)}")
    g = g.to(torch.float64)
    valid = torch.isfinite(g) & (g > 0)
    if mask is not None:
        m = _as_maps(mask, "mask")
        if m.shape[-2:] != g.shape[-2:] or m.shape[0] not in (1, g.shape[0]):
            raise MetricsError(f"mask: shape {tuple(mask.shape)} does not match depth maps {tuple(gt.shape)}")
        valid = valid & (m > 0 if m.dtype != torch.bool else m)
    B = g.shape[0]
    res = {k: torch.full((B,), float("nan"), dtype=torch.float64) for k in DEPTH_METRICS}
    for b in range(B):
        v = valid[b]
        if not bool(v.any()):
            continue
        gv = g[b][v]
        pv = p[b][v].to(torch.float64)
        s, t = _fit(pv, gv, align, shift)
        pv = s * pv + t
        err = pv - gv
        pc = pv.clamp_min(_EPS)
        ratio = torch.maximum(pc / gv, gv / pc)
        vals = {
            "abs_rel": (err.abs() / gv).mean(),
            "sq_rel": (err * err / gv).mean(),
            "rmse": (err * err).mean().sqrt(),
            "log_rmse": ((pc.log() - gv.log()) ** 2).mean().sqrt(),
            "delta1": (ratio < 1.25).double().mean(),
            "delta2": (ratio < 1.25**2).double().mean(),
            "delta3": (ratio < 1.25**3).double().mean(),
        }
        for k, val in vals.items():
            res[k][b] = val.cpu()
    if reduction == "none":
        return res
    has = valid.flatten(1).any(1).cpu()
    if not bool(has.any()):
        raise MetricsError("gt: no valid pixel (gt finite and > 0 inside mask) in any image")
    out = {k: float(v[has].mean()) for k, v in res.items()}
    out["n_images"] = int(has.sum())
    return out
