"""render(): shapes, backends, cameras, background, errors."""

from __future__ import annotations

import pytest
import torch

from da3gs.errors import Da3gsError
from da3gs.render import RenderOutput, render, resolve_backend
from da3gs.types import Gaussians
from tests.render.test_reference import dense_reference, random_scene


def test_render_matches_reference_and_shapes():
    g, w2c, K = random_scene(40, seed=10, sh_degree=2, cams=2)
    out = render(g, w2c, K, 32, 24)
    assert isinstance(out, RenderOutput) and out.backend == "torch"
    assert out.color.shape == (2, 24, 32, 3) and out.alpha.shape == (2, 24, 32, 1)
    assert out.depth.shape == (2, 24, 32, 1) and out.radii.shape == (2, 40, 2)
    assert out.num_visible.shape == (2,) and (out.num_visible > 20).all()
    ref = dense_reference(g, w2c, K, 32, 24)
    assert (out.color - ref[0]).abs().max() < 1e-10
    assert (out.depth - ref[2]).abs().max() < 1e-9


def test_single_camera_and_3x4():
    g, w2c, K = random_scene(30, seed=11)
    full = render(g, w2c, K, 32, 24)
    single = render(g, w2c[0], K[0], 32, 24)
    rows = render(g, w2c[0, :3], K[0], 32, 24)
    assert single.color.shape == (1, 24, 32, 3)
    assert torch.equal(single.color, full.color) and torch.equal(rows.color, full.color)


def test_lower_sh_degree():
    g, w2c, K = random_scene(30, seed=12, sh_degree=3)
    out = render(g, w2c, K, 32, 24, sh_degree=1)
    g1 = Gaussians(means=g.means, quats=g.quats, scales=g.scales, opacities=g.opacities,
                   sh=g.sh[:, :4])
    assert torch.equal(out.color, render(g1, w2c, K, 32, 24).color)
    with pytest.raises(Da3gsError):
        render(g1, w2c, K, 32, 24, sh_degree=2)


def test_background_compositing():
    g, w2c, K = random_scene(30, seed=13)
    black = render(g, w2c, K, 32, 24)
    bg = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    out = render(g, w2c, K, 32, 24, background=bg)
    assert torch.allclose(out.color, black.color + (1 - black.alpha) * bg)
    assert torch.equal(out.alpha, black.alpha) and torch.equal(out.depth, black.depth)
    assert (black.alpha < 0.5).any()   # some pixels really show the background


def test_float32_input_and_grad_to_camera():
    g, w2c, K = random_scene(30, seed=14, dtype=torch.float32)
    cam = w2c.clone().requires_grad_(True)
    out = render(g, cam, K, 32, 24)
    assert out.color.dtype == torch.float32
    out.color.sum().backward()
    assert cam.grad is not None and cam.grad.abs().sum() > 0


def test_backend_selection_and_errors():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
    g, w2c, K = random_scene(10, seed=15)
    with pytest.raises(Da3gsError, match="CUDA"):
        render(g, w2c, K, 32, 24, backend="gsplat")
    with pytest.raises(Da3gsError, match="backend"):
        render(g, w2c, K, 32, 24, backend="vulkan")
    with pytest.raises(Da3gsError):
        render(g, w2c[:, :2], K, 32, 24)
    with pytest.raises(Da3gsError):
        render(g, w2c, K, 0, 24)
    with pytest.raises(Da3gsError):
        render(g, w2c, K, 32, 24, background=torch.zeros(4))
    bad = Gaussians(means=g.means, quats=g.quats, scales=g.scales, opacities=g.opacities,
                    sh=g.sh[:, :3])
    with pytest.raises(Da3gsError):
        render(bad, w2c, K, 32, 24)


def test_gsplat_backend_errors_without_cuda():
    from da3gs.render.gsplat_backend import rasterize_gsplat
    g, w2c, K = random_scene(5, seed=16, dtype=torch.float32)
    with pytest.raises(Da3gsError, match="CUDA"):
        rasterize_gsplat(g.means, g.quats, g.scales, g.opacities, g.sh, w2c, K, 32, 24)


def test_render_package_does_not_import_gsplat():
    import subprocess
    import sys
    code = ("import sys, da3gs.render, torch; from tests.render.test_reference import random_scene;"
            "g, w, K = random_scene(5); da3gs.render.render(g, w, K, 8, 8);"
            "assert 'gsplat' not in sys.modules, 'gsplat imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def _batched_scenes(B=3, n=40, cams=2):
    scenes = [random_scene(n, seed=30 + b, sh_degree=1, cams=cams) for b in range(B)]
    g = Gaussians(**{k: torch.stack([getattr(s[0], k) for s in scenes])
                     for k in ("means", "quats", "scales", "opacities", "sh")})
    return scenes, g, torch.stack([s[1] for s in scenes]), torch.stack([s[2] for s in scenes])


def test_render_batch_equals_per_sample_render():
    from da3gs.render import render_batch

    scenes, g, w2c, K = _batched_scenes()
    bg = torch.rand(3, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for background in (None, bg[0, 0], bg):
        out = render_batch(g, w2c, K, 32, 24, background=background)
        assert out.color.shape == (3, 2, 24, 32, 3) and out.radii.shape == (3, 2, 40, 2)
        for b, (gb, wb, kb) in enumerate(scenes):
            bb = background if background is None or background.dim() == 1 else background[b]
            ref = render(gb, wb, kb, 32, 24, background=bb)
            for k in ("color", "alpha", "depth", "radii"):
                assert torch.equal(getattr(out, k)[b], getattr(ref, k)), k
    assert render_batch(g, w2c, K, 32, 24, radii=False).radii is None


def test_render_batch_errors():
    from da3gs.render import render_batch

    _, g, w2c, K = _batched_scenes()
    with pytest.raises(Da3gsError, match=r"means must be \(B, N, 3\)"):
        render_batch(Gaussians(means=g.means[0], quats=g.quats[0], scales=g.scales[0],
                               opacities=g.opacities[0], sh=g.sh[0]), w2c, K, 32, 24)
    with pytest.raises(Da3gsError, match="w2c must be"):
        render_batch(g, w2c[:2], K, 32, 24)
    with pytest.raises(Da3gsError, match="K must be"):
        render_batch(g, w2c, K[0], 32, 24)
    with pytest.raises(Da3gsError, match="opacities"):
        render_batch(Gaussians(means=g.means, quats=g.quats, scales=g.scales,
                               opacities=g.opacities[:, :5], sh=g.sh), w2c, K, 32, 24)
    with pytest.raises(Da3gsError, match="background"):
        render_batch(g, w2c, K, 32, 24, background=torch.zeros(2, 2, 3))
    with pytest.raises(Da3gsError, match="CUDA"):
        render_batch(g, w2c, K, 32, 24, backend="gsplat")


def test_gsplat_dense_radii_and_batch_support():
    """gsplat's packed radii (1.5: per-axis, with batch_ids over leading dims) to dense."""
    from types import SimpleNamespace

    from da3gs.render.gsplat_backend import _dense_radii, supports_batch_dims

    assert supports_batch_dims(SimpleNamespace(__version__="1.5.3"))
    assert not supports_batch_dims(SimpleNamespace(__version__="1.4.0"))
    assert supports_batch_dims(SimpleNamespace(__version__="1.10.0+cu12"))
    meta = {"radii": torch.tensor([[3, 4], [5, 6]], dtype=torch.int32),
            "batch_ids": torch.tensor([1, 0]), "camera_ids": torch.tensor([0, 1]),
            "gaussian_ids": torch.tensor([2, 0])}
    out = _dense_radii(meta, (2,), 2, 3, "cpu")
    assert out.shape == (2, 2, 3, 2) and int(out.sum()) == 18
    assert out[1, 0, 2].tolist() == [3, 4] and out[0, 1, 0].tolist() == [5, 6]
    meta14 = {"radii": torch.tensor([7, 8], dtype=torch.int32), "camera_ids": torch.tensor([0, 1]),
              "gaussian_ids": torch.tensor([1, 2])}
    out = _dense_radii(meta14, (), 2, 3, "cpu")
    assert out.shape == (2, 3, 2) and out[0, 1].tolist() == [7, 7] and out[1, 2].tolist() == [8, 8]
    unpacked = {"radii": torch.ones(2, 2, 3, 2, dtype=torch.int32)}
    assert _dense_radii(unpacked, (2,), 2, 3, "cpu").shape == (2, 2, 3, 2)
