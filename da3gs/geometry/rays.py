"""Pixel grids, camera rays, depth unprojection and point projection (OpenCV).

Pixel convention: the centre of pixel (row i, column j) is at
``(u, v) = (j + 0.5, i + 0.5)`` (``offset=0.5``), which matches an intrinsic
matrix with ``cx = W / 2`` for a centred principal point (DA3 / COLMAP).

``K`` is ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]``; entries below the diagonal
are ignored by :func:`ray_directions` and ``K[2, 2]`` is taken to be 1.

Ray directions are **unnormalised**: ``d = R K^-1 (u, v, 1)``, i.e. the camera
frame direction has z = 1, so a point at z-depth ``D`` is ``P = t + D * d``.
"""

from __future__ import annotations

import operator

import torch

from .errors import GeometryError, check_broadcast, check_finite, check_shape, check_tensor

__all__ = ["pixel_grid", "ray_directions", "ray_map", "unproject_depth", "project_points"]


def _check_size(H, W) -> tuple[int, int]:
    try:
        H, W = operator.index(H), operator.index(W)
    except TypeError:
        raise GeometryError(f"H, W: expected positive ints, got ({H!r}, {W!r})") from None
    if not (H > 0 and W > 0):
        raise GeometryError(f"H, W: expected positive ints, got ({H!r}, {W!r})")
    return H, W


def pixel_grid(
    H: int,
    W: int,
    offset: float = 0.5,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Pixel coordinates of an ``H x W`` image.

    Args:
        offset: 0.5 for pixel centres (default), 0 for integer corners.
    Returns:
        uv: (H, W, 2) with ``uv[i, j] = (j + offset, i + offset)`` (x first).
    """
    H, W = _check_size(H, W)
    u = torch.arange(W, device=device, dtype=dtype) + offset
    v = torch.arange(H, device=device, dtype=dtype) + offset
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], dim=-1)


def _check_cam(c2w: torch.Tensor, K: torch.Tensor, c2w_name: str = "c2w", values: bool = True):
    """Shapes always; with ``values`` also finite entries and non-zero focal lengths (syncs)."""
    check_shape(c2w, c2w_name, (4, 4))
    check_shape(K, "K", (3, 3))
    check_broadcast(c2w_name, c2w, "K", K, 2, 2)
    if not values:
        return
    check_finite(c2w, c2w_name)
    check_finite(K, "K")
    if not bool((K[..., 0, 0] != 0).all() and (K[..., 1, 1] != 0).all()):
        raise GeometryError("K: focal lengths K[..., 0, 0] and K[..., 1, 1] must be non-zero")


def _camera_directions(K: torch.Tensor, H: int, W: int, offset: float, dtype) -> torch.Tensor:
    """(..., H, W, 3) camera-frame directions with z = 1 for the pixel grid."""
    uv = pixel_grid(H, W, offset, device=K.device, dtype=dtype)
    u, v = uv[..., 0], uv[..., 1]
    e = lambda r, c: K[..., r, c].to(dtype)[..., None, None]  # noqa: E731
    y = (v - e(1, 2)) / e(1, 1)
    x = (u - e(0, 2) - e(0, 1) * y) / e(0, 0)
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def ray_directions(c2w: torch.Tensor, K: torch.Tensor, H: int, W: int, offset: float = 0.5,
                   check: bool = True) -> torch.Tensor:
    """Unnormalised world-frame ray directions ``d = R K^-1 p`` for every pixel.

    Args:
        c2w: (..., 4, 4) OpenCV camera-to-world; K: (..., 3, 3) in pixels of
            an ``H x W`` image (batch dims broadcast).
        offset: pixel-centre offset (see :func:`pixel_grid`).
        check: also check that ``c2w`` and ``K`` are finite and the focal lengths non-zero
            (device syncs); ``False`` for internal hot paths (shapes are always checked).
    Returns:
        d: (..., H, W, 3); ``R^T d`` has z-component exactly 1.
    """
    H, W = _check_size(H, W)
    _check_cam(c2w, K, values=check)
    dtype = torch.promote_types(c2w.dtype, K.dtype)
    dcam = _camera_directions(K, H, W, offset, dtype)
    R = c2w[..., :3, :3].to(dtype)
    return dcam @ R.transpose(-1, -2)[..., None, :, :]


def ray_map(c2w: torch.Tensor, K: torch.Tensor, H: int, W: int, offset: float = 0.5,
            check: bool = True) -> torch.Tensor:
    """DA3 ray map: (..., H, W, 6) with channels 0:3 the unnormalised world
    direction (see :func:`ray_directions`) and 3:6 the ray origin (camera centre).

    Args:
        c2w: (..., 4, 4); K: (..., 3, 3) in pixels of the ``H x W`` ray map.
        check: as in :func:`ray_directions` (``False``: no value checks, no device sync).
    """
    d = ray_directions(c2w, K, H, W, offset, check)
    o = c2w[..., None, None, :3, 3].to(d.dtype).expand(d.shape)
    return torch.cat([d, o], dim=-1)


def unproject_depth(depth: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, offset: float = 0.5) -> torch.Tensor:
    """Lift a z-depth map to world points ``P = t + D * d``.

    Args:
        depth: (..., H, W) z-depth (distance along the optical axis, not the
            ray length). Non-finite depths give non-finite points.
        c2w: (..., 4, 4); K: (..., 3, 3) in pixels of the depth map.
    Returns:
        points: (..., H, W, 3) world coordinates.
    """
    check_tensor(depth, "depth")
    if depth.ndim < 2:
        raise GeometryError(f"depth: expected shape (..., H, W), got {tuple(depth.shape)}")
    H, W = int(depth.shape[-2]), int(depth.shape[-1])
    check_broadcast("depth", depth, "c2w", c2w, 2, 2)
    d = ray_directions(c2w, K, H, W, offset)
    t = c2w[..., None, None, :3, 3].to(d.dtype)
    return t + depth[..., None].to(d.dtype) * d


def project_points(points: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points into a camera.

    Args:
        points: (..., N, 3) world points (reshape pixel maps to (..., H*W, 3)).
        w2c: (..., 4, 4) OpenCV world-to-camera; K: (..., 3, 3) pixels.
    Returns:
        uv: (..., N, 2) pixel coordinates (same convention as :func:`pixel_grid`);
            points with depth 0 give Inf/NaN, points behind the camera (depth
            < 0) are projected through the centre like any other.
        depth: (..., N) camera-frame z.
    """
    check_shape(points, "points", (None, 3))
    _check_cam(w2c, K, "w2c")
    check_broadcast("points", points, "w2c", w2c, 2, 2)
    dtype = torch.promote_types(torch.promote_types(points.dtype, w2c.dtype), K.dtype)
    R = w2c[..., :3, :3].to(dtype)
    t = w2c[..., None, :3, 3].to(dtype)
    xc = points.to(dtype) @ R.transpose(-1, -2) + t
    z = xc[..., 2]
    uvw = (xc / z[..., None]) @ K.to(dtype).transpose(-1, -2)
    return uvw[..., :2] / uvw[..., 2:3], z
