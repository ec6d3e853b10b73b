"""Procedural multi-view generator: shapes, reproducibility, exact cross-view geometry, masks.

CPU only, tiny sizes (2 samples x 3 views x 32 x 48).
"""

from __future__ import annotations

import pytest
import torch

from da3gs.data.batch import ViewBatch
from da3gs.data.procedural import (CAMERA_MODES, SCENE_KINDS, TEXTURE_KINDS, ProceduralConfig, ProceduralGenerator,
                                  render)
from da3gs.data.procedural.primitives import NUM_SLOTS, TYPE_NAMES, slot_types
from da3gs.data.procedural.scene import sample_scenes
from da3gs.geometry.conventions import c2w_to_w2c
from da3gs.geometry.rays import ray_directions, unproject_depth

B, V, H, W = 2, 3, 32, 48


@pytest.fixture(scope="module")
def gen():
    # pinhole cameras: the exact re-projection checks below go through K (lens distortion bends
    # the rays, K is then its pinhole approximation: see test_lens_distortion_bends_rays_exactly)
    return ProceduralGenerator(ProceduralConfig(seed=3, distortion_prob=0.0), device="cpu")


@pytest.fixture(scope="module")
def batch(gen):
    return gen.sample(batch_size=B, num_views=V, height=H, width=W, seed=11)


@pytest.fixture(scope="module")
def many(gen):
    """A larger, low-resolution batch covering the kinds and modes."""
    g = ProceduralGenerator(ProceduralConfig(seed=3, camera_tries=2, overlap_res=16), device="cpu")
    return g.sample(batch_size=32, num_views=2, height=12, width=16, seed=1)


def test_shapes_dtypes(batch):
    assert isinstance(batch, ViewBatch)
    assert batch.shape == (B, V, H, W)
    assert batch.images.shape == (B, V, 3, H, W) and batch.images.dtype == torch.float32
    assert batch.depth.shape == (B, V, H, W) and batch.depth.dtype == torch.float32
    assert batch.valid.shape == (B, V, H, W) and batch.valid.dtype == torch.bool
    assert batch.sky.shape == (B, V, H, W) and batch.sky.dtype == torch.bool
    assert batch.normals.shape == (B, V, 3, H, W) and batch.normals.dtype == torch.float32
    assert batch.c2w.shape == (B, V, 4, 4) and batch.K.shape == (B, V, 3, 3)
    assert len(batch.scene_ids) == B
    assert float(batch.images.min()) >= 0 and float(batch.images.max()) <= 1
    for t in (batch.images, batch.depth, batch.normals, batch.c2w, batch.K):
        assert torch.isfinite(t).all()
    R = batch.c2w[..., :3, :3]
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5)
    assert torch.equal(batch.c2w[..., 3, :], torch.tensor([0.0, 0, 0, 1]).expand(B, V, 4))
    K = batch.K
    assert torch.allclose(K[..., 0, 0], K[..., 1, 1])
    assert ((K[..., 0, 2] - W / 2).abs() < 0.1 * W).all() and ((K[..., 1, 2] - H / 2).abs() < 0.1 * H).all()


def test_seed_reproducible(gen, batch):
    again = gen.sample(batch_size=B, num_views=V, height=H, width=W, seed=11)
    for name in ("images", "depth", "valid", "c2w", "K", "normals", "sky"):
        assert torch.equal(getattr(batch, name), getattr(again, name)), name
    assert again.scene_ids == batch.scene_ids
    a = gen.sample(batch_size=1, num_views=2, height=8, width=8)
    b = gen.sample(batch_size=1, num_views=2, height=8, width=8)
    assert not torch.equal(a.c2w, b.c2w)  # the generator's own stream moves on


def test_valid_mask_and_sky(batch, many):
    for bt in (batch, many):
        assert torch.equal(bt.valid, ~bt.sky)
        assert (bt.depth[bt.valid] > 0).all() and (bt.depth[~bt.valid] == 0).all()
    kinds = [s.split("/")[1] for s in many.scene_ids]
    sky_frac = many.sky.float().mean((1, 2, 3))
    for k, f in zip(kinds, sky_frac.tolist()):
        if k not in ("ground_sky", "facade"):
            assert f == 0.0, k  # rooms, domes and tabletop rooms are closed
    for open_kind in ("ground_sky", "facade"):
        assert max(f for k, f in zip(kinds, sky_frac.tolist()) if k == open_kind) > 0


def test_normals_unit_and_facing(batch):
    n = batch.normals.permute(0, 1, 3, 4, 2)[batch.valid]
    assert torch.allclose(n.norm(dim=-1), torch.ones(len(n)), atol=1e-3)
    assert (batch.normals.permute(0, 1, 3, 4, 2)[~batch.valid] == 0).all()
    eye = torch.eye(4).expand(B, V, 4, 4)
    dcam = ray_directions(eye, batch.K, H, W)[batch.valid]  # camera-frame rays
    assert ((n * dcam).sum(-1) <= 1e-4).all()


def test_every_kind_and_mode(many):
    kinds = {s.split("/")[1] for s in many.scene_ids}
    modes = {s.split("/")[2] for s in many.scene_ids}
    assert kinds == set(SCENE_KINDS) and modes == set(CAMERA_MODES)
    sc = sample_scenes(ProceduralConfig(), 64, torch.Generator().manual_seed(0), "cpu")
    n = sc.active.sum(1)
    orig, tab = sc.kind < 3, sc.kind == SCENE_KINDS.index("tabletop")
    assert n[orig].min() >= 4 and n.max() <= NUM_SLOTS  # num_primitives: the original kinds
    assert n[tab].min() >= 1 and n[tab].max() <= 8  # tabletop: one object of 1-5 parts, 0-3 items
    types = set(slot_types()[sc.active.nonzero()[:, 1]].tolist())
    assert types == set(range(len(TYPE_NAMES)))
    assert set(sc.tex_kind.flatten().tolist()) == set(range(len(TEXTURE_KINDS)))
    assert set((sc.prm[..., 8].round()[:, slot_types() == 5]).flatten().tolist()) == {0.0, 1.0, 2.0, 3.0}


def test_images_not_constant(batch, many):
    for bt in (batch, many):
        std = bt.images.flatten(2).std(-1)  # (B, V)
        assert (std > 0.02).all()


def _cross_points(bt, i, j, b):
    """View i's valid pixels of sample b unprojected and projected into view j: (uv, z) in frame."""
    P = unproject_depth(bt.depth[b, i], bt.c2w[b, i], bt.K[b, i])[bt.valid[b, i]]
    w2c = c2w_to_w2c(bt.c2w[b, j])
    pc = P @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[:, 2]
    uv = (pc @ bt.K[b, j].T)[:, :2] / z[:, None].clamp_min(1e-9)
    inb = (z > 1e-3) & (uv[:, 0] > 0) & (uv[:, 0] < W) & (uv[:, 1] > 0) & (uv[:, 1] < H)
    return uv[inb], z[inb]


def _retrace(bt, sc, cfg, b, i, j):
    """View i's valid pixels of sample b re-projected into view j and re-traced along the exact
    ray through their projection (a 1x1 camera centred on that point): the relative depth error
    of the first surface hit (negative: occluded in view j), or None with fewer than 20 points."""
    uv, z = _cross_points(bt, i, j, b)
    if len(uv) < 20:
        return None
    h, w = bt.depth.shape[-2:]
    m = len(uv)
    K1 = bt.K[b, j].clone().expand(m, 3, 3).clone()
    K1[:, 0, 2] -= uv[:, 0] - 0.5
    K1[:, 1, 2] -= uv[:, 1] - 0.5
    out = render(sc.select(slice(b, b + 1)), cfg, bt.c2w[b, j].expand(1, m, 4, 4), K1[None], 1, 1, shaded=False)
    return (out["depth"].reshape(m) - z) / z


def test_depth_and_cameras_consistent_exact(gen, batch):
    """Points from view i re-projected into view j land on view j's first surface along the
    exact ray through their projection (re-traced with a 1x1 camera centred on that point), or
    are occluded in view j (in front of them); none lies behind it."""
    cfg = gen.config
    # reproduce the batch's scenes: sample() draws the scenes first from the seeded generator
    sc = sample_scenes(cfg, B, torch.Generator().manual_seed(11), "cpu")
    checked, same_all = 0, []
    for b in range(B):
        # how much of view i is occluded in view j depends on the scene: up to a third for an
        # orbit around clutter, up to two thirds for the all-around tabletop orbits (views up to
        # 90 degrees apart around a large object; measured 0.36-0.55 on this batch's tabletop)
        tabletop = batch.scene_ids[b].split("/")[1] == "tabletop"
        for i in range(V):
            for j in range(V):
                if i == j:
                    continue
                rel = _retrace(batch, sc, cfg, b, i, j)
                if rel is None:
                    continue
                same = (rel.abs() < 1e-3).float().mean()
                assert same > 0.3, (b, i, j, float(same))
                # nothing re-traced lies behind the re-projected surface point
                assert (rel < 1e-3).float().mean() > 0.97, (b, i, j)
                if not tabletop:
                    same_all.append(same)
                checked += 1
    assert checked >= 4
    assert not same_all or torch.stack(same_all).mean() > 0.6, same_all


def test_depth_and_cameras_consistent_batch(many):
    """Nearest-pixel version on the returned batch alone: most co-visible points agree."""
    fracs = []
    for b in range(many.images.shape[0]):
        uv, z = _cross_points(many, 0, 1, b)
        if len(uv) < 30:
            continue
        iu, iv = uv[:, 0].long().clamp(0, 15), uv[:, 1].long().clamp(0, 11)
        dj, vj = many.depth[b, 1, iv, iu], many.valid[b, 1, iv, iu]
        fracs.append((vj & ((dj - z).abs() < 0.1 * z)).float().mean())
    assert len(fracs) >= 10
    assert torch.stack(fracs).median() > 0.6


def test_config_validation():
    with pytest.raises(ValueError):
        ProceduralConfig(num_primitives=(4, 30))
    with pytest.raises(ValueError):
        ProceduralConfig(scene_kinds=(1.0, 0.0))
    with pytest.raises(ValueError):
        ProceduralGenerator(device="cpu").sample(0, 2, 8, 8)


def test_few_host_syncs(gen):
    """Host syncs are few and bounded (the GPU, not the host, is the bound): per trace one
    nonzero for the culled pairs, one for the sphere-traced pairs and one per march compaction;
    no item / bool in the hot path."""
    gen.sample(batch_size=2, num_views=2, height=8, width=8)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        gen.sample(batch_size=2, num_views=2, height=8, width=8)
    names = [e.name for e in prof.events()]
    assert names.count("aten::nonzero") <= 24
    assert names.count("aten::_local_scalar_dense") == 0


# --- the culled, grouped tracer against an explicit per-pair evaluation --------------------------------------

def _ref_sdf(op: int, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The SDFs as documented in sdf.py, written out plainly. p: (M, 3); q: (M, NUM_PRM)."""
    x, y, z = p.unbind(-1)

    def smin(a, b, k):
        h = (0.5 + 0.5 * (b - a) / k).clamp(0, 1)
        return b * (1 - h) + a * h - k * h * (1 - h)

    def seg(a, b, r):  # capsule around the segment a-b
        ba = b - a
        h = (((p - a) * ba).sum(-1) / (ba * ba).sum(-1).clamp_min(1e-12)).clamp(0, 1)
        return (p - a - ba * h[:, None]).norm(dim=-1) - r

    if op == 4:
        return torch.stack([p[:, :2].norm(dim=-1) - q[:, 0], z], -1).norm(dim=-1) - q[:, 1]
    a, off, rs, k, th = q[:, 0:3], q[:, 3:6], q[:, 6], q[:, 7], q[:, 9]
    if op in (0, 1):
        bq = p.abs() - a
        rb = bq.clamp_min(0).norm(dim=-1) + bq.amax(-1).clamp_max(0) - th
        sph = (p - off).norm(dim=-1) - rs
        return smin(rb, sph, k) if op == 0 else -smin(-rb, sph, k)
    if op == 2:
        return torch.maximum((p.norm(dim=-1) - rs).abs() - th, z - off[:, 2])
    zero = torch.zeros_like(x)
    c1 = seg(torch.stack([-a[:, 0], zero, zero], -1), torch.stack([a[:, 0], zero, zero], -1), th)
    c2 = seg(torch.stack([zero, zero, -a[:, 2]], -1), off, th)
    return smin(c1, c2, k)


def _ref_closest(sc, o, d, tmax, steps=40, eps=2e-4):
    """Nearest hit of rays o, d: (N, 3) in scene 0 by evaluating every active (ray, slot) pair:
    analytic types exactly, tori / blends by a plain sphere tracer inside the bounding sphere
    (first hit freezes, then the nearly-converged pairs are accepted after ``steps``)."""
    from da3gs.data.procedural.primitives import (BIG, TORUS, bound_interval, intersect_box, intersect_cylinder,
                                                  intersect_quad, intersect_sphere)
    fns = (intersect_sphere, intersect_box, intersect_cylinder, intersect_quad)
    best, slot = tmax.clone(), torch.full_like(tmax, -1, dtype=torch.long)
    for j in range(NUM_SLOTS):
        if not bool(sc.active[0, j]):
            continue
        R, c, q = sc.rot[0, j], sc.center[0, j], sc.prm[0, j].expand(len(o), -1)
        ol, dl = (o - c) @ R, d @ R
        typ = int(slot_types()[j])
        if typ < TORUS:
            t = fns[typ](ol, dl, q, 1e-4)
        else:
            op = 4 if typ == TORUS else int(q[0, 8].round())
            t0, t1, h = bound_interval(ol, dl, sc.bound[0, j].expand(len(o)), 1e-4)
            t, out = t0.clone(), torch.full_like(t0, BIG)
            live = h & (t0 < t1)
            for _ in range(steps):
                dist = _ref_sdf(op, ol + t[:, None] * dl, q)
                now = live & (dist < eps * t.clamp_min(1.0))
                out = torch.where(now, t, out)
                live = live & ~now
                t = torch.where(live, t + dist, t)
                live = live & (t < t1)
            dist = _ref_sdf(op, ol + t[:, None] * dl, q)
            t = torch.where(live & (dist < 20 * eps * t.clamp_min(1.0)), t, out)
        better = t < best
        best, slot = torch.where(better, t, best), torch.where(better, j, slot)
    return best, slot


def test_trace_matches_per_pair_reference():
    """closest_hit (bounding-sphere cull, pairs grouped by type, march grouped by op with
    compaction) finds the same surfaces as the explicit per-pair evaluation."""
    from da3gs.data.procedural.primitives import BIG
    from da3gs.data.procedural.trace import any_hit, closest_hit
    cfg = ProceduralConfig(num_primitives=(24, 24))
    sc = sample_scenes(cfg, 1, torch.Generator().manual_seed(5), "cpu")
    g = torch.Generator().manual_seed(0)
    # rays from around the scene towards random points near the primitives
    n = 3000
    o = sc.focus[0] + torch.randn(n, 3, generator=g) * sc.scale[0] * torch.tensor([1.5, 1.5, 0.3]) + \
        torch.tensor([0, 0, 1.0]) * sc.scale[0]
    tgt = sc.center[0, torch.randint(0, NUM_SLOTS, (n,), generator=g)] + 0.3 * torch.randn(n, 3, generator=g)
    d = torch.nn.functional.normalize(tgt - o, dim=-1)
    tmax = torch.where(torch.arange(n) % 2 == 0, 1e3, BIG)  # BIG: sky rays
    t, slot = closest_hit(sc, o[None, None], d[None, None], tmax[None, None], cfg)
    t, slot = t[0, 0], slot[0, 0]
    rt, rslot = _ref_closest(sc, o, d, tmax)
    assert (rslot >= 0).float().mean() > 0.5 and (slot_types()[rslot[rslot >= 0]] >= 4).sum() > 100
    same = slot == rslot
    assert same.float().mean() > 0.995, float(same.float().mean())
    hit = same & (rslot >= 0)
    assert ((t[hit] - rt[hit]).abs() <= 1e-3 * rt[hit] + 1e-4).float().mean() > 0.995
    # any_hit agrees with the closest hit before tmax; rays with tmax = 0 never hit
    lim = torch.where(torch.arange(n) % 3 == 0, 0.0, rt.clamp_max(1e3) * 1.5)
    ah = any_hit(sc, o[None, None], d[None, None], lim[None, None], cfg)[0, 0]
    assert not ah[lim == 0].any()
    assert (ah == ((rslot >= 0) & (lim > 0))).float().mean() > 0.995


def test_textures_grouped_equal_per_kind():
    """Grouped texture evaluation equals evaluating every point as its own kind."""
    from da3gs.data.procedural.textures import evaluate_texture
    g = torch.Generator().manual_seed(1)
    n = 500
    kind = torch.randint(0, 5, (n,), generator=g)
    p, freq = torch.randn(n, 3, generator=g) * 3, torch.rand(n, generator=g) * 4 + 0.5
    seed = torch.randint(0, 2 ** 30, (n,), generator=g, dtype=torch.int32)
    pal, direc = torch.rand(n, 3, 3, generator=g), torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    mixed = evaluate_texture(kind, p, freq, seed, pal, direc)
    for k in range(5):
        one = evaluate_texture(torch.full_like(kind, k), p, freq, seed, pal, direc)
        assert torch.allclose(mixed[kind == k], one[kind == k], atol=1e-6), k
    # table form: entries into per-surface tables
    e = torch.randint(0, n, (n,), generator=g)
    tab = evaluate_texture(kind, p, freq, seed, pal, direc, entry=e)
    ref = evaluate_texture(kind[e], p, freq[e], seed[e], pal[e], direc[e])
    assert torch.allclose(tab, ref, atol=1e-6)


def test_floor_texture_view_independent():
    """The floor (z = 0, a lattice plane of the cell textures) looks the same from two cameras:
    its texture point is exactly on the plane, not z = +-float noise (which flipped checker
    parity and dead-leaves cells per pixel)."""
    from da3gs.data.procedural.scene import NUM_ENV
    from da3gs.data.procedural.shading import surface
    cfg = ProceduralConfig(scene_kinds=(1.0, 0.0, 0.0))
    sc = sample_scenes(cfg, 1, torch.Generator().manual_seed(2), "cpu")
    sc.tex_kind[:, NUM_SLOTS:NUM_SLOTS + NUM_ENV] = 3  # checkers
    g = torch.Generator().manual_seed(0)
    n = 2000
    P = torch.cat([(torch.rand(n, 2, generator=g) - 0.5) * sc.room[0, :2], torch.zeros(n, 1)], -1)
    albedo = []
    for o in (torch.tensor([0.1, 0.2, 1.5]), torch.tensor([0.7, -0.3, 2.0])):
        d = P - o
        t = d.norm(dim=-1)
        d = d / t[:, None]
        # recompute t along the unit ray, as a tracer would: the point is then off the plane by float noise
        t = -o[2] / d[:, 2]
        _, _, a, _, hit, _ = surface(sc, o.expand(1, 1, 1, 3), d[None, None], t[None, None],
                                     torch.full((1, 1, n), -1), torch.zeros(1, 1, n, dtype=torch.long))
        assert hit.all()
        albedo.append(a)
    assert torch.allclose(albedo[0], albedo[1], atol=1e-4) or \
        ((albedo[0] - albedo[1]).abs().amax(-1) < 1e-4).float().mean() > 0.99


def test_sdf_families_equal_per_op_formulas():
    """The two SDF families (one formula each, constants selecting the op) give exactly each
    op's own floats."""
    from da3gs.data.procedural.primitives import SLOT_START, TORUS
    from da3gs.data.procedural.sdf import _split, derive, family, sdf_family, sdf_op
    sc = sample_scenes(ProceduralConfig(), 32, torch.Generator().manual_seed(0), "cpu")
    prm = sc.prm[:, SLOT_START[TORUS]:].reshape(-1, sc.prm.shape[-1])
    typ = slot_types()[SLOT_START[TORUS]:].repeat(32)
    op = torch.where(typ == TORUS, 4, prm[:, 8].round().long())
    assert set(op.tolist()) == {0, 1, 2, 3, 4}
    g = torch.Generator().manual_seed(1)
    for spread in (0.3, 1.0, 2.0):
        p = torch.randn(3, len(op), generator=g) * sc.scale.repeat_interleave(len(op) // 32) * spread
        for f in range(2):
            m = family(op) == f
            v = sdf_family(f, p[:, m].contiguous(), _split(f, derive(f, op[m], prm[m])))
            for k in op[m].unique().tolist():
                mk = op[m] == k
                assert torch.equal(v[mk], sdf_op(k, p[:, m][:, mk], prm[m][mk])), (f, k)
