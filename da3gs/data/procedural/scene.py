"""Random scenes as batched tensors: environment, primitives, textures, lights and sky.

World frame: z up, the ground (or room floor) at z = 0. A scene is a set of tensors with a
leading sample dim ``S``; primitives occupy ``NUM_SLOTS`` typed slots (see
:mod:`.primitives`), of which a random subset of 4-24 is active. The environment has three
textured surfaces, stored after the primitive slots in the texture / material tensors
(index ``NUM_SLOTS + e``): 0 floor / ground, 1 walls / dome, 2 ceiling.

Kinds: ``room`` (inside an axis-aligned box ``|x| <= rx, |y| <= ry, 0 <= z <= rz``, point
lights under the ceiling); ``ground_sky`` (a ground disk of radius ``ground_r`` under a sky,
directional lights); ``backdrop`` (a small object cluster on a ground inside a textured dome
of radius ``dome_r``, directional lights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from ...geometry.quaternion import quat_normalize, quat_to_mat
from .config import ProceduralConfig
from .primitives import (BLEND, BOX, CYLINDER, NUM_PRM, NUM_SLOTS, QUAD, SLOT_START, SPHERE, TORUS, bounding_radius,
                         const, slot_types)

__all__ = ["Scene", "sample_scenes", "NUM_ENV", "PRIMITIVE_FIELDS"]

NUM_ENV = 3
#: The fields the primitive tracer reads (:func:`.trace.closest_hit`, :func:`.trace.any_hit`).
PRIMITIVE_FIELDS = ("active", "center", "rot", "prm", "bound")


@dataclass
class Scene:
    """S random scenes (all tensors on one device).

    Fields (P = NUM_SLOTS, T = P + NUM_ENV texture / material entries):
      kind: (S,) long, index into SCENE_KINDS.  scale: (S,) characteristic size L.
      focus: (S, 3) point the cameras look at.  room: (S, 3) room half x, half y, height.
      ground_r, dome_r: (S,) ground disk and dome radii.
      active: (S, P) bool.  center: (S, P, 3).  rot: (S, P, 3, 3) local axes as columns.
      prm: (S, P, NUM_PRM) shape parameters.  bound: (S, P) bounding-sphere radius.
      tex_kind: (S, T) long.  tex_freq: (S, T).  tex_seed: (S, T) int32.
      palette: (S, T, 3, 3).  tex_dir: (S, T, 3).  ks, shin: (S, T) Phong specular weight, exponent.
      sky_zenith, sky_horizon: (S, 3).  cloud: (S,).  sky_seed: (S,) int32.
      light_point: (S,) bool (point lights, else directional).  light_vec: (S, 2, 3) position
      (point) or unit direction towards the light (directional).  light_col: (S, 2, 3), zero
      for an absent second light.  ambient: (S,).
    """

    kind: torch.Tensor
    scale: torch.Tensor
    focus: torch.Tensor
    room: torch.Tensor
    ground_r: torch.Tensor
    dome_r: torch.Tensor
    active: torch.Tensor
    center: torch.Tensor
    rot: torch.Tensor
    prm: torch.Tensor
    bound: torch.Tensor
    tex_kind: torch.Tensor
    tex_freq: torch.Tensor
    tex_seed: torch.Tensor
    palette: torch.Tensor
    tex_dir: torch.Tensor
    ks: torch.Tensor
    shin: torch.Tensor
    sky_zenith: torch.Tensor
    sky_horizon: torch.Tensor
    cloud: torch.Tensor
    sky_seed: torch.Tensor
    light_point: torch.Tensor
    light_vec: torch.Tensor
    light_col: torch.Tensor
    ambient: torch.Tensor

    def select(self, idx, only: tuple[str, ...] | None = None) -> "Scene":
        """Scenes ``idx`` (a slice or index tensor over S). ``only``: index just these fields
        (one op each) and leave the others None (for callers that read only those)."""
        return Scene(**{f.name: getattr(self, f.name)[idx] if only is None or f.name in only else None
                        for f in fields(self)})

    @property
    def num(self) -> int:
        return int(self.kind.shape[0])


class _Rng:
    """Draws from one torch.Generator on the target device."""

    def __init__(self, gen: torch.Generator, device):
        self.g, self.dev = gen, device

    def u(self, shape, lo=0.0, hi=1.0) -> torch.Tensor:
        x = torch.rand(shape, generator=self.g, device=self.dev)
        if hi - lo != 1.0:
            x = (hi - lo) * x
        return x if lo == 0.0 else lo + x  # the same floats as lo + (hi - lo) * x, fewer ops

    def logu(self, shape, lo, hi) -> torch.Tensor:
        return torch.exp(self.u(shape, math.log(lo), math.log(hi)))

    def n(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.g, device=self.dev)

    def choice(self, shape, weights) -> torch.Tensor:
        w = const(f"weights{tuple(weights)}", tuple(weights), torch.float32, (len(weights),), self.dev)
        return (self.u(shape)[..., None] * w.sum() > torch.cumsum(w, 0)).sum(-1).clamp_max(len(weights) - 1)

    def int(self, shape, lo, hi) -> torch.Tensor:
        """Integers in [lo, hi] inclusive."""
        return torch.randint(lo, hi + 1, shape, generator=self.g, device=self.dev)

    def unit(self, shape) -> torch.Tensor:
        v = self.n(tuple(shape) + (3,))
        return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def _palette(r: _Rng, shape) -> torch.Tensor:
    """(*shape, 3, 3) palettes: three colours around a random hue family."""
    base = r.u(tuple(shape) + (1, 3)) ** 1.3
    cols = (base + 0.45 * (r.u(tuple(shape) + (3, 3)) - 0.5)).clamp(0.03, 1)
    grey = cols.mean(-1, keepdim=True)
    sat = r.u(tuple(shape) + (1, 1), 0.3, 1.3)
    bright = r.u(tuple(shape) + (3, 1), 0.5, 1.1)
    return ((grey + sat * (cols - grey)) * bright).clamp(0.02, 1)


def _shape_params(r: _Rng, S: int, s: torch.Tensor) -> torch.Tensor:
    """(S, P, NUM_PRM) shape parameters for every slot given sizes s: (S, P)."""
    P = NUM_SLOTS
    prm = torch.zeros(S, P, NUM_PRM, device=s.device)
    u = lambda lo, hi, *k: r.u((S, P) + k, lo, hi)  # noqa: E731
    sph = torch.stack([s], -1)
    box = s[..., None] * u(0.35, 1.1, 3)
    cyl = torch.stack([s * u(0.3, 1.0), s * u(0.4, 1.5)], -1)
    quad = s[..., None] * u(0.5, 2.0, 2)
    tR = s * u(0.6, 1.0)
    tor = torch.stack([tR, tR * u(0.12, 0.4)], -1)
    # blends: a (3), off (3), rs, k, op, th
    op = r.int((S, P), 0, 3).float()
    a = s[..., None] * u(0.35, 0.9, 3)
    off = r.unit((S, P)) * (s * u(0.45, 0.9))[..., None]
    rs = s * u(0.35, 0.7)
    k = s * u(0.05, 0.3)
    th = s * u(0.02, 0.1)
    # bowl (op 2): radius s, thin shell, cut plane height in off_z
    is2, is3 = op == 2, op == 3
    rs = torch.where(is2, s, rs)
    th = torch.where(is2, s * u(0.03, 0.08), torch.where(is3, s * u(0.04, 0.1), th))
    off = torch.where(is2[..., None], torch.stack([off[..., 0], off[..., 1], s * u(-0.3, 0.5)], -1), off)
    a = torch.where(is3[..., None], s[..., None] * u(0.6, 1.1, 3), a)
    off = torch.where(is3[..., None], r.unit((S, P)) * (s * u(0.6, 1.1))[..., None], off)
    blend = torch.cat([a, off, rs[..., None], k[..., None], op[..., None], th[..., None]], -1)
    for t, v in ((SPHERE, sph), (BOX, box), (CYLINDER, cyl), (QUAD, quad), (TORUS, tor), (BLEND, blend)):
        sl = slice(SLOT_START[t], SLOT_START[t + 1])  # host-side slices: no device mask, no sync
        prm[:, sl, : v.shape[-1]] = v[:, sl]
    return prm


def sample_scenes(cfg: ProceduralConfig, S: int, gen: torch.Generator, device) -> Scene:
    """Draw S random scenes with the generator ``gen`` (on ``device``)."""
    r = _Rng(gen, device)
    P, T = NUM_SLOTS, NUM_SLOTS + NUM_ENV
    kind = r.choice((S,), cfg.scene_kinds)
    room_k, ground_k = kind == 0, kind == 1
    room = torch.stack([r.u((S,), 2.5, 5.0), r.u((S,), 2.5, 5.0), r.u((S,), 2.6, 3.6)], -1)
    L = torch.where(room_k, 0.8 * room[:, :2].amin(-1), torch.where(ground_k, r.u((S,), 3.0, 7.0), r.u((S,), 0.8, 1.6)))
    ground_r = 12.0 * L
    dome_r = r.u((S,), 5.0, 8.0) * L
    focus = torch.zeros(S, 3, device=device)
    focus[:, 2] = torch.where(room_k, 1.0, torch.where(ground_k, 0.15, 0.3) * L)

    # primitives: count, sizes, shapes, poses
    n = r.int((S,), *cfg.num_primitives)
    rank = r.u((S, P)).argsort(-1).argsort(-1)
    active = rank < n[:, None]
    size_rel = torch.where(kind == 2, 0.3, 0.17)[:, None] * r.logu((S, P), 0.5, 1.8)
    s = L[:, None] * size_rel
    prm = _shape_params(r, S, s)
    ptype = slot_types(device)
    bound = bounding_radius(ptype.expand(S, P), prm)
    rot = quat_to_mat(quat_normalize(r.n((S, P, 4))))
    # positions: rooms fill the floor, others a disk of radius L around the focus
    ang, rad = r.u((S, P), 0, 2 * math.pi), L[:, None] * r.u((S, P)).sqrt()
    xy = torch.stack([rad * ang.cos(), rad * ang.sin()], -1)
    xy_room = (r.u((S, P, 2), -1, 1) * (room[:, None, :2] - 0.3 - 0.5 * bound[..., None]).clamp_min(0.05))
    xy = torch.where(room_k[:, None, None], xy_room, xy)
    resting = r.u((S, P)) < 0.7
    top = torch.where(room_k, room[:, 2], 1.2 * L)[:, None]
    z_float = bound + r.u((S, P)) * (top - 2 * bound).clamp_min(0)
    z = torch.where(resting, bound * r.u((S, P), 0.25, 0.9), z_float)
    center = torch.cat([xy, z[..., None]], -1)

    # textures and materials: primitives, then floor, walls / dome, ceiling
    tex_kind = r.choice((S, T), cfg.texture_kinds)
    sizes = torch.cat([s, L[:, None].expand(S, NUM_ENV) * 0.5], 1)
    tex_freq = r.logu((S, T), 1.0, 6.0) / sizes
    tex_seed = torch.randint(0, 2 ** 30, (S, T), generator=gen, device=device, dtype=torch.int32)
    palette = _palette(r, (S, T))
    tex_dir = r.unit((S, T))
    ks = r.u((S, T), 0.0, 0.6) * (r.u((S, T)) < 0.7)
    ks[:, P:] *= 0.3
    shin = r.logu((S, T), 4.0, 80.0)

    # sky
    sunset = r.u((S, 1)) < 0.25
    sky = const("sky", ((0.25, 0.3, 0.6), (0.2, 0.42, 0.85), (0.95, 0.6, 0.35), (0.75, 0.82, 0.92)), torch.float32,
                (4, 3), device)  # zenith (sunset, day), horizon (sunset, day)
    zen = torch.where(sunset, sky[0], sky[1])
    hor = torch.where(sunset, sky[2], sky[3])
    sky_zenith = (zen + 0.08 * r.n((S, 3))).clamp(0, 1)
    sky_horizon = (hor + 0.05 * r.n((S, 3))).clamp(0, 1)
    cloud = r.u((S,), 0.0, 0.7)
    sky_seed = torch.randint(0, 2 ** 30, (S,), generator=gen, device=device, dtype=torch.int32)

    # lights: point lights under a room's ceiling, else directional (sun-like)
    nl = r.int((S,), *cfg.num_lights)
    light_point = room_k
    el, az = r.u((S, 2), 20.0, 70.0) * math.pi / 180, r.u((S, 2), 0, 2 * math.pi)
    dirs = torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], -1)
    pos = torch.stack([r.u((S, 2), -0.6, 0.6) * room[:, None, 0], r.u((S, 2), -0.6, 0.6) * room[:, None, 1],
                       0.88 * room[:, None, 2].expand(S, 2)], -1)
    light_vec = torch.where(light_point[:, None, None], pos, dirs)
    inten = torch.stack([r.u((S,), 0.8, 1.2), r.u((S,), 0.3, 0.6)], -1) * torch.where(light_point, 1.2, 1.0)[:, None]
    tint = (1 + 0.1 * r.n((S, 2, 3))).clamp(0.7, 1.3)
    light_col = inten[..., None] * tint
    light_col[:, 1] *= (nl >= 2)[:, None]
    ambient = r.u((S,), *cfg.ambient)
    return Scene(kind=kind, scale=L, focus=focus, room=room, ground_r=ground_r, dome_r=dome_r,
                 active=active, center=center, rot=rot, prm=prm, bound=bound, tex_kind=tex_kind,
                 tex_freq=tex_freq, tex_seed=tex_seed, palette=palette, tex_dir=tex_dir, ks=ks,
                 shin=shin, sky_zenith=sky_zenith, sky_horizon=sky_horizon, cloud=cloud,
                 sky_seed=sky_seed, light_point=light_point, light_vec=light_vec,
                 light_col=light_col, ambient=ambient)
