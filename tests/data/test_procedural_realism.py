"""The realism additions of the procedural generator: the tabletop, furnished_room and facade
scene kinds, the surface-pattern textures and the per-view photographic effects.

CPU only, small sizes.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from da3gs.data.procedural import SCENE_KINDS, ProceduralConfig, ProceduralGenerator, render
from da3gs.data.procedural import photo
from da3gs.data.procedural.generator import _overlap_score
from da3gs.data.procedural.primitives import BOX, NUM_SLOTS, QUAD, SLOT_START
from da3gs.data.procedural.scene import PLAIN, sample_scenes
from da3gs.data.procedural.textures import evaluate_texture
from da3gs.geometry.rays import unproject_depth

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.syncs import SyncRecorder  # noqa: E402

NEW = ("tabletop", "furnished_room", "facade")
_OFF = dict(defocus_prob=0.0, motion_blur_prob=0.0, jpeg_prob=0.0, vignetting_prob=0.0, distortion_prob=0.0)


def _only(kind: str, **kw) -> ProceduralConfig:
    w = [0.0] * len(SCENE_KINDS)
    w[SCENE_KINDS.index(kind)] = 1.0
    return ProceduralConfig(scene_kinds=tuple(w), **kw)


@pytest.fixture(scope="module")
def kind_batches():
    """Per added kind: (config, batch of 8 samples x 3 views at 24 x 32, seed 2)."""
    out = {}
    for k in NEW:
        cfg = _only(k, distortion_prob=0.0)
        out[k] = (cfg, ProceduralGenerator(cfg, device="cpu").sample(8, 3, 24, 32, seed=2))
    return out


@pytest.mark.parametrize("kind", NEW)
def test_new_kind_valid_depth_masks_cameras_and_overlap(kind_batches, kind):
    cfg, bt = kind_batches[kind]
    assert all(s.split("/")[1] == kind for s in bt.scene_ids)
    assert torch.equal(bt.valid, ~bt.sky)
    assert (bt.depth[bt.valid] > 0).all() and (bt.depth[~bt.valid] == 0).all()
    for t in (bt.images, bt.depth, bt.normals, bt.c2w, bt.K):
        assert torch.isfinite(t).all()
    R = bt.c2w[..., :3, :3]
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5)
    sky = bt.sky.float().mean((1, 2, 3))
    if kind == "facade":
        assert (sky > 0).any() and (sky < 0.7).all()  # a sky above the street, never most of the view
    else:
        assert (sky == 0).all()  # closed rooms
    # every view sees enough surface; the generator's overlap criterion holds for most sets (the
    # best of 4 tries is kept when none passes): view 0 in every view, or for the all-around
    # tabletop orbits each view in the next
    val = bt.valid.float().mean((2, 3)).amin(1)
    assert (val >= cfg.min_valid).all()
    ov = _overlap_score(bt.depth, bt.valid, bt.c2w, bt.K, chain=kind == "tabletop")
    assert (ov >= cfg.min_overlap).float().mean() >= 0.75, ov


@pytest.mark.parametrize("kind", NEW)
def test_new_kind_depth_exact_when_retraced(kind_batches, kind):
    """View 0's points re-projected into view 1 are never behind view 1's re-traced surface."""
    cfg, bt = kind_batches[kind]
    sc = sample_scenes(cfg, 8, torch.Generator().manual_seed(2), "cpu")
    H, W = bt.depth.shape[-2:]
    checked = 0
    for b in range(8):
        P = unproject_depth(bt.depth[b, 0], bt.c2w[b, 0], bt.K[b, 0])[bt.valid[b, 0]]
        w2c = torch.linalg.inv(bt.c2w[b, 1])
        pc = P @ w2c[:3, :3].T + w2c[:3, 3]
        z = pc[:, 2]
        uv = (pc @ bt.K[b, 1].T)[:, :2] / z[:, None].clamp_min(1e-9)
        inb = (z > 1e-3) & (uv[:, 0] > 0) & (uv[:, 0] < W) & (uv[:, 1] > 0) & (uv[:, 1] < H)
        uv, z = uv[inb], z[inb]
        if len(z) < 20:
            continue
        K1 = bt.K[b, 1].expand(len(z), 3, 3).clone()
        K1[:, 0, 2] -= uv[:, 0] - 0.5
        K1[:, 1, 2] -= uv[:, 1] - 0.5
        d = render(sc.select(slice(b, b + 1)), cfg, bt.c2w[b, 1].expand(1, len(z), 4, 4), K1[None], 1, 1,
                   shaded=False)["depth"].reshape(-1)
        rel = (d - z) / z
        assert (rel < 1e-3).float().mean() > 0.97, (b, float((rel < 1e-3).float().mean()))
        assert (rel.abs() < 1e-3).float().mean() > 0.3
        checked += 1
    assert checked >= 4


def test_tabletop_bright_table_and_close_all_around_orbits():
    cfg = _only("tabletop", **_OFF)
    sc = sample_scenes(cfg, 64, torch.Generator().manual_seed(0), "cpu")
    P = NUM_SLOTS
    plain = sc.tex_kind[:, P] == PLAIN
    assert plain.float().mean() > 0.5  # mostly plain tables
    # plain tables, walls and ceilings are near-white; the light is high-key
    for e in (0, 1, 2):
        m = sc.tex_kind[:, P + e] == PLAIN
        assert sc.palette[m, P + e].amin() >= 0.78 * 0.97 * 0.97 - 1e-6 and sc.palette[m, P + e].mean() > 0.85
    assert (sc.ambient >= 0.3).all()
    # one central object: active primitives within the table, the object parts near the focus
    assert (sc.active.sum(1) >= 1).all() and (sc.active[:, SLOT_START[QUAD]:SLOT_START[QUAD + 1]] == 0).all()
    # rendered: the views are mostly bright (a white table and walls), the object in the centre
    bt = ProceduralGenerator(cfg, device="cpu").sample(8, 6, 24, 32, seed=1)
    lum = bt.images.mean(2)  # (B, V, H, W)
    bright = (lum > 0.6).float().mean((2, 3)).median(1).values
    assert (bright > 0.4).float().mean() >= 0.6, bright
    # orbits: close (camera to focus 2-3.4 L) and all around (views cover >= 160 degrees of
    # azimuth, 200 on average)
    sc = sample_scenes(cfg, 8, torch.Generator().manual_seed(1), "cpu")
    eye = bt.c2w[..., :3, 3]
    rel = eye - sc.focus[:, None]
    dist = rel.norm(dim=-1) / sc.scale[:, None]
    orbit = torch.tensor([s.split("/")[2] == "orbit" for s in bt.scene_ids])
    assert orbit.sum() >= 4
    assert (dist[orbit] > 1.4).all() and (dist[orbit] < 3.8).all()
    az = torch.atan2(rel[..., 1], rel[..., 0]).sort(-1).values  # (B, V)
    gaps = torch.cat([az.diff(dim=-1), (az[:, :1] + 2 * math.pi - az[:, -1:])], -1)
    covered = (2 * math.pi - gaps.amax(-1)) * 180 / math.pi  # arc spanned by the views
    assert (covered[orbit] >= 150).all() and covered[orbit].mean() > 200, covered
    # the focus (the object) projects into every orbit view
    f_cam = ((sc.focus[:, None] - eye)[..., None, :] @ bt.c2w[..., :3, :3])[..., 0, :]
    uv = (f_cam[..., None, :] @ bt.K.transpose(-1, -2))[..., 0, :2] / f_cam[..., 2:]
    assert (f_cam[orbit][..., 2] > 0).all() and (uv[orbit][..., 0] > 0).all() and (uv[orbit][..., 0] < 32).all()


def test_furnished_room_furniture_upright_on_the_floor_against_walls():
    sc = sample_scenes(_only("furnished_room"), 32, torch.Generator().manual_seed(0), "cpu")
    sb = slice(SLOT_START[BOX], SLOT_START[BOX + 1])
    rot, c, a = sc.rot[:, sb], sc.center[:, sb], sc.prm[:, sb, :3]
    assert torch.allclose(rot[..., :, 2], torch.tensor([0.0, 0, 1]).expand_as(rot[..., :, 2]), atol=1e-6)
    assert torch.allclose(c[..., 2], a[..., 2])  # resting on the floor
    assert sc.active[:, sb].float().mean() > 0.7  # most furniture present
    inside = (c[..., :2].abs() <= sc.room[:, None, :2]).all()
    assert inside
    # most pieces stand with their back 2 cm from a wall
    gap = sc.room[:, None, :2] - c[..., :2].abs() - a[..., 1:2]
    assert ((gap - 0.02).abs() < 1e-4).any(-1).float().mean() > 0.6
    # the room has textured walls from the wallpaper / plain / brick / fbm table
    assert set(sc.tex_kind[:, NUM_SLOTS + 1].tolist()) <= {0, 5, 6, 8}


def test_facade_points_within_the_street(kind_batches):
    cfg, bt = kind_batches["facade"]
    sc = sample_scenes(cfg, 8, torch.Generator().manual_seed(2), "cpu")
    for b in range(8):
        P = unproject_depth(bt.depth[b], bt.c2w[b], bt.K[b])[bt.valid[b]]
        wy = sc.env_prm[b, 0]
        assert (P[:, 1].abs() <= wy * (1 + 1e-4) + 1e-3).all()  # nothing beyond the façades
        assert (P[:, 2] >= -1e-3).all()
    # the façades carry the façade texture most of the time
    sc = sample_scenes(cfg, 64, torch.Generator().manual_seed(0), "cpu")
    assert (sc.tex_kind[:, NUM_SLOTS + 1] == 9).float().mean() > 0.6


def test_surface_patterns_are_2d_and_view_independent():
    """Surface patterns depend on the two in-plane coordinates only, and are not constant."""
    g = torch.Generator().manual_seed(0)
    n = 4000
    p = torch.rand(n, 3, generator=g) * 4
    for k in range(5, 11):
        kind = torch.full((n,), k)
        freq, seed = torch.full((n,), 2.0), torch.full((n,), 12345, dtype=torch.int32)
        pal = torch.tensor([[0.8, 0.75, 0.7], [0.3, 0.2, 0.5], [0.1, 0.6, 0.2]]).expand(n, 3, 3)
        direc = torch.tensor([1.0, 0, 0]).expand(n, 3)
        axis = torch.full((n,), 1)  # a wall y = const: pattern over (x, z)
        a = evaluate_texture(kind, p, freq, seed, pal, direc, axis=axis)
        q = p.clone()
        q[:, 1] += 0.37  # move along the normal: same pattern for the 2D kinds except plain's noise
        b = evaluate_texture(kind, q, freq, seed, pal, direc, axis=axis)
        assert a.std(0).max() > 0.01, k
        if k != 5:  # plain and every kind's detail noise are 3D; compare without the detail
            col_a = a / a.mean(-1, keepdim=True).clamp_min(1e-6)
            col_b = b / b.mean(-1, keepdim=True).clamp_min(1e-6)
            assert (col_a - col_b).abs().amax(-1).median() < 0.05, k


# --- photographic effects ----------------------------------------------------------------------------------


def test_vignetting_darkens_corners():
    K = torch.tensor([[[20.0, 0, 16], [0, 20, 12], [0, 0, 1]]])
    v = photo.vignette(K, torch.tensor([0.4]), 24, 32)[0, 0]
    assert abs(float(v[12, 16]) - 1) < 0.01 and float(v[0, 0]) < 0.65 and float(v[-1, -1]) < 0.65
    assert torch.equal(photo.vignette(K, torch.tensor([0.0]), 24, 32), torch.ones(1, 1, 24, 32))


def _hf(x: torch.Tensor) -> torch.Tensor:
    """High-frequency energy per image: mean squared Laplacian (N, C, H, W) -> (N,)."""
    lap = 4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return (lap ** 2).mean((1, 2, 3))


def test_defocus_blurs_out_of_focus_depths_only():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g)
    depth = torch.full((3, 32, 32), 2.0)
    depth[:, :, 16:] = 20.0  # right half far behind the focus plane
    zf = torch.full((3,), 2.0)
    y = photo.defocus(x, depth, zf, torch.tensor([0.0, 1.5, 3.0]), R=8)
    assert torch.equal(y[0], x[0])  # off
    # in focus: unchanged; out of focus: less high-frequency energy, more for a larger blur
    assert torch.allclose(y[1:, :, :, :14], x[1:, :, :, :14])
    hf = _hf(y[..., 18:])
    assert hf[1] < 0.3 * hf[0] and hf[2] < hf[1]
    assert torch.allclose(y.mean((2, 3)), x.mean((2, 3)), atol=0.02)  # blur keeps the mean


def test_motion_blur_along_its_direction():
    u = torch.arange(32.0)
    stripes_v = (u[None, :] % 2).expand(32, 32)  # vertical stripes: vary along x
    x = torch.stack([stripes_v, stripes_v.T])[:, None].expand(2, 3, 32, 32).contiguous()
    y = photo.motion_blur(x, torch.tensor([6.0, 6.0]), torch.tensor([0.0, 0.0]), R=4)  # horizontal motion
    c = lambda t: float(t[..., 8:-8, 8:-8].std())  # noqa: E731
    assert c(y[0]) < 0.2 * c(x[0])  # stripes across the motion are smeared
    assert c(y[1]) > 0.9 * c(x[1])  # stripes along the motion survive
    y0 = photo.motion_blur(x, torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2.0]), R=4)
    assert torch.allclose(y0, x)  # length 0: the identity


def test_jpeg_quantisation_makes_8x8_blocks():
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    base = torch.stack([xx, yy, 0.5 * (xx + yy)])[None]
    # luma texture (the same noise in every channel): the error is the quantisation's, not 4:2:0's
    x = (base + 0.08 * torch.randn(1, 1, 64, 64, generator=g)).clamp(0, 1)
    lo = photo.jpeg(x, torch.tensor([15.0]))
    hi = photo.jpeg(base, torch.tensor([100.0]))
    assert (hi - base).abs().mean() < 2 / 255  # quality 100 on a smooth image: nearly lossless
    assert (lo - x).abs().mean() > 2 * (photo.jpeg(x, torch.tensor([95.0])) - x).abs().mean()
    # block structure: the output is smoother inside 8 x 8 blocks than across their edges
    d = (lo[..., :, 1:] - lo[..., :, :-1]).abs().mean((0, 1, 2))  # (63,) column steps
    at_edges = d[7::8].mean()
    inside = torch.cat([d[k::8] for k in range(7)]).mean()
    assert at_edges > 1.5 * inside, (float(at_edges), float(inside))
    # the DCT of the luma blocks of the compressed image sits on the quantisation grid
    dmat = photo._dct_matrix("cpu")
    ycc = torch.einsum("ij,njhw->nihw", torch.tensor(photo._YCC), lo * 255)[:, :1] - 128
    coef = dmat @ ycc.reshape(1, 1, 8, 8, 8, 8).permute(0, 1, 2, 4, 3, 5) @ dmat.T
    step = photo._quant_tables(torch.tensor([15.0]))[0, 0]
    frac = (coef / step - torch.round(coef / step)).abs()
    assert frac.mean() < 0.05  # on the grid, up to the YCbCr round trip's float error


def test_distortion_moves_pixels_radially():
    d = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 9), torch.linspace(-0.75, 0.75, 7), indexing="xy"), -1)
    dcam = torch.cat([d, torch.ones_like(d[..., :1])], -1)[None, None]  # (1, 1, 7, 9, 3)
    for k in (0.03, -0.03):
        out = photo.distort_directions(dcam, torch.tensor([[k]]))
        disp = out[..., :2] - dcam[..., :2]
        r = dcam[..., :2]
        cross = disp[..., 0] * r[..., 1] - disp[..., 1] * r[..., 0]
        assert cross.abs().max() < 1e-6  # radial
        radial = (disp * r).sum(-1)
        assert (radial * k >= 0).all() and disp[0, 0, 3, 4].abs().max() == 0  # outwards for k > 0; centre fixed
    assert torch.equal(photo.distort_directions(dcam, torch.zeros(1, 1)), dcam)  # k = 0: bit-identical
    # corner displacement = c x the corner's radius
    K = torch.tensor([[[[16.0, 0, 16], [0, 16, 12], [0, 0, 1]]]])
    k = photo.distortion_coeff(torch.tensor([[0.03]]), K, 24, 32)
    rc2 = (16 / 16) ** 2 + (12 / 16) ** 2
    assert abs(float(k) * rc2 - 0.03) < 1e-6


def test_distorted_views_are_exact_along_bent_rays():
    """With distortion the depth is that of the bent rays (exact), and content moves radially:
    the distorted depth map at a pixel equals the pinhole depth map at the radially moved pixel."""
    kw = dict(_OFF, distortion_prob=1.0, distortion=(0.08, 0.08))
    cfg = ProceduralConfig(scene_kinds=(0.0, 0.0, 1.0, 0.0, 0.0, 0.0), **kw)
    bt = ProceduralGenerator(cfg, device="cpu").sample(2, 2, 24, 32, seed=3)
    sc = sample_scenes(cfg, 2, torch.Generator().manual_seed(3), "cpu")
    pin = render(sc, cfg, bt.c2w, bt.K, 24, 32, shaded=False)["depth"]
    k = photo.distortion_coeff(torch.full((2, 2), 0.08), bt.K, 24, 32)
    bent = render(sc, cfg, bt.c2w, bt.K, 24, 32, shaded=False, distortion=k)["depth"]
    assert torch.equal(bent, bt.depth)
    assert not torch.equal(pin, bt.depth)
    # the pinhole pixel seen by distorted pixel (u, v): K (x (1 + k r^2), y (1 + k r^2)); sample
    # the pinhole depth there (nearest) and compare, away from depth edges
    H, W = 24, 32
    vv, uu = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    agree = []
    for b in range(2):
        for v in range(2):
            Kb = bt.K[b, v]
            x, y = (uu - Kb[0, 2]) / Kb[0, 0], (vv - Kb[1, 2]) / Kb[1, 1]
            s = 1 + k[b, v] * (x * x + y * y)
            up, vp = x * s * Kb[0, 0] + Kb[0, 2], y * s * Kb[1, 1] + Kb[1, 2]
            ok = (up >= 0) & (up < W) & (vp >= 0) & (vp < H)
            moved = ((up - uu) ** 2 + (vp - vv) ** 2).sqrt()
            assert moved[0, 0] > 1.0 and moved[H // 2, W // 2] < 0.1  # corners move, the centre does not
            dp = pin[b, v][vp.long().clamp(0, H - 1), up.long().clamp(0, W - 1)]
            d = bt.depth[b, v]
            agree.append(((dp - d).abs() < 0.05 * d)[ok].float().mean())
    assert torch.stack(agree).mean() > 0.85


def test_effect_probabilities_and_determinism():
    cfg = ProceduralConfig(defocus_prob=0.25, motion_blur_prob=0.5, jpeg_prob=0.75, vignetting_prob=0.0,
                           distortion_prob=1.0)
    from da3gs.data.procedural.scene import _Rng
    r = _Rng(torch.Generator().manual_seed(0), "cpu")
    prm = photo.draw(r, cfg, 64, 16, 32, 32)
    assert abs(float((prm["defocus"] > 0).float().mean()) - 0.25) < 0.04
    assert abs(float((prm["motion"] > 0).float().mean()) - 0.5) < 0.04
    assert abs(float(prm["jpeg_on"].float().mean()) - 0.75) < 0.04
    assert (prm["vignette"] == 0).all() and (prm["distortion"] != 0).all()
    on = dict(defocus_prob=1.0, motion_blur_prob=1.0, jpeg_prob=1.0, vignetting_prob=1.0, distortion_prob=1.0)
    g = ProceduralGenerator(ProceduralConfig(**on), device="cpu")
    a, b, c = (g.sample(2, 2, 24, 32, seed=s) for s in (4, 4, 5))
    for f in ("images", "depth", "valid", "normals", "c2w", "K"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert not torch.equal(a.images, c.images)
    # the effects change the images only (the same scene and cameras without them)
    plain = ProceduralGenerator(ProceduralConfig(**dict(on, distortion_prob=0.0, defocus_prob=0.0,
                                                        motion_blur_prob=0.0, jpeg_prob=0.0, vignetting_prob=0.0)),
                                device="cpu").sample(2, 2, 24, 32, seed=4)
    assert torch.equal(plain.c2w, a.c2w) and not torch.equal(plain.images, a.images)


def test_static_path_with_new_kinds_and_effects_has_no_sync():
    """The static path with the added kinds and every effect on dispatches no host-reading op
    (tests/syncs.py's recorder, which also flags bincount, masked_scatter, nonzero_static)."""
    on = dict(defocus_prob=1.0, motion_blur_prob=1.0, jpeg_prob=1.0, vignetting_prob=1.0, distortion_prob=1.0)
    gen = ProceduralGenerator(ProceduralConfig(static=True, scene_kinds=(0, 0, 0, 1.0, 1.0, 1.0), **on), device="cpu")
    gen.sample(2, 2, 16, 16, seed=0)  # warm-up: per-device constants
    with SyncRecorder() as rec:
        gen.sample(2, 2, 16, 16, seed=1)
    assert rec.syncs == [] and len(rec.ops) > 1000
