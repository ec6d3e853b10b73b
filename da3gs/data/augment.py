"""Photometric augmentation of multi-view images (never of depth, masks or cameras).

:func:`photometric` works on a whole ``(B, V, 3, H, W)`` batch on any device, vectorised:
per-image parameters are drawn on the CPU from a ``torch.Generator`` (so a seed gives the
same parameters on every device) and the pixel noise from a generator on the images'
device. With ``AugConfig.per_view = False`` the parameters are drawn once per sample and
shared by its views (a consistent "camera look"); with ``True`` each view gets its own
(auto-exposure, different cameras). :func:`augment_batch` applies it to a
:class:`~da3gs.data.batch.ViewBatch` and returns a new batch whose every other field is
the very same tensor (depth, valid, sky, normals, c2w, K untouched).

Order of operations, each applied with its own probability: brightness, contrast,
saturation, hue, gamma, Gaussian blur, Gaussian noise; the result is clamped to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .batch import ViewBatch

__all__ = ["AugConfig", "augment_batch", "photometric"]


@dataclass
class AugConfig:
    """Photometric augmentation settings.

    Fields:
      enabled: master switch; False returns the images unchanged.
      per_view: True draws parameters per view, False once per sample (shared by its views).
      jitter_prob: probability of the colour jitter group (brightness, contrast, saturation, hue).
      brightness: max relative change; factor drawn uniformly in [1 - b, 1 + b].
      contrast: max relative change of contrast around the image mean (same form).
      saturation: max relative change of saturation around the grey image (same form).
      hue: max hue rotation as a fraction of a full turn (0.05 = +-18 degrees).
      gamma_prob: probability of a gamma curve ``x ** g``.
      gamma: ``(lo, hi)``; ``log g`` is drawn uniformly in ``[log lo, log hi]``.
      blur_prob: probability of a Gaussian blur.
      blur_sigma: ``(lo, hi)`` blur sigma in pixels, drawn uniformly.
      noise_prob: probability of additive Gaussian pixel noise.
      noise_std: ``(lo, hi)`` noise standard deviation (in [0, 1] units), drawn uniformly.
    """

    enabled: bool = True
    per_view: bool = False
    jitter_prob: float = 0.8
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.03
    gamma_prob: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    blur_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    noise_prob: float = 0.2
    noise_std: tuple[float, float] = (0.0, 0.03)

    def __post_init__(self) -> None:
        self.gamma = tuple(float(v) for v in self.gamma)
        self.blur_sigma = tuple(float(v) for v in self.blur_sigma)
        self.noise_std = tuple(float(v) for v in self.noise_std)
        for name in ("jitter_prob", "gamma_prob", "blur_prob", "noise_prob"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"aug.{name}: expected a probability in [0, 1], got {p}")
        for name in ("gamma", "blur_sigma", "noise_std"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi or (name == "gamma" and lo <= 0.0):
                raise ValueError(f"aug.{name}: expected 0 <= lo <= hi (gamma lo > 0), got {(lo, hi)}")


def _uniform(n: tuple[int, int], lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _draw(cfg: AugConfig, B: int, V: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-image parameters, each (B, V) float64 on the CPU (identity where not applied)."""
    n = (B, V) if cfg.per_view else (B, 1)
    on = lambda p: torch.rand(n, generator=g, dtype=torch.float64) < p
    jit = on(cfg.jitter_prob)
    p = {
        "brightness": torch.where(jit, _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, g), 1.0),
        "contrast": torch.where(jit, _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, g), 1.0),
        "saturation": torch.where(jit, _uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, g), 1.0),
        "hue": torch.where(jit, _uniform(n, -cfg.hue, cfg.hue, g), 0.0),
    }
    lg = _uniform(n, math.log(cfg.gamma[0]), math.log(cfg.gamma[1]), g)
    p["gamma"] = torch.where(on(cfg.gamma_prob), lg.exp(), 1.0)
    p["blur"] = torch.where(on(cfg.blur_prob), _uniform(n, *cfg.blur_sigma, g), 0.0)
    p["noise"] = torch.where(on(cfg.noise_prob), _uniform(n, *cfg.noise_std, g), 0.0)
    return {k: v.expand(B, V) for k, v in p.items()}


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _hue_rotate(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate hue of ``x (N, 3, H, W)`` by ``turns (N,)`` of a full turn in YIQ space."""
    m_cpu = _RGB2YIQ.to(dtype=x.dtype)
    m, m_inv = m_cpu.to(x.device), torch.linalg.inv(m_cpu).to(x.device)  # inverse on the CPU: no sync
    th = 2 * math.pi * turns.to(x.device, x.dtype)
    c, s = th.cos(), th.sin()
    rot = torch.zeros(len(th), 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    full = m_inv @ rot @ m  # (N, 3, 3)
    return torch.einsum("nij,njhw->nihw", full, x)


def _blur(x: torch.Tensor, sigma: torch.Tensor, smax: float | None = None) -> torch.Tensor:
    """Separable Gaussian blur of ``x (N, 3, H, W)`` with per-image ``sigma (N,)`` (0 = none).
    ``smax``: ``sigma.max()`` when the caller knows it on the host (saves a device sync)."""
    N, C, H, W = x.shape
    smax = float(sigma.max()) if smax is None else float(smax)
    r = max(1, math.ceil(3 * smax))
    r = min(r, (min(H, W) - 1) // 2) if min(H, W) > 2 else 0
    if r == 0:
        return x
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    s = sigma.to(x.device, x.dtype).clamp_min(1e-6)[:, None]
    k = torch.exp(-0.5 * (t[None] / s) ** 2)
    k = torch.where(sigma.to(x.device)[:, None] > 0, k, (t == 0).to(x.dtype)[None])
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (N*C, 2r+1)
    y = x.reshape(1, N * C, H, W)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k[:, None, None, :], groups=N * C)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k[:, None, :, None], groups=N * C)
    return y.reshape(N, C, H, W)


def photometric(images: torch.Tensor, cfg: AugConfig, seed: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Augmented copy of ``images (B, V, 3, H, W)`` in [0, 1] (also accepts ``(V, 3, H, W)``).

    Args:
        images: float images in [0, 1], any device.
        cfg: the settings; ``cfg.enabled = False`` returns ``images`` itself.
        seed: seeds the parameter and noise draws (deterministic); or
        generator: a CPU ``torch.Generator`` for the parameters (noise then draws from a
            device generator seeded from it). Neither: torch's global RNG.
    Returns:
        (same shape) float images clamped to [0, 1].
    """
    if not cfg.enabled:
        return images
    squeeze = images.dim() == 4
    x = images[None] if squeeze else images
    if x.dim() != 5 or x.shape[2] != 3:
        raise ValueError(f"images: expected (B, V, 3, H, W), got {tuple(images.shape)}")
    B, V, _, H, W = x.shape
    g = generator or torch.Generator()
    if seed is not None:
        g.manual_seed(int(seed))
    elif generator is None:
        g.manual_seed(int(torch.randint(0, 2**62, (1,))))
    raw = {k: v.reshape(-1).float() for k, v in _draw(cfg, B, V, g).items()}  # CPU draws
    # which optional passes run: decided on the CPU draws (no device sync)
    use_hue, use_blur, use_noise = (bool((raw["hue"] != 0).any()), bool((raw["blur"] > 0).any()),
                                    bool((raw["noise"] > 0).any()))
    if x.device.type == "cuda":  # one pinned, non-blocking copy (a blocking one waits for the GPU)
        keys = list(raw)
        flat = torch.stack([raw[k] for k in keys]).pin_memory().to(x.device, non_blocking=True)
        p = dict(zip(keys, flat.unbind(0)))
    else:
        p = {k: v.to(x.device) for k, v in raw.items()}
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=g))
    y = x.reshape(B * V, 3, H, W).float()
    col = lambda v: v[:, None, None, None]
    y = y * col(p["brightness"])
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean) * col(p["contrast"]) + mean
    grey = (0.299 * y[:, 0] + 0.587 * y[:, 1] + 0.114 * y[:, 2])[:, None]
    y = (y - grey) * col(p["saturation"]) + grey
    if use_hue:
        y = _hue_rotate(y, p["hue"])
    y = y.clamp(0.0, 1.0) ** col(p["gamma"])
    if use_blur:
        y = _blur(y, p["blur"], smax=float(raw["blur"].max()))
    if use_noise:
        gd = torch.Generator(device=y.device).manual_seed(noise_seed)
        y = y + col(p["noise"]) * torch.randn(y.shape, generator=gd, device=y.device, dtype=y.dtype)
    y = y.clamp(0.0, 1.0).to(images.dtype).reshape(x.shape)
    return y[0] if squeeze else y


def augment_batch(batch: ViewBatch, cfg: AugConfig, seed: int | None = None,
                  generator: torch.Generator | None = None) -> ViewBatch:
    """``batch`` with :func:`photometric` applied to ``images`` only; every other field is
    the same object (depth, valid, cameras, normals, sky are never altered)."""
    return replace(batch, images=photometric(batch.images, cfg, seed=seed, generator=generator))
