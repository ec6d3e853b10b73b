"""Solid (3D, object-space) procedural textures and the sky.

Textures are functions of the hit point in the primitive's local frame (environment surfaces:
the world point), never of the pixel, so every view sees the same appearance on a surface.
Randomness comes from an integer hash of lattice coordinates and a per-surface seed: there is
no texture memory. Evaluation is grouped by kind (one sort, one host sync for the group sizes):
each point pays only for its own kind, since the generator is bound by GPU elementwise work.

Kinds (``TEXTURE_KINDS`` order): 0 fBm value noise (4 octaves); 1 dead leaves (layers of random
balls at several scales occluding each other, over a cell-coloured base); 2 stripes along a
random direction; 3 3D checkers; 4 random colour field (smooth blend of the palette by
low-frequency noise). Surface patterns (5-10) are 2D, on the plane of the surface's dominant
normal axis in its texture frame (``axis``: 0 -> (y, z), 1 -> (x, z), 2 -> (x, y); so on walls
the second coordinate is height): 5 plain (one colour, a faint low-frequency variation); 6
wallpaper (a lattice of motifs -- dots, diamonds, four-petal flowers or a trellis -- with an
optional half drop, corner dots and pinstripes, per surface); 7 fabric (a plain weave of fine
threads, 12 per unit, shaded across each thread, in plaid bands or one colour); 8 brick
(running bond, 1 x 3 bricks, mortar joints, per-brick colour); 9 façade (storeys of one unit,
bays of windows with frames, a mullion, dark or lit glass, string courses, wider shop windows on
the ground storey; plain wall on horizontal surfaces); 10 wood (planks one unit wide, staggered
end joints, growth rings bent by noise, per-plank tint). Each mixes a per-surface palette of 3
colours and is modulated by a faint high-frequency noise (weaker on plain surfaces, so a plain
table stays nearly uniform) so that no surface is textureless.
"""

from __future__ import annotations

import math

import torch

from .config import TEXTURE_KINDS
from .primitives import const as _const
from .primitives import group_by

__all__ = ["hash_int", "hash01", "value_noise", "fbm", "evaluate_texture", "sky_color"]

_A = (1597334677, 812365231, 1664525)


def hash_int(ix: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """32-bit integer hash of lattice points (int32 arithmetic, wrapping).

    ix: (..., 3) int32; seed: int32 broadcastable to ix[..., 0]. Returns (...,) int32.
    """
    a, b, c = (ix * _const("A", _A, torch.int32, (3,), ix.device)).unbind(-1)
    h = a ^ b ^ c ^ (seed * 1013904223)
    h = (h ^ (h >> 15)) * 739198763  # arithmetic shifts on negatives are fine for hashing
    h = (h ^ (h >> 13)) * 1274126177
    return h ^ (h >> 16)


def hash01(ix: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Hash of integer lattice points to [0, 1): ix (..., 3) int32, seed int32 -> (...,) float32."""
    return (hash_int(ix, seed) & 0xFFFFFF).float() * (1.0 / 16777216.0)


def _bytes01(h: torch.Tensor, n: int) -> torch.Tensor:
    """n (<= 4) values in [0, 1) from the bytes of an int32 hash: (...,) -> (..., n)."""
    sh = _const("shifts", (0, 8, 16, 24), torch.int32, (4,), h.device)[:n]
    return ((h[..., None] >> sh) & 255).float() * (1.0 / 255.0)


def value_noise(p: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Trilinear value noise with smoothstep weights. p: (N, 3); seed: (N,) int32 -> (N,) in [0, 1].

    Same lattice hash as :func:`hash_int`, with the per-axis products formed once, as (3, 2, N)
    rows, and combined into the 8 corners (2, 2, 2, N) by broadcasting (no (N, 8, 3) integer
    tensor; the points stay the innermost dim).
    """
    fl = torch.floor(p)
    f = p - fl
    ux, uy, uz = (f * f * (3 - 2 * f)).unbind(-1)
    i = fl.int().T
    A = _const("A", _A, torch.int32, (3, 1), p.device)
    hx, hy, hz = torch.stack([i * A, (i + 1) * A], 1).unbind(0)  # (2, N) each: low, high corner
    h = hx.view(2, 1, 1, -1) ^ hy.view(1, 2, 1, -1) ^ hz.view(1, 1, 2, -1) ^ (seed * 1013904223)
    h = (h ^ (h >> 15)) * 739198763
    h = (h ^ (h >> 13)) * 1274126177
    v0, v1 = (((h ^ (h >> 16)) & 0xFFFFFF).float() * (1.0 / 16777216.0)).unbind(0)  # (2, 2, N) each
    v0, v1 = (v0 + (v1 - v0) * ux).unbind(0)
    v0, v1 = (v0 + (v1 - v0) * uy).unbind(0)
    return v0 + (v1 - v0) * uz


def _fields(p: torch.Tensor, seed: torch.Tensor, scale, offset, seed_off) -> torch.Tensor:
    """Value noise of K fields in one evaluation: field j at ``p * scale[j] + offset[j]`` with
    seed ``seed + seed_off[j]`` (tuples of K Python numbers). p: (N, 3); seed: (N,) -> (K, N)."""
    K, dev = len(scale), p.device
    if any(x != 1.0 for x in scale):
        p = p * _const(f"s{scale}", scale, torch.float32, (K, 1, 1), dev)
    pts = p + _const(f"o{offset}", offset, torch.float32, (K, 1, 1), dev)
    sd = seed + _const("d" + str(seed_off), seed_off, torch.int32, (K, 1), dev)
    return value_noise(pts.reshape(-1, 3), sd.reshape(-1)).view(K, -1)


def _fbm_sum(v: torch.Tensor) -> torch.Tensor:
    """Octaves (K, N) of value noise -> the normalised, stretched fractal sum (N,)."""
    amp = _const("amp", (1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125), torch.float32, (6, 1), v.device)
    w = (v * amp[:v.shape[0]]).unbind(0)
    total = w[0]
    for x in w[1:]:
        total = total + x
    v = total / sum(0.5 ** o for o in range(len(w)))
    return ((v - 0.5) * 1.8 + 0.5).clamp(0, 1)  # stretch: sums of noise concentrate near 0.5


def _octaves(octaves: int):
    return tuple(2.0 ** o for o in range(octaves)), tuple(17.3 * o for o in range(octaves)), \
        tuple(101 * o for o in range(octaves))


def fbm(p: torch.Tensor, seed: torch.Tensor, octaves: int = 4) -> torch.Tensor:
    """Fractal sum of value noise, normalised to about [0, 1]. p: (N, 3); seed: (N,) -> (N,).
    The octaves are evaluated together (:func:`_fields`)."""
    return _fbm_sum(_fields(p, seed, *_octaves(octaves)))


def _mix(pal: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """pal: (N, 3 colours, 3 rgb); w: (..., N, 3) weights -> (..., N, 3)."""
    return (w[..., None] * pal).sum(-2)


def _lerp(a, b, t):
    return a + (b - a) * t[:, None]


_LEAVES = 4  # dead-leaves layers


#: Amplitude of the detail noise per texture kind (colour times ``1 - amp / 2 + amp * noise``).
_DETAIL = (0.3, 0.3, 0.3, 0.3, 0.3, 0.04, 0.1, 0.2, 0.25, 0.12, 0.15)


def _seed_hash(seed: torch.Tensor, salt: int) -> torch.Tensor:
    """A per-surface int32 hash of the seed (N,) and a salt (the mixing of :func:`hash_int`)."""
    h = seed * 1013904223 + salt
    h = (h ^ (h >> 15)) * 739198763
    h = (h ^ (h >> 13)) * 1274126177
    return h ^ (h >> 16)


def _cell_bytes(a: torch.Tensor, b: torch.Tensor, c: int, seed: torch.Tensor, n: int) -> torch.Tensor:
    """n values in [0, 1) hashed from integer cells (a, b) (N,) int32, a salt c and the seed: (N, n)."""
    return _bytes01(hash_int(torch.stack([a, b, torch.full_like(a, c)], -1), seed), n)


def _uv(q: torch.Tensor, axis: torch.Tensor):
    """2D coordinates on the plane of the dominant normal axis: 0 -> (y, z), 1 -> (x, z), 2 -> (x, y)."""
    x, y, z = q.unbind(-1)
    return torch.where(axis == 0, y, x), torch.where(axis == 2, y, z)


def _tex(kind: int, p: torch.Tensor, freq: torch.Tensor, seed: torch.Tensor, pal: torch.Tensor,
         direc: torch.Tensor, axis: torch.Tensor | None = None) -> torch.Tensor:
    q = p * freq[:, None]
    c0, c1, c2 = pal.unbind(1)
    if kind >= 5:
        return _surface_pattern(kind, q, seed, pal, axis)
    if kind == 0:  # fBm (4 octaves) and a second, coarser field, evaluated together
        sc, of, so = _octaves(4)
        v = _fields(q, seed, sc + (0.5,), of + (5.1,), so + (7,))
        v, v2 = _fbm_sum(v[:4]), v[4]
        return _lerp(_lerp(c0, c1, v), c2, (v2 - 0.55).clamp(0, 1) * 2.0)
    if kind == 1:  # dead leaves: base cell colour, then layers of balls of shrinking size
        cell = torch.floor(q * 0.5).int()
        h = _bytes01(hash_int(cell, seed), 3) + 0.05
        col = _mix(pal, h / h.sum(-1, keepdim=True))
        # all layers at once: (layers, N, ...)
        dev = p.device
        ql = (q * _const("leaf_s", tuple(1.0 + 0.8 * j for j in range(_LEAVES)), torch.float32, (_LEAVES, 1, 1), dev)
              + _const("leaf_o", tuple(3.7 * j for j in range(_LEAVES)), torch.float32, (_LEAVES, 1, 1), dev))
        fl = torch.floor(ql)
        ci, f = fl.int(), ql - fl
        sd = seed + _const("leaf_d", tuple(1000 * (j + 1) for j in range(_LEAVES)), torch.int32, (_LEAVES, 1), dev)
        g = _bytes01(hash_int(ci, sd), 4)  # centre (3), radius
        inside = (f - (0.3 + 0.4 * g[..., :3])).norm(dim=-1) < 0.12 + 0.18 * g[..., 3]
        w = _bytes01(hash_int(ci, sd + 1), 3) ** 2 + 0.01
        leaf = _mix(pal, w / w.sum(-1, keepdim=True))
        for j in range(_LEAVES):
            col = torch.where(inside[j, :, None], leaf[j], col)
        return col
    if kind == 2:  # stripes
        x = (q * direc).sum(-1)
        v = torch.sin(2 * math.pi * x)
        s = (v * 4).clamp(-1, 1) * 0.5 + 0.5
        thin = (torch.sin(2 * math.pi * 3 * x + 1.0) > 0.85).float()
        return _lerp(_lerp(c0, c1, s), c2, thin * 0.7)
    if kind == 3:  # checkers
        par = (torch.floor(q).int().sum(-1) & 1).float()
        return _lerp(c0, c1, par)
    # colour field: three fields evaluated together
    w = _fields(q * 0.6, seed, (1.0, 1.0, 1.0), (0.0, 11.0, 22.0), (0, 31, 62)).T.contiguous() ** 3
    return _mix(pal, w / w.sum(-1, keepdim=True).clamp_min(1e-6))


def _surface_pattern(kind: int, q: torch.Tensor, seed: torch.Tensor, pal: torch.Tensor,
                     axis: torch.Tensor) -> torch.Tensor:
    """Kinds 5-10 (plain, wallpaper, fabric, brick, façade, wood) at texture points q (N, 3)
    (already times the frequency); axis (N,) long."""
    c0, c1, c2 = pal.unbind(1)
    if kind == 5:  # plain: one colour, a faint low-frequency variation
        v = value_noise(q * 0.5, seed)
        return c0 * (0.96 + 0.08 * v)[:, None]
    u, v = _uv(q, axis)
    if kind == 6:  # wallpaper: a lattice of motifs
        hb = _bytes01(_seed_hash(seed, 1), 4)
        iu = torch.floor(u)
        v = v + 0.5 * ((iu.int() & 1).float() * (hb[:, 2] < 0.5).float())  # half drop
        iv = torch.floor(v)
        fu, fv = (u - iu - 0.5).abs(), (v - iv - 0.5).abs()
        motif = (hb[:, 0] * 4).int()
        r0 = 0.16 + 0.18 * hb[:, 1]
        rr = fu * fu + fv * fv
        cos4 = ((fu * fu - fv * fv) ** 2 - 4 * fu * fu * fv * fv) / (rr * rr).clamp_min(1e-12)
        d = torch.where(motif == 0, rr.sqrt(), torch.where(motif == 1, fu + fv, rr.sqrt() / (1 + 0.45 * cos4)))
        inside = torch.where(motif == 3, torch.minimum(fu, fv) < 0.03 + 0.05 * hb[:, 1], d < r0)
        corner = ((0.5 - fu) ** 2 + (0.5 - fv) ** 2) < 0.008 + 0.01 * hb[:, 3]
        u4 = u * 4
        pin = (hb[:, 3] < 0.3) & (u4 - torch.floor(u4) < 0.07)
        m1 = c0 + (c1 - c0) * (0.35 + 0.55 * hb[:, 3:4])
        col = torch.where((corner | pin)[:, None], c0 + (c2 - c0) * 0.6, c0)
        return torch.where(inside[:, None], m1, col)
    if kind == 7:  # fabric: a plain weave, plaid bands or one colour
        tu, tv = u * 12, v * 12
        iu, iv = torch.floor(tu), torch.floor(tv)
        over = ((iu.int() + iv.int()) & 1) == 0
        prof = torch.where(over, torch.sin(math.pi * (tu - iu)), torch.sin(math.pi * (tv - iv)))
        bu, bv = torch.floor(u * 2).int(), torch.floor(v * 2).int()
        wu = _cell_bytes(bu, torch.zeros_like(bu), 3, seed, 3) ** 2 + 0.02
        wv = _cell_bytes(bv, torch.ones_like(bv), 3, seed, 3) ** 2 + 0.02
        plain = (_bytes01(_seed_hash(seed, 2), 1)[:, 0] < 0.4)[:, None]
        cu = torch.where(plain, c0, _mix(pal, wu / wu.sum(-1, keepdim=True)))
        cv = torch.where(plain, c0 * 0.9, _mix(pal, wv / wv.sum(-1, keepdim=True)))
        return torch.where(over[:, None], cu, cv) * (0.72 + 0.28 * prof)[:, None]
    if kind == 8:  # brick: running bond, bricks 1 x 3, mortar joints
        return _brick(u, v, seed, c0, c1, c2)
    if kind == 9:  # façade: storeys of windows
        hb = _bytes01(_seed_hash(seed, 4), 4)
        row = torch.floor(v)
        fv = v - row
        bay = 0.7 + 0.5 * hb[:, 1]
        bu = u / bay
        ci = torch.floor(bu)
        fu = (bu - ci - 0.5).abs()
        ground = row == 0
        ww = torch.where(ground, 0.4, 0.2 + 0.12 * hb[:, 0])
        v0 = torch.where(ground, 0.08, 0.28 + 0.08 * hb[:, 2])
        v1 = torch.where(ground, 0.85, 0.78 + 0.06 * hb[:, 3])
        glass_m = (fu < ww) & (fv > v0) & (fv < v1)
        frame = (fu < ww + 0.035) & (fv > v0 - 0.045) & (fv < v1 + 0.035)
        mull = fu < 0.012
        hw = _cell_bytes(ci.int(), row.int(), 7, seed, 3)
        lit = (hw[:, 0] < 0.1)[:, None]
        dark = (0.05 + 0.15 * hw[:, 1:2]) * _const("glass", (0.8, 0.9, 1.0), torch.float32, (3,), q.device)
        warm = _const("lit", (0.85, 0.72, 0.45), torch.float32, (3,), q.device)
        curtain = (hw[:, 2] < 0.3)[:, None]
        g = torch.where(lit, warm, torch.where(curtain, 0.55 * c1 + 0.2, dark))
        g = g * (0.8 + 0.4 * ((fv - v0) / (v1 - v0)).clamp(0, 1))[:, None]
        band = fv < 0.05
        col = torch.where(glass_m[:, None] & ~mull[:, None], g, torch.where(frame[:, None], c2, torch.where(
            band[:, None], c1, c0)))
        return torch.where((axis == 2)[:, None], c0, col)
    # wood: planks one unit wide along u, staggered joints, growth rings
    row = torch.floor(v)
    fv = v - row
    ri = row.int()
    hb = _cell_bytes(ri, torch.zeros_like(ri), 5, seed, 4)
    along = u / 6.0 + hb[:, 0]
    seg = torch.floor(along)
    joint = ((along - seg) * 6.0 < 0.03) | (fv < 0.03)
    nz = value_noise(torch.stack([u * 0.3, fv * 2.0, row * 7.1], -1), seed + 5)
    ring = torch.frac((fv - 0.5 - 1.5 * (hb[:, 1] - 0.5)).abs() * 5.0 + 1.5 * nz + 3.0 * hb[:, 2])
    gr = ((ring - 0.55) * 2.5).clamp(0, 1)
    tint = 0.85 + 0.3 * _cell_bytes(ri, seg.int(), 6, seed, 1)[:, 0]
    col = (c0 + (c1 - c0) * (0.75 * gr)[:, None]) * tint[:, None]
    return torch.where(joint[:, None], 0.5 * c1, col)


def _brick(u, v, seed, c0, c1, c2):
    row = torch.floor(v)
    fv = v - row
    bu = u / 3.0 + 0.5 * (row.int() & 1).float()
    ci = torch.floor(bu)
    fu = (bu - ci) * 3.0
    mortar = (fu < 0.12) | (fv < 0.12)
    h = _cell_bytes(ci.int(), row.int(), 9, seed, 2)
    b = (c0 + (c1 - c0) * h[:, :1]) * (0.85 + 0.3 * h[:, 1:])
    return torch.where(mortar[:, None], c2, b)


def evaluate_texture(kind: torch.Tensor, p: torch.Tensor, freq: torch.Tensor, seed: torch.Tensor,
                     palette: torch.Tensor, direction: torch.Tensor, entry: torch.Tensor | None = None,
                     budget=None, valid: torch.Tensor | None = None, axis: torch.Tensor | None = None) -> torch.Tensor:
    """Albedo of surface points.

    kind: (...) long texture kind; p: (..., 3) points in the surface's texture frame; freq: (...)
    spatial frequency (cycles per unit); seed: (...) int32; palette: (..., 3, 3) three RGB
    colours; direction: (..., 3) unit stripe direction; axis: (...) long, the dominant axis of
    the surface normal in the texture frame (surface patterns; None: 2). With ``entry`` ((...) long), kind, freq,
    seed, palette and direction are instead tables (E,), (E,), (E,), (E, 3, 3), (E, 3) indexed
    by ``entry``. Returns (..., 3) albedo in [0, 1]. Grouped: the points are sorted by kind once
    (one host sync for the group sizes), their parameters gathered once in that order, and each
    kind is evaluated on its own (contiguous) points only; the faint detail noise is one
    evaluation for all points. With a ``budget`` (:class:`.static.Budget`): the static path,
    each kind on a fixed-capacity selection (``surface/tex{kind}``) of the points with ``valid``
    ((...) bool; the others, and points dropped by an overflow, get 0), no host sync.
    """
    sh = p.shape
    p = p.reshape(-1, 3)
    if p.shape[0] == 0:
        return torch.zeros(sh, device=p.device)
    axis = torch.full((p.shape[0],), 2, dtype=torch.long, device=p.device) if axis is None else axis.reshape(-1)
    if entry is None:
        entry = torch.arange(p.shape[0], device=p.device)
        kind, freq, seed = kind.reshape(-1), freq.reshape(-1), seed.reshape(-1)
        palette, direction = palette.reshape(-1, 3, 3), direction.reshape(-1, 3)
    else:
        entry = entry.reshape(-1)
    if budget is not None:
        return _texture_static(kind, p, freq, seed, palette, direction, entry, budget, valid.reshape(-1),
                               axis).reshape(sh)
    nk = len(TEXTURE_KINDS)
    order, st = group_by(kind[entry], nk)
    e = entry[order]
    ps, f, sd, pal, ax = p[order], freq[e], seed[e], palette[e], axis[order]
    cols = []
    for k in range(nk):
        a, b = st[k], st[k + 1]
        if a < b:
            cols.append(_tex(k, ps[a:b], f[a:b], sd[a:b], pal[a:b], direction[e[a:b]] if k == 2 else None,
                             ax[a:b] if k >= 5 else None))
    col = torch.cat(cols) if len(cols) > 1 else cols[0]
    out = torch.empty_like(p)
    out[order] = _detailed(col, ps, f, sd, _amp(kind[e]))
    return out.reshape(sh)


def _amp(kind: torch.Tensor) -> torch.Tensor:
    return _const("detail", _DETAIL, torch.float32, (len(_DETAIL),), kind.device)[kind]


def _detailed(col: torch.Tensor, p: torch.Tensor, f: torch.Tensor, sd: torch.Tensor, amp: torch.Tensor) -> torch.Tensor:
    """Colours (N, 3) times the faint high-frequency detail noise at points p (N, 3) of frequency
    f and seed sd (N,) with amplitude amp (N,), so that no surface is textureless; clamped to [0, 1]."""
    detail = value_noise(p * (f * 6.0)[:, None] + 0.37, sd + 977)
    return (col * torch.addcmul(1 - 0.5 * amp, amp, detail)[:, None]).clamp_(0, 1)


def _texture_static(kind, p, freq, seed, palette, direction, entry, budget, valid, axis) -> torch.Tensor:
    """:func:`evaluate_texture`'s static path on flat points p (N, 3), entries (N,), valid (N,)."""
    N = p.shape[0]
    key = torch.where(valid, kind[entry], len(TEXTURE_KINDS))
    col = torch.zeros(N + 1, 3, device=p.device)  # the last row is the sink of padding
    names = [f"surface/tex{k}" for k in range(len(TEXTURE_KINDS))]
    for k, sel in enumerate(budget.groups(key, names, N)):
        e = entry[sel.idx]
        sel.put(col, _tex(k, p[sel.idx], freq[e], seed[e], palette[e], direction[e] if k == 2 else None,
                          axis[sel.idx] if k >= 5 else None))
    f, sd = freq[entry], seed[entry]
    return torch.where(valid[:, None], _detailed(col[:N], p, f, sd, _amp(kind[entry])), 0.0)


def sky_color(d: torch.Tensor, zenith: torch.Tensor, horizon: torch.Tensor, cloud: torch.Tensor,
              seed: torch.Tensor) -> torch.Tensor:
    """Sky radiance for world directions (z up).

    d: (N, 3) unit directions; zenith, horizon: (N, 3); cloud: (N,) cloud cover in [0, 1];
    seed: (N,) int32. Returns (N, 3) in [0, 1].
    """
    up = d[:, 2].clamp_min(0)
    col = _lerp(horizon, zenith, up.sqrt())
    uv = d[:, :2] / (d[:, 2:3].clamp_min(0) + 0.15)
    q = torch.cat([uv * 1.5, torch.zeros_like(uv[:, :1])], -1)
    c = fbm(q, seed, octaves=3)
    dens = ((c - 1 + cloud) / cloud.clamp_min(1e-3)).clamp(0, 1) * (up > 0)
    col = _lerp(col, torch.full_like(col, 0.95), dens * 0.9)
    return col.clamp(0, 1)
