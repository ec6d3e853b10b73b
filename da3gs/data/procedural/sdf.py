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
"""

from __future__ import annotations

import torch

from .primitives import BIG, maybe_compile

__all__ = ["NUM_OPS", "sdf_grouped", "march", "sdf_normal"]

NUM_OPS = 5


def _smin(a: torch.Tensor, b: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    h = (0.5 + 0.5 * (b - a) / k).clamp(0, 1)
    return b + h * (a - b) - k * h * (1 - h)


def _roundbox(p: torch.Tensor, a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    q = p.abs() - a
    return q.clamp_min(0).norm(dim=-1) + q.amax(-1).clamp_max(0) - r


def _capsule(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    pa, ba = p - a, b - a
    h = ((pa * ba).sum(-1) / (ba * ba).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    return (pa - ba * h[:, None]).norm(dim=-1) - r


def _sdf_op(op: int, p: torch.Tensor, prm: torch.Tensor) -> torch.Tensor:
    """SDF of one op for points p: (M, 3) with parameters prm: (M, NUM_PRM) -> (M,)."""
    if op == 4:
        q = torch.stack([p[:, :2].norm(dim=-1) - prm[:, 0], p[:, 2]], -1)
        return q.norm(dim=-1) - prm[:, 1]
    a, off, rs, k, th = prm[:, 0:3], prm[:, 3:6], prm[:, 6], prm[:, 7], prm[:, 9]
    if op == 0:
        return _smin(_roundbox(p, a, th), (p - off).norm(dim=-1) - rs, k)
    if op == 1:
        # smooth max(box, -sphere) = -smin(-box, sphere)
        return -_smin(-_roundbox(p, a, th), (p - off).norm(dim=-1) - rs, k)
    if op == 2:
        shell = ((p.norm(dim=-1) - rs).abs() - th)
        return torch.maximum(shell, p[:, 2] - off[:, 2])
    zero = torch.zeros_like(a)
    ax = zero.clone()
    ax[:, 0] = a[:, 0]
    az = zero.clone()
    az[:, 2] = -a[:, 2]
    return _smin(_capsule(p, -ax, ax, th), _capsule(p, az, off, th), k)


def sdf_grouped(p: torch.Tensor, prm: torch.Tensor, counts: list[int], use_compile: bool = False) -> torch.Tensor:
    """SDF of points grouped by op (rows sorted by op, ``counts[i]`` rows of op i).

    p: (M, 3) local points; prm: (M, NUM_PRM). Returns (M,).
    """
    outs = []
    fn = maybe_compile(_sdf_op, use_compile)
    for op, (pp, pr) in enumerate(zip(p.split(counts), prm.split(counts))):
        if pp.shape[0]:
            outs.append(fn(op, pp, pr))
    return torch.cat(outs) if outs else p.new_zeros(0)


def march(o: torch.Tensor, d: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, prm: torch.Tensor,
          op: torch.Tensor, steps: int, eps: float, compact_every: int = 4,
          use_compile: bool = False) -> torch.Tensor:
    """Sphere-trace (ray, primitive) pairs inside [t0, t1].

    o, d: (M, 3) local origins and unit directions; t0, t1: (M,); prm: (M, NUM_PRM);
    op: (M,) long in [0, NUM_OPS). Returns t: (M,) the first hit, or BIG.
    The pairs are sorted by op once; every ``compact_every`` steps finished pairs are dropped.
    """
    M = o.shape[0]
    out = torch.full((M,), BIG, device=o.device, dtype=o.dtype)
    if M == 0:
        return out
    op, order = torch.sort(op, stable=True)
    idx = order
    o, d, t, t1, prm = o[order], d[order], t0[order].clone(), t1[order], prm[order]
    counts = torch.bincount(op, minlength=NUM_OPS).tolist()
    for step in range(steps):
        dist = sdf_grouped(o + t[:, None] * d, prm, counts, use_compile)
        hit = dist < eps * t.clamp_min(1.0)
        out[idx[hit]] = t[hit]
        t = torch.where(hit, t, t + dist)
        if (step + 1) % compact_every == 0 and step + 1 < steps:
            keep = (~hit) & (t < t1)
            k = keep.nonzero().squeeze(1)
            if k.numel() == 0:
                return out
            idx, o, d, t, t1, prm, op = idx[k], o[k], d[k], t[k], t1[k], prm[k], op[k]
            counts = torch.bincount(op, minlength=NUM_OPS).tolist()
    # pairs that ran out of steps: accept the nearly-converged ones
    dist = sdf_grouped(o + t[:, None] * d, prm, counts, use_compile)
    ok = (dist < 20 * eps * t.clamp_min(1.0)) & (t < t1)
    out[idx[ok]] = torch.minimum(out[idx[ok]], t[ok])
    return out


def sdf_normal(p: torch.Tensor, prm: torch.Tensor, op: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Unit outward normals from the SDF gradient (tetrahedral differences).

    p: (M, 3) local hit points; prm: (M, NUM_PRM); op: (M,) long; h: (M,) step. Returns (M, 3).
    """
    M = p.shape[0]
    n = torch.zeros_like(p)
    if M == 0:
        return n
    op_s, order = torch.sort(op, stable=True)
    counts = torch.bincount(op_s, minlength=NUM_OPS).tolist()
    ps, prs, hs = p[order], prm[order], h[order, None]
    ks = torch.tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], dtype=p.dtype, device=p.device)
    g = torch.zeros_like(ps)
    for kk in ks:
        g = g + kk * sdf_grouped(ps + hs * kk, prs, counts)[:, None]
    g = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    n[order] = g
    return n
