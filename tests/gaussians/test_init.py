"""Random initialisation (:mod:`da3gs.gaussians.init`), as gsplat's simple_trainer / 3DGS."""

from __future__ import annotations

import sys

import pytest
import torch

from da3gs.errors import Da3gsError
from da3gs.gaussians import knn_mean_sq_distance, random_gaussians
from da3gs.geometry.sh import C0


def _brute_knn(points: torch.Tensor, k: int = 3) -> torch.Tensor:
    d = torch.cdist(points.double(), points.double())
    d.fill_diagonal_(float("inf"))
    return d.topk(k, largest=False).values.square().mean(1)


def test_random_gaussians_layout():
    centre = torch.tensor([1.0, -2.0, 0.5])
    g = random_gaussians(600, centre, 2.0, sh_degree=3, seed=3)
    assert len(g) == 600 and g.sh.shape == (600, 16, 3) and g.means.dtype == torch.float32
    off = (g.means.double() - centre.double()).abs()
    assert off.max() <= 2.0 + 1e-5 and off.max() > 1.8  # fills the cube
    assert torch.allclose(g.means.double().mean(0), centre.double(), atol=0.25)
    assert torch.equal(g.quats, torch.tensor([1.0, 0, 0, 0]).expand(600, 4))
    assert torch.all(g.opacities == 0.1)
    rgb = 0.5 + C0 * g.sh[:, 0]
    assert rgb.min() >= 0 and rgb.max() <= 1 and rgb.std() > 0.2  # uniform colours
    assert torch.all(g.sh[:, 1:] == 0)
    expect = _brute_knn(g.means).clamp_min(1e-7).sqrt()
    assert torch.allclose(g.scales[:, 0].double(), expect, rtol=1e-5)
    assert torch.equal(g.scales[:, 0], g.scales[:, 1]) and torch.equal(g.scales[:, 0], g.scales[:, 2])
    assert g.conf is None and g.view is None and g.pixel is None


def test_random_gaussians_seeded():
    a = random_gaussians(50, [0, 0, 0], 1.0, seed=7)
    b = random_gaussians(50, [0, 0, 0], 1.0, seed=7)
    c = random_gaussians(50, [0, 0, 0], 1.0, seed=8)
    assert torch.equal(a.means, b.means) and torch.equal(a.sh, b.sh)
    assert not torch.equal(a.means, c.means)
    assert random_gaussians(50, [0, 0, 0], 1.0, sh_degree=0).sh.shape == (50, 1, 3)


def test_knn_torch_fallback_matches(monkeypatch):
    """Without scipy the chunked torch path gives the same distances (chunks cross the self-pairs)."""
    pts = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
    ref = _brute_knn(pts)
    monkeypatch.setitem(sys.modules, "scipy.spatial", None)  # import fails -> torch path
    got = knn_mean_sq_distance(pts, 3, chunk=64)
    assert torch.allclose(got, ref, rtol=1e-9)
    pytest.importorskip("scipy")
    monkeypatch.undo()
    assert torch.allclose(knn_mean_sq_distance(pts, 3), ref, rtol=1e-9)


@pytest.mark.parametrize("kw, msg", [
    ({"num_points": 3}, "at least 4"), ({"half_size": 0.0}, "half-size"),
    ({"half_size": float("nan")}, "half-size"), ({"opacity": 1.0}, "opacity"),
    ({"sh_degree": 4}, "sh_degree"), ({"centre": [0, 0]}, "centre"),
])
def test_random_gaussians_errors(kw, msg):
    args = {"num_points": 10, "centre": [0, 0, 0], "half_size": 1.0, **kw}
    with pytest.raises(Da3gsError, match=msg):
        random_gaussians(**args)
