"""transform_gaussians: a Sim(3) of the cloud and the cameras leaves the images unchanged;
build_gaussians_batched equals build_gaussians per sample."""

from __future__ import annotations

import pytest
import torch

from da3gs.geometry import GeometryError, Sim3, apply_sim3_to_c2w, c2w_to_w2c, quat_to_mat
from da3gs.geometry.gaussians import transform_gaussians
from da3gs.render import render
from da3gs.render.sh import eval_sh
from da3gs.types import Gaussians

from .helpers import random_rotation


def _cloud(n=120, degree=2, seed=0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=gen) * torch.tensor([1.6, 1.2, 0.8]) + torch.tensor([-0.8, -0.6, 2.0])
    q = torch.randn(n, 4, generator=gen)
    return Gaussians(means=means, quats=q / q.norm(dim=-1, keepdim=True),
                     scales=torch.rand(n, 3, generator=gen) * 0.08 + 0.02,
                     opacities=torch.rand(n, generator=gen) * 0.6 + 0.3,
                     sh=torch.randn(n, (degree + 1) ** 2, 3, generator=gen) * 0.4,
                     conf=torch.rand(n, generator=gen), view=torch.zeros(n, dtype=torch.long))


def _sim3(seed=1, s=1.7) -> Sim3:
    gen = torch.Generator().manual_seed(seed)
    return Sim3(random_rotation(gen), torch.randn(3, generator=gen, dtype=torch.float64),
                torch.tensor(s, dtype=torch.float64))


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_render_invariant_under_sim3(degree):
    g = _cloud(degree=degree)
    c2w = torch.eye(4, dtype=torch.float64)[None].repeat(2, 1, 1)
    c2w[1, 0, 3] = 0.3
    K = torch.tensor([[40.0, 0, 24], [0, 40.0, 18], [0, 0, 1]])
    sim = _sim3()
    g2 = transform_gaussians(g, sim)
    a = render(g, c2w_to_w2c(c2w).float(), K, 48, 36, backend="torch", background=torch.ones(3))
    b = render(g2, c2w_to_w2c(apply_sim3_to_c2w(sim, c2w)).float(), K, 48, 36, backend="torch",
               background=torch.ones(3))
    assert a.num_visible.min() > 50
    assert torch.allclose(a.color, b.color, atol=2e-4)
    assert torch.allclose(a.alpha, b.alpha, atol=2e-4)
    assert torch.allclose(b.depth, a.depth * 1.7, rtol=1e-3, atol=1e-3)


def test_fields_and_sh_rotation():
    g = _cloud(degree=2)
    sim = _sim3(seed=3, s=0.5)
    g2 = transform_gaussians(g, sim)
    R = sim.R.float()
    assert torch.allclose(g2.means, 0.5 * g.means @ R.T + sim.t.float(), atol=1e-5)
    assert torch.allclose(g2.scales, 0.5 * g.scales, atol=1e-7)
    assert torch.allclose(quat_to_mat(g2.quats), R @ quat_to_mat(g.quats), atol=1e-5)
    assert torch.allclose(g2.quats.norm(dim=-1), torch.ones(len(g)), atol=1e-6)
    assert g2.conf is g.conf and g2.view is g.view and g2.opacities.data_ptr() != g.opacities.data_ptr()
    # the colour seen along R d after the transform is the colour seen along d before
    d = torch.randn(len(g), 3, generator=torch.Generator().manual_seed(5))
    d = d / d.norm(dim=-1, keepdim=True)
    assert torch.allclose(eval_sh(2, d @ R.T, g2.sh), eval_sh(2, d, g.sh), atol=1e-5)
    # and the inverse transform gives the original back
    g3 = transform_gaussians(g2, sim.inverse())
    assert torch.allclose(g3.means, g.means, atol=1e-5) and torch.allclose(g3.sh, g.sh, atol=1e-5)
    assert torch.allclose(quat_to_mat(g3.quats), quat_to_mat(g.quats), atol=1e-5)


def test_rejects_batched_or_bad_scale():
    g = _cloud(n=4)
    sim = _sim3()
    with pytest.raises(GeometryError):
        transform_gaussians(g, Sim3(sim.R[None], sim.t[None], sim.s[None].expand(1)))
    with pytest.raises(GeometryError):
        transform_gaussians(g, Sim3(sim.R, sim.t, torch.tensor(-1.0, dtype=torch.float64)))


@pytest.mark.parametrize("geometry", ["da3gs", "official"])
def test_build_gaussians_batched_equals_per_sample(geometry):
    from da3gs.models.gaussian_adapter import build_gaussians, build_gaussians_batched

    g = torch.Generator().manual_seed(7)
    B, V, H, W = 2, 3, 5, 6
    raw = 0.3 * torch.randn(B, V, H, W, 37, generator=g)
    dens, depth = torch.rand(B, V, H, W, generator=g), 1 + torch.rand(B, V, H, W, generator=g)
    c2w = torch.eye(4).repeat(B, V, 1, 1)
    c2w[..., :3, 3] = torch.randn(B, V, 3, generator=g)
    K = torch.tensor([[5.0, 0, 3], [0, 5.0, 2.5], [0, 0, 1]]).repeat(B, V, 1, 1)
    scale = torch.tensor([0.5, 2.0])
    out = build_gaussians_batched(raw, dens, depth, c2w, K, 2, geometry, depth_scale=scale)
    assert out.means.shape == (B, V * H * W, 3) and out.sh.shape == (B, V * H * W, 9, 3)
    for b in range(B):
        ref = build_gaussians(raw[b], dens[b], depth[b], c2w[b], K[b], 2, geometry,
                              depth_scale=float(scale[b]))
        for k in ("means", "quats", "scales", "opacities", "sh", "view", "pixel"):
            torch.testing.assert_close(getattr(out, k)[b], getattr(ref, k), rtol=1e-6,
                                       atol=1e-6, msg=k)
