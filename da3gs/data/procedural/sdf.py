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

Speed (the generator is bound by GPU elementwise work, not by the host): the pairs are grouped
by op once per trace (one sort, one host sync for the group sizes; ops 0 and 1 form one group,
differing by a sign) and every group evaluates only its own op (:func:`sdf_op`, on per-group constants derived once, :func:`derive`);
:func:`march` compacts each group to its still-active pairs at a few fixed step counts
(``_COMPACT_AT``; one host sync per compaction for all groups together), so converged pairs and
pairs that left their interval stop costing work. Within a chunk finished pairs are frozen by
masks, as before.
"""

from __future__ import annotations

import functools

import torch

from .primitives import BIG, group_by, maybe_compile

__all__ = ["NUM_OPS", "derive", "sdf_op", "march", "sdf_normal"]

NUM_OPS = 5
#: Step counts after which each group is compacted to its still-active pairs.
_COMPACT_AT = (3, 6, 10, 15, 22, 30)


def _len3(x, y, z):
    return torch.hypot(torch.hypot(x, y), z)


def _smin(a, b, k, ik):
    """Polynomial smooth min; ik = 0.5 / k."""
    h = ((b - a) * ik).add_(0.5).clamp_(0, 1)
    return torch.addcmul(torch.lerp(b, a, h), k, torch.addcmul(h, h, h, value=-1), value=-1)


def _group_key(op: torch.Tensor) -> torch.Tensor:
    """Ops 0 and 1 share one group (they differ by a sign, :func:`derive`): (M,) key in [0, NUM_OPS)."""
    return torch.where(op == 1, 0, op)


def derive(op: int, prm: torch.Tensor) -> torch.Tensor:
    """Per-pair constants of op ``op``: prm (M, NUM_PRM) -> (C, M) rows used by :func:`sdf_op`.
    Ops 0 and 1 give the same rows (with the sign of the smooth blend from ``prm[:, 8]``)."""
    c = prm.T
    if op == 4:
        return c[0:2].contiguous()
    ax, ay, az, ox, oy, oz, rs, k, opf, th = c.unbind(0)
    if op in (0, 1):
        return torch.stack([ax, ay, az, ox, oy, oz, rs, k, 0.5 / k, th, torch.where(opf > 0.5, -1.0, 1.0)])
    if op == 2:
        return torch.stack([rs, th, oz])
    bz = oz + az  # capsule 2 runs from (0, 0, -az) to (ox, oy, oz)
    inv = 1.0 / (ox * ox + oy * oy + bz * bz).clamp_min(1e-12)
    return torch.stack([ax, az, ox, oy, bz, inv, k, 0.5 / k, th])


def sdf_op(op: int, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """SDF of op ``op`` at local points (x, y, z), each (M,); c: (C, M) from :func:`derive`."""
    if op == 4:  # torus (major c[0], minor c[1])
        return torch.hypot(torch.hypot(x, y) - c[0], z) - c[1]
    if op in (0, 1):  # rounded box with a sphere smoothly added (sg = 1) / subtracted (sg = -1)
        ax, ay, az, ox, oy, oz, rs, k, ik, th, sg = c.unbind(0)
        bx, by, bz = x.abs() - ax, y.abs() - ay, z.abs() - az
        rb = (_len3(bx.clamp_min(0), by.clamp_min(0), bz.clamp_min(0))
              + torch.maximum(torch.maximum(bx, by), bz).clamp_max_(0) - th)
        sph = _len3(x - ox, y - oy, z - oz) - rs
        return _smin(rb * sg, sph, k, ik) * sg  # op 1: -smin(-box, sphere) = smooth max(box, -sphere)
    if op == 2:  # bowl: spherical shell of radius rs cut by the plane z = oz
        rs, th, oz = c.unbind(0)
        return torch.maximum((_len3(x, y, z) - rs).abs_() - th, z - oz)
    # 3: two capsules, (-ax, 0, 0)-(ax, 0, 0) and (0, 0, -az)-(ox, oy, oz)
    ax, az, ox, oy, bz, inv, k, ik, th = c.unbind(0)
    c1 = _len3(x - torch.minimum(torch.maximum(x, -ax), ax), y, z) - th
    pz = z + az
    h = (((x * ox).addcmul_(y, oy).addcmul_(pz, bz)) * inv).clamp_(0, 1)
    c2 = _len3(x - ox * h, y - oy * h, pz - bz * h) - th
    return _smin(c1, c2, k, ik)


def _at(o, d, t):
    return torch.addcmul(o[0], d[0], t), torch.addcmul(o[1], d[1], t), torch.addcmul(o[2], d[2], t)


@functools.lru_cache(maxsize=None)
def _step_fn(op: int, eps: float):
    """A pure function doing one masked sphere-tracing step of op ``op`` (one compiled graph per
    op under ``torch.compile``). A pair stays live while it is inside its interval and has not
    hit; a finished pair is frozen, and it hit iff ``t < t1`` (so no separate hit state)."""

    def step(o, d, t, t1, c, live):
        dist = sdf_op(op, *_at(o, d, t), c)
        live = live & (t < t1) & (dist >= eps * t.clamp_min(1.0))
        return torch.where(live, t + dist, t), live

    step.__name__ = f"march_step_op{op}"
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
    order, st = group_by(_group_key(op), NUM_OPS)
    groups = []  # [op, pair index, o (3, n), d (3, n), t, t1, constants, live]
    for k in range(NUM_OPS):
        if st[k + 1] > st[k]:
            idx = order[st[k]:st[k + 1]]
            groups.append([k, idx, o[idx].T.contiguous(), d[idx].T.contiguous(), t0[idx], t1[idx],
                           derive(k, prm[idx]), torch.ones_like(idx, dtype=torch.bool)])
    done = 0
    for stop in [s for s in _COMPACT_AT if s < steps] + [steps]:
        for g in groups:
            fn = maybe_compile(_step_fn(g[0], float(eps)), use_compile)
            for _ in range(stop - done):
                g[4], g[7] = fn(g[2], g[3], g[4], g[5], g[6], g[7])
        done = stop
        if done >= steps:
            break
        # write back the finished pairs; keep the still-live ones (two syncs for every group)
        for g in groups:
            out.index_copy_(0, g[1], torch.where(~g[7] & (g[4] < g[5]), g[4], BIG))
        sizes = [g[7].numel() for g in groups]
        offs = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        keep_all = torch.cat([g[7] for g in groups]).nonzero().squeeze(1)  # sync
        cut = torch.searchsorted(keep_all, torch.tensor(offs, device=keep_all.device)).tolist()  # drained: cheap
        nxt = []
        for i, g in enumerate(groups):
            n = cut[i + 1] - cut[i]
            if n == 0:
                continue
            if n < sizes[i]:
                keep = keep_all[cut[i]:cut[i + 1]] - offs[i]
                g = [g[0], g[1][keep], g[2][:, keep], g[3][:, keep], g[4][keep], g[5][keep], g[6][:, keep], g[7][keep]]
            nxt.append(g)
        groups = nxt
        if not groups:
            break
    # the last pairs; those that ran out of steps are accepted if nearly converged
    for k, idx, go, gd, t, t1g, c, live in groups:
        inside = t < t1g
        ok = live & inside & (sdf_op(k, *_at(go, gd, t), c) < 20 * eps * t.clamp_min(1.0))
        out.index_copy_(0, idx, torch.where((~live & inside) | ok, t, BIG))
    return out


_TETRA = ((1, -1, -1), (-1, -1, 1), (-1, 1, -1), (1, 1, 1))


def sdf_normal(p: torch.Tensor, prm: torch.Tensor, op: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Unit outward normals from the SDF gradient (tetrahedral differences), grouped by op.

    p: (M, 3) local hit points; prm: (M, NUM_PRM); op: (M,) long; h: (M,) step.
    Returns (M, 3). One host sync (the group sizes).
    """
    out = torch.zeros_like(p)
    if p.shape[0] == 0:
        return out
    order, st = group_by(_group_key(op), NUM_OPS)
    for k in range(NUM_OPS):
        n = st[k + 1] - st[k]
        if not n:
            continue
        idx = order[st[k]:st[k + 1]]
        x, y, z = p[idx].T.contiguous()
        hh, c = h[idx], derive(k, prm[idx])
        g = torch.zeros(3, n, device=p.device)
        for kx, ky, kz in _TETRA:
            v = sdf_op(k, x + kx * hh, y + ky * hh, z + kz * hh, c)
            g[0].add_(v, alpha=kx)
            g[1].add_(v, alpha=ky)
            g[2].add_(v, alpha=kz)
        g = g.T
        out[idx] = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return out
