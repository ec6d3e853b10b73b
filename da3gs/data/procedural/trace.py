"""Ray casting against a batch of scenes: environment, closest hit and any hit (shadows).

Rays come as broadcastable ``o, d: (S, X, Y, 3)`` world origins and unit directions (for
primary rays ``o: (S, V, 1, 3)`` and ``d: (S, V, H*W, 3)``; for shadow rays ``(S, lights,
rays, 3)``). All primitives are moved into their local frames by one batched matmul with the
scene's stacked rotations, then each analytic type is intersected densely over its slots
(a fixed loop of 4 types); tori and blends are sphere-traced only for (ray, primitive) pairs
that enter the bounding sphere before the nearest hit so far (:func:`.sdf.march`).
"""

from __future__ import annotations

import torch
from torch.profiler import record_function

from .primitives import (BIG, maybe_compile, BOX, CYLINDER, NUM_SLOTS, QUAD, SLOT_START, SPHERE, TORUS, bound_interval,
                         intersect_box, intersect_cylinder, intersect_quad, intersect_sphere, slot_types)
from .scene import Scene
from .sdf import march

__all__ = ["to_local", "closest_hit", "any_hit", "environment_hit"]

_ANALYTIC = ((SPHERE, intersect_sphere), (BOX, intersect_box), (CYLINDER, intersect_cylinder), (QUAD, intersect_quad))
def to_local(scene: Scene, o: torch.Tensor, d: torch.Tensor):
    """World rays in every primitive's local frame.

    o, d: (S, X, Y, 3) broadcastable. Returns o_l, d_l: (S, X, Y, P, 3) (broadcast shapes).
    """
    S, P = scene.num, NUM_SLOTS
    rcat = scene.rot.permute(0, 2, 1, 3).reshape(S, 1, 3, 3 * P)  # [s, i, p*3+j] = R[s, p, i, j]
    cR = torch.einsum("spi,spij->spj", scene.center, scene.rot)[:, None, None]
    o_l = (o @ rcat).unflatten(-1, (P, 3)) - cR
    d_l = (d @ rcat).unflatten(-1, (P, 3))
    return o_l, d_l


def _sdf_pairs(scene, o_l, d_l, best_t, tmin):
    """(ray, slot) pairs of sphere-traced primitives whose bounding sphere is entered before best_t.

    Returns idx (M, 4) = (s, x, y, slot - SLOT_START[TORUS]), t0, t1 (M,).
    """
    sl = slice(SLOT_START[TORUS], NUM_SLOTS)
    bound = scene.bound[:, None, None, sl]
    t0, t1, hit = bound_interval(o_l[..., sl, :], d_l[..., sl, :], bound, tmin)
    cand = hit & scene.active[:, None, None, sl] & (t0 < best_t[..., None])
    idx = cand.nonzero()
    s, x, y, j = idx.unbind(1)
    return idx, t0.expand(cand.shape)[s, x, y, j], t1.expand(cand.shape)[s, x, y, j]


def _march_pairs(scene, o_l, d_l, idx, t0, t1, best_t, cfg):
    s, x, y, j = idx.unbind(1)
    slot = j + SLOT_START[TORUS]
    shape = best_t.shape + o_l.shape[-2:]
    ol = o_l.expand(shape)[s, x, y, slot]
    dl = d_l.expand(shape)[s, x, y, slot]
    prm = scene.prm[s, slot]
    op = torch.where(slot_types(prm.device)[slot] == TORUS, 4, prm[:, 8].round().long())
    t1 = torch.minimum(t1, best_t[s, x, y])
    return march(ol, dl, t0, t1, prm, op, cfg.max_march_steps, cfg.march_eps,
                 use_compile=cfg.compile and ol.is_cuda), slot


def closest_hit(scene: Scene, o: torch.Tensor, d: torch.Tensor, tmax: torch.Tensor, cfg,
                tmin: float = 1e-4, approx: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest primitive hit before ``tmax``.

    o, d: (S, X, Y, 3) broadcastable (d unit); tmax: (S, X, Y). ``approx``: tori and blends
    are replaced by their bounding spheres (no sphere tracing; for the cameras' overlap check).
    Returns t: (S, X, Y) (tmax where nothing is hit) and slot: (S, X, Y) long, -1 where
    nothing is hit.
    """
    use_c = cfg.compile and o.is_cuda
    o_l, d_l = to_local(scene, o, d)
    best_t = tmax.clone()
    best_id = torch.full_like(best_t, -1, dtype=torch.long)
    prm = scene.prm[:, None, None]
    act = scene.active[:, None, None]
    for typ, fn in _ANALYTIC:
        sl = slice(SLOT_START[typ], SLOT_START[typ + 1])
        t = maybe_compile(fn, use_c)(o_l[..., sl, :], d_l[..., sl, :], prm[..., sl, :], tmin)
        t = torch.where(act[..., sl], t, BIG)
        tm, am = t.min(-1)
        better = tm < best_t
        best_t = torch.where(better, tm, best_t)
        best_id = torch.where(better, am + SLOT_START[typ], best_id)
    if approx:
        sl = slice(SLOT_START[TORUS], NUM_SLOTS)
        t = intersect_sphere(o_l[..., sl, :], d_l[..., sl, :], scene.bound[:, None, None, sl, None], tmin)
        tm, am = torch.where(act[..., sl], t, BIG).min(-1)
        better = tm < best_t
        return torch.where(better, tm, best_t), torch.where(better, am + SLOT_START[TORUS], best_id)
    idx, t0, t1 = _sdf_pairs(scene, o_l, d_l, best_t, tmin)
    if idx.shape[0]:
        with record_function("procedural.march"):
            tp, slot = _march_pairs(scene, o_l, d_l, idx, t0, t1, best_t, cfg)
        X, Y = best_t.shape[1:]
        f = (idx[:, 0] * X + idx[:, 1]) * Y + idx[:, 2]
        best_t, best_id = best_t.contiguous(), best_id.contiguous()
        bt, bi = best_t.view(-1), best_id.view(-1)
        sdf_best = torch.full_like(bt, BIG).scatter_reduce(0, f, tp, "amin")
        win = (tp < BIG) & (tp <= sdf_best[f]) & (tp < bt[f])
        bt[f[win]] = tp[win]
        bi[f[win]] = slot[win]
    return best_t, best_id


def any_hit(scene: Scene, o: torch.Tensor, d: torch.Tensor, tmax: torch.Tensor, cfg,
            tmin: float = 1e-4) -> torch.Tensor:
    """Whether any primitive is hit in (tmin, tmax) (shadow rays; the environment casts none).

    o, d: (S, X, Y, 3) broadcastable; tmax: (S, X, Y) (0 for rays not to test). Returns (S, X, Y) bool.
    """
    use_c = cfg.compile and o.is_cuda
    o_l, d_l = to_local(scene, o, d)
    prm = scene.prm[:, None, None]
    act = scene.active[:, None, None]
    hit = torch.zeros_like(tmax, dtype=torch.bool)
    for typ, fn in _ANALYTIC:
        sl = slice(SLOT_START[typ], SLOT_START[typ + 1])
        t = maybe_compile(fn, use_c)(o_l[..., sl, :], d_l[..., sl, :], prm[..., sl, :], tmin)
        hit = hit | ((t < tmax[..., None]) & act[..., sl]).any(-1)
    lim = torch.where(hit, 0.0, tmax)
    idx, t0, t1 = _sdf_pairs(scene, o_l, d_l, lim, tmin)
    if idx.shape[0]:
        with record_function("procedural.march"):
            tp, _ = _march_pairs(scene, o_l, d_l, idx, t0, t1, lim, cfg)
        X, Y = hit.shape[1:]
        f = (idx[:, 0] * X + idx[:, 1]) * Y + idx[:, 2]
        hit = hit.contiguous()
        h = hit.view(-1)
        h[f[tp < BIG]] = True
    return hit


def environment_hit(scene: Scene, o: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Room walls, ground or dome, seen from inside.

    o, d: (S, X, Y, 3) broadcastable (cameras inside the room / dome, above the ground).
    Returns t: (S, X, Y) (BIG for sky) and env: (S, X, Y) long (0 floor, 1 walls / dome,
    2 ceiling, -1 sky).
    """
    sh = torch.broadcast_shapes(o.shape, d.shape)[:-1]
    kind = scene.kind[:, None, None]
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = d.unbind(-1)
    sgn = lambda v: torch.where(v < 0, -1.0, 1.0)  # noqa: E731
    safe = lambda v: torch.where(v.abs() < 1e-12, sgn(v) * 1e-12, v)  # noqa: E731
    rm = scene.room[:, None, None]
    tx = (sgn(dx) * rm[..., 0] - ox) / safe(dx)
    ty = (sgn(dy) * rm[..., 1] - oy) / safe(dy)
    t_floor = torch.where(dz < 0, -oz / safe(dz), BIG)
    t_ceil = torch.where(dz > 0, (rm[..., 2] - oz) / safe(dz), BIG)
    t_wall = torch.minimum(tx, ty)
    t_room = torch.minimum(torch.minimum(t_floor, t_ceil), t_wall)
    e_room = torch.where(t_room == t_floor, 0, torch.where(t_room == t_ceil, 2, 1))
    # ground under a sky
    px, py = ox + t_floor * dx, oy + t_floor * dy
    on_ground = (t_floor < BIG) & (px * px + py * py <= scene.ground_r[:, None, None] ** 2)
    t_gs = torch.where(on_ground, t_floor, BIG)
    e_gs = torch.where(on_ground, 0, -1)
    # dome backdrop
    b = ox * dx + oy * dy + oz * dz
    c = ox * ox + oy * oy + oz * oz - scene.dome_r[:, None, None] ** 2
    t_dome = -b + (b * b - c).clamp_min(0).sqrt()
    t_bd = torch.minimum(t_floor, t_dome)
    e_bd = torch.where(t_floor <= t_dome, 0, 1)
    t = torch.where(kind == 0, t_room, torch.where(kind == 1, t_gs, t_bd))
    e = torch.where(kind == 0, e_room, torch.where(kind == 1, e_gs, e_bd))
    return t.expand(sh), e.expand(sh)
