"""Camera paths for rendering videos (OpenCV ``c2w``, wxyz quaternions).

* :func:`interpolate_path`: through the input cameras; positions on a centripetal
  Catmull-Rom spline, rotations slerped between consecutive keyframes, frames
  evenly spaced along the arc length (by rotation angle if the cameras do not
  move). :func:`evaluate_path` evaluates the same spline at keyframe parameters
  ``u`` (keyframe ``i`` at ``u = i``).
* :func:`orbit_path`: a circle around :func:`scene_center`, in the plane
  perpendicular to the cameras' mean up vector, looking at the centre.
* :func:`extend_path`: from the last camera out along the trajectory direction
  and back (extrapolated views).
* :func:`look_at`, :func:`nearest_view`, :func:`path_intrinsics`.

Every path function returns ``(n, 4, 4)`` c2w in the dtype/device of its input.
One input view is handled: ``interpolate_path`` makes a small figure-eight
wiggle/dolly around it (radius 5 % of ``center_depth``) looking at the point
``center_depth`` in front; ``orbit_path`` orbits that point.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .conventions import as_homogeneous
from .errors import GeometryError, check_finite, check_shape
from .quaternion import mat_to_quat, quat_slerp, quat_to_mat, rotation_angle

__all__ = ["look_at", "evaluate_path", "interpolate_path", "orbit_path", "extend_path",
           "scene_center", "nearest_view", "path_intrinsics"]

_WIGGLE = 0.05


def _check_c2w(c2w) -> torch.Tensor:
    check_shape(c2w, "c2w", (4, 4))
    if c2w.ndim != 3 or c2w.shape[0] < 1:
        raise GeometryError(f"c2w: expected shape (V, 4, 4) with V >= 1, got {tuple(c2w.shape)}")
    check_finite(c2w, "c2w")
    return c2w


def _check_n(n_frames) -> int:
    if int(n_frames) != n_frames or n_frames < 1:
        raise GeometryError(f"n_frames: expected a positive integer, got {n_frames}")
    return int(n_frames)


def _unit(v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(eps)


def look_at(eye, target, up) -> torch.Tensor:
    """OpenCV camera-to-world at ``eye`` looking at ``target`` with image-up along ``up``.

    Args: (..., 3) tensors, broadcastable (``up`` is the world direction that
    appears upwards in the image, i.e. the camera's -y). Returns (..., 4, 4).
    If ``up`` is parallel to the view direction, another up is chosen.
    """
    eye, target, up = (torch.as_tensor(x) for x in (eye, target, up))
    dtype = torch.promote_types(torch.promote_types(eye.dtype, target.dtype), up.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    eye, target, up = torch.broadcast_tensors(eye.to(dtype), target.to(dtype), up.to(dtype))
    z = target - eye
    if bool((z.norm(dim=-1) == 0).any()):
        raise GeometryError("look_at: eye and target coincide")
    z = _unit(z)
    x = torch.linalg.cross(z, up)
    bad = x.norm(dim=-1, keepdim=True) < 1e-9 * up.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    if bool(bad.any()):
        alt = torch.eye(3, dtype=dtype, device=z.device)[z.abs().argmin(dim=-1)]
        x = torch.where(bad, torch.linalg.cross(z, alt), x)
    x = _unit(x)
    y = torch.linalg.cross(z, x)
    return as_homogeneous(torch.stack([x, y, z, eye.to(dtype)], dim=-1))


def _catmull_rom(P: torch.Tensor, seg: torch.Tensor, s: torch.Tensor, closed: bool) -> torch.Tensor:
    """Centripetal Catmull-Rom (Barry-Goldman) on segment ``seg`` (P[seg] -> P[seg+1]) at ``s`` in [0, 1]."""
    if closed:
        ext = torch.cat([P[-1:], P, P[:2]])
    else:
        ext = torch.cat([2 * P[:1] - P[1:2], P, 2 * P[-1:] - P[-2:-1]])
    p0, p1, p2, p3 = (ext[seg + j] for j in range(4))
    scale = (ext[1:] - ext[:-1]).norm(dim=-1).max().clamp_min(1e-30)
    dt = [((b - a).norm(dim=-1) / scale).clamp_min(1e-12).sqrt() for a, b in ((p0, p1), (p1, p2), (p2, p3))]
    t0 = torch.zeros_like(dt[0])
    t1, t2 = t0 + dt[0], t0 + dt[0] + dt[1]
    t3 = t2 + dt[2]
    t = (t1 + s * (t2 - t1))[:, None]
    t0, t1, t2, t3 = (x[:, None] for x in (t0, t1, t2, t3))
    a1 = ((t1 - t) * p0 + (t - t0) * p1) / (t1 - t0)
    a2 = ((t2 - t) * p1 + (t - t1) * p2) / (t2 - t1)
    a3 = ((t3 - t) * p2 + (t - t2) * p3) / (t3 - t2)
    b1 = ((t2 - t) * a1 + (t - t0) * a2) / (t2 - t0)
    b2 = ((t3 - t) * a2 + (t - t1) * a3) / (t3 - t1)
    return ((t2 - t) * b1 + (t - t1) * b2) / (t2 - t1)


def evaluate_path(c2w: torch.Tensor, u, closed: bool = False) -> torch.Tensor:
    """The :func:`interpolate_path` spline at keyframe parameters ``u`` (keyframe i at u = i).

    ``u`` is clipped to ``[0, V - 1]`` (open) or taken modulo V (closed). Needs V >= 2.
    """
    c2w = _check_c2w(c2w)
    V = c2w.shape[0]
    if V < 2:
        raise GeometryError("c2w: evaluate_path needs at least 2 cameras")
    x = c2w.double()
    u = torch.as_tensor(u, dtype=torch.float64, device=c2w.device).reshape(-1)
    nseg = V if closed else V - 1
    u = torch.remainder(u, V) if closed else u.clamp(0, V - 1)
    seg = u.floor().long().clamp(0, nseg - 1)
    s = u - seg
    pos = _catmull_rom(x[:, :3, 3], seg, s, closed)
    q = mat_to_quat(x[:, :3, :3])
    R = quat_to_mat(quat_slerp(q[seg], q[(seg + 1) % V], s))
    out = torch.zeros(u.shape[0], 4, 4, dtype=torch.float64, device=c2w.device)
    out[:, :3, :3], out[:, :3, 3], out[:, 3, 3] = R, pos, 1.0
    return out.to(c2w.dtype)


def _wiggle(c2w: torch.Tensor, n: int, center_depth: float) -> torch.Tensor:
    x = c2w[0].double()
    X, Y, Z, o = x[:3, 0], x[:3, 1], x[:3, 2], x[:3, 3]
    th = torch.arange(n, dtype=torch.float64, device=c2w.device) * (2 * math.pi / n)
    r = _WIGGLE * center_depth
    eye = o + r * (torch.sin(th)[:, None] * X + 0.5 * torch.sin(2 * th)[:, None] * Y
                   - 0.5 * (1 - torch.cos(th))[:, None] * Z)
    return look_at(eye, o + center_depth * Z, -Y).to(c2w.dtype)


def interpolate_path(c2w: torch.Tensor, n_frames: int, closed: bool = False,
                     center_depth: float | None = None) -> torch.Tensor:
    """``n_frames`` cameras along a smooth path through ``c2w (V, 4, 4)``, evenly spaced by arc length.

    Open paths start at the first and end at the last camera; closed paths loop
    back to the first camera (not repeated). One view: a small closed figure-eight
    wiggle/dolly starting at the camera, looking at the point ``center_depth``
    (default 1) in front of it.
    """
    c2w = _check_c2w(c2w)
    n = _check_n(n_frames)
    V = c2w.shape[0]
    if V == 1:
        return _wiggle(c2w, n, 1.0 if center_depth is None else float(center_depth))
    nseg = V if closed else V - 1
    m = max(32, math.ceil(4 * n / nseg))
    ug = torch.linspace(0, nseg, nseg * m + 1, dtype=torch.float64)
    dense = evaluate_path(c2w.double(), ug, closed)
    step = (dense[1:, :3, 3] - dense[:-1, :3, 3]).norm(dim=-1)
    if float(step.sum()) <= 1e-9 * (1.0 + float(dense[:, :3, 3].abs().max())):
        rel = dense[:-1, :3, :3].transpose(-1, -2) @ dense[1:, :3, :3]
        step = rotation_angle(rel)
    cum = torch.cat([step.new_zeros(1), step.cumsum(0)]).cpu().numpy()
    frac = np.arange(n) / (n if closed else max(n - 1, 1))
    if cum[-1] <= 0:
        u = frac * nseg
    else:
        u = np.interp(frac * cum[-1], cum, ug.numpy())
        if not closed and n > 1:
            u[-1] = nseg
    return evaluate_path(c2w, torch.from_numpy(u).to(c2w.device), closed)


def scene_center(c2w: torch.Tensor, center_depth: float | None = None) -> torch.Tensor:
    """Point nearest all optical axes (least squares), or a fallback, as a (3,) tensor.

    The least-squares point is used when it is well conditioned (axes not nearly
    parallel) and in front of the cameras on average; otherwise: mean camera
    centre + mean forward direction * ``center_depth`` (default: the median
    distance of the cameras to their mean centre, or 1 if they coincide).
    """
    c2w = _check_c2w(c2w)
    x = c2w.double()
    o, d = x[:, :3, 3], _unit(x[:, :3, 2])
    if x.shape[0] >= 2:
        proj = torch.eye(3, dtype=torch.float64, device=x.device) - d[:, :, None] * d[:, None, :]
        A, b = proj.sum(0), (proj @ o[:, :, None]).sum(0)[:, 0]
        ev = torch.linalg.eigvalsh(A)
        if float(ev[0]) > 1e-3 * float(ev[-1]):
            p = torch.linalg.solve(A, b)
            if float(((p - o) * d).sum(-1).mean()) > 0:
                return p.to(c2w.dtype)
    mean = o.mean(0)
    if center_depth is None:
        center_depth = float((o - mean).norm(dim=-1).median())
        center_depth = center_depth if center_depth > 1e-12 else 1.0
    fwd = d.mean(0)
    fwd = d[0] if float(fwd.norm()) < 1e-9 else _unit(fwd)
    return (mean + fwd * float(center_depth)).to(c2w.dtype)


def _mean_up(x: torch.Tensor) -> torch.Tensor:
    up = -x[:, :3, 1].mean(0)
    return _unit(-x[0, :3, 1] if float(up.norm()) < 1e-9 else up)


def orbit_path(c2w: torch.Tensor, n_frames: int, radius_scale: float = 1.0, center=None,
               center_depth: float | None = None) -> torch.Tensor:
    """``n_frames`` cameras on a closed circle around the scene centre, looking at it.

    The circle lies in the plane perpendicular to the cameras' mean up vector
    (-y), at their mean height; its radius is ``radius_scale`` times their mean
    distance to the vertical axis through the centre; it starts at the azimuth of
    the first camera. ``center`` overrides :func:`scene_center`; ``center_depth``
    is its fallback distance (required in spirit for one view: the orbit is
    around the point ``center_depth`` in front of the camera).
    """
    c2w = _check_c2w(c2w)
    n = _check_n(n_frames)
    if not radius_scale > 0:
        raise GeometryError(f"radius_scale: expected > 0, got {radius_scale}")
    x = c2w.double()
    c = scene_center(c2w, center_depth) if center is None else torch.as_tensor(center)
    c = c.to(device=x.device, dtype=torch.float64).reshape(3)
    up = _mean_up(x)
    rel = x[:, :3, 3] - c
    h = (rel @ up).mean()
    horiz = rel - (rel @ up)[:, None] * up
    r = horiz.norm(dim=-1).mean()
    if float(r) < 1e-9 * (1.0 + float(rel.norm(dim=-1).mean())):
        r = rel.norm(dim=-1).mean()
        r = r if float(r) > 1e-12 else torch.ones_like(r)
    e1 = horiz[0]
    if float(e1.norm()) < 1e-9 * float(r):
        e1 = x[0, :3, 0] - (x[0, :3, 0] @ up) * up
    e1 = _unit(e1)
    e2 = torch.linalg.cross(up, e1)
    th = torch.arange(n, dtype=torch.float64, device=x.device) * (2 * math.pi / n)
    eye = c + h * up + radius_scale * r * (torch.cos(th)[:, None] * e1 + torch.sin(th)[:, None] * e2)
    return look_at(eye, c.expand_as(eye), up.expand_as(eye)).to(c2w.dtype)


def extend_path(c2w: torch.Tensor, n_frames: int, distance: float = 0.5,
                center_depth: float | None = None) -> torch.Tensor:
    """From the last camera out along the trajectory direction and back (smooth, ``n_frames``).

    The direction is that of the last non-zero step between consecutive camera
    centres; the reach is ``distance`` times the total length of the camera
    polyline. With one camera, or cameras that do not move, the camera dollies
    forward by ``distance * center_depth`` (default 1). The rotation stays that
    of the last camera; the first and last frames equal it.
    """
    c2w = _check_c2w(c2w)
    n = _check_n(n_frames)
    x = c2w.double()
    o = x[:, :3, 3]
    steps = o[1:] - o[:-1]
    lengths = steps.norm(dim=-1)
    total = float(lengths.sum()) if len(lengths) else 0.0
    moving = (lengths > 1e-9 * (1.0 + float(o.abs().max()))).nonzero()
    if total > 0 and len(moving):
        direction, reach = _unit(steps[int(moving[-1])]), distance * total
    else:
        direction = _unit(x[-1, :3, 2])
        reach = distance * (1.0 if center_depth is None else float(center_depth))
    s = torch.arange(n, dtype=torch.float64, device=x.device) / max(n - 1, 1)
    off = reach * 0.5 * (1 - torch.cos(2 * math.pi * s))
    out = x[-1].expand(n, 4, 4).clone()
    out[:, :3, 3] = o[-1] + off[:, None] * direction
    return out.to(c2w.dtype)


def nearest_view(path_c2w: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """(n,) index of the input camera nearest each path camera (centre distance, then view direction)."""
    check_shape(path_c2w, "path_c2w", (4, 4))
    c2w = _check_c2w(c2w)
    p, q = path_c2w.reshape(-1, 4, 4).double(), c2w.double().to(path_c2w.device)
    scale = float((q[:, :3, 3] - q[:, :3, 3].mean(0)).norm(dim=-1).max()) or 1.0
    dist = torch.cdist(p[:, :3, 3], q[:, :3, 3])
    cos = p[:, :3, 2] @ q[:, :3, 2].T
    return (dist + 1e-3 * scale * (1 - cos)).argmin(dim=1)


def path_intrinsics(path_c2w: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor | None = None) -> torch.Tensor:
    """Intrinsics for a path: ``K (3, 3)`` repeated, or ``K (V, 3, 3)`` of the nearest input view.

    Returns (n, 3, 3). With per-view ``K`` (V > 1), ``c2w (V, 4, 4)`` is required.
    """
    check_shape(path_c2w, "path_c2w", (4, 4))
    check_shape(K, "K", (3, 3))
    n = path_c2w.reshape(-1, 4, 4).shape[0]
    if K.ndim == 2 or (K.ndim == 3 and K.shape[0] == 1):
        return K.reshape(3, 3).expand(n, 3, 3).clone()
    if K.ndim != 3:
        raise GeometryError(f"K: expected shape (3, 3) or (V, 3, 3), got {tuple(K.shape)}")
    if c2w is None or c2w.shape[0] != K.shape[0]:
        raise GeometryError(f"c2w: per-view K of {K.shape[0]} views needs c2w ({K.shape[0]}, 4, 4)")
    return K[nearest_view(path_c2w, c2w).to(K.device)]
