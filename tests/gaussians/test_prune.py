"""Pruning: opacity, confidence percentile, image border, voxel merge; the report."""

from __future__ import annotations

import json
import math

import pytest
import torch

from da3gs.errors import Da3gsError
from da3gs.gaussians import prune_gaussians
from da3gs.types import Gaussians


def _grid(h=10, w=12, views=1, seed=0) -> Gaussians:
    n = h * w * views
    gen = torch.Generator().manual_seed(seed)
    v, r, c = torch.meshgrid(torch.arange(views), torch.arange(h), torch.arange(w), indexing="ij")
    return Gaussians(
        means=torch.randn(n, 3, generator=gen) * 10,
        quats=torch.tensor([1.0, 0, 0, 0]).repeat(n, 1),
        scales=torch.full((n, 3), 0.01),
        opacities=torch.rand(n, generator=gen),
        sh=torch.randn(n, 4, 3, generator=gen),
        conf=torch.arange(n, dtype=torch.float32),
        view=v.reshape(-1),
        pixel=torch.stack([r.reshape(-1), c.reshape(-1)], 1),
    )


def test_no_op():
    g = _grid()
    out, rep = prune_gaussians(g)
    assert len(out) == len(g) and rep.steps == [] and rep.initial == rep.final == len(g)


def test_opacity_and_confidence_counts():
    g = _grid()  # 120 Gaussians, conf 0..119
    out, rep = prune_gaussians(g, min_opacity=0.5)
    assert len(out) == int((g.opacities >= 0.5).sum()) and bool((out.opacities >= 0.5).all())
    out, rep = prune_gaussians(g, conf_percentile=25)
    thr = torch.quantile(g.conf.double(), 0.25).item()
    assert len(out) == int((g.conf >= thr).sum()) == 90
    out, rep = prune_gaussians(g, min_opacity=0.5, conf_percentile=25)
    assert [s.name for s in rep.steps] == ["opacity", "confidence"]
    assert rep.steps[0].before == 120 and rep.steps[1].before == rep.steps[0].after
    assert len(out) == int(((g.opacities >= 0.5) & (g.conf >= thr)).sum()) == rep.final


def test_border():
    g = _grid(h=10, w=12)
    out, rep = prune_gaussians(g, border=2, image_hw=(10, 12))
    assert len(out) == 6 * 8
    assert int(out.pixel[:, 0].min()) == 2 and int(out.pixel[:, 0].max()) == 7
    assert int(out.pixel[:, 1].min()) == 2 and int(out.pixel[:, 1].max()) == 9
    g2 = _grid(h=10, w=12, views=2)
    out, _ = prune_gaussians(g2, border=1, image_hw=[(10, 12), (12, 14)])  # view 1 has a bigger image
    # pixels span rows 0..9, cols 0..11 in both views; view 1 (12 x 14) only loses row 0 and col 0
    assert int((out.view == 1).sum()) == 9 * 11
    assert int((out.view == 0).sum()) == 8 * 10


def test_voxel_merge():
    q_a = torch.tensor([1.0, 0, 0, 0])
    q_b = torch.tensor([math.cos(0.3), math.sin(0.3), 0, 0])
    g = Gaussians(
        means=torch.tensor([[0.1, 0.1, 0.1], [0.5, 0.1, 0.1], [5.0, 5.0, 5.0]]),
        quats=torch.stack([q_a, q_b, q_a]),
        scales=torch.tensor([[0.1, 0.1, 0.1], [0.1, 0.1, 0.1], [0.3, 0.2, 0.1]]),
        opacities=torch.tensor([0.5, 0.5 + 1e-7, 0.9]),
        sh=torch.tensor([[[1.0, 1, 1]], [[3.0, 3, 3]], [[7.0, 7, 7]]]),
        conf=torch.tensor([1.0, 2.0, 3.0]),
        view=torch.tensor([0, 1, 1]),
        pixel=torch.tensor([[0, 0], [1, 1], [2, 2]]),
    )
    out, rep = prune_gaussians(g, voxel_size=1.0)
    assert len(out) == 2 and rep.steps[0].name == "voxel" and rep.steps[0].removed == 1
    torch.testing.assert_close(out.means[0], torch.tensor([0.3, 0.1, 0.1]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.sh[0, 0], torch.full((3,), 2.0), atol=1e-6, rtol=0)
    assert float(out.opacities[0]) == pytest.approx(0.5 + 1e-7)  # max
    assert torch.equal(out.quats[0], q_b) and int(out.view[0]) == 1 and float(out.conf[0]) == 2.0
    # moment matching: spread of +-0.2 along x (a rotation about x keeps x), isotropic 0.1 otherwise
    torch.testing.assert_close(out.scales[0], torch.tensor([math.sqrt(0.01 + 0.04), 0.1, 0.1]), atol=1e-6, rtol=0)
    # the lone Gaussian is kept bit for bit
    for k in ("means", "quats", "scales", "opacities", "sh", "conf", "view", "pixel"):
        assert torch.equal(getattr(out, k)[1], getattr(g, k)[2]), k


def test_voxel_counts_random():
    g = _grid(h=20, w=20)
    g.means = torch.rand(len(g), 3) * 4  # 4^3 = 64 cells of size 1
    out, rep = prune_gaussians(g, voxel_size=1.0)
    cells = torch.unique(torch.floor(g.means).long(), dim=0).shape[0]
    assert len(out) == cells == rep.final
    assert bool(torch.isfinite(out.scales).all()) and bool((out.scales > 0).all())


def test_errors_and_report_json():
    g = _grid()
    g_noconf = Gaussians(g.means, g.quats, g.scales, g.opacities, g.sh)
    with pytest.raises(Da3gsError, match="conf"):
        prune_gaussians(g_noconf, conf_percentile=10)
    with pytest.raises(Da3gsError, match="pixel"):
        prune_gaussians(g_noconf, border=2, image_hw=(10, 12))
    with pytest.raises(Da3gsError, match="image_hw"):
        prune_gaussians(g, border=2)
    with pytest.raises(Da3gsError, match="min_opacity"):
        prune_gaussians(g, min_opacity=2)
    _, rep = prune_gaussians(g, min_opacity=0.1, conf_percentile=10, border=1, image_hw=(10, 12), voxel_size=0.5)
    d = json.loads(json.dumps(rep.as_dict()))
    assert [s["name"] for s in d["steps"]] == ["opacity", "confidence", "border", "voxel"]
    assert d["initial"] == 120 and d["final"] == rep.final
    assert all(s["removed"] == s["before"] - s["after"] for s in d["steps"])
