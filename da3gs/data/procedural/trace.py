"""Ray casting against a batch of scenes: environment, closest hit and any hit (shadows).

Rays come as broadcastable ``o, d: (S, X, Y, 3)`` world origins and unit directions (for
primary rays ``o: (S, V, 1, 3)`` and ``d: (S, V, H*W, 3)``; for shadow rays ``(S, 1, R, 3)``
and ``(S, lights, R, 3)``).

Cull, then intersect pairs (the generator is bound by GPU elementwise work, so no pair is
intersected that cannot hit): :func:`_cull` tests every (ray, slot) pair against the slot's
bounding sphere with two small matmuls and a few elementwise ops per pair; the surviving pairs
are compacted with one ``nonzero`` and sorted by slot, so they come grouped by primitive type
(the group sizes are read in a second, cheap sync). Each analytic type then intersects only its
own pairs in their local frames (gathered once for boxes, cylinders and quads); tori and blends are sphere-traced
(:func:`.sdf.march`, grouped by op) only on the pairs whose bounding sphere is entered before
the nearest analytic hit. Results are merged per ray with scatter reductions.
"""

from __future__ import annotations

import torch
from torch.profiler import record_function

from .primitives import (BIG, BOX, CYLINDER, NUM_PRM, NUM_SLOTS, QUAD, SLOT_START, SPHERE, TORUS, bound_interval,
                         intersect_box, intersect_cylinder, intersect_quad, intersect_sphere, maybe_compile,
                         slot_types, use_compile)
from .scene import Scene
from .sdf import march

__all__ = ["closest_hit", "any_hit", "environment_hit"]

_INTERSECT = {SPHERE: intersect_sphere, BOX: intersect_box, CYLINDER: intersect_cylinder, QUAD: intersect_quad}
_REL = 1e-6  # float32 cancellation margin of the expanded squared distances (keeps the cull conservative)


def _cull(scene: Scene, o: torch.Tensor, d: torch.Tensor, tmax: torch.Tensor, tmin: float) -> torch.Tensor:
    """(S, X, Y, P) bool: active slots whose bounding sphere the ray segment (tmin, tmax) enters.

    Test per pair: with nb = d.(c - o) and cc = |o - c|^2 - r^2, the segment point nearest to the
    centre is at t* = clamp(nb, tmin, tmax), inside the sphere iff cc + t* (t* - 2 nb) < 0. nb
    and cc come from matmuls of augmented vectors (inactive slots get cc + BIG; shadow rays with
    tmax <= tmin get nb - BIG, so t* = tmin and the test fails), leaving four elementwise passes
    over the pairs. Conservative: the exact tests follow.
    """
    c, r = scene.center, scene.bound
    off = torch.where(scene.active, 0.0, BIG)
    tm = tmax.clamp_min(tmin)[..., None]
    if o.shape[2] == 1:  # one origin per (S, X): primary rays
        oc = c[:, None] - o  # (S, X, P, 3)
        nb = d @ oc.transpose(-1, -2)  # (S, X, Y, P)
        cc = ((oc * oc).sum(-1) * (1 - _REL) - r[:, None] ** 2 + off[:, None])[:, :, None]
    else:
        one = torch.ones_like(c[..., :1])
        c4 = torch.cat([c, one], -1).transpose(1, 2)[:, None]  # (S, 1, 4, P)
        dod = (d * o).sum(-1, keepdim=True) + torch.where(tmax <= tmin, BIG, 0.0)[..., None]
        nb = torch.cat([d, -dod], -1) @ c4
        oo = (o * o).sum(-1, keepdim=True) * (1 - _REL)
        c5 = torch.cat([-2 * c, one, ((c * c).sum(-1) * (1 - _REL) - r * r + off)[..., None]], -1)
        cc = torch.cat([o, oo, torch.ones_like(oo)], -1) @ c5.transpose(1, 2)[:, None]
    ts = torch.clamp(nb, min=torch.full((), tmin, device=nb.device), max=tm)
    u = torch.sub(ts, nb, alpha=2)
    return torch.addcmul(cc, ts, u, out=nb) < 0  # reuses nb's memory (the largest temporaries)


def _take(v: torch.Tensor, s, x, y) -> torch.Tensor:
    """Rows of a broadcastable (S, X|1, Y|1, C) tensor at ray indices (s, x, y) -> (M, C)."""
    _, Xv, Yv, C = v.shape
    return v.reshape(-1, C)[(s * Xv + (x if Xv > 1 else 0)) * Yv + (y if Yv > 1 else 0)]


def _pairs(scene: Scene, o, d, tmax, tmin):
    """Culled pairs, slot-major. Returns (ray (M,) flat ray index, slot (M,), o (M, 3), d (M, 3),
    s (M,) scene, starts: list of the first pair of each type and the end)."""
    cand = _cull(scene, o, d, tmax, tmin)
    S, X, Y, P = cand.shape
    idx = cand.reshape(-1).nonzero().squeeze(1)  # sync: the pair count
    slot, order = torch.sort(idx % P, stable=True)  # slot-major, so grouped by type
    ray = idx[order] // P
    bounds = torch.tensor(SLOT_START, device=idx.device)
    starts = torch.searchsorted(slot, bounds).tolist()  # cheap sync: the queue is drained
    s, x, y = ray // (X * Y), (ray // Y) % X, ray % Y
    return ray, slot, _take(o, s, x, y), _take(d, s, x, y), s, starts


def _local(scene: Scene, s, slot, o, d):
    """Pairs' rays in their primitives' local frames: o_l, d_l (M, 3) and prm (M, NUM_PRM)."""
    e = s * NUM_SLOTS + slot
    R = scene.rot.reshape(-1, 3, 3)[e]
    od = torch.stack([o - scene.center.reshape(-1, 3)[e], d], 1) @ R  # (M, 2, 3): R^T (o - c), R^T d
    return od[:, 0], od[:, 1], scene.prm.reshape(-1, NUM_PRM)[e]


def _trace(scene: Scene, o, d, tmax, cfg, tmin: float, mode: str):
    """Shared pass. mode: "closest", "approx" (tori and blends as their bounding spheres) or
    "any". Returns (t, slot) flat per ray (t = tmax, slot -1 where nothing is hit) or, for any,
    hit flat bool."""
    uc = use_compile(cfg, tmax)
    ray, slot, op_, dp, s, st = _pairs(scene, o, d, tmax, tmin)
    tm = tmax.reshape(-1)
    N = tm.numel()
    a_end = st[TORUS] if mode != "approx" else st[-1]
    ta = torch.full((st[-1],), BIG, device=tm.device)
    a0, b0 = st[BOX], st[TORUS]
    if a0 < b0:  # boxes, cylinders and quads: local frames gathered once (pairs are slot-major)
        o_l, d_l, prm = _local(scene, s[a0:b0], slot[a0:b0], op_[a0:b0], dp[a0:b0])
    for typ in range(TORUS + (mode == "approx")):
        a, b = st[typ], (st[typ + 1] if typ < TORUS else st[-1])
        if a < b:
            if typ == TORUS:  # approx: bounding spheres of tori and blends
                e = s[a:b] * NUM_SLOTS + slot[a:b]
                oc = op_[a:b] - scene.center.reshape(-1, 3)[e]
                ta[a:b] = intersect_sphere(oc, dp[a:b], scene.bound.reshape(-1)[e][:, None], tmin)
            elif typ == SPHERE:  # rotation-invariant
                e = s[a:b] * NUM_SLOTS + slot[a:b]
                ta[a:b] = intersect_sphere(op_[a:b] - scene.center.reshape(-1, 3)[e], dp[a:b],
                                           scene.prm.reshape(-1, NUM_PRM)[e], tmin)
            else:
                ta[a:b] = maybe_compile(_INTERSECT[typ], uc)(o_l[a - a0:b - a0], d_l[a - a0:b - a0],
                                                              prm[a - a0:b - a0], tmin)
    ra, sa, ta = ray[:a_end], slot[:a_end], ta[:a_end]
    if mode == "any":
        hit = torch.zeros(N, dtype=torch.int32, device=tm.device).index_add_(0, ra, (ta < tm[ra]).int()) > 0
        lim = torch.where(hit, 0.0, tm)
    else:
        best = tm.clone().scatter_reduce_(0, ra, ta, "amin")
        lim = best
    if mode != "approx" and a_end < st[-1]:
        # tori and blends: pairs whose bounding sphere is entered before the far limit
        rs, ss = ray[a_end:], slot[a_end:]
        e = s[a_end:] * NUM_SLOTS + ss
        oc, dd = op_[a_end:] - scene.center.reshape(-1, 3)[e], dp[a_end:]
        t0, t1, h = bound_interval(oc, dd, scene.bound.reshape(-1)[e], tmin)
        t1 = torch.minimum(t1, lim[rs])
        keep = (h & (t0 < t1)).nonzero().squeeze(1)  # sync
        if keep.numel():
            rs, ss, sk = rs[keep], ss[keep], s[a_end:][keep]
            o_l, d_l, prm = _local(scene, sk, ss, op_[a_end:][keep], dd[keep])
            op = torch.where(slot_types(tm.device)[ss] == TORUS, 4, prm[:, 8].round().long())
            with record_function("procedural.march"):
                tp = march(o_l, d_l, t0[keep], t1[keep], prm, op, cfg.max_march_steps, cfg.march_eps, uc)
            if mode == "any":
                return hit.index_fill_(0, rs[tp < BIG], True)
            ra, sa, ta = torch.cat([ra, rs]), torch.cat([sa, ss]), torch.cat([ta, tp])
            best = best.scatter_reduce_(0, rs, tp, "amin")
    if mode == "any":
        return hit
    win = torch.where((ta <= best[ra]) & (ta < tm[ra]), sa, -1)  # a miss (BIG) never wins, even under tmax = BIG
    sl = torch.full((N,), -1, dtype=torch.long, device=tm.device).scatter_reduce_(0, ra, win, "amax")
    return best, sl


def closest_hit(scene: Scene, o: torch.Tensor, d: torch.Tensor, tmax: torch.Tensor, cfg,
                tmin: float = 1e-4, approx: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest primitive hit before ``tmax``.

    o, d: (S, X, Y, 3) broadcastable (d unit); tmax: (S, X, Y). ``approx``: tori and blends
    are replaced by their bounding spheres (no sphere tracing; for the cameras' overlap check).
    Returns t: (S, X, Y) (tmax where nothing is hit) and slot: (S, X, Y) long, -1 where
    nothing is hit.
    """
    t, sl = _trace(scene, o, d, tmax, cfg, tmin, "approx" if approx else "closest")
    return t.view_as(tmax), sl.view_as(tmax)


def any_hit(scene: Scene, o: torch.Tensor, d: torch.Tensor, tmax: torch.Tensor, cfg,
            tmin: float = 1e-4) -> torch.Tensor:
    """Whether any primitive is hit in (tmin, tmax) (shadow rays; the environment casts none).

    o, d: (S, X, Y, 3) broadcastable; tmax: (S, X, Y) (0 for rays not to test: they cost the
    cull only). Returns (S, X, Y) bool.
    """
    return _trace(scene, o, d, tmax, cfg, tmin, "any").view_as(tmax)


def _environment(o, d, kind, room, ground_r, dome_r):
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = d.unbind(-1)
    sg = torch.where(d < 0, -1.0, 1.0)  # all three components at once (fewer dispatched ops)
    sd = torch.where(d.abs() < 1e-12, sg * 1e-12, d)  # kept away from 0
    sz = sd[..., 2]
    rm = room[:, None, None]
    txy = (sg[..., :2] * rm[..., :2] - o[..., :2]) / sd[..., :2]
    t_floor = torch.where(dz < 0, -oz / sz, BIG)
    t_ceil = torch.where(dz > 0, (rm[..., 2] - oz) / sz, BIG)
    t_wall = txy.amin(-1)
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
