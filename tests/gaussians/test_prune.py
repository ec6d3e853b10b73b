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


def _two_views_of_a_plane(dist_b: float, h=8, w=8):
    """Views 0 and 1 look down +z at the plane z = 2 (view 0 from the origin, view 1 from
    z = 2 - dist_b); each pixel-aligned Gaussian lies on the plane at its pixel's ray."""
    from da3gs.geometry import unproject_depth

    K = torch.tensor([[10.0, 0, w / 2], [0, 10.0, h / 2], [0, 0, 1]]).expand(2, 3, 3).clone()
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[1, 2, 3] = 2.0 - dist_b
    depth = torch.stack([torch.full((h, w), 2.0), torch.full((h, w), dist_b)])
    pts = unproject_depth(depth, c2w, K).reshape(-1, 3)
    n = pts.shape[0]
    v, r, c = torch.meshgrid(torch.arange(2), torch.arange(h), torch.arange(w), indexing="ij")
    g = Gaussians(means=pts, quats=torch.tensor([1.0, 0, 0, 0]).repeat(n, 1),
                  scales=(depth.reshape(-1, 1) / 10 * 0.5).expand(n, 3).clone(),
                  opacities=torch.full((n,), 0.8), sh=torch.rand(n, 1, 3),
                  view=v.reshape(-1), pixel=torch.stack([r.reshape(-1), c.reshape(-1)], 1))
    return g, c2w, K


def test_footprint_merge_across_views():
    from da3gs.gaussians import footprint_cells

    # same distance: the two views' splats of one surface share cells and merge
    g, c2w, K = _two_views_of_a_plane(2.0)
    out, rep = prune_gaussians(g, merge_scale=1.0, c2w=c2w, K=K)
    assert rep.steps[0].name == "merge" and rep.steps[0].params == {"merge_scale": 1.0}
    assert len(out) <= len(g) // 2 and len(out) == rep.final
    cells = footprint_cells(g, c2w, K, 1.0)
    assert torch.equal(cells[: len(g) // 2], cells[len(g) // 2:])  # view 1 repeats view 0's cells
    assert (cells[:, 0] == round(math.log2(2.0 / 10))).all()  # level from the footprint 0.2
    # a view 4x closer has 4x finer footprints: a different level, nothing merged across views
    g, c2w, K = _two_views_of_a_plane(0.5)
    cells = footprint_cells(g, c2w, K, 1.0)
    assert set(cells[: len(g) // 2, 0].tolist()).isdisjoint(cells[len(g) // 2:, 0].tolist())
    out, _ = prune_gaussians(g, merge_scale=1.0, c2w=c2w, K=K)
    alone = [len(prune_gaussians(g.subset(g.view == v), merge_scale=1.0, c2w=c2w, K=K)[0]) for v in (0, 1)]
    assert len(out) == sum(alone)  # merged within each view only, never across
    # larger merge_scale, coarser cells, fewer Gaussians
    g, c2w, K = _two_views_of_a_plane(2.0)
    counts = [len(prune_gaussians(g, merge_scale=s, c2w=c2w, K=K)[0]) for s in (0.5, 1.0, 4.0)]
    assert counts[0] >= counts[1] > counts[2]


def test_footprint_merge_errors():
    g, c2w, K = _two_views_of_a_plane(2.0)
    with pytest.raises(Da3gsError, match="cameras"):
        prune_gaussians(g, merge_scale=1.0)
    with pytest.raises(Da3gsError, match="merge_scale"):
        prune_gaussians(g, merge_scale=-1.0, c2w=c2w, K=K)
    with pytest.raises(Da3gsError, match="view index"):
        prune_gaussians(g, merge_scale=1.0, c2w=c2w[:1], K=K[:1])
    g.view = None
    with pytest.raises(Da3gsError, match="no view indices"):
        prune_gaussians(g, merge_scale=1.0, c2w=c2w, K=K)


def test_row_grouping_equals_unique_rows():
    from da3gs.gaussians.prune import _flat_keys, _group_rows

    gen = torch.Generator().manual_seed(0)
    big = torch.cat([torch.randint(-3, 3, (300, 4), generator=gen),
                     torch.tensor([[2 ** 40, -(2 ** 40), 2 ** 30, 0]])])  # box too large for one int64
    assert _flat_keys(big).ndim == 2
    for keys in (torch.randint(-5, 5, (500, 4), generator=gen), big, torch.zeros((3, 3), dtype=torch.long)):
        _, inv_ref, counts_ref = torch.unique(keys, dim=0, return_inverse=True, return_counts=True)
        inv, counts = _group_rows(keys)
        assert torch.equal(inv, inv_ref) and torch.equal(counts, counts_ref)
