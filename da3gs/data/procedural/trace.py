"""Ray casting against a batch of scenes: environment, closest hit and any hit (shadows).

Rays come as broadcastable ``o, d: (S, X, Y, 3)`` world origins and unit directions (for
primary rays ``o: (S, V, 1, 3)`` and ``d: (S, V, H*W, 3)``; for shadow rays ``(S, 1, R, 3)``
and ``(S, lights, R, 3)``). :func:`_analytic` (one pure function, fused by ``torch.compile``
on CUDA) moves the rays into each type's local frames, intersects every analytic slot densely,
reduces to the nearest (or any) hit, and flags the (ray, slot) pairs of tori and blends whose
bounding sphere is entered before that hit. Those pairs are compacted with one ``nonzero``
(the only host sync of a trace) and sphere-traced (:func:`.sdf.march`, fixed steps, no sync);
the results are merged back with scatter reductions.
"""

from __future__ import annotations

import torch
from torch.profiler import record_function

from .primitives import (BIG, BOX, CYLINDER, NUM_SLOTS, QUAD, SLOT_START, SPHERE, TORUS, bound_interval,
                         intersect_box, intersect_cylinder, intersect_quad, intersect_sphere, maybe_compile,
                         slot_types, use_compile)
from .scene import Scene
from .sdf import march

__all__ = ["to_local", "closest_hit", "any_hit", "environment_hit"]

_ANALYTIC = ((SPHERE, intersect_sphere), (BOX, intersect_box), (CYLINDER, intersect_cylinder), (QUAD, intersect_quad))
_SDF = slice(SLOT_START[TORUS], NUM_SLOTS)


def to_local(center: torch.Tensor, rot: torch.Tensor, o: torch.Tensor, d: torch.Tensor, fused: bool = False):
    """World rays in the local frames of P primitives.

    center: (S, P, 3); rot: (S, P, 3, 3); o, d: (S, X, Y, 3) broadcastable. Returns o_l, d_l:
    (S, X, Y, P, 3) (broadcast shapes). ``fused``: elementwise form (fuses under torch.compile)
    instead of one matmul (fewer kernels eagerly).
    """
    S, P = center.shape[:2]
    R = rot[:, None, None]  # (S, 1, 1, P, 3, 3)
    if fused:
        c = center[:, None, None]
        o_l = ((o[..., None, :] - c)[..., None] * R).sum(-2)
        d_l = (d[..., None, None, :].transpose(-1, -2) * R).sum(-2)
        return o_l, d_l
    rcat = rot.permute(0, 2, 1, 3).reshape(S, 1, 3, 3 * P)  # [s, i, p*3+j] = R[s, p, i, j]
    cR = torch.einsum("spi,spij->spj", center, rot)[:, None, None]
    return (o @ rcat).unflatten(-1, (P, 3)) - cR, (d @ rcat).unflatten(-1, (P, 3))


def _analytic(o, d, tmax, center, rot, prm, active, bound, tmin: float, mode: str, fused: bool):
    """Dense analytic pass. mode: "closest", "approx" (tori and blends as their bounding
    spheres) or "any". Shapes: o, d (S, X, Y, 3); tmax (S, X, Y); scene tensors (S, P, ...).

    Returns (t (S, X, Y), slot (S, X, Y) long, cand (S, X, Y, 7) bool) for closest / approx, or
    (hit (S, X, Y) bool, cand) for any; ``cand`` flags the sphere-traced pairs to march.
    """
    ex = lambda x: x[:, None, None]  # noqa: E731
    best_t, best_id = tmax, torch.full_like(tmax, -1, dtype=torch.long)
    hit = torch.zeros_like(tmax, dtype=torch.bool)
    types = list(_ANALYTIC) + ([(TORUS, None)] if mode == "approx" else [])
    for typ, fn in types:
        sl = slice(SLOT_START[typ], SLOT_START[typ + 1] if fn is not None else NUM_SLOTS)
        o_l, d_l = to_local(center[:, sl], rot[:, sl], o, d, fused)
        if fn is None:
            t = intersect_sphere(o_l, d_l, ex(bound[:, sl, None]), tmin)
        else:
            t = fn(o_l, d_l, ex(prm[:, sl]), tmin)
        t = torch.where(ex(active[:, sl]), t, BIG)
        if mode == "any":
            hit = hit | (t < tmax[..., None]).any(-1)
            continue
        tm, am = t.min(-1)
        better = tm < best_t
        best_t = torch.where(better, tm, best_t)
        best_id = torch.where(better, am + SLOT_START[typ], best_id)
    lim = torch.where(hit, 0.0, tmax) if mode == "any" else best_t
    if mode == "approx":
        cand = torch.zeros(lim.shape + (NUM_SLOTS - SLOT_START[TORUS],), dtype=torch.bool, device=lim.device)
    else:
        o_l, d_l = to_local(center[:, _SDF], rot[:, _SDF], o, d, fused)
        t0, _, h = bound_interval(o_l, d_l, ex(bound[:, _SDF]), tmin)
        cand = h & ex(active[:, _SDF]) & (t0 < lim[..., None])
    return (hit, cand) if mode == "any" else (best_t, best_id, cand)


def _march_pairs(scene: Scene, o, d, cand, lim, cfg, tmin: float):
    """Sphere-trace the flagged pairs. cand: (S, X, Y, J) bool; lim: (S, X, Y) far limit.

    Returns ray (M,) flat ray index, slot (M,) long, t (M,) hit distance or BIG; None if M = 0.
    """
    S, X, Y, J = cand.shape
    idx = cand.reshape(-1).nonzero().squeeze(1)  # the trace's one host sync
    if idx.numel() == 0:
        return None
    ray, j = idx // J, idx % J
    s, x, y = ray // (X * Y), (ray // Y) % X, ray % Y
    sh = (S, X, Y, 3)
    slot = j + SLOT_START[TORUS]
    R, prm = scene.rot[s, slot], scene.prm[s, slot]
    o_l = ((o.expand(sh)[s, x, y] - scene.center[s, slot])[:, None] @ R)[:, 0]
    d_l = (d.expand(sh)[s, x, y][:, None] @ R)[:, 0]
    t0, t1, _ = bound_interval(o_l, d_l, scene.bound[s, slot], tmin)
    t1 = torch.minimum(t1, lim.reshape(-1)[ray])
    op = torch.where(slot_types(prm.device)[slot] == TORUS, 4, prm[:, 8].round().long())
    with record_function("procedural.march"):
        tp = march(o_l, d_l, t0, t1, prm, op, cfg.max_march_steps, cfg.march_eps, use_compile(cfg, o_l))
    return ray, slot, tp


def _scene_args(scene: Scene):
    return scene.center, scene.rot, scene.prm, scene.active, scene.bound


def closest_hit(scene: Scene, o: torch.Tensor, d: torch.Tensor, tmax: torch.Tensor, cfg,
                tmin: float = 1e-4, approx: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest primitive hit before ``tmax``.

    o, d: (S, X, Y, 3) broadcastable (d unit); tmax: (S, X, Y). ``approx``: tori and blends
    are replaced by their bounding spheres (no sphere tracing; for the cameras' overlap check).
    Returns t: (S, X, Y) (tmax where nothing is hit) and slot: (S, X, Y) long, -1 where
    nothing is hit.
    """
    uc = use_compile(cfg, tmax)
    fn = maybe_compile(_analytic, uc)
    best_t, best_id, cand = fn(o, d, tmax, *_scene_args(scene), tmin, "approx" if approx else "closest", uc)
    if approx:
        return best_t, best_id
    res = _march_pairs(scene, o, d, cand, best_t, cfg, tmin)
    if res is None:
        return best_t, best_id
    ray, slot, tp = res
    bt, bi = best_t.reshape(-1), best_id.reshape(-1)
    sdf_t = torch.full_like(bt, BIG).scatter_reduce(0, ray, tp, "amin")
    sdf_id = torch.full_like(bi, -1).scatter_reduce(0, ray, torch.where(tp <= sdf_t[ray], slot, -1), "amax")
    win = sdf_t < bt
    return torch.where(win, sdf_t, bt).view_as(best_t), torch.where(win, sdf_id, bi).view_as(best_id)


def any_hit(scene: Scene, o: torch.Tensor, d: torch.Tensor, tmax: torch.Tensor, cfg,
            tmin: float = 1e-4) -> torch.Tensor:
    """Whether any primitive is hit in (tmin, tmax) (shadow rays; the environment casts none).

    o, d: (S, X, Y, 3) broadcastable; tmax: (S, X, Y) (0 for rays not to test). Returns (S, X, Y) bool.
    """
    uc = use_compile(cfg, tmax)
    hit, cand = maybe_compile(_analytic, uc)(o, d, tmax, *_scene_args(scene), tmin, "any", uc)
    res = _march_pairs(scene, o, d, cand, torch.where(hit, 0.0, tmax), cfg, tmin)
    if res is None:
        return hit
    ray, _, tp = res
    n = torch.zeros(hit.numel(), dtype=torch.int32, device=hit.device).index_add_(0, ray, (tp < BIG).int())
    return hit | (n > 0).view_as(hit)


def _environment(o, d, kind, room, ground_r, dome_r):
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = d.unbind(-1)
    sgn = lambda v: torch.where(v < 0, -1.0, 1.0)  # noqa: E731
    safe = lambda v: torch.where(v.abs() < 1e-12, sgn(v) * 1e-12, v)  # noqa: E731
    rm = room[:, None, None]
    tx = (sgn(dx) * rm[..., 0] - ox) / safe(dx)
    ty = (sgn(dy) * rm[..., 1] - oy) / safe(dy)
    t_floor = torch.where(dz < 0, -oz / safe(dz), BIG)
    t_ceil = torch.where(dz > 0, (rm[..., 2] - oz) / safe(dz), BIG)
    t_wall = torch.minimum(tx, ty)
    t_room = torch.minimum(torch.minimum(t_floor, t_ceil), t_wall)
    e_room = torch.where(t_room == t_floor, 0, torch.where(t_room == t_ceil, 2, 1))
    # ground under a sky
    px, py = ox + t_floor * dx, oy + t_floor * dy
    on_ground = (t_floor < BIG) & (px * px + py * py <= ground_r[:, None, None] ** 2)
    t_gs = torch.where(on_ground, t_floor, BIG)
    e_gs = torch.where(on_ground, 0, -1)
    # dome backdrop
    b = ox * dx + oy * dy + oz * dz
    c = ox * ox + oy * oy + oz * oz - dome_r[:, None, None] ** 2
    t_dome = -b + (b * b - c).clamp_min(0).sqrt()
    t_bd = torch.minimum(t_floor, t_dome)
    e_bd = torch.where(t_floor <= t_dome, 0, 1)
    k = kind[:, None, None]
    t = torch.where(k == 0, t_room, torch.where(k == 1, t_gs, t_bd))
    e = torch.where(k == 0, e_room, torch.where(k == 1, e_gs, e_bd))
    return t, e


def environment_hit(scene: Scene, o: torch.Tensor, d: torch.Tensor, cfg=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Room walls, ground or dome, seen from inside.

    o, d: (S, X, Y, 3) broadcastable (cameras inside the room / dome, above the ground).
    Returns t: (S, X, Y) (BIG for sky) and env: (S, X, Y) long (0 floor, 1 walls / dome,
    2 ceiling, -1 sky).
    """
    sh = torch.broadcast_shapes(o.shape, d.shape)[:-1]
    fn = maybe_compile(_environment, cfg is not None and use_compile(cfg, d))
    t, e = fn(o, d, scene.kind, scene.room, scene.ground_r, scene.dome_r)
    return t.expand(sh), e.expand(sh)
