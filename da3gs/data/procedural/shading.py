"""Surface attributes (normals, texture points) and Lambert + Phong shading with shadow rays.

After the closest hit is known for every primary ray, each hit pixel gathers its primitive's
(or environment surface's) frame and parameters, computes the exact normal (analytic, or the
SDF gradient for tori and blends), evaluates the solid texture at the hit point in that
surface's frame, and is lit by 1-2 lights. Each light casts one shadow ray per pixel against
the primitives (the environment casts no shadows, so a closed room can have sun-like light).
"""

from __future__ import annotations

import torch
from torch.profiler import record_function

from .primitives import BIG, NUM_SLOTS, TORUS, analytic_normal, slot_types
from .scene import Scene
from .sdf import sdf_normal
from .textures import evaluate_texture, sky_color
from .trace import any_hit

__all__ = ["surface", "shade"]


def surface(scene: Scene, o: torch.Tensor, d: torch.Tensor, t: torch.Tensor, slot: torch.Tensor,
            env: torch.Tensor):
    """Hit points, world normals and albedo of primary rays.

    o: (S, V, 1, 3) camera centres; d: (S, V, M, 3) unit directions; t: (S, V, M) hit
    distance; slot: (S, V, M) primitive slot or -1; env: (S, V, M) environment surface or -1.
    Returns p, n: (S, V*M, 3) world points and unit normals facing the ray (zeros on sky),
    albedo: (S, V*M, 3), tex: (S, V*M) long texture / material entry, hit: (S, V*M) bool.
    """
    S, V, M = t.shape
    N = S * V * M
    dev = t.device
    sidx = torch.arange(S, device=dev).repeat_interleave(V * M)
    of = o.expand(S, V, M, 3).reshape(N, 3)
    df = d.reshape(N, 3)
    slot, env = slot.reshape(N), env.reshape(N)
    prim = slot >= 0
    hit = prim | (env >= 0)
    tf = torch.where(hit, t.reshape(N), 0.0)
    p = of + tf[:, None] * df
    n = torch.zeros_like(p)
    tp = p.clone()  # texture-frame points (primitive local frame; world for the environment)

    ip = prim.nonzero().squeeze(1)
    if ip.numel():
        s_, sl = sidx[ip], slot[ip]
        R, prm = scene.rot[s_, sl], scene.prm[s_, sl]
        pl = ((p[ip] - scene.center[s_, sl])[:, None, :] @ R)[:, 0]
        ptype = slot_types(dev)[sl]
        nl = analytic_normal(ptype, pl, prm)
        js = (ptype >= TORUS).nonzero().squeeze(1)
        if js.numel():
            op = torch.where(ptype[js] == TORUS, 4, prm[js, 8].round().long())
            h = 1e-3 * scene.bound[s_[js], sl[js]]
            nl[js] = sdf_normal(pl[js], prm[js], op, h)
        n[ip] = (R @ nl[:, :, None])[:, :, 0]
        tp[ip] = pl

    ie = (~prim & hit).nonzero().squeeze(1)
    if ie.numel():
        s_, e, pe = sidx[ie], env[ie], p[ie]
        kind = scene.kind[s_]
        ne = torch.zeros_like(pe)
        ne[:, 2] = torch.where(e == 2, -1.0, 1.0)
        rel = pe[:, :2].abs() / scene.room[s_, :2]
        ax = rel.argmax(-1, keepdim=True)
        wall = torch.zeros_like(pe).scatter(-1, ax, -torch.sign(pe.gather(-1, ax)))
        dome = -pe / pe.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        side = torch.where((kind == 0)[:, None], wall, dome)
        n[ie] = torch.where((e == 1)[:, None], side, ne)

    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    n = torch.where(((n * df).sum(-1) > 0)[:, None], -n, n)
    tex = torch.where(prim, slot, NUM_SLOTS + env.clamp_min(0))
    albedo = torch.zeros_like(p)
    ih = hit.nonzero().squeeze(1)
    if ih.numel():
        s_, te = sidx[ih], tex[ih]
        albedo[ih] = evaluate_texture(scene.tex_kind[s_, te], tp[ih], scene.tex_freq[s_, te],
                                      scene.tex_seed[s_, te], scene.palette[s_, te], scene.tex_dir[s_, te])
    f = lambda x: x.reshape(S, V * M, *x.shape[1:])  # noqa: E731
    return f(p), f(n), f(albedo), f(tex), f(hit)


def shade(scene: Scene, cfg, o: torch.Tensor, d: torch.Tensor, t: torch.Tensor, slot: torch.Tensor,
          env: torch.Tensor):
    """Shaded linear colour of primary rays (before exposure, noise and gamma encoding).

    Shapes as in :func:`surface`. Returns rgb: (S, V, M, 3) linear in [0, 1], n: (S, V, M, 3) world
    normals (zeros on sky), hit: (S, V, M) bool.
    """
    S, V, M = t.shape
    with record_function("procedural.surface"):
        p, n, albedo, tex, hit = surface(scene, o, d, t, slot, env)
    df = d.reshape(S, V * M, 3)
    td = torch.where(hit, t.reshape(S, V * M), 0.0)
    # lights: (S, 2, R, 3) directions towards the light and distances
    lv = scene.light_vec[:, :, None, :]
    to_l = lv - p[:, None]
    dist_p = to_l.norm(dim=-1).clamp_min(1e-6)
    point = scene.light_point[:, None, None]
    ldir = torch.where(point[..., None], to_l / dist_p[..., None], lv.expand_as(to_l))
    dist = torch.where(point, dist_p, BIG)
    ndl = (n[:, None] * ldir).sum(-1)
    on = (scene.light_col.amax(-1) > 0)[:, :, None]
    test = hit[:, None] & (ndl > 0) & on
    eps = (1e-3 * scene.scale[:, None] + 5e-4 * td)[..., None]
    origin = (p + n * eps)[:, None]
    tmax = torch.where(test, dist, 0.0)
    with record_function("procedural.shadows"):
        # split samples by light type: directional lights keep one direction per light
        # (S', L, 1, 3), which keeps the local-frame transform and the slab tests small;
        # a second light is traced only if some sample has one
        nl = 2 if bool(on[:, 1].any()) else 1
        vis = torch.ones_like(test)
        for grp in (False, True):
            idx = (scene.light_point == grp).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            dd = ldir[idx, :nl] if grp else scene.light_vec[idx, :nl, None, :]
            vis[idx, :nl] = ~any_hit(scene.select(idx), origin[idx], dd, tmax[idx, :nl], cfg)
    rz = scene.room[:, 2][:, None, None]
    atten = torch.where(point, 1.5 / (1 + (dist / rz) ** 2), 1.0)
    lit = (vis & test).float() * atten  # (S, 2, R)
    col = scene.light_col[:, :, None, :]  # (S, 2, 1, 3)
    diffuse = (lit[..., None] * ndl.clamp_min(0)[..., None] * col).sum(1)
    refl = 2 * ndl[..., None] * n[:, None] - ldir
    rv = (refl * -df[:, None]).sum(-1).clamp_min(0)
    sidx = torch.arange(S, device=t.device)[:, None]
    ks, shin = scene.ks[sidx, tex], scene.shin[sidx, tex]
    spec = (lit[..., None] * (rv ** shin[:, None])[..., None] * col).sum(1) * ks[..., None]
    # albedo and sky colours are display-referred: shade in linear light (exponent 2.2); the
    # generator encodes the result back with the per-view gamma
    rgb = albedo.clamp_min(0) ** 2.2 * (scene.ambient[:, None, None] + diffuse) + spec
    # sky
    sk = (~hit).reshape(-1).nonzero().squeeze(1)
    rgb = rgb.reshape(-1, 3)
    if sk.numel():
        si = torch.arange(S, device=t.device).repeat_interleave(V * M)[sk]
        rgb[sk] = sky_color(df.reshape(-1, 3)[sk], scene.sky_zenith[si], scene.sky_horizon[si],
                            scene.cloud[si], scene.sky_seed[si]) ** 2.2
    return rgb.reshape(S, V, M, 3).clamp(0, 1), n.reshape(S, V, M, 3), hit.reshape(S, V, M)
