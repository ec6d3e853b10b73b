"""Real spherical harmonics in the 3DGS / gsplat basis (degree <= 3), and their rotation.

:func:`eval_sh_bases` follows gsplat's ``spherical_harmonics`` op for op (the Sloan 2013 form
used by the Inria rasteriser): ``Y_0 = C0, Y_1 = -C1 y, Y_2 = C1 z, Y_3 = -C1 x, ...``; the
renderer (:mod:`da3gs.render.sh`) evaluates colours with it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import GeometryError

C0 = 0.28209479177387814
C1 = 0.48860251190292


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients K = (degree + 1) ** 2."""
    return (int(degree) + 1) ** 2


def is_sh_count(k: int) -> bool:
    """Whether ``k`` coefficients make whole SH bands (1, 4, 9, 16, ...)."""
    return int(k) >= 1 and math.isqrt(int(k)) ** 2 == int(k)


def sh_degree_from_bases(k: int) -> int:
    """Degree d with (d + 1) ** 2 == k; raises :class:`GeometryError` (a Da3gsError) if ``k``
    is not a square."""
    if not is_sh_count(k):
        raise GeometryError(f"number of SH coefficients must be a square (1, 4, 9, 16 ...), got {k}")
    return math.isqrt(int(k)) - 1


def eval_sh_bases(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """SH basis functions at directions.

    Args:
      degree: 0..3.
      dirs: (..., 3) directions (any length; normalised here).
    Returns:
      (..., (degree + 1) ** 2) basis values, DC first.
    """
    if not 0 <= degree <= 3:
        raise GeometryError(f"sh degree must be in 0..3, got {degree}")
    ones = torch.full(dirs.shape[:-1], C0, dtype=dirs.dtype, device=dirs.device)
    if degree == 0:
        return ones[..., None]
    d = F.normalize(dirs, dim=-1)
    x, y, z = d.unbind(-1)
    out = [ones, -C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        z2 = z * z
        tmp_b = -1.092548430592079 * z
        c1 = x * x - y * y
        s1 = 2.0 * x * y
        out += [
            0.5462742152960395 * s1,                      # 4
            tmp_b * y,                                    # 5
            0.9461746957575601 * z2 - 0.3153915652525201,  # 6
            tmp_b * x,                                    # 7
            0.5462742152960395 * c1,                      # 8
        ]
        if degree >= 3:
            tmp_c = -2.285228997322329 * z2 + 0.4570457994644658
            tmp_b3 = 1.445305721320277 * z
            c2 = x * c1 - y * s1
            s2 = x * s1 + y * c1
            out += [
                -0.5900435899266435 * s2,                           # 9
                tmp_b3 * s1,                                        # 10
                tmp_c * y,                                          # 11
                z * (1.865881662950577 * z2 - 1.119528997770346),   # 12
                tmp_c * x,                                          # 13
                tmp_b3 * c1,                                        # 14
                -0.5900435899266435 * c2,                           # 15
            ]
    return torch.stack(out, dim=-1)



def _sphere_points(n: int) -> torch.Tensor:
    """Fibonacci points on the unit sphere, ``(n, 3)`` float64."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    phi = torch.acos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i
    return torch.stack([phi.sin() * theta.cos(), phi.sin() * theta.sin(), phi.cos()], dim=-1)


def sh_rotation_matrix(R: torch.Tensor, degree: int) -> torch.Tensor:
    """``R: (..., 3, 3)`` rotation -> ``(..., K, K)`` block-diagonal matrix D with
    ``c_rotated = D @ c`` such that ``f_rot(d) = f(R^T d)`` (K = (degree + 1) ** 2).

    Each band is fitted exactly (in float64) from basis values at 64 sphere points."""
    dirs = _sphere_points(64).to(R.device)
    Rd = R.double()
    rotated = torch.einsum("...ji,nj->...ni", Rd, dirs)  # R^T d for each d
    K = num_sh_bases(degree)
    D = torch.zeros(R.shape[:-2] + (K, K), dtype=torch.float64, device=R.device)
    Y = eval_sh_bases(degree, dirs)
    Yr = eval_sh_bases(degree, rotated)
    for band in range(degree + 1):
        s = slice(band * band, (band + 1) ** 2)
        D[..., s, s] = torch.linalg.lstsq(Y[:, s].expand(Yr.shape[:-2] + Y[:, s].shape),
                                          Yr[..., s]).solution
    return D.to(R.dtype)


def rotate_sh(sh: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Rotate coefficients ``sh: (..., K, C)`` by ``R: (..., 3, 3)`` (broadcast over ``...``)."""
    if not is_sh_count(sh.shape[-2]):
        raise GeometryError(f"sh: {sh.shape[-2]} coefficients is not (degree + 1) ** 2")
    degree = sh_degree_from_bases(sh.shape[-2])
    D = sh_rotation_matrix(R, degree).to(sh.dtype)
    return D @ sh
