"""Solid (3D, object-space) procedural textures and the sky.

Textures are functions of the hit point in the primitive's local frame (environment surfaces:
the world point), never of the pixel, so every view sees the same appearance on a surface.
Randomness comes from an integer hash of lattice coordinates and a per-surface seed: there is
no texture memory. Evaluation is grouped by kind (one sort, one host sync for the group sizes):
each point pays only for its own kind, since the generator is bound by GPU elementwise work.

Kinds (``TEXTURE_KINDS`` order): 0 fBm value noise (4 octaves); 1 dead leaves (layers of random
balls at several scales occluding each other, over a cell-coloured base); 2 stripes along a
random direction; 3 3D checkers; 4 random colour field (smooth blend of the palette by
low-frequency noise). Each mixes a per-surface palette of 3 colours and is modulated by a
faint high-frequency noise so that no surface is textureless.
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


def _tex(kind: int, p: torch.Tensor, freq: torch.Tensor, seed: torch.Tensor, pal: torch.Tensor,
         direc: torch.Tensor) -> torch.Tensor:
    q = p * freq[:, None]
    c0, c1, c2 = pal.unbind(1)
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


def evaluate_texture(kind: torch.Tensor, p: torch.Tensor, freq: torch.Tensor, seed: torch.Tensor,
                     palette: torch.Tensor, direction: torch.Tensor, entry: torch.Tensor | None = None,
                     budget=None, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Albedo of surface points.

    kind: (...) long texture kind; p: (..., 3) points in the surface's texture frame; freq: (...)
    spatial frequency (cycles per unit); seed: (...) int32; palette: (..., 3, 3) three RGB
    colours; direction: (..., 3) unit stripe direction. With ``entry`` ((...) long), kind, freq,
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
    if entry is None:
        entry = torch.arange(p.shape[0], device=p.device)
        kind, freq, seed = kind.reshape(-1), freq.reshape(-1), seed.reshape(-1)
        palette, direction = palette.reshape(-1, 3, 3), direction.reshape(-1, 3)
    else:
        entry = entry.reshape(-1)
    if budget is not None:
        return _texture_static(kind, p, freq, seed, palette, direction, entry, budget, valid.reshape(-1)).reshape(sh)
    order, st = group_by(kind[entry], 5)
    e = entry[order]
    ps, f, sd, pal = p[order], freq[e], seed[e], palette[e]
    cols = []
    for k in range(5):
        a, b = st[k], st[k + 1]
        if a < b:
            cols.append(_tex(k, ps[a:b], f[a:b], sd[a:b], pal[a:b], direction[e[a:b]] if k == 2 else None))
    col = torch.cat(cols) if len(cols) > 1 else cols[0]
    out = torch.empty_like(p)
    out[order] = _detailed(col, ps, f, sd)
    return out.reshape(sh)


def _detailed(col: torch.Tensor, p: torch.Tensor, f: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    """Colours (N, 3) times the faint high-frequency detail noise at points p (N, 3) of frequency
    f and seed sd (N,), so that no surface is textureless; clamped to [0, 1]."""
    detail = value_noise(p * (f * 6.0)[:, None] + 0.37, sd + 977)
    return (col * (0.85 + 0.3 * detail)[:, None]).clamp_(0, 1)


def _texture_static(kind, p, freq, seed, palette, direction, entry, budget, valid) -> torch.Tensor:
    """:func:`evaluate_texture`'s static path on flat points p (N, 3), entries (N,), valid (N,)."""
    N = p.shape[0]
    key = torch.where(valid, kind[entry], len(TEXTURE_KINDS))
    col = torch.zeros(N + 1, 3, device=p.device)  # the last row is the sink of padding
    names = [f"surface/tex{k}" for k in range(len(TEXTURE_KINDS))]
    for k, sel in enumerate(budget.groups(key, names, N)):
        e = entry[sel.idx]
        sel.put(col, _tex(k, p[sel.idx], freq[e], seed[e], palette[e], direction[e] if k == 2 else None))
    f, sd = freq[entry], seed[entry]
    return torch.where(valid[:, None], _detailed(col[:N], p, f, sd), 0.0)


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
