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

from .primitives import group_by

__all__ = ["hash_int", "hash01", "value_noise", "fbm", "evaluate_texture", "sky_color"]

def hash_int(ix: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """32-bit integer hash of lattice points (int32 arithmetic, wrapping).

    ix: (..., 3) int32; seed: int32 broadcastable to ix[..., 0]. Returns (...,) int32.
    """
    h = (ix[..., 0] * 1597334677) ^ (ix[..., 1] * 812365231) ^ (ix[..., 2] * 1664525) ^ (seed * 1013904223)
    h = (h ^ (h >> 15)) * 739198763  # arithmetic shifts on negatives are fine for hashing
    h = (h ^ (h >> 13)) * 1274126177
    return h ^ (h >> 16)


def hash01(ix: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Hash of integer lattice points to [0, 1): ix (..., 3) int32, seed int32 -> (...,) float32."""
    return (hash_int(ix, seed) & 0xFFFFFF).float() * (1.0 / 16777216.0)


def _bytes01(h: torch.Tensor, n: int) -> torch.Tensor:
    """n (<= 4) values in [0, 1) from the bytes of an int32 hash: (...,) -> (..., n)."""
    return torch.stack([((h >> (8 * i)) & 255).float() * (1.0 / 255.0) for i in range(n)], -1)


_A = (1597334677, 812365231, 1664525)


def value_noise(p: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """Trilinear value noise with smoothstep weights. p: (N, 3); seed: (N,) int32 -> (N,) in [0, 1].

    Same lattice hash as :func:`hash_int`, with the per-axis products formed once and combined
    into the 8 corners by broadcasting (no (N, 8, 3) integer tensor).
    """
    fl = torch.floor(p)
    f = p - fl
    u = f * f * (3 - 2 * f)
    i = fl.int()
    hx, hy, hz = (torch.stack([i[:, a] * _A[a], (i[:, a] + 1) * _A[a]], -1) for a in range(3))  # (N, 2) each
    h = hx[:, :, None, None] ^ hy[:, None, :, None] ^ hz[:, None, None, :] ^ (seed * 1013904223)[:, None, None, None]
    h = (h ^ (h >> 15)) * 739198763
    h = (h ^ (h >> 13)) * 1274126177
    v = ((h ^ (h >> 16)) & 0xFFFFFF).float() * (1.0 / 16777216.0)  # (N, 2, 2, 2)
    ux, uy, uz = u.unbind(-1)
    v = v[:, 0] + (v[:, 1] - v[:, 0]) * ux[:, None, None]
    v = v[:, 0] + (v[:, 1] - v[:, 0]) * uy[:, None]
    return v[:, 0] + (v[:, 1] - v[:, 0]) * uz


def fbm(p: torch.Tensor, seed: torch.Tensor, octaves: int = 4) -> torch.Tensor:
    """Fractal sum of value noise, normalised to about [0, 1]. p: (N, 3); seed: (N,) -> (N,)."""
    total, amp, norm = torch.zeros_like(p[:, 0]), 1.0, 0.0
    for o in range(octaves):
        total = total + amp * value_noise(p * (2.0 ** o) + 17.3 * o, seed + 101 * o)
        norm += amp
        amp *= 0.5
    v = total / norm
    return ((v - 0.5) * 1.8 + 0.5).clamp(0, 1)  # stretch: sums of noise concentrate near 0.5


def _mix(pal: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """pal: (N, 3 colours, 3 rgb); w: (N, 3) weights -> (N, 3)."""
    return (w[:, :, None] * pal).sum(1)


def _lerp(a, b, t):
    return a + (b - a) * t[:, None]


def _tex(kind: int, p: torch.Tensor, freq: torch.Tensor, seed: torch.Tensor, pal: torch.Tensor,
         direc: torch.Tensor) -> torch.Tensor:
    q = p * freq[:, None]
    c0, c1, c2 = pal[:, 0], pal[:, 1], pal[:, 2]
    if kind == 0:  # fBm
        v = fbm(q, seed)
        v2 = value_noise(q * 0.5 + 5.1, seed + 7)
        return _lerp(_lerp(c0, c1, v), c2, (v2 - 0.55).clamp(0, 1) * 2.0)
    if kind == 1:  # dead leaves: base cell colour, then layers of balls of shrinking size
        cell = torch.floor(q * 0.5).int()
        h = _bytes01(hash_int(cell, seed), 3) + 0.05
        col = _mix(pal, h / h.sum(-1, keepdim=True))
        for layer in range(4):
            ql = q * (1.0 + 0.8 * layer) + 3.7 * layer
            fl = torch.floor(ql)
            ci, f = fl.int(), ql - fl
            sd = seed + 1000 * (layer + 1)
            g = _bytes01(hash_int(ci, sd), 4)  # centre (3), radius
            inside = (f - (0.3 + 0.4 * g[:, :3])).norm(dim=-1) < 0.12 + 0.18 * g[:, 3]
            w = _bytes01(hash_int(ci, sd + 1), 3) ** 2 + 0.01
            leaf = _mix(pal, w / w.sum(-1, keepdim=True))
            col = torch.where(inside[:, None], leaf, col)
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
    # colour field
    w = torch.stack([value_noise(q * 0.6 + 11.0 * j, seed + 31 * j) for j in range(3)], -1) ** 3
    return _mix(pal, w / w.sum(-1, keepdim=True).clamp_min(1e-6))


def evaluate_texture(kind: torch.Tensor, p: torch.Tensor, freq: torch.Tensor, seed: torch.Tensor,
                     palette: torch.Tensor, direction: torch.Tensor, entry: torch.Tensor | None = None) -> torch.Tensor:
    """Albedo of surface points.

    kind: (...) long texture kind; p: (..., 3) points in the surface's texture frame; freq: (...)
    spatial frequency (cycles per unit); seed: (...) int32; palette: (..., 3, 3) three RGB
    colours; direction: (..., 3) unit stripe direction. With ``entry`` ((...) long), kind, freq,
    seed, palette and direction are instead tables (E,), (E,), (E,), (E, 3, 3), (E, 3) indexed
    by ``entry`` (gathered per kind, only for the points of that kind). Returns (..., 3) albedo
    in [0, 1]. Grouped: the points are sorted by kind once (one host sync for the group sizes)
    and each kind is evaluated on its own points only.
    """
    sh = p.shape
    p = p.reshape(-1, 3)
    if entry is None:
        entry = torch.arange(p.shape[0], device=p.device)
        kind, freq, seed = kind.reshape(-1), freq.reshape(-1), seed.reshape(-1)
        palette, direction = palette.reshape(-1, 3, 3), direction.reshape(-1, 3)
    else:
        entry = entry.reshape(-1)
    kp = kind[entry]
    order, st = group_by(kp, 5)
    out = torch.empty_like(p)
    for k in range(5):
        if st[k] == st[k + 1]:
            continue
        idx = order[st[k]:st[k + 1]]
        e, pk = entry[idx], p[idx]
        f, sd = freq[e], seed[e]
        col = _tex(k, pk, f, sd, palette[e], direction[e] if k == 2 else None)
        # faint high-frequency detail so that no surface is textureless
        detail = value_noise(pk * (f * 6.0)[:, None] + 0.37, sd + 977)
        out[idx] = (col * (0.85 + 0.3 * detail)[:, None]).clamp_(0, 1)
    return out.reshape(sh)


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
