"""Random scenes as batched tensors: environment, primitives, textures, lights and sky.

World frame: z up, the ground (or room floor, or table top) at z = 0. A scene is a set of
tensors with a leading sample dim ``S``; primitives occupy ``NUM_SLOTS`` typed slots (see
:mod:`.primitives`), of which a random subset is active. The environment has four textured
surfaces, stored after the primitive slots in the texture / material tensors (index
``NUM_SLOTS + e``): 0 floor / ground / table top, 1 walls / dome / left façade, 2 ceiling /
right façade, 3 the room floor under a table / the end façade of a street.

Kinds (``SCENE_KINDS``):

* ``room``: inside an axis-aligned box ``|x| <= rx, |y| <= ry, 0 <= z <= rz``, point lights
  under the ceiling, primitives scattered with random rotations.
* ``ground_sky``: a ground disk of radius ``ground_r`` under a sky, directional lights.
* ``backdrop``: a small object cluster on a ground inside a textured dome of radius ``dome_r``.
* ``tabletop``: one object (1-5 primitives within about half the scale L = 0.12-0.35 of the
  centre, some stacked) and 0-3 small items on a table top (the rectangle ``|x| <= tx,
  |y| <= ty`` at z = 0), in a room whose floor lies ``drop`` below the table; in 35% of the
  scenes a studio sweep instead (the table covers the whole floor). Table, walls and ceiling
  are bright (mostly plain near-white, grey level 0.78-0.97), the light is high-key
  (``ProceduralConfig.tabletop_ambient``, directional lights 35-80 degrees high).
* ``furnished_room``: a room with furniture: boxes against the walls (back to the wall,
  resting on the floor, yaw aligned; 25% free-standing), cushions and armchairs (blends),
  clutter (spheres, tori, upright cylinders) resting on the furniture tops or the floor,
  pictures on the walls and rugs on the floor (quads); wallpaper, painted or brick walls, wood,
  carpet or tiled floors, wood / fabric / plain furniture.
* ``facade``: a street along x between two façade planes ``y = +-wy`` whose height steps per
  building (``h0 (1 + hvar (2 hash - 1))`` per segment of length ``seg``), an end façade at
  ``x = ex`` in half the scenes, a ground under a sky; parked cars (boxes), poles (upright
  cylinders), tree crowns (spheres), signs on the façades (quads), small street objects;
  façade textures (windows over plaster or brick).

Environment parameters ``env_prm`` (S, 6): tabletop ``(tx, ty, drop, 0, 0, 0)``; facade
``(wy, h_left, h_right, hvar, seg, ex)``; zeros otherwise (the hash seed of the façade heights
is ``sky_seed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from ...geometry.quaternion import quat_normalize, quat_to_mat
from .config import SCENE_KINDS, TEXTURE_KINDS, ProceduralConfig
from .primitives import (BIG, BLEND, BOX, CYLINDER, NUM_PRM, NUM_SLOTS, QUAD, SLOT_START, SPHERE, TORUS,
                         bounding_radius, const, slot_types)

__all__ = ["Scene", "sample_scenes", "NUM_ENV", "PRIMITIVE_FIELDS", "ENV_TEXTURES", "PRIM_TEXTURES"]

NUM_ENV = 4
ROOM, GROUND_SKY, BACKDROP, TABLETOP, FURNISHED, FACADE = range(len(SCENE_KINDS))
FBM, LEAVES, STRIPES, CHECKER, FIELD, PLAIN, WALLPAPER, FABRIC, BRICK, FACADE_TEX, WOOD = range(len(TEXTURE_KINDS))


def _w(**kw) -> tuple[float, ...]:
    """Texture-kind weights by name (the others 0)."""
    return tuple(float(kw.get(k, 0.0)) for k in TEXTURE_KINDS)


#: Texture weights of the environment surfaces (floor / table, walls / façade, ceiling, room floor
#: under the table / end façade) of the added kinds; the original kinds use
#: ``ProceduralConfig.texture_kinds``.
ENV_TEXTURES: dict[int, tuple[tuple[float, ...], ...]] = {
    TABLETOP: (_w(plain=0.65, wood=0.15, fabric=0.1, stripes=0.05, checker=0.05),
               _w(plain=0.55, wallpaper=0.2, fbm=0.1, brick=0.05, fabric=0.05, color_field=0.05),
               _w(plain=1.0),
               _w(wood=0.5, fabric=0.2, checker=0.15, plain=0.15)),
    FURNISHED: (_w(wood=0.5, fabric=0.2, checker=0.2, plain=0.1),
                _w(wallpaper=0.4, plain=0.4, brick=0.08, fbm=0.12),
                _w(plain=0.9, fbm=0.1),
                _w(plain=1.0)),
    FACADE: (_w(plain=0.35, brick=0.3, fbm=0.2, checker=0.15),
             _w(facade=0.85, brick=0.15),
             _w(facade=0.85, brick=0.15),
             _w(facade=0.85, brick=0.15)),
}
#: Texture weights of primitives by (added kind, primitive type); missing entries use
#: ``ProceduralConfig.texture_kinds``.
PRIM_TEXTURES: dict[tuple[int, int], tuple[float, ...]] = {
    (FURNISHED, BOX): _w(wood=0.4, fabric=0.3, plain=0.2, stripes=0.05, checker=0.05),
    (FURNISHED, CYLINDER): _w(plain=0.4, wood=0.2, stripes=0.2, fbm=0.2),
    (FURNISHED, QUAD): _w(color_field=0.25, fbm=0.15, dead_leaves=0.2, stripes=0.1, fabric=0.2, wallpaper=0.1),
    (FURNISHED, BLEND): _w(fabric=0.5, plain=0.3, wood=0.2),
    (FACADE, BOX): _w(plain=0.85, fbm=0.15),
    (FACADE, CYLINDER): _w(plain=0.7, fbm=0.3),
    (FACADE, QUAD): _w(plain=0.4, color_field=0.3, stripes=0.3),
}
#: Physical texture frequencies (cycles per scene unit, log-uniform) of the environment surfaces of
#: the added kinds and of the primitives of furnished rooms and façades (motifs, planks, bricks,
#: storeys at their real size); elsewhere frequencies are relative to the surface's size.
_PHYS_FREQ = {FBM: (1.0, 4.0), LEAVES: (1.0, 4.0), STRIPES: (2.0, 8.0), CHECKER: (1.7, 5.0), FIELD: (0.5, 2.0),
              PLAIN: (0.5, 2.0), WALLPAPER: (2.5, 8.0), FABRIC: (1.7, 5.0), BRICK: (10.0, 15.0),
              FACADE_TEX: (1 / 3.6, 1 / 2.8), WOOD: (5.0, 12.0)}
#: The fields the primitive tracer reads (:func:`.trace.closest_hit`, :func:`.trace.any_hit`).
PRIMITIVE_FIELDS = ("active", "center", "rot", "prm", "bound")


@dataclass
class Scene:
    """S random scenes (all tensors on one device).

    Fields (P = NUM_SLOTS, T = P + NUM_ENV texture / material entries):
      kind: (S,) long, index into SCENE_KINDS.  scale: (S,) characteristic size L.
      focus: (S, 3) point the cameras look at.  room: (S, 3) room half x, half y, height
      (ceiling z).  ground_r, dome_r: (S,) ground disk and dome radii.  env_prm: (S, 6)
      environment parameters of the tabletop and facade kinds (see the module doc).
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
    env_prm: torch.Tensor
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

    def choice_rows(self, shape, table: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        """Like :meth:`choice`, with the weights of each draw a row of ``table`` (R, M): ``row``
        (shape,) long. A row equal to ``weights`` gives exactly :meth:`choice`'s result."""
        w = table[row]
        return (self.u(shape)[..., None] * w.sum(-1, keepdim=True) > torch.cumsum(w, -1)).sum(-1).clamp_max(
            table.shape[-1] - 1)

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


def _yaw(yaw: torch.Tensor) -> torch.Tensor:
    """(...,) yaw angles -> (..., 3, 3) rotations about world z (columns: local axes)."""
    c, s = yaw.cos(), yaw.sin()
    z, o = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], -2)


def _wall_frame(phi: torch.Tensor) -> torch.Tensor:
    """(...,) wall normal angles -> (..., 3, 3) frames of vertical quads: local x horizontal
    along the wall, local y world z, local z the wall normal (cos phi, sin phi, 0)."""
    c, s = phi.cos(), phi.sin()
    z, o = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack([torch.stack([-s, z, c], -1), torch.stack([c, z, s], -1), torch.stack([z, o, z], -1)], -2)


def _light_palette(r: _Rng, shape, lo: torch.Tensor, hi: torch.Tensor, tint) -> torch.Tensor:
    """(*shape, 3, 3) near-uniform light palettes: a grey level in [lo, hi] (broadcastable to
    shape), a per-surface tint of +-``tint`` (broadcastable to shape) per channel, the three
    colours within 3%."""
    g = lo + (hi - lo) * r.u(tuple(shape))
    col = g[..., None] * (1 + tint[..., None] * (2 * r.u(tuple(shape) + (3,)) - 1))
    return (col[..., None, :] * (1 + 0.03 * (2 * r.u(tuple(shape) + (3, 1)) - 1))).clamp(0.02, 1)


def _material_palettes(r: _Rng, shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(*shape, 3, 3) palettes of wood (light, dark grain, mid), brick (brick, varied brick,
    mortar) and façades (wall, bands, window frames)."""
    dev = r.dev
    sh = tuple(shape)
    base = const("wood", (0.62, 0.42, 0.25), torch.float32, (3,), dev) * r.u(sh + (1,), 0.5, 1.3)
    base = (base + 0.03 * r.n(sh + (3,))).clamp(0.03, 1)
    wood = torch.stack([base, base * r.u(sh + (1,), 0.45, 0.75), base * r.u(sh + (1,), 0.8, 1.05)], -2)
    red, yel = const("brick", ((0.55, 0.24, 0.17), (0.78, 0.64, 0.44)), torch.float32, (2, 3), dev).unbind(0)
    b = (red + (yel - red) * r.u(sh + (1,)) ** 2) * r.u(sh + (1,), 0.65, 1.15)
    mortar = r.u(sh + (1,), 0.5, 0.85).expand(*sh, 3)
    brick = torch.stack([b, b * r.u(sh + (3,), 0.75, 1.0), mortar], -2)
    warm = const("warm", (1.05, 1.0, 0.9), torch.float32, (3,), dev)
    wall = r.u(sh + (1,), 0.45, 0.92) * (1 + (warm - 1) * r.u(sh + (1,), -0.5, 1.5))
    frame = torch.where(r.u(sh + (1,)) < 0.6, 0.9, 0.15).expand(*sh, 3)
    facade = torch.stack([wall, wall * r.u(sh + (1,), 0.7, 0.95), frame], -2)
    return wood.clamp(0.02, 1), brick.clamp(0.02, 1), facade.clamp(0.02, 1)


def _kind_table(cfg: ProceduralConfig, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Texture weights of every (scene kind, texture entry) as a (K * T, n_tex) table and the
    (K, T) bool of the entries whose kind is drawn from it (not from ``cfg.texture_kinds``)."""
    K, P, T = len(SCENE_KINDS), NUM_SLOTS, NUM_SLOTS + NUM_ENV
    types = [t for t, n in enumerate(SLOT_START[1:]) for _ in range(n - SLOT_START[t])]
    rows, use = [], []
    for k in range(K):
        for e in range(T):
            w = (ENV_TEXTURES[k][e - P] if k in ENV_TEXTURES and e >= P else
                 PRIM_TEXTURES.get((k, types[e])) if e < P else None)
            rows.append(w if w is not None else tuple(cfg.texture_kinds))
            use.append(w is not None)
    key = f"kindtex{tuple(cfg.texture_kinds)}"
    return (const(key, rows, torch.float32, (K * T, len(TEXTURE_KINDS)), device),
            const("kindtex_use", use, torch.bool, (K, T), device))


def sample_scenes(cfg: ProceduralConfig, S: int, gen: torch.Generator, device) -> Scene:
    """Draw S random scenes with the generator ``gen`` (on ``device``).

    Every kind's quantities are drawn for every scene and selected per scene by kind (fixed
    shapes, no host sync, the same draws whatever the kinds)."""
    r = _Rng(gen, device)
    P, T = NUM_SLOTS, NUM_SLOTS + NUM_ENV
    kind = r.choice((S,), cfg.scene_kinds)
    room_k, ground_k = kind == ROOM, kind == GROUND_SKY
    tab_k, fur_k, fac_k = kind == TABLETOP, kind == FURNISHED, kind == FACADE
    roomy = room_k | fur_k  # the plain room box
    room = torch.stack([r.u((S,), 2.5, 5.0), r.u((S,), 2.5, 5.0), r.u((S,), 2.6, 3.6)], -1)
    # tabletop: a smaller room around a table; z = 0 is the table top, the floor ``drop`` below
    sweep = r.u((S,)) < 0.35
    troom = torch.stack([r.u((S,), 1.8, 4.0), r.u((S,), 1.8, 4.0), r.u((S,), 1.6, 2.6)], -1)
    table = torch.where(sweep[:, None], troom[:, :2], torch.stack([r.u((S,), 0.5, 1.2), r.u((S,), 0.4, 0.9)], -1))
    drop = torch.where(sweep, 0.0, r.u((S,), 0.65, 0.8))
    froom = torch.stack([r.u((S,), 1.6, 3.2), r.u((S,), 1.6, 3.2), r.u((S,), 2.4, 3.0)], -1)
    room = torch.where(tab_k[:, None], troom, torch.where(fur_k[:, None], froom, room))
    # facade: street half width, façade heights (left, right), variation, building length, end
    wy = r.u((S,), 4.0, 9.0)
    fh = r.u((S, 2), 6.0, 20.0)
    end_x = torch.where(r.u((S,)) < 0.5, r.u((S,), 15.0, 40.0), BIG)
    fprm = torch.stack([wy, fh[:, 0], fh[:, 1], r.u((S,), 0.0, 0.5), r.u((S,), 6.0, 15.0), end_x], -1)
    tprm = torch.cat([table, drop[:, None], torch.zeros(S, 3, device=device)], -1)
    env_prm = torch.where(tab_k[:, None], tprm, torch.where(fac_k[:, None], fprm, 0.0))

    L = torch.where(roomy, 0.8 * room[:, :2].amin(-1), torch.where(ground_k, r.u((S,), 3.0, 7.0), r.u((S,), 0.8, 1.6)))
    L = torch.where(tab_k, r.u((S,), 0.12, 0.35), torch.where(fac_k, wy, L))
    ground_r = torch.where(fac_k, 80.0, 12.0 * L)
    dome_r = r.u((S,), 5.0, 8.0) * L
    focus = torch.zeros(S, 3, device=device)
    fz = torch.where(roomy, 1.0, torch.where(ground_k, 0.15, 0.3) * L)
    # façades: half the scenes look at a building front (focus on a façade), the others along
    # the street at eye level
    front = r.u((S,)) < 0.5
    side = torch.where(r.u((S,)) < 0.5, 1.0, -1.0)
    fz = torch.where(tab_k, 0.35 * L, torch.where(fac_k, torch.where(front, r.u((S,), 2.0, 7.0), 1.6), fz))
    focus[:, 1] = torch.where(fac_k & front, side * (wy - 0.05), 0.0)
    focus[:, 2] = fz

    # primitives: count, sizes, shapes, poses
    n = r.int((S,), *cfg.num_primitives)
    n_obj, n_clut = r.int((S,), 1, 5), r.int((S,), 0, 3)
    n = torch.where(tab_k, n_obj + n_clut, n)
    ptype = slot_types(device)
    # tabletop objects are never flat quads (ranked last)
    rank = (r.u((S, P)) + torch.where(tab_k[:, None] & (ptype == QUAD), 2.0, 0.0)).argsort(-1).argsort(-1)
    active = rank < n[:, None]
    # furnished rooms: most furniture (boxes) and pictures / rugs (quads) present
    fu = r.u((S, P))
    active = torch.where(fur_k[:, None] & (ptype == BOX), fu < 0.85, torch.where(
        fur_k[:, None] & (ptype == QUAD), fu < 0.7, active))
    size_rel = torch.where(kind == BACKDROP, 0.3, 0.17)[:, None] * r.logu((S, P), 0.5, 1.8)
    size_rel = torch.where(tab_k[:, None], torch.where(rank < n_obj[:, None], r.u((S, P), 0.35, 0.75),
                                                       r.u((S, P), 0.12, 0.3)), size_rel)
    s = L[:, None] * size_rel
    # furnished rooms: clutter; blends are cushions and armchairs
    s = torch.where(fur_k[:, None], torch.where(ptype == BLEND, r.u((S, P), 0.2, 0.45), r.u((S, P), 0.06, 0.22)), s)
    s = torch.where(fac_k[:, None], r.u((S, P), 0.25, 0.7), s)  # street objects (tori, blends)
    prm = _shape_params(r, S, s)
    rot = quat_to_mat(quat_normalize(r.n((S, P, 4))))
    # tabletop: 60% of the parts stand upright (yaw only) on their base
    upright_t = tab_k[:, None] & (r.u((S, P)) < 0.6)
    rot = torch.where(upright_t[..., None, None], _yaw(r.u((S, P), 0, 2 * math.pi)), rot)
    # positions: rooms fill the floor, others a disk of radius L around the focus
    bound = bounding_radius(ptype.expand(S, P), prm)
    ang, rad = r.u((S, P), 0, 2 * math.pi), L[:, None] * r.u((S, P)).sqrt()
    xy = torch.stack([rad * ang.cos(), rad * ang.sin()], -1)
    xy_room = (r.u((S, P, 2), -1, 1) * (room[:, None, :2] - 0.3 - 0.5 * bound[..., None]).clamp_min(0.05))
    xy = torch.where(room_k[:, None, None], xy_room, xy)
    resting = r.u((S, P)) < 0.7
    top = torch.where(room_k, room[:, 2], 1.2 * L)[:, None]
    z_float = bound + r.u((S, P)) * (top - 2 * bound).clamp_min(0)
    z = torch.where(resting, bound * r.u((S, P), 0.25, 0.9), z_float)
    # tabletop: the object's parts within 0.45 L of the centre (15% raised on the others), small items
    # 1.6-3 L away on the table
    obj = rank < n_obj[:, None]
    rad_t = L[:, None] * torch.where(obj, 0.45 * r.u((S, P)).sqrt(), r.u((S, P), 1.6, 3.0))
    xy_t = torch.stack([rad_t * ang.cos(), rad_t * ang.sin()], -1)
    xy_t = torch.minimum(torch.maximum(xy_t, -table[:, None] + 0.05), table[:, None] - 0.05)
    stack = obj & (r.u((S, P)) < 0.15)
    z_t = torch.where(stack, bound * r.u((S, P), 0.25, 0.9) + L[:, None] * r.u((S, P), 0.1, 0.4),
                      bound * r.u((S, P), 0.3, 0.9))
    # upright parts rest on their base: half height of boxes and cylinders, radius of spheres,
    # tube radius of tori (lying flat); blends sink a little
    base = torch.where(ptype == BOX, prm[..., 2], torch.where((ptype == CYLINDER) | (ptype == TORUS), prm[..., 1],
                       torch.where(ptype == SPHERE, prm[..., 0], 0.7 * bound)))
    z_t = torch.where(upright_t & ~stack, base, z_t)
    xy = torch.where(tab_k[:, None, None], xy_t, xy)
    z = torch.where(tab_k[:, None], z_t, z)
    center = torch.cat([xy, z[..., None]], -1)
    fur = _furnish(r, S, room, prm, center, rot, active)
    fac = _street(r, S, wy, prm, center, rot)
    sel = lambda a, b, c_: torch.where(fur_k.view(-1, *([1] * (a.dim() - 1))), b, torch.where(  # noqa: E731
        fac_k.view(-1, *([1] * (a.dim() - 1))), c_, a))
    prm, center, rot = sel(prm, fur[0], fac[0]), sel(center, fur[1], fac[1]), sel(rot, fur[2], fac[2])
    bound = bounding_radius(ptype.expand(S, P), prm)

    # textures and materials: primitives, then the four environment surfaces
    tex_kind = r.choice((S, T), cfg.texture_kinds)
    table_w, use = _kind_table(cfg, device)
    row = kind[:, None] * T + torch.arange(T, device=device)
    tex_kind = torch.where(use[kind], r.choice_rows((S, T), table_w, row), tex_kind)
    sizes = torch.cat([s, L[:, None].expand(S, NUM_ENV) * 0.5], 1)
    tex_freq = r.logu((S, T), 1.0, 6.0) / sizes
    lo_hi = const("physfreq", [_PHYS_FREQ[k] for k in range(len(TEXTURE_KINDS))], torch.float32,
                  (len(TEXTURE_KINDS), 2), device).log()
    lh = lo_hi[tex_kind]
    phys = torch.exp(lh[..., 0] + (lh[..., 1] - lh[..., 0]) * r.u((S, T)))
    is_env = torch.arange(T, device=device) >= P
    use_phys = (tab_k[:, None] & is_env) | (fur_k | fac_k)[:, None]
    tex_freq = torch.where(use_phys, phys, tex_freq)
    tex_seed = torch.randint(0, 2 ** 30, (S, T), generator=gen, device=device, dtype=torch.int32)
    palette = _palette(r, (S, T))
    wood, brick, facade = _material_palettes(r, (S, T))
    # light, near-uniform palettes for plain environment surfaces of the added kinds: bright
    # tables, walls and ceilings of tabletops, painted rooms, dark asphalt
    lo = torch.where(tab_k, 0.78, torch.where(fac_k, 0.18, 0.6))[:, None]
    hi = torch.where(tab_k, 0.97, torch.where(fac_k, 0.45, 0.95))[:, None]
    light = _light_palette(r, (S, T), lo, hi, torch.where(tab_k, 0.03, 0.08)[:, None])
    new_env = (tab_k | fur_k | fac_k)[:, None] & is_env
    # street ground: near-grey palettes (asphalt, paving)
    grey = palette.mean(-1, keepdim=True)
    street = (grey + 0.2 * (palette - grey)) * r.u((S, T, 1, 1), 0.35, 0.8)
    palette = torch.where((fac_k[:, None] & (torch.arange(T, device=device) == P))[..., None, None], street, palette)
    tk = tex_kind[..., None, None]
    palette = torch.where(tk == WOOD, wood, torch.where(tk == BRICK, brick, torch.where(tk == FACADE_TEX, facade, palette)))
    palette = torch.where(new_env[..., None, None] & (tk == PLAIN), light, palette)
    # tabletop table and walls in other textures: light, washed-out colours (tablecloths, paint)
    washed = 1 - (1 - palette) * r.u((S, T, 1, 1), 0.15, 0.5)
    tw = tab_k[:, None] & ((torch.arange(T, device=device) == P) | (torch.arange(T, device=device) == P + 1))
    palette = torch.where((tw[..., None] & (tex_kind != WOOD)[..., None] & (tex_kind != PLAIN)[..., None])[..., None],
                          washed, palette)
    # wallpaper on those walls: a light ground with the palette's motif colours
    wp = new_env[..., None] & (tex_kind == WALLPAPER)[..., None]
    palette = torch.cat([torch.where(wp, light[..., 0, :], palette[..., 0, :])[..., None, :], palette[..., 1:, :]], -2)
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

    # lights: point lights under a room's ceiling, else directional (sun-like; high above a table)
    nl = r.int((S,), *cfg.num_lights)
    light_point = roomy
    el01 = r.u((S, 2))
    el = torch.where(tab_k[:, None], 35.0 + 45.0 * el01, 20.0 + 50.0 * el01) * (math.pi / 180)
    az = r.u((S, 2), 0, 2 * math.pi)
    dirs = torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], -1)
    pos = torch.stack([r.u((S, 2), -0.6, 0.6) * room[:, None, 0], r.u((S, 2), -0.6, 0.6) * room[:, None, 1],
                       0.88 * room[:, None, 2].expand(S, 2)], -1)
    light_vec = torch.where(light_point[:, None, None], pos, dirs)
    inten = torch.stack([r.u((S,), 0.8, 1.2), r.u((S,), 0.3, 0.6)], -1) * torch.where(light_point, 1.2, 1.0)[:, None]
    tint = (1 + 0.1 * r.n((S, 2, 3))).clamp(0.7, 1.3)
    light_col = inten[..., None] * tint
    light_col[:, 1] *= (nl >= 2)[:, None]
    ambient = r.u((S,), *cfg.ambient)
    ambient = torch.where(tab_k, r.u((S,), *cfg.tabletop_ambient),
                          torch.where(fur_k, ambient + 0.05, torch.where(fac_k, r.u((S,), 0.15, 0.35), ambient)))
    return Scene(kind=kind, scale=L, focus=focus, room=room, ground_r=ground_r, dome_r=dome_r, env_prm=env_prm,
                 active=active, center=center, rot=rot, prm=prm, bound=bound, tex_kind=tex_kind,
                 tex_freq=tex_freq, tex_seed=tex_seed, palette=palette, tex_dir=tex_dir, ks=ks,
                 shin=shin, sky_zenith=sky_zenith, sky_horizon=sky_horizon, cloud=cloud,
                 sky_seed=sky_seed, light_point=light_point, light_vec=light_vec,
                 light_col=light_col, ambient=ambient)


def _sl(t: int) -> slice:
    return slice(SLOT_START[t], SLOT_START[t + 1])


def _furnish(r: _Rng, S: int, room: torch.Tensor, prm: torch.Tensor, center: torch.Tensor, rot: torch.Tensor,
             active: torch.Tensor):
    """Furnished rooms: (prm, center, rot) of all slots (computed for every scene).

    Boxes: furniture, back to a wall (or 25% free-standing), resting on the floor, yaw aligned;
    quads: pictures on the walls (70%) or rugs on the floor; spheres, tori, blends, cylinders:
    clutter and cushions resting on a random piece of furniture's top (60%, if that box is
    present) or on the floor."""
    P, dev = NUM_SLOTS, room.device
    prm, center, rot = prm.clone(), center.clone(), rot.clone()
    rx, ry, rz = room[:, 0, None], room[:, 1, None], room[:, 2, None]
    # furniture: half extents along the wall, depth, height
    nb = SLOT_START[BOX + 1] - SLOT_START[BOX]
    a = torch.stack([r.u((S, nb), 0.3, 1.0), r.u((S, nb), 0.2, 0.5), r.u((S, nb), 0.2, 0.9)], -1)
    wall = r.int((S, nb), 0, 3)  # +x, -x, +y, -y
    free = r.u((S, nb)) < 0.25
    along_x = wall >= 2  # walls at y = +-ry run along x
    half = torch.where(along_x, rx, ry)
    t = r.u((S, nb), -1, 1) * (half - a[..., 0] - 0.1).clamp_min(0.0)
    off = torch.where(along_x, ry, rx) - a[..., 1] - 0.02
    sgn = torch.where(wall % 2 == 0, 1.0, -1.0)
    bx = torch.where(along_x, t, sgn * off)
    by = torch.where(along_x, sgn * off, t)
    yaw = torch.where(along_x, 0.0, math.pi / 2) + (math.pi / 180) * r.u((S, nb), -2.0, 2.0)
    fx = r.u((S, nb), -0.5, 0.5) * rx
    fy = r.u((S, nb), -0.5, 0.5) * ry
    fyaw = r.int((S, nb), 0, 3).float() * (math.pi / 2) + (math.pi / 180) * r.u((S, nb), -8.0, 8.0)
    bc = torch.stack([torch.where(free, fx, bx), torch.where(free, fy, by), a[..., 2]], -1)
    sb = _sl(BOX)
    prm[:, sb, :3] = a
    center[:, sb] = bc
    rot[:, sb] = _yaw(torch.where(free, fyaw, yaw))
    # quads: pictures (vertical, 1.6-2.4 cm off a wall) or rugs (flat, 4-12 mm above the floor), each
    # quad slot at its own offset
    nq = SLOT_START[QUAD + 1] - SLOT_START[QUAD]
    pic = r.u((S, nq)) < 0.7
    qw = r.int((S, nq), 0, 3)
    qx_along = qw >= 2
    qh = torch.stack([r.u((S, nq), 0.15, 0.6), r.u((S, nq), 0.15, 0.45)], -1)
    qt = r.u((S, nq), -1, 1) * (torch.where(qx_along, rx, ry) - qh[..., 0] - 0.1).clamp_min(0.0)
    lift = 0.004 * (1 + torch.arange(nq, device=dev))  # distinct per slot: overlapping quads never coplanar
    qoff = torch.where(qx_along, ry, rx) - 0.012 - lift
    qs = torch.where(qw % 2 == 0, 1.0, -1.0)
    qz = torch.minimum(r.u((S, nq), 1.1, 1.9), rz - qh[..., 1] - 0.1)
    pc = torch.stack([torch.where(qx_along, qt, qs * qoff), torch.where(qx_along, qs * qoff, qt), qz], -1)
    phi = torch.where(qx_along, math.pi / 2, 0.0)
    rug_h = torch.stack([r.u((S, nq), 0.5, 1.3), r.u((S, nq), 0.4, 1.0)], -1)
    rug_c = torch.stack([r.u((S, nq), -0.4, 0.4) * rx, r.u((S, nq), -0.4, 0.4) * ry, lift.expand(S, nq)], -1)
    sq = _sl(QUAD)
    prm[:, sq, :2] = torch.where(pic[..., None], qh, rug_h)
    center[:, sq] = torch.where(pic[..., None], pc, rug_c)
    rot[:, sq] = torch.where(pic[..., None, None], _wall_frame(phi), _yaw(r.u((S, nq), 0, math.pi)))
    # clutter: on a random box's top (within 0.7 of its half extents) if that box is present, or
    # on the floor
    bound = bounding_radius(slot_types(dev).expand(S, P), prm)
    pick = r.int((S, P), 0, nb - 1)
    bcs, bas = bc.gather(1, pick[..., None].expand(S, P, 3)), a.gather(1, pick[..., None].expand(S, P, 3))
    byaw = torch.where(free, fyaw, yaw).gather(1, pick)
    lx, ly = r.u((S, P), -0.7, 0.7) * bas[..., 0], r.u((S, P), -0.7, 0.7) * bas[..., 1]
    c, s_ = byaw.cos(), byaw.sin()
    on_top = torch.stack([bcs[..., 0] + c * lx - s_ * ly, bcs[..., 1] + s_ * lx + c * ly,
                          2 * bas[..., 2] + 0.85 * bound], -1)
    floor = torch.stack([r.u((S, P), -0.8, 0.8) * rx, r.u((S, P), -0.8, 0.8) * ry, 0.85 * bound], -1)
    up = (r.u((S, P)) < 0.6) & active[:, _sl(BOX)].gather(1, pick)
    cl = torch.where(up[..., None], on_top, floor)
    upright = _yaw(r.u((S, P), 0, 2 * math.pi))
    for tt in (SPHERE, CYLINDER, TORUS, BLEND):
        st = _sl(tt)
        center[:, st] = cl[:, st]
        if tt in (CYLINDER, BLEND):
            rot[:, st] = upright[:, st]
    # cylinders: upright vases and lamps resting on their base
    sc = _sl(CYLINDER)
    prm[:, sc, 1] = prm[:, sc, 1] * 1.5
    center[:, sc, 2] = cl[:, sc, 2] - 0.85 * bound[:, sc] + prm[:, sc, 1]
    return prm, center, rot


def _street(r: _Rng, S: int, wy: torch.Tensor, prm: torch.Tensor, center: torch.Tensor, rot: torch.Tensor):
    """Streets: (prm, center, rot) of all slots. Boxes: parked cars along the kerbs; cylinders:
    poles on the pavements; spheres: tree crowns (or bushes); quads: signs on the façades; tori
    and blends: small street objects on the pavements."""
    P = NUM_SLOTS
    prm, center, rot = prm.clone(), center.clone(), rot.clone()
    w = wy[:, None]
    x = r.u((S, P), -25.0, 25.0)
    side = torch.where(r.u((S, P)) < 0.5, 1.0, -1.0)
    kerb = side * (w - r.u((S, P), 1.8, 3.0))
    pave = side * (w - r.u((S, P), 0.4, 1.2))
    up = _yaw(r.u((S, P), 0, 2 * math.pi))
    sb = _sl(BOX)
    nb = SLOT_START[BOX + 1] - SLOT_START[BOX]
    car = torch.stack([r.u((S, nb), 1.9, 2.4), r.u((S, nb), 0.8, 0.95), r.u((S, nb), 0.55, 0.8)], -1)
    prm[:, sb, :3] = car
    center[:, sb] = torch.stack([x[:, sb], kerb[:, sb], car[..., 2] + 0.15], -1)
    rot[:, sb] = _yaw(torch.where(r.u((S, nb)) < 0.5, 0.0, math.pi) + (math.pi / 180) * r.u((S, nb), -3.0, 3.0))
    sc = _sl(CYLINDER)
    nc = SLOT_START[CYLINDER + 1] - SLOT_START[CYLINDER]
    pole = torch.stack([r.u((S, nc), 0.05, 0.15), r.u((S, nc), 1.2, 3.0)], -1)
    prm[:, sc, :2] = pole
    center[:, sc] = torch.stack([x[:, sc], pave[:, sc], pole[..., 1]], -1)
    rot[:, sc] = up[:, sc]
    ss = _sl(SPHERE)
    ns = SLOT_START[SPHERE + 1] - SLOT_START[SPHERE]
    crown = r.u((S, ns)) < 0.6
    # inside the street: a crown never reaches past its façade plane
    rs = torch.minimum(torch.where(crown, r.u((S, ns), 1.0, 2.5), r.u((S, ns), 0.4, 0.9)),
                       w - kerb[:, ss].abs() - 0.2)
    prm[:, ss, 0] = rs
    center[:, ss] = torch.stack([x[:, ss], kerb[:, ss], torch.where(crown, rs + r.u((S, ns), 2.0, 3.5), 0.7 * rs)], -1)
    sq = _sl(QUAD)
    nq = SLOT_START[QUAD + 1] - SLOT_START[QUAD]
    prm[:, sq, :2] = torch.stack([r.u((S, nq), 0.8, 3.0), r.u((S, nq), 0.3, 0.9)], -1)
    center[:, sq] = torch.stack([x[:, sq], side[:, sq] * (w - 0.08), r.u((S, nq), 2.6, 4.5)], -1)
    rot[:, sq] = _wall_frame(torch.full((S, nq), math.pi / 2, device=wy.device))
    for tt in (TORUS, BLEND):
        st = _sl(tt)
        b = bounding_radius(slot_types(wy.device)[st].expand(S, -1), prm[:, st])
        y = side[:, st] * (w - b - r.u((S, st.stop - st.start), 0.1, 0.6))
        center[:, st] = torch.stack([x[:, st], y, 0.85 * b], -1)
        rot[:, st] = up[:, st]
    return prm, center, rot
