"""Signed distance functions for tori and SDF blends, sphere tracing and SDF normals.

These shapes have no cheap closed-form intersection (the torus is a quartic; blends are
smooth min / max of parts), so they are sphere-traced, but only for (ray, primitive) pairs
whose ray enters the primitive's bounding sphere before the nearest hit found so far, and only
inside that sphere. Every distance used here is exact or a lower bound of the true distance
with unit Lipschitz constant (polynomial smooth min/max, max of SDFs), so unit steps never
overshoot a surface.

Ops (``op``): 0 smooth union of a rounded box and a sphere; 1 rounded box minus a sphere
(smooth subtraction: a concavity); 2 a thin bowl (spherical shell cut by a plane: thin and
concave); 3 two thin capsules in smooth union (thin rods); 4 the torus. Blend parameters
``prm``: box half extents ``a = prm[0:3]``, sphere / capsule offset ``prm[3:6]``, sphere radius
``prm[6]``, smoothing ``k = prm[7]``, op ``prm[8]``, rounding / thickness ``prm[9]``. Torus:
major radius ``prm[0]``, minor ``prm[1]`` (axis local z).

Speed: the march is written for little GPU work and few dispatched ops (the host's dispatch
cost bounds the generator as soon as the GPU work is small). The five ops fall
into two families evaluated by one formula each (:func:`sdf_family`, exact for every op of the
family: the per-pair constants of :func:`derive` select the op): family 0, ops 0, 1 and 3
(a rounded box and a capsule segment in smooth union, with a sign; a sphere is a segment of
length 0, capsule 1 a box of extents (ax, 0, 0)); family 1, ops 2 and 4 (a ring of major radius
R: the torus, or R = 0 with an absolute value and a cut plane: the bowl). The pairs are grouped
by family once per trace (one sort, one host sync for the group sizes); the points of a step
are one (3, n) tensor; :func:`march` compacts each group to its still-active pairs at a few
fixed step counts (``_COMPACT_AT``; one host sync per compaction for all groups together), so
converged pairs and pairs that left their interval stop costing work. Within a chunk finished
pairs are frozen (a frozen pair recomputes the same distance, so it stays finished without a
separate mask).
"""

from __future__ import annotations

import functools

import torch

from .primitives import BIG, const, group_by, maybe_compile

__all__ = ["NUM_OPS", "NUM_FAMILIES", "family", "derive", "sdf_family", "sdf_op", "march", "march_static",
           "family_normal", "sdf_normal"]

NUM_OPS = 5
NUM_FAMILIES = 2
#: Step counts after which each group is compacted to its still-active pairs.
_COMPACT_AT = (3, 6, 10, 15, 22, 30)


def _len3(x, y, z):
    return torch.hypot(torch.hypot(x, y), z)


def _smin(a, b, k, ik):
    """Polynomial smooth min; ik = 0.5 / k."""
    h = ((b - a) * ik).add_(0.5).clamp_(0, 1)
    return torch.addcmul(torch.lerp(b, a, h), k, torch.addcmul(h, h, h, value=-1), value=-1)


def family(op: torch.Tensor) -> torch.Tensor:
    """(M,) family of each op: 0 for ops 0, 1, 3 (box + segment blends), 1 for ops 2, 4 (rings)."""
    return ((op == 2) | (op == 4)).long()


def derive(fam: int, op: torch.Tensor, prm: torch.Tensor) -> torch.Tensor:
    """Per-pair constants of family ``fam``: op (M,) long, prm (M, NUM_PRM) -> (C, M) rows used by
    :func:`sdf_family`.

    Family 0 (C = 16): box half extents a (3), segment start A (3) and direction b (3), rounding
    th, 1 / |b|^2, segment radius r, smoothing k, 0.5 / k, sign sg. Ops 0 / 1: a = prm[0:3],
    A = prm[3:6], b = 0 (the segment is the sphere's centre), r = prm[6], sg = +1 / -1 (smooth
    union / subtraction); op 3: a = (ax, 0, 0) (capsule 1 is a box of zero y and z extent),
    A = (0, 0, -az), b = prm[3:6] - A, r = th, sg = +1.
    Family 1 (C = 5): ring radius R, radius rs, fold s, thickness th, cut height oz. Op 4
    (torus): R, rs = prm[0:2], s = 1, th = 0, oz = BIG (no cut); op 2 (bowl): R = 0, rs =
    prm[6], s = -1 (|.|), th = prm[9], oz = prm[5].
    """
    ax, ay, az, ox, oy, oz, rs, k, _, th = prm.T.unbind(0)
    zero = torch.zeros_like(ax)
    if fam == 0:
        is3 = op == 3
        bz = oz + az  # capsule 2 runs from (0, 0, -az) to (ox, oy, oz)
        b = torch.where(is3, torch.stack([ox, oy, bz]), zero)
        inv = 1.0 / (b[0] * b[0] + b[1] * b[1] + b[2] * b[2]).clamp_min(1e-12)
        a = torch.where(is3, torch.stack([ax, zero, zero]), torch.stack([ax, ay, az]))
        A = torch.where(is3, torch.stack([zero, zero, -az]), torch.stack([ox, oy, oz]))
        r = torch.where(is3, th, rs)
        sg = torch.where(op == 1, -1.0, 1.0)
        return torch.cat([a, A, b, torch.stack([th, inv, r, k, 0.5 / k, sg])])
    tor = op == 4
    return torch.stack([torch.where(tor, ax, 0.0), torch.where(tor, ay, rs), torch.where(tor, 1.0, -1.0),
                        torch.where(tor, 0.0, th), torch.where(tor, BIG, oz)])


def _split(fam: int, c: torch.Tensor) -> tuple:
    """The rows of :func:`derive` as the tuple :func:`sdf_family` takes (views)."""
    if fam == 0:
        return (*c[:9].view(3, 3, -1).unbind(0), *c[6:].unbind(0))
    return c.unbind(0)


def sdf_family(fam: int, p: torch.Tensor, c: tuple) -> torch.Tensor:
    """SDF of family ``fam`` at local points p (3, M); c: :func:`_split` of :func:`derive`.

    Family 0: ``sg * smin(sg * roundbox(p), |p - A - b h| - r)`` with h the clamped projection
    on the segment (op 0: smooth union of the rounded box and the sphere; op 1: its smooth
    subtraction, -smin(-box, sphere); op 3: two capsules). Family 1: ``max(max(v, s v) - th,
    z - oz)`` with ``v = |(|(x, y)| - R, z)| - rs`` (op 4: the torus; op 2: the bowl, a spherical
    shell of radius rs cut by the plane z = oz). Each op gives the same floats as its own
    formula (:func:`sdf_op`).
    """
    if fam == 0:
        a, A, b, bx, by, bz, th, inv, r, k, ik, sg = c
        q = p.abs().sub_(a)
        ex, ey, ez = q.clamp_min(0).unbind(0)
        rb = _len3(ex, ey, ez).add_(q.amax(0).clamp_max_(0)).sub_(th)
        q = p - A
        qx, qy, qz = q.unbind(0)
        h = (qx * bx).addcmul_(qy, by).addcmul_(qz, bz).mul_(inv).clamp_(0, 1)
        q.sub_(b * h)  # qx, qy, qz are its rows
        seg = _len3(qx, qy, qz).sub_(r)
        return _smin(rb.mul_(sg), seg, k, ik).mul_(sg)
    R, rs, s, th, oz = c
    x, y, z = p.unbind(0)
    v = torch.hypot(torch.hypot(x, y).sub_(R), z).sub_(rs)
    return torch.maximum(torch.maximum(v, v * s).sub_(th), z - oz)


def sdf_op(op: int, p: torch.Tensor, prm: torch.Tensor) -> torch.Tensor:
    """SDF of op ``op`` at local points p (3, M) for parameters prm (M, NUM_PRM): the ops'
    own formulas, written out per op (reference for :func:`sdf_family`)."""
    x, y, z = p.unbind(0)
    ax, ay, az, ox, oy, oz, rs, k, _, th = prm.T.unbind(0)
    if op == 4:
        return torch.hypot(torch.hypot(x, y) - ax, z) - ay
    if op in (0, 1):
        sg = 1.0 if op == 0 else -1.0
        bx, by, bz = x.abs() - ax, y.abs() - ay, z.abs() - az
        rb = (_len3(bx.clamp_min(0), by.clamp_min(0), bz.clamp_min(0))
              + torch.maximum(torch.maximum(bx, by), bz).clamp_max(0) - th)
        sph = _len3(x - ox, y - oy, z - oz) - rs
        return _smin(rb * sg, sph, k, 0.5 / k) * sg
    if op == 2:
        return torch.maximum((_len3(x, y, z) - rs).abs() - th, z - oz)
    c1 = _len3(x - torch.minimum(torch.maximum(x, -ax), ax), y, z) - th
    pz, bz = z + az, oz + az
    inv = 1.0 / (ox * ox + oy * oy + bz * bz).clamp_min(1e-12)
    h = (((x * ox).addcmul_(y, oy).addcmul_(pz, bz)) * inv).clamp_(0, 1)
    c2 = _len3(x - ox * h, y - oy * h, pz - bz * h) - th
    return _smin(c1, c2, k, 0.5 / k)


@functools.lru_cache(maxsize=None)
def _step_fn(fam: int, eps: float):
    """A pure function doing one masked sphere-tracing step of family ``fam`` (one compiled
    graph per family under ``torch.compile``). A pair is live while it is inside its interval
    and has not hit; a finished pair is frozen (it recomputes the same distance, so it stays
    finished), and it hit iff ``t < t1``."""

    def step(o, d, t, t1, *c):
        dist = sdf_family(fam, torch.addcmul(o, d, t), c)
        live = (t < t1) & (dist >= eps * t.clamp_min(1.0))
        return torch.addcmul(t, dist, live), live  # t + dist where live (finite distances), one op

    step.__name__ = f"march_step_family{fam}"
    return step


def march(o: torch.Tensor, d: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, prm: torch.Tensor,
          op: torch.Tensor, steps: int, eps: float, use_compile: bool = False) -> torch.Tensor:
    """Sphere-trace (ray, primitive) pairs inside [t0, t1].

    o, d: (M, 3) local origins and unit directions; t0, t1: (M,); prm: (M, NUM_PRM);
    op: (M,) long in [0, NUM_OPS). Returns t: (M,) the first hit, or BIG. At most ``steps``
    steps per pair (a pair stops once it hits or leaves [t0, t1]); pairs that ran out of steps
    but are nearly converged (distance below 20 eps) are accepted. Host syncs: one for the
    group sizes, two per compaction.
    """
    M = o.shape[0]
    out = torch.full_like(t0, BIG)
    if M == 0:
        return out
    fam = family(op)
    order, st = group_by(fam, NUM_FAMILIES)
    groups = []  # [family, pair index, o (3, n), d (3, n), t, t1, constants (C, n), their rows]
    for f in range(NUM_FAMILIES):
        if st[f + 1] > st[f]:
            idx = order[st[f]:st[f + 1]]
            c = derive(f, op[idx], prm[idx])
            groups.append([f, idx, o[idx].T.contiguous(), d[idx].T.contiguous(), t0[idx], t1[idx], c, _split(f, c)])
    done, live = 0, [None] * len(groups)
    for stop in [s for s in _COMPACT_AT if s < steps] + [steps]:
        for i, g in enumerate(groups):
            fn = maybe_compile(_step_fn(g[0], float(eps)), use_compile)
            for _ in range(stop - done):
                g[4], live[i] = fn(g[2], g[3], g[4], g[5], *g[7])
        done = stop
        if done >= steps:
            break
        # write back the finished pairs; keep the still-live ones (two syncs for every group)
        for g, lv in zip(groups, live):
            out.index_copy_(0, g[1], torch.where(~lv & (g[4] < g[5]), g[4], BIG))
        sizes = [lv.numel() for lv in live]
        offs = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        keep_all = torch.cat(live).nonzero().squeeze(1)  # sync
        cut = torch.searchsorted(keep_all, torch.tensor(offs, device=keep_all.device)).tolist()  # drained: cheap
        nxt, nlive = [], []
        for i, (g, lv) in enumerate(zip(groups, live)):
            n = cut[i + 1] - cut[i]
            if n == 0:
                continue
            if n < sizes[i]:
                keep = keep_all[cut[i]:cut[i + 1]] - offs[i]
                c = g[6][:, keep]
                g, lv = [g[0], g[1][keep], g[2][:, keep], g[3][:, keep], g[4][keep], g[5][keep], c,
                         _split(g[0], c)], lv[keep]
            nxt.append(g)
            nlive.append(lv)
        groups, live = nxt, nlive
        if not groups:
            break
    # the last pairs; those that ran out of steps are accepted if nearly converged
    for (f, idx, go, gd, t, t1g, _, c), lv in zip(groups, live):
        inside = t < t1g
        ok = lv & inside & (sdf_family(f, torch.addcmul(go, gd, t), c) < 20 * eps * t.clamp_min(1.0))
        out.index_copy_(0, idx, torch.where((~lv & inside) | ok, t, BIG))
    return out


def march_static(fam: int, o: torch.Tensor, d: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, prm: torch.Tensor,
                 op: torch.Tensor, steps: int, eps: float, budget, name: str, per: int,
                 use_compile: bool = False) -> torch.Tensor:
    """:func:`march` for pairs of one family with fixed shapes and no host sync.

    o, d: (M, 3); t0, t1: (M,) (pairs with t1 <= t0 are not marched); prm: (M, NUM_PRM); op: (M,)
    long, all of family ``fam``; budget: :class:`.static.Budget`, whose selections
    ``{name}@{step}`` keep the live pairs before step 0 and at the steps of ``_COMPACT_AT``
    (capacities per ray of a trace of ``per`` rays). Exactly ``steps`` steps; the same per-pair
    arithmetic as :func:`march`, so the same t while no capacity overflows (a pair dropped by an
    overflow is a miss). Returns t: (M,), the first hit or BIG.
    """
    M = o.shape[0]
    out = torch.full((M + 1,), BIG, device=o.device)  # the last entry is the sink of padding
    c = derive(fam, op, prm)
    dest, go, gd, t, t1, live = torch.arange(M, device=o.device), o.T, d.T, t0, t1, t0 < t1
    fn = maybe_compile(_step_fn(fam, float(eps)), use_compile)
    done = 0
    for stop in [s for s in _COMPACT_AT if s < steps] + [steps]:
        # write back the finished pairs, keep the live ones (before step 0: the pairs to march)
        out[dest] = torch.where(~live & (t < t1), t, BIG)
        sel = budget.select(live, f"{name}@{done}", per)
        k = sel.idx
        dest = torch.where(sel.valid, dest[k], M)
        go, gd, t, c = go[:, k], gd[:, k], t[k], c[:, k]
        t1 = torch.where(sel.valid, t1[k], t)  # padding is never live
        cs = _split(fam, c)
        for _ in range(stop - done):
            t, live = fn(go, gd, t, t1, *cs)
        done = stop
    # the last pairs; those that ran out of steps are accepted if nearly converged
    inside = t < t1
    ok = live & inside & (sdf_family(fam, torch.addcmul(go, gd, t), cs) < 20 * eps * t.clamp_min(1.0))
    out[dest] = torch.where((~live & inside) | ok, t, BIG)
    return out[:M]


def _tetra(device) -> torch.Tensor:
    """(3, 4) the tetrahedral difference directions as columns (cached per device)."""
    return const("tetra", ((1.0, -1, -1, 1), (-1, -1, 1, 1), (-1, 1, -1, 1)), torch.float32, (3, 4), device)


def family_normal(fam: int, p: torch.Tensor, prm: torch.Tensor, op: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Unit outward normals of points of one family from the SDF gradient (tetrahedral
    differences, the four as one evaluation on (3, 4 n) points). p: (n, 3) local points;
    prm: (n, NUM_PRM); op: (n,) long; h: (n,) step. Returns (n, 3)."""
    n = p.shape[0]
    T = _tetra(p.device)
    c = derive(fam, op, prm)
    pts = (p.T[:, None, :] + T[:, :, None] * h).reshape(3, 4 * n)  # x + kx h, ...
    c4 = c[:, None, :].expand(-1, 4, -1).reshape(c.shape[0], 4 * n)
    v = sdf_family(fam, pts, _split(fam, c4)).view(4, n)
    g = T[:, :1] * v[0]
    for j in range(1, 4):
        g.addcmul_(T[:, j:j + 1], v[j])
    g = g.T
    return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def sdf_normal(p: torch.Tensor, prm: torch.Tensor, op: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Unit outward normals from the SDF gradient (tetrahedral differences), grouped by family.

    p: (M, 3) local hit points; prm: (M, NUM_PRM); op: (M,) long; h: (M,) step.
    Returns (M, 3). One host sync (the group sizes); see :func:`family_normal`.
    """
    out = torch.zeros_like(p)
    if p.shape[0] == 0:
        return out
    order, st = group_by(family(op), NUM_FAMILIES)
    for f in range(NUM_FAMILIES):
        if st[f + 1] > st[f]:
            idx = order[st[f]:st[f + 1]]
            out[idx] = family_normal(f, p[idx], prm[idx], op[idx], h[idx])
    return out
