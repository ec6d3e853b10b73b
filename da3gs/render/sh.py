"""Real spherical harmonics up to degree 3, with gsplat's constants and sign conventions.

The basis ordering, constants and signs follow gsplat's ``spherical_harmonics`` (the
Sloan 2013 "efficient SH evaluation" form, the same as the Inria 3DGS rasteriser):

    Y_0 = C0,  Y_1 = -C1 y,  Y_2 = C1 z,  Y_3 = -C1 x,  ...

with ``C0 = 0.28209479177387814`` and ``C1 = 0.48860251190292``. Directions need not be
unit length; they are normalised here (degree 0 ignores them).

Colour convention (as gsplat's ``rasterization`` and Inria's CUDA rasteriser):
``rgb = clamp_min(sum_k Y_k(d) * sh_k + 0.5, 0)``; see :func:`sh_to_color`.
"""

from __future__ import annotations

import torch

from da3gs.errors import Da3gsError
from da3gs.geometry.sh import C0, eval_sh_bases, num_sh_bases, sh_degree_from_bases

__all__ = ["C0", "eval_sh_bases", "eval_sh", "sh_to_color", "rgb_to_sh0", "sh0_to_rgb",
           "num_sh_bases", "sh_degree_from_bases"]

def eval_sh(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Raw SH sum (no +0.5, no clamp), like gsplat's ``spherical_harmonics``.

    Args:
      degree: degree to use, (degree + 1) ** 2 <= K.
      dirs: (..., 3) view directions (Gaussian centre minus camera centre).
      coeffs: (..., K, 3) SH coefficients, broadcastable with dirs' batch dims.
    Returns:
      (..., 3).
    """
    k = num_sh_bases(degree)
    if coeffs.shape[-2] < k:
        raise Da3gsError(f"sh degree {degree} needs {k} coefficients, got {coeffs.shape[-2]}")
    bases = eval_sh_bases(degree, dirs)  # (..., k)
    return (bases[..., :, None] * coeffs[..., :k, :]).sum(dim=-2)


def sh_to_color(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Colour as gsplat's ``rasterization`` computes it: ``clamp_min(eval_sh + 0.5, 0)``.

    Args/returns as :func:`eval_sh`; the result is >= 0 but not clamped above 1.
    """
    return torch.clamp_min(eval_sh(degree, dirs, coeffs) + 0.5, 0.0)


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """DC coefficient giving colour ``rgb`` (any shape): ``(rgb - 0.5) / C0``."""
    return (rgb - 0.5) / C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    """Colour of a DC coefficient (any shape, unclamped): ``0.5 + C0 * sh0``."""
    return sh0 * C0 + 0.5
