"""Depth metrics (AbsRel, SqRel, RMSE, log RMSE, delta < 1.25^k), per image then averaged.

Valid pixels: ``gt`` finite and > 0, and ``mask`` (if given) true / > 0. ``pred`` is not masked
on its values: a NaN prediction at a valid pixel makes that image's metrics NaN (bugs stay
visible).

Alignment (per image, fitted on the M valid pixels ``p, g`` (M,), applied before the metrics),
``ALIGN_MODES``:

* ``"median"`` (multi-view convention: the scale-only alignment of multi-view / video depth
  evaluations): ``p <- p * median(g) / median(p)``, with numpy's median (mean of the two middle
  values for even M; the official DA3 code takes medians as ``torch.quantile(x, 0.5)``, the
  same value). Scale 1 if ``median(p) == 0``.
* ``"lstsq"`` (monocular convention, affine-invariant depth as in Marigold's
  ``align_depth_least_square``): ``p <- s p + t`` with ``(s, t) = argmin sum (s p + t - g)^2``,
  the minimum-norm least-squares solution on ``[p, 1]`` (LAPACK gelsd, as ``np.linalg.lstsq``).
* ``"lstsq_scale"``: ``p <- s p`` with ``s = (p . g) / max(p . p, 1e-12)`` (the official DA3
  ``depth_anything_3.utils.alignment.least_squares_scale_scalar(g, p)``).
* ``"none"``: metric depth as given.

Metrics, with ``p`` the aligned prediction and ``g`` the gt over valid pixels: ``abs_rel =
mean(|p - g| / g)``, ``sq_rel = mean((p - g)^2 / g)``, ``rmse = sqrt(mean((p - g)^2))``,
``log_rmse = sqrt(mean((log p - log g)^2))``, ``delta_k = mean(max(p / g, g / p) < 1.25^k)``.
For ``log_rmse`` and the deltas ``p`` is clamped to >= 1e-8 (a non-positive prediction counts
as a large error rather than a NaN; an affine fit can produce them). No dataset depth-range
clipping of the prediction is applied. All sums run in float64.
"""

from __future__ import annotations

import torch

from .image import MetricsError

__all__ = ["depth_metrics", "align_depth", "DEPTH_METRICS", "ALIGN_MODES", "ALIGN_FORMULAS"]

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "log_rmse", "delta1", "delta2", "delta3")
ALIGN_MODES = ("median", "lstsq", "lstsq_scale", "none")
#: One-line statement of each alignment, written into ``metrics.json`` next to its name.
ALIGN_FORMULAS = {
    "median": "per image: pred * median(gt) / median(pred) over valid pixels (multi-view convention)",
    "lstsq": "per image: s * pred + t, (s, t) least squares on valid pixels (monocular, affine-invariant depth)",
    "lstsq_scale": "per image: s * pred, s = sum(pred * gt) / sum(pred^2) over valid pixels",
    "none": "metric depth as predicted",
}
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


def _median(x: torch.Tensor) -> torch.Tensor:
    """numpy's median of a 1-D tensor: the mean of the two middle values for even length."""
    n = x.numel()
    k = (n - 1) // 2
    lo = x.kthvalue(k + 1).values
    return lo if n % 2 else 0.5 * (lo + x.kthvalue(n - k).values)


def _fit(p: torch.Tensor, g: torch.Tensor, align: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and shift ``(s, t)`` with ``s p + t ~ g``. p, g: (M,) float64 valid pixels of one image."""
    one, zero = p.new_ones(()), p.new_zeros(())
    if align != "none" and not bool(torch.isfinite(p).all()):
        nan = p.new_full((), float("nan"))
        return nan, nan  # a non-finite prediction poisons the fit: the image's metrics are NaN
    if align == "median":
        mp = _median(p)
        return (_median(g) / mp if mp != 0 else one), zero
    if align == "lstsq":
        A = torch.stack([p, torch.ones_like(p)], -1)
        driver = "gelsd" if p.device.type == "cpu" else None
        s, t = torch.linalg.lstsq(A, g[:, None], driver=driver).solution[:, 0]
        return s, t
    if align == "lstsq_scale":
        return (p * g).sum() / (p * p).sum().clamp_min(1e-12), zero
    return one, zero


def _check_align(align: str) -> None:
    if align not in ALIGN_MODES:
        raise MetricsError(f"align: expected one of {', '.join(ALIGN_MODES)}, got {align!r}")


def align_depth(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, align: str = "median") -> torch.Tensor:
    """Aligned copy of ``pred`` (e.g. for visualisation).

    pred, gt: (B, H, W); valid: (B, H, W) bool -> (B, H, W) float64. The scale (and shift) fitted
    on the valid pixels is applied to the whole map; images without valid pixels are unchanged.
    ``align``: one of ``ALIGN_MODES`` (module docstring).
    """
    _check_align(align)
    out = pred.to(torch.float64).clone()
    for b in range(out.shape[0]):
        if bool(valid[b].any()):
            s, t = _fit(out[b][valid[b]], gt[b][valid[b]].to(torch.float64), align)
            out[b] = s * out[b] + t
    return out


def depth_metrics(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor | None = None,
    align: str = "median",
    reduction: str = "mean",
) -> dict:
    """Depth errors per image, then averaged over images that have valid pixels.

    Args:
        pred, gt: (B, H, W), (B, 1, H, W) or (H, W), same shape, depth (z) maps.
        mask: optional (B, H, W) / (B, 1, H, W) / (H, W) bool or weights (> 0 = valid), ANDed
            with the valid-gt test.
        align: ``"median"`` (default, multi-view), ``"lstsq"`` (scale and shift, monocular),
            ``"lstsq_scale"`` or ``"none"`` (formulas in the module docstring).
        reduction: ``"mean"`` -> dict of floats (plus ``"n_images"``, the images averaged);
            ``"none"`` -> dict of (B,) float64 tensors, NaN for images without valid pixels.
    Raises:
        MetricsError: bad shapes / options, or no valid pixel in any image (``"mean"``).
    """
    _check_align(align)
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
        s, t = _fit(pv, gv, align)
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
