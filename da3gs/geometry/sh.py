"""Real spherical harmonics in the 3DGS / gsplat basis, and their rotation.

Basis (degree <= 3, directions unit ``(x, y, z)``), as in gsplat's ``spherical_harmonics``:
band 0: C0; band 1: -C1 y, C1 z, -C1 x; band 2: C2[0] xy, C2[1] yz, C2[2] (2z^2 - x^2 - y^2),
C2[3] xz, C2[4] (x^2 - y^2); band 3: the seven gsplat terms.
"""

from __future__ import annotations

import math

import torch

from .errors import GeometryError

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
      0.5462742152960396)
C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
      -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def sh_basis(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """``dirs: (..., 3)`` unit directions -> ``(..., (degree + 1) ** 2)`` basis values."""
    if not 0 <= degree <= 3:
        raise GeometryError(f"degree: expected 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [C2[0] * x * y, C2[1] * y * z, C2[2] * (2 * zz - xx - yy), C2[3] * x * z,
                C2[4] * (xx - yy)]
    if degree >= 3:
        out += [C3[0] * y * (3 * xx - yy), C3[1] * x * y * z, C3[2] * y * (4 * zz - xx - yy),
                C3[3] * z * (2 * zz - 3 * xx - 3 * yy), C3[4] * x * (4 * zz - xx - yy),
                C3[5] * z * (xx - yy), C3[6] * x * (xx - 3 * yy)]
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
    K = (degree + 1) ** 2
    D = torch.zeros(R.shape[:-2] + (K, K), dtype=torch.float64, device=R.device)
    Y = sh_basis(dirs, degree)
    Yr = sh_basis(rotated, degree)
    for band in range(degree + 1):
        s = slice(band * band, (band + 1) ** 2)
        D[..., s, s] = torch.linalg.lstsq(Y[:, s].expand(Yr.shape[:-2] + Y[:, s].shape),
                                          Yr[..., s]).solution
    return D.to(R.dtype)


def rotate_sh(sh: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Rotate coefficients ``sh: (..., K, C)`` by ``R: (..., 3, 3)`` (broadcast over ``...``)."""
    degree = int(round(sh.shape[-2] ** 0.5)) - 1
    if (degree + 1) ** 2 != sh.shape[-2]:
        raise GeometryError(f"sh: {sh.shape[-2]} coefficients is not (degree + 1) ** 2")
    D = sh_rotation_matrix(R, degree).to(sh.dtype)
    return D @ sh
