"""Surface attributes (normals, texture points) and Lambert + Phong shading with shadow rays.

After the closest hit is known for every primary ray, each pixel gathers its primitive's (or
environment surface's) frame and parameters, computes the exact normal (analytic, or the SDF
gradient for tori and blends), evaluates the solid texture at the hit point in that surface's
frame, and is lit by 1-2 lights. Each light casts one shadow ray per pixel against the
primitives (the environment casts no shadows, so a closed room can have sun-like light).

Everything is dense over pixels (every normal / texture kind computed, then selected; sky
pixels masked), with no host sync: :func:`_surface`, :func:`_light_rays` and :func:`_combine`
are pure functions that ``torch.compile`` fuses on CUDA. The shadow rays of both lights go
through :func:`.trace.any_hit` at once (a missing second light has ``tmax = 0``: its rays cost
the dense analytic pass only and never reach the sphere tracer).
"""

from __future__ import annotations

import torch
from torch.profiler import record_function

from .primitives import BIG, NUM_SLOTS, TORUS, analytic_normal, maybe_compile, slot_types, use_compile
from .scene import Scene
from .sdf import sdf_normal
from .textures import evaluate_texture, sky_color
from .trace import any_hit

__all__ = ["surface", "shade"]


def _surface(o, d, t, slot, env, ptypes, kind, room, center, rot, prm, bound, tex_kind, tex_freq, tex_seed,
             palette, tex_dir):
    """Dense surface attributes. o: (S, 1, 3); d: (S, R, 3) unit; t, slot, env: (S, R); scene
    tensors (S, ...). Returns p, n (S, R, 3) (n unit, facing the ray, 0 on sky), albedo (S, R, 3),
    tex (S, R) long, hit (S, R) bool."""
    S = t.shape[0]
    si = torch.arange(S, device=t.device)[:, None]
    prim = slot >= 0
    hit = prim | (env >= 0)
    p = o + torch.where(hit, t, 0.0)[..., None] * d
    sl = slot.clamp_min(0)
    R, pr = rot[si, sl], prm[si, sl]  # (S, R, 3, 3), (S, R, NUM_PRM)
    pl = ((p - center[si, sl])[..., None] * R).sum(-2)  # R^T (p - c)
    ptype = ptypes[sl]
    op = torch.where(ptype == TORUS, 4, pr[..., 8].round().long())
    nl = torch.where((ptype >= TORUS)[..., None], sdf_normal(pl, pr, op, 1e-3 * bound[si, sl]),
                     analytic_normal(ptype, pl, pr))
    n_prim = (R * nl[..., None, :]).sum(-1)  # R n
    # environment: floor / ceiling, room walls (the nearest wall's axis), dome
    px, py, pz = p.unbind(-1)
    zero = torch.zeros_like(px)
    e = env.clamp_min(0)
    ne = torch.stack([zero, zero, torch.where(e == 2, -1.0, 1.0)], -1)
    rm = room[:, None]
    xw = (px.abs() / rm[..., 0]) >= (py.abs() / rm[..., 1])
    sg = lambda v: -torch.where(v < 0, -1.0, 1.0)  # noqa: E731
    wall = torch.stack([torch.where(xw, sg(px), zero), torch.where(xw, zero, sg(py)), zero], -1)
    dome = -p / p.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    side = torch.where((kind == 0)[:, None, None], wall, dome)
    n_env = torch.where((e == 1)[..., None], side, ne)
    n = torch.where(prim[..., None], n_prim, torch.where(hit[..., None], n_env, 0.0))
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    n = torch.where(((n * d).sum(-1) > 0)[..., None], -n, n)
    tex = torch.where(prim, slot, NUM_SLOTS + e)
    tp = torch.where(prim[..., None], pl, p)  # texture frame: primitive local, world for the environment
    albedo = evaluate_texture(tex_kind[si, tex], tp, tex_freq[si, tex], tex_seed[si, tex], palette[si, tex],
                              tex_dir[si, tex])
    return p, n, torch.where(hit[..., None], albedo, 0.0), tex, hit


def surface(scene: Scene, o: torch.Tensor, d: torch.Tensor, t: torch.Tensor, slot: torch.Tensor,
            env: torch.Tensor, use_c: bool = False):
    """Hit points, world normals and albedo of primary rays.

    o: (S, V, 1, 3) camera centres; d: (S, V, M, 3) unit directions; t: (S, V, M) hit
    distance; slot: (S, V, M) primitive slot or -1; env: (S, V, M) environment surface or -1.
    Returns p, n: (S, V*M, 3) world points and unit normals facing the ray (zeros on sky),
    albedo: (S, V*M, 3), tex: (S, V*M) long texture / material entry, hit: (S, V*M) bool.
    """
    S, V, M = t.shape
    oo = o.expand(S, V, M, 3).reshape(S, V * M, 3)
    f = lambda x: x.reshape(S, V * M, *x.shape[3:])  # noqa: E731
    return maybe_compile(_surface, use_c)(
        oo, f(d), f(t), f(slot), f(env), slot_types(t.device), scene.kind, scene.room, scene.center, scene.rot,
        scene.prm, scene.bound, scene.tex_kind, scene.tex_freq, scene.tex_seed, scene.palette, scene.tex_dir)


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


def _combine(d, n, albedo, tex, hit, ldir, dist, ndl, test, vis, light_point, light_col, room, ks, shin,
             ambient, sky_zenith, sky_horizon, cloud, sky_seed):
    """Lambert + Phong with shadows, sky elsewhere. Returns linear rgb (S, R, 3) in [0, 1]."""
    S = d.shape[0]
    point = light_point[:, None, None]
    atten = torch.where(point, 1.5 / (1 + (dist / room[:, 2][:, None, None]) ** 2), 1.0)
    lit = (vis & test).float() * atten  # (S, 2, R)
    col = light_col[:, :, None, :]  # (S, 2, 1, 3)
    diffuse = (lit[..., None] * ndl.clamp_min(0)[..., None] * col).sum(1)
    refl = 2 * ndl[..., None] * n[:, None] - ldir
    rv = (refl * -d[:, None]).sum(-1).clamp_min(0)
    si = torch.arange(S, device=d.device)[:, None]
    k, sh = ks[si, tex], shin[si, tex]
    spec = (lit[..., None] * (rv ** sh[:, None])[..., None] * col).sum(1) * k[..., None]
    # albedo and sky colours are display-referred: shade in linear light (exponent 2.2); the
    # generator encodes the result back with the per-view gamma
    rgb = albedo.clamp_min(0) ** 2.2 * (ambient[:, None, None] + diffuse) + spec
    R = d.shape[1]
    ex = lambda x: x[:, None].expand(S, R, *x.shape[1:]).reshape(S * R, *x.shape[1:])  # noqa: E731
    sky = sky_color(d.reshape(-1, 3), ex(sky_zenith), ex(sky_horizon), ex(cloud), ex(sky_seed)) ** 2.2
    return torch.where(hit[..., None], rgb, sky.reshape(S, R, 3)).clamp(0, 1)


def shade(scene: Scene, cfg, o: torch.Tensor, d: torch.Tensor, t: torch.Tensor, slot: torch.Tensor,
          env: torch.Tensor):
    """Shaded linear colour of primary rays (before exposure, noise and gamma encoding).

    Shapes as in :func:`surface`. Returns rgb: (S, V, M, 3) linear in [0, 1], n: (S, V, M, 3) world
    normals (zeros on sky), hit: (S, V, M) bool.
    """
    S, V, M = t.shape
    uc = use_compile(cfg, t)
    with record_function("procedural.surface"):
        p, n, albedo, tex, hit = surface(scene, o, d, t, slot, env, uc)
    df = d.reshape(S, V * M, 3)
    ldir, dist, ndl, test, origin, tmax = maybe_compile(_light_rays, uc)(
        p, n, t.reshape(S, V * M), hit, scene.light_vec, scene.light_point, scene.light_col, scene.scale)
    with record_function("procedural.shadows"):
        vis = ~any_hit(scene, origin, ldir, tmax, cfg)
    rgb = maybe_compile(_combine, uc)(
        df, n, albedo, tex, hit, ldir, dist, ndl, test, vis, scene.light_point, scene.light_col, scene.room,
        scene.ks, scene.shin, scene.ambient, scene.sky_zenith, scene.sky_horizon, scene.cloud, scene.sky_seed)
    return rgb.reshape(S, V, M, 3), n.reshape(S, V, M, 3), hit.reshape(S, V, M)
