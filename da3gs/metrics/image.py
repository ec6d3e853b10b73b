"""Image metrics: PSNR and SSIM, one value per image.

Shapes: images are ``(B, C, H, W)`` or ``(C, H, W)`` (C = 3 for RGB; any C works), values in
``[0, data_range]``. Every function returns a ``(B,)`` tensor (``(1,)`` for a single image).
The dataset figure is the mean over images ("per image, then mean"); that mean is the
caller's job, e.g. ``psnr(pred, gt).mean()``. Nothing is clamped: clamp renders to
``[0, 1]`` before calling if the renderer can overshoot.

SSIM conventions (both: Gaussian window sigma 1.5 truncated at 3.5 sigma, i.e. 11 x 11,
K1 = 0.01, K2 = 0.03, population (co)variances, per channel, then averaged):

* ``mode="gaussian"`` (default) IS torchmetrics' convention:
  ``torchmetrics.functional.structural_similarity_index_measure(p, g, data_range=1.0,
  reduction="none")`` (agreement <= 3e-5 in float32, see tests). The images are
  reflect-padded by 5 pixels (``torch.nn.functional.pad(mode="reflect")``), variances are
  clamped at 0, and the SSIM map is averaged over all ``H x W`` pixels, border included.
  Note: torchmetrics' own default ``data_range=None`` estimates the range from the data;
  we always use the given ``data_range`` (1 by default). Needs H, W >= 6.
* ``mode="skimage"`` IS ``skimage.metrics.structural_similarity(a, b, channel_axis=-1,
  data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``
  (agreement ~1e-15 for float64 input, ~3e-8 for float32; computed in float64): no clamping,
  and the map is averaged over the interior only (5-pixel border cropped, so the border
  handling does not matter). Needs H, W >= 11. (skimage's own default
  ``use_sample_covariance=True`` would scale the (co)variances by 121/120; not this mode.)

The two differ only in the 5-pixel border (torchmetrics keeps it, reflect-padded; skimage drops
it): up to ~6e-3 on natural 270 x 480 renders, more on small or synthetic images (4e-2 measured on
a 64 x 65 shifted sine pattern). State which one a reported number uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from da3gs.errors import Da3gsError

__all__ = ["MetricsError", "psnr", "ssim", "gaussian_window", "check_image_pair"]


class MetricsError(Da3gsError):
    """Invalid metric input (shape, dtype, mode); the message names the argument."""


def _as_batch(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise MetricsError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise MetricsError(f"{name}: expected a floating-point image, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise MetricsError(f"{name}: expected shape (B, C, H, W) or (C, H, W), got {tuple(x.shape)}")
    return x


def check_image_pair(pred, gt) -> tuple[torch.Tensor, torch.Tensor]:
    """``pred``, ``gt``: float (C, H, W) or (B, C, H, W) of one shape -> both as (B, C, H, W);
    raises :class:`MetricsError` otherwise (shared by PSNR, SSIM and LPIPS)."""
    p, g = _as_batch(pred, "pred"), _as_batch(gt, "gt")
    if p.shape != g.shape:
        raise MetricsError(f"pred/gt: shapes differ, {tuple(pred.shape)} vs {tuple(gt.shape)}")
    return p, g


def _check_range(data_range) -> float:
    try:
        r = float(data_range)
    except (TypeError, ValueError):
        raise MetricsError(f"data_range: expected a positive number, got {data_range!r}") from None
    if not (r > 0 and math.isfinite(r)):
        raise MetricsError(f"data_range: expected a positive number, got {data_range!r}")
    return r


def psnr(pred: torch.Tensor, gt: torch.Tensor, data_range: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image.

    ``PSNR = 10 log10(data_range^2 / MSE)``, MSE over all channels and (masked) pixels of one
    image, computed in float64. Identical images give ``inf``.

    Args:
        pred, gt: (B, C, H, W) or (C, H, W), same shape.
        data_range: peak value (1 for images in [0, 1]).
        mask: optional pixel mask, bool or non-negative float weights, shape (B, 1, H, W),
            (B, H, W), (1, H, W) or (H, W) (broadcast over channels). An image whose mask
            is empty gets NaN.
    Returns:
        (B,) float tensor (dtype of ``pred``); the dataset figure is its mean.
    """
    p, g = check_image_pair(pred, gt)
    r = _check_range(data_range)
    se = (p.double() - g.double()) ** 2  # (B, C, H, W)
    B, C, H, W = se.shape
    if mask is None:
        mse = se.flatten(1).mean(1)
    else:
        if not isinstance(mask, torch.Tensor):
            raise MetricsError(f"mask: expected a torch.Tensor, got {type(mask).__name__}")
        m = mask
        if m.ndim == 2:
            m = m[None, None]
        elif m.ndim == 3:
            m = m[:, None] if (m.shape[0] == B and pred.ndim == 4) else m[None]
        if m.ndim != 4 or m.shape[1] != 1 or m.shape[-2:] != (H, W) or m.shape[0] not in (1, B):
            raise MetricsError(
                f"mask: expected shape (B, 1, H, W), (B, H, W) or (H, W) with (H, W) = {(H, W)}, got {tuple(mask.shape)}"
            )
        m = m.to(torch.float64).expand(B, 1, H, W)
        if bool((m < 0).any()):
            raise MetricsError("mask: weights must be non-negative")
        den = m.flatten(1).sum(1) * C
        mse = (se * m).flatten(1).sum(1) / den
    out = 10.0 * torch.log10(r * r / mse)
    return out.to(pred.dtype)


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5, dtype=torch.float64, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian, length ``2 * int(truncate * sigma + 0.5) + 1`` (11 for 1.5).

    The same taps as scipy.ndimage.gaussian_filter (skimage) and torchmetrics' kernel.
    """
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def _filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter. x: (N, C, H, W) -> (N, C, H - k + 1, W - k + 1)."""
    C = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, k, 1).expand(C, 1, k, 1), groups=C)
    return F.conv2d(x, g.view(1, 1, 1, k).expand(C, 1, 1, k), groups=C)


def ssim(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mode: str = "gaussian",
    data_range: float = 1.0,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity per image (see the module docstring for the two conventions).

    Args:
        pred, gt: (B, C, H, W) or (C, H, W), values in [0, data_range].
        mode: ``"gaussian"`` (torchmetrics convention, default) or ``"skimage"``.
        data_range: dynamic range L in ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``.
        sigma: Gaussian window std; the window spans ``2 * int(3.5 sigma + 0.5) + 1`` taps.
    Returns:
        (B,) tensor, dtype of ``pred``: mean SSIM over channels and pixels of each image.
    """
    p, g = check_image_pair(pred, gt)
    r = _check_range(data_range)
    if mode not in ("gaussian", "skimage"):
        raise MetricsError(f"mode: expected 'gaussian' or 'skimage', got {mode!r}")
    if not (float(sigma) > 0):
        raise MetricsError(f"sigma: expected a positive number, got {sigma!r}")
    B, C, H, W = p.shape
    if mode == "skimage":
        dtype = torch.float64
    else:
        dtype = torch.promote_types(p.dtype, torch.float32)
    win = gaussian_window(sigma, dtype=dtype, device=p.device)
    pad = (win.numel() - 1) // 2
    min_side = win.numel() if mode == "skimage" else pad + 1
    if H < min_side or W < min_side:
        raise MetricsError(f"pred: images must be at least {min_side} x {min_side} for mode {mode!r}, got {H} x {W}")
    x, y = p.to(dtype), g.to(dtype)
    if mode == "gaussian":
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
    stats = _filter(torch.cat([x, y, x * x, y * y, x * y]), win).split(B)
    mx, my, mxx, myy, mxy = stats
    c1, c2 = (k1 * r) ** 2, (k2 * r) ** 2
    vx, vy, vxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    if mode == "gaussian":
        vx, vy = vx.clamp_min(0.0), vy.clamp_min(0.0)
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).to(pred.dtype)
