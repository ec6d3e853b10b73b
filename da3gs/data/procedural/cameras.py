"""Camera sets for procedural scenes: orbit, forward-facing, walkthrough and stereo.

All modes are computed for all samples at once and selected per sample (cheap: a few
(S, V) tensors). Cameras look at (or travel towards) the scene's focus and use world z as the
image-up direction with a little roll. Positions are kept inside the room / dome and above the
ground; :func:`positions_ok` rejects sets with a camera inside a primitive's bounding sphere.
Intrinsics: ``fx = fy`` from a field of view of the longer image side, principal point near
the centre. The overlap of the views is checked by the generator on a low-resolution render.
"""

from __future__ import annotations

import math

import torch

from .config import ProceduralConfig
from .primitives import BOX, QUAD, const, slot_types
from .scene import BACKDROP, FACADE, FURNISHED, ROOM, TABLETOP, Scene, _Rng

__all__ = ["sample_cameras", "sample_intrinsics", "positions_ok"]


def _vec(values, device) -> torch.Tensor:
    """A cached (len(values),) float constant (:func:`.primitives.const`)."""
    return const(f"vec{values}", values, torch.float32, (len(values),), device)


def _deg(x):
    return x * (math.pi / 180.0)


def _sph(az: torch.Tensor, el: torch.Tensor) -> torch.Tensor:
    return torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], -1)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-9)


def _look_at(eye: torch.Tensor, tgt: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """OpenCV c2w (..., 4, 4) at eye looking at tgt, image-up along up (all (..., 3)), as
    :func:`da3gs.geometry.trajectory.look_at` without its host-syncing checks (a degenerate
    up falls back to another axis by masking)."""
    z = _unit(tgt - eye)
    x = torch.linalg.cross(z, up)
    alt = torch.linalg.cross(z, _vec((1.0, 0.0, 0.0), z.device).expand_as(z))
    x = _unit(torch.where(x.norm(dim=-1, keepdim=True) < 1e-9, alt, x))
    y = torch.linalg.cross(z, x)
    top = torch.stack([x, y, z, eye], -1)  # (..., 3, 4)
    bottom = _vec((0.0, 0.0, 0.0, 1.0), z.device).expand(*top.shape[:-2], 1, 4)
    return torch.cat([top, bottom], -2)


def _clamp_inside(scene: Scene, eye: torch.Tensor) -> torch.Tensor:
    """Keep eyes (S, V, 3) inside rooms (0.25 from the walls), domes and streets (0.4 from the
    façades, 0.5 before an end façade), above the ground or table."""
    kind = scene.kind
    boxed = ((kind == ROOM) | (kind == FURNISHED) | (kind == TABLETOP))[:, None, None]
    lim = (scene.room[:, None, :2] - 0.25).clamp_min(0.1)
    xy = torch.maximum(torch.minimum(eye[..., :2], lim), -lim)
    z = torch.minimum(eye[..., 2], scene.room[:, None, 2] - 0.25)
    er = torch.cat([xy, z[..., None]], -1)
    dome = (kind == BACKDROP)[:, None, None]
    rmax = (0.85 * scene.dome_r)[:, None, None]
    nrm = eye.norm(dim=-1, keepdim=True)
    ed = torch.where(nrm > rmax, eye * rmax / nrm, eye)
    wy = (scene.env_prm[:, 0, None] - 0.4).clamp_min(0.1)
    ex = scene.env_prm[:, 5, None] - 0.5
    es = torch.stack([torch.minimum(eye[..., 0], ex), torch.maximum(torch.minimum(eye[..., 1], wy), -wy), eye[..., 2]],
                     -1)
    eye = torch.where(boxed, er, torch.where(dome, ed, torch.where((kind == FACADE)[:, None, None], es, eye)))
    lo = torch.where(kind == ROOM, 0.3, torch.where(kind == FURNISHED, 0.5, torch.where(
        kind == FACADE, 0.3, torch.where(kind == TABLETOP, 0.1, 0.05) * scene.scale)))[:, None]
    return torch.cat([eye[..., :2], torch.maximum(eye[..., 2], lo)[..., None]], -1)


def sample_cameras(scene: Scene, cfg: ProceduralConfig, mode: torch.Tensor, V: int, gen: torch.Generator) -> torch.Tensor:
    """Camera-to-world matrices for every sample.

    mode: (S,) long index into CAMERA_MODES. Returns c2w: (S, V, 4, 4) OpenCV.

    Per kind: rooms and furnished rooms keep cameras at 0.45-0.9 of the smaller half side from
    the focus, 0-20 degrees above it; tabletop cameras are close (2.0-3.4 L from the object,
    12-55 degrees above it) and their orbits go all around (200-360 degrees, at most 90 V, views
    ``span / V`` apart, so that a full circle does not repeat view 0); façade cameras stand at eye height
    (1.3-2.0) looking along the street or, when the focus is on a building front, at it from
    across the street; other kinds 1.3-2.3 L away, 5-35 degrees above the focus.
    """
    S, dev = scene.num, scene.kind.device
    r = _Rng(gen, dev)
    L, f = scene.scale[:, None], scene.focus[:, None, :]
    kind = scene.kind
    room = (kind == ROOM) | (kind == FURNISHED)
    tab, fac = (kind == TABLETOP)[:, None], (kind == FACADE)[:, None]
    vfrac = torch.linspace(0, 1, V, device=dev)[None] if V > 1 else torch.zeros(1, 1, device=dev)
    dist = torch.where(room[:, None], r.u((S, 1), 0.45, 0.9) * scene.room[:, :2].amin(-1, keepdim=True),
                       L * r.u((S, 1), 1.3, 2.3))
    dist = torch.where(tab, L * r.u((S, 1), 2.0, 3.4), torch.where(fac, L * r.u((S, 1), 0.8, 2.0), dist))
    el = torch.where(room[:, None], r.u((S, 1), 0.0, 20.0), r.u((S, 1), 5.0, 35.0))
    el = _deg(torch.where(tab, r.u((S, 1), 12.0, 55.0), el))
    # façades: eye height 1.3-2.0 whatever the focus height
    eye_h = r.u((S, 1), 1.3, 2.0)
    el = torch.where(fac, torch.asin(((eye_h - f[..., 2]) / dist).clamp(-0.9, 0.9)), el)
    az0 = r.u((S, 1), 0, 2 * math.pi)
    # façades: along the street (+-x, +-30 degrees) or, facing a building front at y = +-wy, from
    # across the street (+-50 degrees)
    along = torch.where(r.u((S, 1)) < 0.5, 0.0, math.pi) + _deg(r.u((S, 1), -30.0, 30.0))
    facing = torch.where(f[..., 1] > 0, -0.5 * math.pi, 0.5 * math.pi) + _deg(r.u((S, 1), -50.0, 50.0))
    az0 = torch.where(fac, torch.where(f[..., 1] != 0, facing, along), az0)
    # orbit: an arc around the focus (tabletop: all around, views span / V apart)
    span = torch.where(tab, _deg(r.u((S, 1), 200.0, 360.0).clamp_max(90.0 * V)), _deg(r.u((S, 1), 15.0, 110.0)))
    vo = torch.where(tab, torch.arange(V, device=dev)[None] / V - 0.5, vfrac - 0.5)
    az = az0 + span * vo + 0.03 * span * r.n((S, V)) / torch.where(tab, float(max(V, 1)), 1.0)
    elv = el + _deg(2.0) * r.n((S, V))
    eye_orbit = f + (dist * (1 + 0.04 * r.n((S, V))))[..., None] * _sph(az, elv)
    tgt_orbit = f + 0.08 * L[..., None] * r.n((S, V, 3))
    # forward-facing: a small patch of positions facing the focus (LLFF-like)
    eye0 = f + dist[..., None] * _sph(az0, el)
    fwd = _unit(f - eye0)
    zw = _vec((0.0, 0.0, 1.0), dev).expand_as(fwd)
    right = _unit(torch.linalg.cross(fwd, zw))
    up = torch.linalg.cross(right, fwd)
    off = r.u((S, V, 3), -1, 1) * _vec((0.22, 0.12, 0.1), dev)
    eye_fwd = eye0 + dist[..., None] * (off[..., :1] * right + off[..., 1:2] * up + off[..., 2:] * fwd)
    tgt_fwd = f + 0.05 * L[..., None] * r.n((S, V, 3))
    # walkthrough: walk towards the focus while turning the head
    start = f + (dist * r.u((S, 1), 1.0, 1.3))[..., None] * _sph(az0, _deg(r.u((S, 1), 3.0, 15.0)))
    yaw = _deg(r.u((S, 1), -25.0, 25.0))
    hd = _unit(f - start) * _vec((1.0, 1.0, 0.0), dev)
    c, s = yaw.cos()[..., None], yaw.sin()[..., None]
    hd = _unit(torch.cat([c * hd[..., :1] - s * hd[..., 1:2], s * hd[..., :1] + c * hd[..., 1:2], hd[..., 2:]], -1))
    length = dist * r.u((S, 1), 0.25, 0.7)
    side = _unit(torch.linalg.cross(hd, zw))
    wig = 0.04 * dist * torch.sin(2 * math.pi * vfrac * r.u((S, 1), 0.5, 1.5) + r.u((S, 1), 0, 6.28))
    eye_walk = start + (length * vfrac)[..., None] * hd + wig[..., None] * side
    look_yaw = _deg(r.u((S, 1), -35.0, 35.0)) * (vfrac - 0.3) + _deg(2.0) * r.n((S, V))
    look_pitch = _deg(r.u((S, 1), -12.0, 3.0) + 1.5 * r.n((S, V)))
    haz = torch.atan2(hd[..., 1], hd[..., 0])
    tgt_walk = eye_walk + _sph(haz + look_yaw, look_pitch)
    # stereo: forward-facing rigs, pairs offset along the rig's x axis
    sel = lambda a, b, c_, d_: torch.where((mode == 0)[:, None, None], a, torch.where(  # noqa: E731
        (mode == 1)[:, None, None], b, torch.where((mode == 2)[:, None, None], c_, d_)))
    rig = torch.arange(V, device=dev) // 2
    eye_st, tgt_st = eye_fwd[:, rig], tgt_fwd[:, rig]
    eye = _clamp_inside(scene, sel(eye_orbit, eye_fwd, eye_walk, eye_st))
    tgt = sel(tgt_orbit, tgt_fwd, tgt_walk, tgt_st)
    roll = _deg(2.0) * r.n((S, V, 1))
    upv = _unit(zw[:, :1].expand(S, V, 3) + roll * r.unit((S, V)))
    upv = torch.where((mode == 3)[:, None, None], upv[:, rig], upv)
    c2w = _look_at(eye, tgt, upv)
    base = r.u((S, 1), *cfg.stereo_baseline) * dist
    sign = torch.where(torch.arange(V, device=dev) % 2 == 0, -0.5, 0.5)[None]
    shift = (base * sign)[..., None] * c2w[..., :3, 0]
    c2w[..., :3, 3] += torch.where((mode == 3)[:, None, None] & (V > 1), shift, torch.zeros_like(shift))
    return c2w


def sample_intrinsics(cfg: ProceduralConfig, S: int, V: int, H: int, W: int, mode: torch.Tensor,
                      gen: torch.Generator) -> torch.Tensor:
    """K: (S, V, 3, 3) with fx = fy from the FOV of the longer side; stereo pairs share K."""
    r = _Rng(gen, mode.device)
    fov = _deg(r.u((S, 1), *cfg.fov_deg))
    foc = 0.5 * max(H, W) / torch.tan(0.5 * fov)
    jit = (1 + cfg.focal_jitter * r.n((S, V)).clamp(-3, 3))
    pj = cfg.principal_jitter * r.n((S, V, 2)).clamp(-3, 3)
    rig = torch.arange(V, device=mode.device) // 2
    st = (mode == 3)[:, None]
    jit = torch.where(st, jit[:, rig], jit)
    pj = torch.where(st[..., None], pj[:, rig], pj)
    K = torch.zeros(S, V, 3, 3, device=mode.device)
    K[..., 0, 0] = K[..., 1, 1] = foc * jit
    K[..., 0, 2] = W * (0.5 + pj[..., 0])
    K[..., 1, 2] = H * (0.5 + pj[..., 1])
    K[..., 2, 2] = 1.0
    return K


def positions_ok(scene: Scene, c2w: torch.Tensor) -> torch.Tensor:
    """(S,) bool: no camera within an active primitive (plus a margin of 3% of the scale): within
    its box for boxes and quads (the camera's point in the primitive's frame; a quad is a box of
    zero thickness), within its bounding sphere for the other types."""
    eye = c2w[..., :3, 3]  # (S, V, 3)
    rel = eye[:, :, None] - scene.center[:, None]  # (S, V, P, 3)
    dd = rel.norm(dim=-1)
    m = 0.03 * scene.scale[:, None, None]
    margin = scene.bound[:, None] + m
    loc = (rel[..., None, :] @ scene.rot[:, None])[..., 0, :].abs()  # R^T (eye - c)
    typ = slot_types(eye.device)
    quad = (typ == QUAD)[:, None]
    half = torch.where(quad, torch.cat([scene.prm[..., :2], torch.zeros_like(scene.prm[..., :1])], -1),
                       scene.prm[..., :3])[:, None]
    in_box = (loc < half + m[..., None]).all(-1)
    inside = torch.where((typ == BOX) | (typ == QUAD), in_box, dd < margin) & scene.active[:, None]
    return ~inside.any(-1).any(-1)
