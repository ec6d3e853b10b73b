"""Surface attributes (normals, texture points) and Lambert + Phong shading with shadow rays.

After the closest hit is known for every primary ray, each pixel gathers its primitive's (or
environment surface's) frame and parameters, computes the exact normal (analytic, or the SDF
gradient for tori and blends), evaluates the solid texture at the hit point in that surface's
frame, and is lit by 1-2 lights. Each light casts one shadow ray per pixel that faces it
against the primitives (the environment casts no shadows, so a closed room can have sun-like
light).

Grouped, not dense (the generator is bound by GPU elementwise work, so no pixel pays for a
formula it does not use; a few host syncs read the group sizes): pixels are sorted once by
class (each primitive type, environment, sky) and each class computes only its own normal;
textures are grouped by kind (:func:`.textures.evaluate_texture`); the sky is evaluated on sky
pixels only; shadow rays are traced only for (pixel, light) pairs with the light present and
the pixel facing it, packed into blocks per (scene, light) (:func:`_shadow_visible`).
"""

from __future__ import annotations

import torch
from torch.profiler import record_function

from .primitives import (BIG, BLEND, BOX, CYLINDER, NUM_PRM, NUM_SLOTS, QUAD, SPHERE, TORUS, analytic_normal,
                         group_by, slot_types)
from .scene import BACKDROP, FACADE, PRIMITIVE_FIELDS, TABLETOP, Scene
from .sdf import NUM_FAMILIES, family, family_normal, sdf_normal
from .static import Budget, with_sink
from .textures import evaluate_texture, sky_color
from .trace import any_hit

__all__ = ["surface", "shade"]

_ENV, _SKY = 6, 7  # surface classes after the six primitive types


def _env_normal(p, e, kind, room):
    """Environment normals (facing inside). p: (N, 3) world points; e: (N,) surface 0-3;
    kind: (N,) scene kind; room: (N, 3)."""
    px, py, _ = p.unbind(-1)
    zero = torch.zeros_like(px)
    ne = torch.stack([zero, zero, torch.where(e == 2, -1.0, 1.0)], -1)
    xw = (px.abs() / room[:, 0]) >= (py.abs() / room[:, 1])
    sg = lambda v: -torch.where(v < 0, -1.0, 1.0)  # noqa: E731
    wall = torch.stack([torch.where(xw, sg(px), zero), torch.where(xw, zero, sg(py)), zero], -1)
    dome = -p / p.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    side = torch.where((kind == BACKDROP)[:, None], dome, wall)
    n = torch.where((e == 1)[:, None], side, ne)
    # façades: y = +-wy (surfaces 1, 2), x = ex (3); the ground (0) keeps +z
    fac = torch.stack([torch.where(e == 3, -1.0, 0.0), torch.where(e == 1, -1.0, torch.where(e == 2, 1.0, 0.0)),
                       torch.where(e == 0, 1.0, 0.0)], -1)
    return torch.where((kind == FACADE)[:, None], fac, n)


def _env_tex_point(p, e, kind):
    """Texture points of environment pixels: the world point, exactly on its plane for planar
    surfaces that are lattice planes of the cell textures or constant in one coordinate (floors
    and table tops z = 0, façades y = 0 or x = 0), else floor(coordinate) flips with float noise."""
    x, y, z = p.unbind(-1)
    fac = kind == FACADE
    z = torch.where((e == 0) | ((e == 3) & (kind == TABLETOP)), 0.0, z)
    y = torch.where(fac & ((e == 1) | (e == 2)), 0.0, y)
    x = torch.where(fac & (e == 3), 0.0, x)
    return torch.stack([x, y, z], -1)


def _axis(n: torch.Tensor) -> torch.Tensor:
    """(N,) long: the dominant axis of normals n (N, 3) (surface patterns' plane)."""
    return n.abs().argmax(-1)


def surface(scene: Scene, o: torch.Tensor, d: torch.Tensor, t: torch.Tensor, slot: torch.Tensor,
            env: torch.Tensor, budget: Budget | None = None):
    """Hit points, world normals and albedo of primary rays, grouped by surface class.

    o: (S, V, 1, 3) camera centres; d: (S, V, M, 3) unit directions; t: (S, V, M) hit
    distance; slot: (S, V, M) primitive slot or -1; env: (S, V, M) environment surface or -1.
    Returns p, n: (N, 3) (N = S*V*M) world points and unit normals facing the ray (zeros on
    sky), albedo: (N, 3), entry: (N,) long flat index into the (S, NUM_SLOTS + NUM_ENV)
    texture / material tables, hit: (N,) bool, sky: (K,) long indices of the sky pixels.
    Pixels are sorted once by class (primitive type, environment, sky; one host sync) and each
    class computes only its own normal formula; textures are grouped by kind the same way.
    With a ``budget``: the static path (:func:`_surface_static`); ``sky`` is then a
    :class:`.static.Selection` of the sky pixels.
    """
    S, V, M = t.shape
    N, P, T = S * V * M, NUM_SLOTS, scene.tex_kind.shape[1]
    dev = t.device
    df, tf, sl, ev = d.reshape(N, 3), t.reshape(N), slot.reshape(N), env.reshape(N)
    si = torch.arange(S, device=dev).repeat_interleave(V * M)
    prim = sl >= 0
    hit = prim | (ev >= 0)
    p = torch.addcmul(o.expand(S, V, M, 3).reshape(N, 3), df, torch.where(hit, tf, 0.0)[:, None])
    cls = torch.where(prim, slot_types(dev)[sl.clamp_min(0)], torch.where(hit, _ENV, _SKY))
    entry = si * T + torch.where(prim, sl, P + ev.clamp_min(0))
    if budget is not None:
        return _surface_static(scene, p, df, sl, ev, si, cls, entry, hit, budget)
    order, start = group_by(cls, _SKY + 1)
    n = torch.zeros_like(p)
    tp = p.clone()  # texture frame: primitive local, world for the environment
    axis = torch.zeros_like(sl)  # dominant normal axis in the texture frame
    npr = start[_ENV]
    if npr:  # all primitive pixels (classes 0-5, contiguous in ``order``): frames gathered once
        idx = order[:npr]
        e = si[idx] * P + sl[idx]
        R = scene.rot.reshape(-1, 3, 3)[e]
        pr = scene.prm.reshape(-1, NUM_PRM)[e]
        pl = ((p[idx] - scene.center.reshape(-1, 3)[e])[:, None] @ R)[:, 0]  # R^T (p - c)
        nl = torch.empty_like(pl)
        for k0, k1 in ((SPHERE, SPHERE), (BOX, BOX), (CYLINDER, CYLINDER), (QUAD, QUAD), (TORUS, BLEND)):
            a, b = start[k0], start[k1 + 1]
            if a == b:
                continue
            if k0 == TORUS:
                op = torch.where(cls[idx[a:b]] == TORUS, 4, pr[a:b, 8].round().long())
                nl[a:b] = sdf_normal(pl[a:b], pr[a:b], op, 1e-3 * scene.bound.reshape(-1)[e[a:b]])
            else:
                nl[a:b] = analytic_normal(k0, pl[a:b], pr[a:b])
        n[idx] = (R @ nl[:, :, None])[..., 0]  # R n
        axis[idx] = _axis(nl)
        a, b = start[QUAD], start[QUAD + 1]
        if a < b:  # on the plane: exactly z = 0, else floor(z) flips with float noise (cell textures)
            pl[a:b, 2] = 0.0
        tp[idx] = pl
    idx = order[start[_ENV]:start[_SKY]]
    if idx.numel():
        s_e = si[idx]
        k_e = scene.kind[s_e]
        ne = _env_normal(p[idx], ev[idx], k_e, scene.room[s_e])
        n[idx] = ne
        axis[idx] = _axis(ne)
        # floors are the plane z = 0 (façades y or x = 0): make it exact (as for quads)
        tp[idx] = _env_tex_point(p[idx], ev[idx], k_e)
    albedo = torch.zeros_like(p)
    idx = order[:start[_SKY]]
    if idx.numel():
        albedo[idx] = _albedo(scene, tp[idx], entry[idx], axis=axis[idx])
    return p, _facing(n, df), albedo, entry, hit, order[start[_SKY]:]


def _facing(n: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Normals n (N, 3) made unit and turned against the rays d (N, 3)."""
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.where(((n * d).sum(-1) > 0)[:, None], -n, n)


def _albedo(scene: Scene, tp: torch.Tensor, entry: torch.Tensor, **static) -> torch.Tensor:
    """Textures at points tp (N, 3) of the surfaces ``entry`` (N,) (``static``: budget, valid,
    axis: the dominant normal axis in the texture frame, for the surface patterns)."""
    return evaluate_texture(scene.tex_kind.reshape(-1), tp, scene.tex_freq.reshape(-1), scene.tex_seed.reshape(-1),
                            scene.palette.reshape(-1, 3, 3), scene.tex_dir.reshape(-1, 3), entry=entry, **static)


def _surface_static(scene: Scene, p, df, sl, ev, si, cls, entry, hit, budget: Budget):
    """:func:`surface`'s static path on flat pixels (N,): analytic and environment normals are
    computed densely (a few elementwise passes per formula), torus / blend normals on a
    fixed-capacity selection per SDF family (``surface/normal{family}``), textures per kind
    (:func:`.textures.evaluate_texture` with the budget); the returned sky is a selection of the
    sky pixels (``surface/sky``). Same values as the grouped path while no capacity overflows
    (a pixel dropped by an overflow gets a zero normal, or albedo, or sky colour)."""
    N = p.shape[0]
    prim = sl >= 0
    e = si * NUM_SLOTS + sl.clamp_min(0)  # non-primitive pixels read slot 0: finite, discarded
    R = scene.rot.reshape(-1, 3, 3)[e]
    pr = scene.prm.reshape(-1, NUM_PRM)[e]
    pl = ((p - scene.center.reshape(-1, 3)[e])[:, None] @ R)[:, 0]  # R^T (p - c)
    nl = analytic_normal(SPHERE, pl, pr)
    for typ in (BOX, CYLINDER, QUAD):
        nl = torch.where((cls == typ)[:, None], analytic_normal(typ, pl, pr), nl)
    op = torch.where(cls == TORUS, 4, pr[:, 8].round().long())
    key = torch.where((cls == TORUS) | (cls == BLEND), family(op), NUM_FAMILIES)
    nl = with_sink(nl)
    h = 1e-3 * scene.bound.reshape(-1)[e]
    names = [f"surface/normal{f}" for f in range(NUM_FAMILIES)]
    for f, sel in enumerate(budget.groups(key, names, N)):
        i = sel.idx
        sel.put(nl, family_normal(f, pl[i], pr[i], op[i], h[i]))
    k_s = scene.kind[si]
    n_env = _env_normal(p, ev, k_s, scene.room[si])
    n = torch.where(prim[:, None], (R @ nl[:N, :, None])[..., 0], torch.where(hit[:, None], n_env, 0.0))
    axis = torch.where(prim, _axis(nl[:N]), _axis(n_env))
    # texture frame: primitive local (quads exactly on their plane), world for the environment
    # (floors exactly on z = 0, façades on y or x = 0)
    tpl = torch.cat([pl[:, :2], torch.where(cls == QUAD, 0.0, pl[:, 2])[:, None]], 1)
    tp = torch.where(prim[:, None], tpl, _env_tex_point(p, ev, k_s))
    albedo = _albedo(scene, tp, entry, budget=budget, valid=hit, axis=axis)
    sky = budget.select(~hit, "surface/sky", N)
    return p, _facing(n, df), albedo, entry, hit, sky


def _light_rays(p, n, t, hit, light_vec, light_point, light_col, scale):
    """Shadow rays. p, n: (S, R, 3); t: (S, R); hit: (S, R). Returns ldir (S, 2, R, 3) towards
    the lights, dist (S, 2, R), ndl (S, 2, R), test (S, 2, R) bool, origin (S, 1, R, 3), tmax."""
    lv = light_vec[:, :, None, :]
    to_l = lv - p[:, None]
    dist_p = to_l.norm(dim=-1).clamp_min(1e-6)
    point = light_point[:, None, None]
    ldir = torch.where(point[..., None], to_l / dist_p[..., None], lv)
    dist = torch.where(point, dist_p, BIG)
    ndl = (n[:, None] * ldir).sum(-1)
    test = hit[:, None] & (ndl > 0) & (light_col.amax(-1) > 0)[:, :, None]
    eps = (1e-3 * scale[:, None] + 5e-4 * torch.where(hit, t, 0.0))[..., None]
    origin = (p + n * eps)[:, None]
    return ldir, dist, ndl, test, origin, torch.where(test, dist, 0.0)


def _combine(d, n, albedo, entry, hit, ldir, dist, ndl, test, vis, light_point, light_col, room, ks, shin,
             ambient):
    """Lambert + Phong with shadows. Shapes (S, R, ...); entry: (S, R) flat material index.
    Returns linear rgb (S, R, 3) in [0, 1] (the caller writes the sky)."""
    point = light_point[:, None, None]
    atten = torch.where(point, 1.5 / (1 + (dist / room[:, 2][:, None, None]) ** 2), 1.0)
    lit = (vis & test).float() * atten  # (S, 2, R)
    col = light_col[:, :, None, :]  # (S, 2, 1, 3)
    diffuse = (lit * ndl.clamp_min(0))[..., None].mul(col).sum(1)
    refl = 2 * ndl[..., None] * n[:, None] - ldir
    rv = (refl * -d[:, None]).sum(-1).clamp_min(0)
    k, sh = ks.reshape(-1)[entry], shin.reshape(-1)[entry]
    spec = (lit * rv ** sh[:, None])[..., None].mul(col).sum(1) * k[..., None]
    # albedo and sky colours are display-referred: shade in linear light (exponent 2.2); the
    # generator encodes the result back with the per-view gamma
    rgb = albedo.clamp_min(0) ** 2.2 * (ambient[:, None, None] + diffuse) + spec
    return torch.where(hit[..., None], rgb, 0.0).clamp(0, 1)


def _shadow_visible(scene: Scene, cfg, origin, ldir, test, tmax, block: int = 4096, budget: Budget | None = None):
    """Shadow rays of the tested (pixel, light) pairs only (lit side of a surface, light
    present, not sky). origin: (S, 1, R, 3); ldir: (S, L, R, 3); test, tmax: (S, L, R).

    Each (scene, light) row's tested rays are packed to its front and cut into blocks of
    ``block`` rays; the blocks are traced as a batch of their own (each with its scene; one host
    sync for the block counts), so the work follows the tested rays, wasting less than one
    block per row. Returns vis: (S, L, R) bool (True where not tested). With a ``budget``: the
    static path, every (pixel, light) ray traced at once (untested ones have tmax = 0, so they
    fail the cull) by :func:`.trace.any_hit`'s static path.
    """
    if budget is not None:
        return ~any_hit(scene, origin, ldir, tmax, cfg, budget=budget)
    S, L, R = test.shape
    dev = test.device
    block = min(block, R)
    tf = test.reshape(S * L, R)
    cnt = tf.sum(1)
    nblk = (cnt + block - 1) // block
    K = int(sum(nblk.tolist()))  # sync
    vis = torch.ones(S * L, R + 1, dtype=torch.bool, device=dev)
    if K == 0:
        return vis[:, :R].reshape(S, L, R)
    row = torch.repeat_interleave(torch.arange(S * L, device=dev), nblk, output_size=K)
    j = torch.arange(K, device=dev) - (nblk.cumsum(0) - nblk)[row]
    dest = torch.where(tf, tf.cumsum(1) - 1, R)
    comp = torch.zeros(S * L, R + 1, dtype=torch.long, device=dev).scatter_(
        1, dest, torch.arange(R, device=dev).expand(S * L, R))  # comp[row, k]: the k-th tested ray
    pos = j[:, None] * block + torch.arange(block, device=dev)
    valid = pos < cnt[row][:, None]
    ridx = comp[row[:, None], pos.clamp_max(R)]
    sk = row // L
    o = origin[:, 0][sk[:, None], ridx]
    d = ldir.reshape(S * L, R, 3)[row[:, None], ridx]
    tm = torch.where(valid, tmax.reshape(S * L, R)[row[:, None], ridx], 0.0)
    blocked = any_hit(scene.select(sk, PRIMITIVE_FIELDS), o[:, None], d[:, None], tm[:, None], cfg)[:, 0]
    vis[row[:, None], torch.where(valid, ridx, R)] = ~blocked
    return vis[:, :R].reshape(S, L, R)


def _sky(scene: Scene, d: torch.Tensor, idx: torch.Tensor, R: int) -> torch.Tensor:
    """Linear sky radiance (K, 3) of the pixels idx (K,) (flat over (S, R)) with directions d (S, R, 3)."""
    s = idx // R
    return sky_color(d.reshape(-1, 3)[idx], scene.sky_zenith[s], scene.sky_horizon[s], scene.cloud[s],
                     scene.sky_seed[s]) ** 2.2


def shade(scene: Scene, cfg, o: torch.Tensor, d: torch.Tensor, t: torch.Tensor, slot: torch.Tensor,
          env: torch.Tensor, budget: Budget | None = None):
    """Shaded linear colour of primary rays (before exposure, noise and gamma encoding).

    Shapes as in :func:`surface`. Returns rgb: (S, V, M, 3) linear in [0, 1], n: (S, V, M, 3) world
    normals (zeros on sky), hit: (S, V, M) bool. ``budget``: the static path (:mod:`.static`).
    """
    S, V, M = t.shape
    R = V * M
    with record_function("procedural.surface"):
        p, n, albedo, entry, hit, sky = surface(scene, o, d, t, slot, env, budget)
    p, n, albedo, entry, hit = p.view(S, R, 3), n.view(S, R, 3), albedo.view(S, R, 3), entry.view(S, R), hit.view(S, R)
    df = d.reshape(S, R, 3)
    ldir, dist, ndl, test, origin, tmax = _light_rays(
        p, n, t.reshape(S, R), hit, scene.light_vec, scene.light_point, scene.light_col, scene.scale)
    with record_function("procedural.shadows"):
        vis = _shadow_visible(scene, cfg, origin, ldir, test, tmax, budget=budget)
    rgb = _combine(df, n, albedo, entry, hit, ldir, dist, ndl, test, vis, scene.light_point, scene.light_col,
                   scene.room, scene.ks, scene.shin, scene.ambient).reshape(S * R, 3)
    if budget is not None:
        rgb = sky.put(with_sink(rgb), _sky(scene, df, sky.idx, R))[:S * R]
    elif sky.numel():
        rgb[sky] = _sky(scene, df, sky, R)
    return rgb.reshape(S, V, M, 3), n.reshape(S, V, M, 3), hit.reshape(S, V, M)
