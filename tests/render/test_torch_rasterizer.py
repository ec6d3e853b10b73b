"""The pure-torch rasteriser against the brute-force float64 reference, tiling, gradients."""

from __future__ import annotations

import pytest
import torch

from da3gs.render import torch_rasterizer as tr
from da3gs.render.torch_rasterizer import project_gaussians, rasterize
from da3gs.types import Gaussians
from tests.render.test_reference import dense_reference, random_scene


def _raster(g, w2c, K, W, H, **kw):
    return rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, w2c, K, W, H, **kw)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_dense_reference_float64(seed):
    g, w2c, K = random_scene(50, seed=seed, sh_degree=seed, cams=2)
    stats = {}
    ref = dense_reference(g, w2c, K, 32, 24, stats=stats)
    assert stats["stopped"] > 0 and stats["clamped"] > 0
    out = _raster(g, w2c, K, 32, 24)
    for name, a, b in zip(("color", "alpha", "depth"), out[:3], ref):
        err = (a - b).abs().max().item()
        assert err < 1e-10, (name, err)


def test_matches_dense_reference_float32():
    g, w2c, K = random_scene(50, seed=3, sh_degree=3, cams=2, dtype=torch.float32)
    ref = dense_reference(g, w2c, K, 32, 24)
    color, alpha, depth, _ = _raster(g, w2c, K, 32, 24)
    assert color.dtype == torch.float32
    errs = [(color.double() - ref[0]).abs().max().item(), (alpha.double() - ref[1]).abs().max().item()]
    print(f"\nfloat32 vs float64 reference: color {errs[0]:.2e}, alpha {errs[1]:.2e}")
    assert max(errs) < 1e-5
    m = ref[1] > 0.5  # expected depth is ill-conditioned where alpha is tiny
    assert ((depth.double() - ref[2]).abs()[m] / ref[2][m]).max() < 1e-5


@pytest.mark.parametrize("W,H,tile,max_elems", [(37, 29, 16, 1 << 18), (37, 29, 7, 1 << 18),
                                                 (32, 24, 4, 1 << 18), (33, 17, 8, 300),
                                                 (16, 16, 16, 1)])
def test_tiling_and_chunking_do_not_change_the_image(W, H, tile, max_elems):
    """Non-multiple sizes, odd tiles, one Gaussian per chunk: same image as the reference."""
    g, w2c, K = random_scene(40, seed=4, width=W, height=H)
    ref = dense_reference(g, w2c, K, W, H)
    out = _raster(g, w2c, K, W, H, tile_size=tile, max_elems=max_elems)
    assert out[0].shape == (1, H, W, 3)
    for a, b in zip(out[:3], ref):
        assert (a - b).abs().max() < 1e-10


def test_auto_tile_size_follows_the_splat_size():
    """4 px tiles for splats of a few pixels, 8 from a mean larger half-extent of 7 px; culled
    entries (radius 0) do not count; per camera, with the same image as fixed tilings."""
    def radii(*r):
        return torch.tensor([[x, max(1, x - 1)] for x in r], dtype=torch.int32)

    assert tr.auto_tile_size(radii(1, 2, 3, 2)) == 4
    assert tr.auto_tile_size(radii(6, 7, 8)) == 8
    assert tr.auto_tile_size(torch.cat([radii(9, 9), torch.zeros(50, 2, dtype=torch.int32)])) == 8
    assert tr.auto_tile_size(torch.zeros(3, 2, dtype=torch.int32)) == 4
    assert tr.auto_tile_size(torch.zeros(0, 2, dtype=torch.int32)) == 4
    g, w2c, K = random_scene(40, seed=5, cams=2, width=48, height=40)
    K = K.clone()
    K[0, :2, :2] *= 0.2  # the first camera zooms out (focal / 5): mean radius ~4 px, against ~14
    W, H = 48, 40
    radii_c = project_gaussians(g.means, g.quats, g.scales, g.opacities, w2c, K, W, H)[3]
    assert [tr.auto_tile_size(r) for r in radii_c] == [4, 8]
    ref = dense_reference(g, w2c, K, W, H)
    out = _raster(g, w2c, K, W, H)
    for a, b in zip(out[:3], ref):
        assert (a - b).abs().max() < 1e-10


def test_gaussian_straddling_tiles():
    """One Gaussian centred on a 4-tile corner; the image spans a partial tile at the edge."""
    W, H, f = 21, 19, 20.0
    K = torch.tensor([[[f, 0, 0.0], [0, f, 0.0], [0, 0, 1]]], dtype=torch.float64)
    g = Gaussians(means=torch.tensor([[8.0 / f * 2, 8.0 / f * 2, 2.0]], dtype=torch.float64),
                  quats=torch.tensor([[0.9, 0.1, -0.2, 0.3]], dtype=torch.float64),
                  scales=torch.tensor([[0.3, 0.1, 0.2]], dtype=torch.float64),
                  opacities=torch.tensor([0.9], dtype=torch.float64),
                  sh=torch.zeros(1, 1, 3, dtype=torch.float64))
    w2c = torch.eye(4, dtype=torch.float64)[None]
    ref = dense_reference(g, w2c, K, W, H)
    for tile in (4, 8, 16):
        out = _raster(g, w2c, K, W, H, tile_size=tile)
        assert (out[1] - ref[1]).abs().max() < 1e-12
    # it covers pixels in all four tiles around (8, 8) with tile 8
    a = ref[1][0, ..., 0]
    assert min(a[7, 7], a[7, 8], a[8, 7], a[8, 8]) > 0.5


def test_empty_and_culled_scenes_give_background():
    W, H = 20, 12
    K = torch.tensor([[[15.0, 0, 10], [0, 15, 6], [0, 0, 1]]])
    w2c = torch.eye(4)[None]
    bg = torch.tensor([[0.2, 0.4, 0.6]])
    empty = Gaussians(means=torch.zeros(0, 3), quats=torch.zeros(0, 4), scales=torch.zeros(0, 3),
                      opacities=torch.zeros(0), sh=torch.zeros(0, 1, 3))
    behind = Gaussians(means=torch.tensor([[0.0, 0, -1], [0, 0, 0.001], [50, 0, 1]]),
                       quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(3, 1),
                       scales=torch.full((3, 3), 0.1), opacities=torch.ones(3),
                       sh=torch.ones(3, 1, 3))
    for g in (empty, behind):
        color, alpha, depth, radii = _raster(g, w2c, K, W, H, background=bg)
        assert torch.equal(alpha, torch.zeros(1, H, W, 1))
        assert torch.equal(depth, torch.zeros(1, H, W, 1))
        assert torch.allclose(color, bg.expand(H, W, 3)[None])
        assert radii.shape == (1, len(g), 2) and not radii.any()


def test_projection_culls_and_radii():
    g, w2c, K = random_scene(50, seed=5)
    means2d, conics, depths, radii = project_gaussians(g.means, g.quats, g.scales, g.opacities,
                                                       w2c, K, 32, 24)
    assert means2d.shape == (1, 50, 2) and conics.shape == (1, 50, 3) and radii.dtype == torch.int32
    vis = (radii > 0).all(-1)[0]
    faint = g.opacities < 1 / 255
    assert faint.sum() == 2 and not vis[faint].any()
    assert (depths[0][vis] >= 0.01).all()
    assert torch.isfinite(conics).all() and torch.isfinite(means2d).all()


def test_steps_respect_max_elems(monkeypatch):
    """Every compositing step evaluates at most max_elems (pixel x Gaussian) pairs."""
    g, w2c, K = random_scene(200, seed=6, width=64, height=48)
    seen = []
    orig = tr._composite_step

    def spy(feats, pix, T, done):
        seen.append(feats.shape[0] * feats.shape[1] * pix.shape[1])
        return orig(feats, pix, T, done)

    monkeypatch.setattr(tr, "_composite_step", spy)
    _raster(g, w2c, K, 64, 48, tile_size=8, max_elems=4096)
    assert seen and max(seen) <= 4096


def _loss_fn(g0, w2c, K, W, H, weights, names, **kw):
    def f(*params):
        d = dict(g0.__dict__)
        d.update({n: p for n, p in zip(names, params) if n != "w2c"})
        cam = params[names.index("w2c")] if "w2c" in names else w2c
        c, a, dep, _ = rasterize(d["means"], d["quats"], d["scales"], d["opacities"], d["sh"],
                                 cam, K, W, H, **kw)
        return torch.stack([(c * weights[0]).sum(), (a * weights[1]).sum(),
                            (dep * weights[2] * (a > 0.3)).sum()])
    return f


def test_gradcheck_float64():
    """Analytic (autograd through the checkpointed steps) vs finite differences."""
    W, H = 12, 10
    g, w2c, K = random_scene(10, seed=7, width=W, height=H, sh_degree=1)
    g.opacities = g.opacities.clamp(0.2, 0.9)  # away from the 0.999 clamp
    gen = torch.Generator().manual_seed(0)
    weights = [torch.rand(1, H, W, k, generator=gen, dtype=torch.float64) for k in (3, 1, 1)]
    names = ["means", "quats", "scales", "opacities", "sh", "w2c"]
    params = [getattr(g, n).detach().clone().requires_grad_(True) for n in names[:-1]]
    params.append(w2c.clone().requires_grad_(True))
    f = _loss_fn(g, w2c, K, W, H, weights, names, tile_size=4, max_elems=200)
    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradients_flow_and_match_unchunked():
    """Same gradients with and without chunking; all parameters get non-zero gradients."""
    g, w2c, K = random_scene(30, seed=8, sh_degree=2)
    grads = []
    for kw in (dict(tile_size=16, max_elems=1 << 20), dict(tile_size=4, max_elems=64)):
        ps = {n: getattr(g, n).detach().clone().requires_grad_(True)
              for n in ("means", "quats", "scales", "opacities", "sh")}
        cam = w2c.clone().requires_grad_(True)
        bg = torch.tensor([[0.1, 0.5, 0.9]], dtype=torch.float64, requires_grad=True)
        c, a, d, _ = rasterize(ps["means"], ps["quats"], ps["scales"], ps["opacities"], ps["sh"],
                               cam, K, 32, 24, background=bg, **kw)
        (c.square().sum() + (d * a).sum()).backward()
        grads.append([p.grad for p in ps.values()] + [cam.grad, bg.grad])
    for a, b in zip(*grads):
        assert a.abs().sum() > 0
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-8)


def test_no_grad_path_matches_grad_path():
    g, w2c, K = random_scene(30, seed=9)
    with torch.no_grad():
        ref = _raster(g, w2c, K, 32, 24)
    means = g.means.clone().requires_grad_(True)
    out = rasterize(means, g.quats, g.scales, g.opacities, g.sh, w2c, K, 32, 24)
    assert out[0].requires_grad
    for a, b in zip(out[:3], ref[:3]):
        assert torch.equal(a.detach(), b)
