"""Test-time refinement: fits a perturbed cloud to rendered views, camera gauge, determinism."""

from __future__ import annotations

import json
import math

import pytest
import torch

from da3gs.errors import Da3gsError
from da3gs.geometry import c2w_to_w2c, mat_to_quat, quat_to_mat
from da3gs.render import render
from da3gs.train import refine_gaussians
from da3gs.train.refine import scene_extent, so3_exp
from da3gs.types import Gaussians


def _cloud(n: int, seed: int) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=gen) * torch.tensor([2.0, 1.5, 0.5]) - torch.tensor([1.0, 0.75, -2.5])
    q = torch.randn(n, 4, generator=gen)
    return Gaussians(means=means, quats=q / q.norm(dim=-1, keepdim=True),
                     scales=torch.rand(n, 3, generator=gen) * 0.1 + 0.03,
                     opacities=torch.rand(n, generator=gen) * 0.5 + 0.4,
                     sh=torch.randn(n, 4, 3, generator=gen) * 0.5)


@pytest.fixture(scope="module")
def views():
    """2 views 32 x 24 of a target cloud (white background)."""
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[1, 0, 3] = 0.3
    w2c = c2w_to_w2c(c2w)
    K = torch.tensor([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]]).repeat(2, 1, 1)
    imgs = render(_cloud(200, 0), w2c, K, 32, 24, backend="torch", background=torch.ones(3))
    return imgs.color.permute(0, 3, 1, 2).clamp(0, 1), w2c, K


def test_refinement_fits_the_views(views):
    imgs, w2c, K = views
    init = _cloud(200, 1)
    g, rep = refine_gaussians(init, imgs, w2c, K, 80, background=(1.0, 1.0, 1.0), backend="torch")
    assert rep.psnr_after > rep.psnr_before + 3
    assert sum(rep.loss[-10:]) / 10 < sum(rep.loss[:10]) / 10
    assert len(rep.loss) == 80 and len(g) == 200 and rep.num_gaussians == 200
    assert torch.allclose(g.quats.norm(dim=-1), torch.ones(200), atol=1e-5)
    assert (g.scales > 0).all() and ((g.opacities > 0) & (g.opacities < 1)).all()
    assert not g.means.requires_grad and not init.means.requires_grad
    d = rep.as_dict(curve_points=10)
    assert len(d["loss_curve"]) == 10 and d["loss_curve"][-1][0] == 80 and not d["densification"]
    json.dumps(d)


def test_deterministic_and_zero_steps(views):
    imgs, w2c, K = views
    init = _cloud(60, 2)
    calls = []
    _, a = refine_gaussians(init, imgs, w2c, K, 5, backend="torch", seed=3,
                            on_step=lambda *c: calls.append(c))
    _, b = refine_gaussians(init, imgs, w2c, K, 5, backend="torch", seed=3)
    assert a.loss == b.loss
    assert calls == [(i + 1, 5, loss) for i, loss in enumerate(a.loss)]
    g0, r0 = refine_gaussians(init, imgs, w2c, K, 0, backend="torch")
    assert r0.loss == [] and math.isclose(r0.psnr_before, r0.psnr_after, abs_tol=1e-4)
    assert torch.allclose(g0.means, init.means) and torch.allclose(g0.opacities, init.opacities, atol=1e-6)


def test_camera_refinement_keeps_view_zero_fixed(views):
    imgs, w2c, K = views
    g, rep = refine_gaussians(_cloud(200, 1), imgs, w2c, K, 20, refine_cameras=True,
                              backend="torch", lr_camera_rot=1e-2, lr_camera_trans=1e-2)
    assert torch.equal(rep.w2c[0], w2c[0])
    assert rep.camera_rotation_deg[0] == 0.0 and rep.camera_translation[0] < 1e-6
    assert rep.camera_rotation_deg[1] > 0 or rep.camera_translation[1] > 0
    R = rep.w2c[1, :3, :3]
    assert torch.allclose(R @ R.T, torch.eye(3), atol=1e-5)
    assert "camera_rotation_deg" in rep.as_dict()


def test_so3_exp_and_extent():
    w = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.5], [1e-6, 0, 0]], requires_grad=True)
    R = so3_exp(w)
    assert torch.allclose(R[0], torch.eye(3))
    ang = float(w[1].detach().norm())
    q = torch.cat([torch.tensor([math.cos(ang / 2)]), math.sin(ang / 2) * w[1].detach() / ang])
    assert torch.allclose(R[1], quat_to_mat(q), atol=1e-6)
    assert torch.allclose(mat_to_quat(R[1].detach()), q, atol=1e-6)
    R.sum().backward()
    assert torch.isfinite(w.grad).all()
    w2c = torch.eye(4).repeat(2, 1, 1)
    w2c[1, 0, 3] = -1.0  # centres 0 and +1 on x
    assert math.isclose(scene_extent(w2c, torch.zeros(1, 3)), 0.55, rel_tol=1e-6)
    assert math.isclose(scene_extent(w2c[:1], torch.tensor([[0.0, 0, 2], [0, 0, 4], [0, 0, 3]])), 3.0)


def test_bad_inputs(views):
    imgs, w2c, K = views
    g = _cloud(10, 0)
    with pytest.raises(Da3gsError, match="steps"):
        refine_gaussians(g, imgs, w2c, K, -1)
    with pytest.raises(Da3gsError, match="images"):
        refine_gaussians(g, imgs[:, :2], w2c, K, 1)
    with pytest.raises(Da3gsError, match="w2c"):
        refine_gaussians(g, imgs, w2c[:1], K, 1)
    with pytest.raises(Da3gsError, match="unknown groups"):
        refine_gaussians(g, imgs, w2c, K, 1, lr={"foo": 1.0})
