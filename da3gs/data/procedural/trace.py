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

from .primitives import (BIG, BOX, CYLINDER, NUM_PRM, NUM_SLOTS, QUAD, SLOT_START, SPHERE, TORUS, TYPE_NAMES,
                         bound_interval, intersect_box, intersect_cylinder, intersect_quad, intersect_sphere,
                         maybe_compile, slot_types, use_compile)
from .scene import Scene
from .sdf import NUM_FAMILIES, family, march, march_static
from .static import Budget
from .textures import hash01

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


def _local(scene: Scene, e, o, d):
    """Pairs' rays in their primitives' local frames: e (M,) flat (scene, slot) entries; o, d (M, 3).
    Returns o_l, d_l (M, 3) and prm (M, NUM_PRM)."""
    R = scene.rot.reshape(-1, 3, 3)[e]
    od = torch.stack([o - scene.center.reshape(-1, 3)[e], d], 1) @ R  # (M, 2, 3): R^T (o - c), R^T d
    return od[:, 0], od[:, 1], scene.prm.reshape(-1, NUM_PRM)[e]


def _intersect(scene: Scene, typ: int, e, o, d, tmin: float, uc: bool, local=None) -> torch.Tensor:
    """t (M,) of pairs of one analytic type (TORUS: the bounding spheres of tori and blends).
    e: (M,) flat (scene, slot) entries; o, d: (M, 3) world rays; local: the pairs' (o_l, d_l,
    prm) if already gathered (boxes, cylinders, quads)."""
    if typ in (SPHERE, TORUS):  # rotation-invariant
        r = scene.prm.reshape(-1, NUM_PRM)[e] if typ == SPHERE else scene.bound.reshape(-1)[e][:, None]
        return intersect_sphere(o - scene.center.reshape(-1, 3)[e], d, r, tmin)
    o_l, d_l, prm = local if local is not None else _local(scene, e, o, d)
    return maybe_compile(_INTERSECT[typ], uc)(o_l, d_l, prm, tmin)


def _sdf_interval(scene: Scene, e, o, d, lim, tmin: float):
    """Tori / blend pairs: the part of the bounding sphere before the far limit ``lim`` (M,).
    Returns t0, t1 (M,), whether to march (M,) bool, and (o_l, d_l, prm, op) in local frames."""
    t0, t1, h = bound_interval(o - scene.center.reshape(-1, 3)[e], d, scene.bound.reshape(-1)[e], tmin)
    t1 = torch.minimum(t1, lim)
    o_l, d_l, prm = _local(scene, e, o, d)
    op = torch.where(slot_types(d.device)[e % NUM_SLOTS] == TORUS, 4, prm[:, 8].round().long())
    return t0, t1, h & (t0 < t1), (o_l, d_l, prm, op)


def _merge(mode: str, tm, ra, sa, ta):
    """Per-ray result of the analytic pairs (ray ra, slot sa, t ta; misses are BIG): for "any"
    (hit (N,) int32 counts, the limit left for tori / blends: 0 where hit), else (best (N,),
    the same)."""
    if mode == "any":
        hit = torch.zeros(tm.shape[0], dtype=torch.int32, device=tm.device).index_add_(0, ra, (ta < tm[ra]).int())
        return hit, torch.where(hit > 0, 0.0, tm)
    best = tm.clone().scatter_reduce_(0, ra, ta, "amin")
    return best, best


def _winner(best, tm, ra, sa, ta):
    """(N,) long the slot of each ray's nearest hit before tmax, -1 where none."""
    win = torch.where((ta <= best[ra]) & (ta < tm[ra]), sa, -1)  # a miss (BIG) never wins, even under tmax = BIG
    return torch.full_like(best, -1, dtype=torch.long).scatter_reduce_(0, ra, win, "amax")


def _trace(scene: Scene, o, d, tmax, cfg, tmin: float, mode: str, budget: Budget | None = None):
    """Shared pass. mode: "closest", "approx" (tori and blends as their bounding spheres) or
    "any". Returns (t, slot) flat per ray (t = tmax, slot -1 where nothing is hit) or, for any,
    hit flat bool. With a ``budget``: the static path (:func:`_trace_static`)."""
    if budget is not None:
        return _trace_static(scene, o, d, tmax, cfg, tmin, mode, budget)
    uc = use_compile(cfg, tmax)
    ray, slot, op_, dp, s, st = _pairs(scene, o, d, tmax, tmin)
    e = s * NUM_SLOTS + slot
    tm = tmax.reshape(-1)
    a_end = st[TORUS] if mode != "approx" else st[-1]
    ta = torch.full((st[-1],), BIG, device=tm.device)
    a0, b0 = st[BOX], st[TORUS]
    local = None
    if a0 < b0:  # boxes, cylinders and quads: local frames gathered once (pairs are slot-major)
        local = _local(scene, e[a0:b0], op_[a0:b0], dp[a0:b0])
    for typ in range(TORUS + (mode == "approx")):
        a, b = st[typ], (st[typ + 1] if typ < TORUS else st[-1])
        if a < b:
            loc = None if typ in (SPHERE, TORUS) else [x[a - a0:b - a0] for x in local]
            ta[a:b] = _intersect(scene, typ, e[a:b], op_[a:b], dp[a:b], tmin, uc, loc)
    ra, sa, ta = ray[:a_end], slot[:a_end], ta[:a_end]
    best, lim = _merge(mode, tm, ra, sa, ta)
    if mode != "approx" and a_end < st[-1]:
        # tori and blends: pairs whose bounding sphere is entered before the far limit
        rs, ss = ray[a_end:], slot[a_end:]
        t0, t1, go, (o_l, d_l, prm, op) = _sdf_interval(scene, e[a_end:], op_[a_end:], dp[a_end:], lim[rs], tmin)
        keep = go.nonzero().squeeze(1)  # sync
        if keep.numel():
            rs, ss = rs[keep], ss[keep]
            with record_function("procedural.march"):
                tp = march(o_l[keep], d_l[keep], t0[keep], t1[keep], prm[keep], op[keep], cfg.max_march_steps,
                           cfg.march_eps, uc)
            if mode == "any":
                return best.index_fill_(0, rs[tp < BIG], 1) > 0
            ra, sa, ta = torch.cat([ra, rs]), torch.cat([sa, ss]), torch.cat([ta, tp])
            best = best.scatter_reduce_(0, rs, tp, "amin")
    if mode == "any":
        return best > 0
    return best, _winner(best, tm, ra, sa, ta)


def _trace_static(scene: Scene, o, d, tmax, cfg, tmin: float, mode: str, budget: Budget):
    """:func:`_trace` with fixed shapes and no host sync: the culled pairs of each analytic type
    are a fixed-capacity selection (:meth:`.static.Budget.select`, ray-major), intersected with
    the same functions (misses and padding give BIG); the tori / blend pairs are selected per SDF
    family and sphere-traced for exactly ``max_march_steps`` steps with fixed-capacity
    compactions (:func:`.sdf.march_static`). Same results as the dynamic path while no
    capacity overflows."""
    uc = use_compile(cfg, tmax)
    cand = _cull(scene, o, d, tmax, tmin)
    S, X, Y, P = cand.shape
    tm = tmax.reshape(-1)
    N = tm.numel()

    def pairs(mask, name, a):  # mask: (S, X, Y, b - a) over slots a..b-1
        sel = budget.select(mask, f"{mode}/{name}", N)
        ray, slot = sel.idx // mask.shape[-1], sel.idx % mask.shape[-1] + a
        s, x, y = ray // (X * Y), (ray // Y) % X, ray % Y
        return sel.valid, ray, s * P + slot, _take(o, s, x, y), _take(d, s, x, y)

    ras, sas, tas = [], [], []
    for typ in range(TORUS + (mode == "approx")):
        a, b = SLOT_START[typ], (SLOT_START[typ + 1] if typ < TORUS else NUM_SLOTS)
        valid, ray, e, op_, dp = pairs(cand[..., a:b], TYPE_NAMES[typ], a)
        ras.append(ray)
        sas.append(e % P)
        tas.append(torch.where(valid, _intersect(scene, typ, e, op_, dp, tmin, uc), BIG))
    ra, sa, ta = torch.cat(ras), torch.cat(sas), torch.cat(tas)
    best, lim = _merge(mode, tm, ra, sa, ta)
    if mode != "approx":
        a = SLOT_START[TORUS]
        slot_op = torch.where(slot_types(tm.device)[a:] == TORUS, 4, scene.prm[:, a:, 8].round().long())  # (S, 7)
        fam = family(slot_op)[:, None, None]
        for f in range(NUM_FAMILIES):
            valid, ray, e, op_, dp = pairs(cand[..., a:] & (fam == f), f"sdf{f}", a)
            t0, t1, go, (o_l, d_l, prm, op) = _sdf_interval(scene, e, op_, dp, lim[ray], tmin)
            with record_function("procedural.march"):
                tp = march_static(f, o_l, d_l, t0, torch.where(go & valid, t1, t0), prm, op, cfg.max_march_steps,
                                  cfg.march_eps, budget, f"{mode}/march{f}", N, uc)
            if mode == "any":
                best = best.index_add_(0, ray, (tp < BIG).int())
            else:
                ra, sa, ta = torch.cat([ra, ray]), torch.cat([sa, e % P]), torch.cat([ta, tp])
                best = best.scatter_reduce_(0, ray, tp, "amin")
    if mode == "any":
        return best > 0
    return best, _winner(best, tm, ra, sa, ta)


def closest_hit(scene: Scene, o: torch.Tensor, d: torch.Tensor, tmax: torch.Tensor, cfg,
                tmin: float = 1e-4, approx: bool = False,
                budget: Budget | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest primitive hit before ``tmax``.

    o, d: (S, X, Y, 3) broadcastable (d unit); tmax: (S, X, Y). ``approx``: tori and blends
    are replaced by their bounding spheres (no sphere tracing; for the cameras' overlap check).
    Returns t: (S, X, Y) (tmax where nothing is hit) and slot: (S, X, Y) long, -1 where
    nothing is hit. ``budget``: the static path (fixed shapes, no host sync; :mod:`.static`).
    """
    t, sl = _trace(scene, o, d, tmax, cfg, tmin, "approx" if approx else "closest", budget)
    return t.view_as(tmax), sl.view_as(tmax)


def any_hit(scene: Scene, o: torch.Tensor, d: torch.Tensor, tmax: torch.Tensor, cfg,
            tmin: float = 1e-4, budget: Budget | None = None) -> torch.Tensor:
    """Whether any primitive is hit in (tmin, tmax) (shadow rays; the environment casts none).

    o, d: (S, X, Y, 3) broadcastable; tmax: (S, X, Y) (0 for rays not to test: they cost the
    cull only). Returns (S, X, Y) bool. ``budget``: as in :func:`closest_hit`.
    """
    return _trace(scene, o, d, tmax, cfg, tmin, "any", budget).view_as(tmax)


def _environment(o, d, kind, room, ground_r, dome_r, env_prm, seed):
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
    # tabletop: the table rectangle at z = 0, the room's floor ``drop`` below, walls, ceiling
    ep = env_prm[:, None, None]
    on_table = (t_floor < BIG) & (px.abs() <= ep[..., 0]) & (py.abs() <= ep[..., 1])
    t_table = torch.where(on_table, t_floor, BIG)
    t_low = torch.where(dz < 0, (-ep[..., 2] - oz) / sz, BIG)
    t_tab = torch.minimum(torch.minimum(t_table, t_low), torch.minimum(t_ceil, t_wall))
    e_tab = torch.where(t_tab == t_table, 0, torch.where(t_tab == t_low, 3, torch.where(t_tab == t_ceil, 2, 1)))
    # facade: the side façades y = +-wy up to their stepped roofline, the end façade x = ex, the ground
    wy, hl, hr, hv, seg, ex = ep.unbind(-1)
    t_side = (sg[..., 1] * wy - oy) / sd[..., 1]
    xs, zs = ox + t_side * dx, oz + t_side * dz
    left = dy > 0
    cell = torch.floor(xs.clamp(-1e6, 1e6) / seg.clamp_min(1e-3)).int()
    ix = torch.stack([cell, left.int(), torch.zeros_like(cell)], -1)
    h = torch.where(left, hl, hr) * (1 + hv * (2 * hash01(ix, seed[:, None, None]) - 1))
    t_s = torch.where((zs <= h) & (zs >= 0) & (t_side < 1e9), t_side, BIG)
    t_end = torch.where(dx > 0, (ex - ox) / sd[..., 0], BIG)
    ye, ze = oy + t_end * dy, oz + t_end * dz
    t_e = torch.where((ye.abs() <= wy) & (ze <= 0.5 * (hl + hr)) & (ze >= 0) & (ex < 1e9) & (t_end < 1e9), t_end, BIG)
    t_fac = torch.minimum(torch.minimum(t_gs, t_s), t_e)
    e_fac = torch.where(t_fac >= BIG, -1, torch.where(t_fac == t_gs, 0, torch.where(
        t_fac == t_s, torch.where(left, 1, 2), 3)))
    k = kind[:, None, None]
    box = (k == 0) | (k == 4)
    t = torch.where(box, t_room, torch.where(k == 1, t_gs, torch.where(k == 2, t_bd, torch.where(k == 3, t_tab, t_fac))))
    e = torch.where(box, e_room, torch.where(k == 1, e_gs, torch.where(k == 2, e_bd, torch.where(k == 3, e_tab, e_fac))))
    return t, e


def environment_hit(scene: Scene, o: torch.Tensor, d: torch.Tensor, cfg=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Room walls, ground, dome, table or street, seen from inside.

    o, d: (S, X, Y, 3) broadcastable (cameras inside the room / dome / street, above the ground
    or table). Returns t: (S, X, Y) (BIG for sky) and env: (S, X, Y) long (0 floor / ground /
    table top, 1 walls / dome / left façade, 2 ceiling / right façade, 3 floor under the table /
    end façade, -1 sky).
    """
    sh = torch.broadcast_shapes(o.shape, d.shape)[:-1]
    fn = maybe_compile(_environment, cfg is not None and use_compile(cfg, d))
    t, e = fn(o, d, scene.kind, scene.room, scene.ground_r, scene.dome_r, scene.env_prm, scene.sky_seed)
    return t.expand(sh), e.expand(sh)
