"""Quaternions, **wxyz** (scalar first) in the public API.

The rotation <-> quaternion conversions use the pytorch3d algorithm, which is
also what the official Depth Anything 3 code uses (there in xyzw order), so
``wxyz_to_xyzw(mat_to_quat(R))`` is bit-identical to the official
``mat_to_quat(R)``.

These functions sit on hot paths (pose encoding inside the network), so they
only validate shapes; NaN/Inf propagate element-wise rather than raising.
"""

from __future__ import annotations

import torch

from .errors import GeometryError, check_shape

__all__ = [
    "rotation_angle",
    "quat_to_mat",
    "mat_to_quat",
    "quat_multiply",
    "quat_normalize",
    "quat_conjugate",
    "quat_slerp",
    "xyzw_to_wxyz",
    "wxyz_to_xyzw",
    "rotation_from_components",
]


def xyzw_to_wxyz(q: torch.Tensor) -> torch.Tensor:
    """Reorder ``q: (..., 4)`` from scalar-last (xyzw) to scalar-first (wxyz)."""
    check_shape(q, "q", (4,))
    return torch.roll(q, 1, -1)  # q[..., [3, 0, 1, 2]] without a host-made index (graph capture)


def wxyz_to_xyzw(q: torch.Tensor) -> torch.Tensor:
    """Reorder ``q: (..., 4)`` from scalar-first (wxyz) to scalar-last (xyzw)."""
    check_shape(q, "q", (4,))
    return torch.roll(q, -1, -1)  # q[..., [1, 2, 3, 0]]


def rotation_from_components(r, i, j, k, two_s) -> torch.Tensor:
    """Rotation matrix from (possibly non-unit) quaternion parts; ``two_s = 2 / |q|^2``."""
    o = torch.stack(
        (
            1 - two_s * (j * j + k * k),
            two_s * (i * j - k * r),
            two_s * (i * k + j * r),
            two_s * (i * j + k * r),
            1 - two_s * (i * i + k * k),
            two_s * (j * k - i * r),
            two_s * (i * k - j * r),
            two_s * (j * k + i * r),
            1 - two_s * (i * i + j * j),
        ),
        -1,
    )
    return o.reshape(r.shape + (3, 3))


def quat_to_mat(q_wxyz: torch.Tensor) -> torch.Tensor:
    """Quaternion to rotation matrix.

    Args:
        q_wxyz: (..., 4) quaternion, scalar first. Need not be unit-norm: the
            result is the rotation of ``q / |q|`` (a zero quaternion gives NaN).
    Returns:
        R: (..., 3, 3)
    """
    check_shape(q_wxyz, "q_wxyz", (4,))
    r, i, j, k = torch.unbind(q_wxyz, -1)
    two_s = 2.0 / (q_wxyz * q_wxyz).sum(-1)
    return rotation_from_components(r, i, j, k, two_s)


def _sqrt_positive_part(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 0))`` with a zero (not NaN) gradient where ``x <= 0``."""
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))


def mat_to_quat(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrix to unit quaternion (pytorch3d algorithm).

    Of the four algebraically equivalent candidates, the one with the largest
    denominator is used (stable everywhere, including near 180 degrees). The
    result is standardised to ``w >= 0`` (negated when ``w < 0``).

    Args:
        R: (..., 3, 3) rotation matrix.
    Returns:
        q_wxyz: (..., 4), scalar first.
    """
    check_shape(R, "R", (3, 3))
    batch = R.shape[:-2]
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(R.reshape(batch + (9,)), dim=-1)
    q_abs = _sqrt_positive_part(
        torch.stack(
            [
                1.0 + m00 + m11 + m22,
                1.0 + m00 - m11 - m22,
                1.0 - m00 + m11 - m22,
                1.0 - m00 - m11 + m22,
            ],
            dim=-1,
        )
    )
    # Row c is the quaternion (r, i, j, k) multiplied by 4 * component c.
    cands = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
        ],
        dim=-2,
    )
    flr = q_abs.new_full((), 0.1)  # a fill, not a host copy (CUDA-graph capture allows it)
    cands = cands / (2.0 * q_abs[..., None].max(flr))
    best = q_abs.argmax(dim=-1)  # first maximum on ties, like the official one-hot select
    q = torch.gather(cands, -2, best[..., None, None].expand(batch + (1, 4))).squeeze(-2)
    return torch.where(q[..., 0:1] < 0, -q, q)


def quat_normalize(q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Unit-normalise ``q: (..., 4)`` (any order); norms below ``eps`` are clamped."""
    check_shape(q, "q", (4,))
    return q / q.norm(dim=-1, keepdim=True).clamp_min(eps)


def quat_conjugate(q_wxyz: torch.Tensor) -> torch.Tensor:
    """Conjugate (inverse for unit quaternions) of ``q_wxyz: (..., 4)``."""
    check_shape(q_wxyz, "q_wxyz", (4,))
    return q_wxyz * q_wxyz.new_tensor([1.0, -1.0, -1.0, -1.0])


def quat_multiply(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``q1 * q2`` (wxyz), so that ``R(q1*q2) = R(q1) @ R(q2)``.

    Args:
        q1, q2: (..., 4) broadcastable, scalar first.
    Returns:
        (..., 4), not re-normalised and not sign-standardised.
    """
    check_shape(q1, "q1", (4,))
    check_shape(q2, "q2", (4,))
    w1, x1, y1, z1 = torch.unbind(q1, -1)
    w2, x2, y2, z2 = torch.unbind(q2, -1)
    return torch.stack(
        (
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ),
        -1,
    )


def quat_slerp(q0: torch.Tensor, q1: torch.Tensor, t) -> torch.Tensor:
    """Spherical linear interpolation along the shortest arc.

    Args:
        q0, q1: (..., 4) wxyz, broadcastable; normalised internally.
        t: float or tensor broadcastable to ``(...)``; 0 gives ``q0``, 1 gives
            ``q1`` or ``-q1`` (same rotation, on ``q0``'s hemisphere).
    Returns:
        (..., 4) unit quaternions. Nearly parallel inputs fall back to
        normalised linear interpolation.
    """
    check_shape(q0, "q0", (4,))
    check_shape(q1, "q1", (4,))
    if not isinstance(t, torch.Tensor):
        t = torch.tensor(float(t), dtype=q0.dtype, device=q0.device)
    elif not t.is_floating_point():
        raise GeometryError(f"t: expected a float or floating-point tensor, got dtype {t.dtype}")
    t = t.to(q0.dtype)[..., None]
    q0 = quat_normalize(q0)
    q1 = quat_normalize(q1)
    dot = (q0 * q1).sum(-1, keepdim=True)
    q1 = torch.where(dot < 0, -q1, q1)
    dot = dot.abs().clamp(max=1.0)
    theta = torch.acos(dot)
    sin_theta = torch.sin(theta)
    near = sin_theta < 1e-6
    safe_sin = torch.where(near, torch.ones_like(sin_theta), sin_theta)
    w0 = torch.where(near, 1 - t, torch.sin((1 - t) * theta) / safe_sin)
    w1 = torch.where(near, t, torch.sin(t * theta) / safe_sin)
    return quat_normalize(w0 * q0 + w1 * q1)


def rotation_angle(R: torch.Tensor) -> torch.Tensor:
    """Geodesic angle (radians, in [0, pi]) of rotation matrices ``R (..., 3, 3)`` -> ``(...)``.

    ``atan2(|axis| sin, cos)`` from the skew part and the trace: accurate near 0 and pi, where
    ``acos((trace - 1) / 2)`` loses half the digits (an angle of 1e-8 rad reads as 0 or 1e-4).
    """
    tr = R.diagonal(dim1=-2, dim2=-1).sum(-1)
    v = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                     R[..., 1, 0] - R[..., 0, 1]], -1)
    return torch.atan2(0.5 * v.norm(dim=-1), 0.5 * (tr - 1.0))
