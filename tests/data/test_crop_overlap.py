"""Resolutions, resize + crop with exact intrinsics, and overlap-based view choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from da3gs.data.crop import (
    PAPER_RESOLUTIONS,
    closest_resolution,
    num_tokens,
    resize_crop,
    resolution_set,
)
from da3gs.data.overlap import overlap_scores, select_views

from .mv_helpers import one_thread, ring_c2w  # noqa: F401


def test_resolution_set():
    hw = resolution_set(504)
    assert hw[:5] == [(504, 504), (378, 504), (336, 504), (280, 504), (504, 336)]
    assert len(hw) == len(PAPER_RESOLUTIONS)
    for base in (252, 280, 140, 100):
        for h, w in resolution_set(base):
            assert h % 14 == 0 and w % 14 == 0 and h >= 14 and w >= 14
    assert resolution_set(252)[0] == (252, 252) and num_tokens((252, 252)) == 324
    assert closest_resolution((480, 640), hw) == (378, 504)
    assert closest_resolution((640, 480), hw) == (504, 336) or closest_resolution((640, 480), hw)[0] > 378
    with pytest.raises(ValueError):
        resolution_set(10)


def _blob_image(H, W, u, v, sigma=2.5):
    yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    g = torch.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * sigma**2)).double()
    return g.expand(3, H, W).clone()


def _centroid(img):
    g = img[0].double()
    g = torch.where(g > 0.02 * g.max(), g, torch.zeros(()).double())
    H, W = g.shape
    yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    return float((g * xx).sum() / g.sum()), float((g * yy).sum() / g.sum())


def _project(K, X):
    p = K.double() @ X
    return float(p[0] / p[2]), float(p[1] / p[2])


@pytest.mark.parametrize("out_hw,zoom,at", [((28, 42), 1.0, (0.5, 0.5)), ((42, 28), 1.3, (0.55, 0.9)),
                                            ((56, 84), 1.0, (1.0, 0.0)), ((98, 140), 1.1, (0.3, 0.7))])
def test_resize_crop_projects_known_point(out_hw, zoom, at):
    """A 3D point imaged as a blob: after resize + crop the blob sits where the new K projects it."""
    H0, W0 = 60, 80
    K = torch.tensor([[70.0, 0.0, 41.0], [0.0, 66.0, 29.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
    X = torch.tensor([0.05, -0.03, 2.0], dtype=torch.float64)
    u0, v0 = _project(K, X)
    img = _blob_image(H0, W0, u0, v0, sigma=4.0)
    assert np.allclose(_centroid(img), (u0, v0), atol=0.02)
    out, K2, d = resize_crop(img.float(), K, out_hw, zoom=zoom, crop_at=at)
    assert out.shape == (3, *out_hw) and d is None and K2.dtype == K.dtype
    u, v = _project(K2, X)
    assert 3 < u < out_hw[1] - 3 and 3 < v < out_hw[0] - 3  # the blob is inside the crop
    cu, cv = _centroid(out)
    assert abs(cu - u) < 0.15 and abs(cv - v) < 0.15, ((cu, cv), (u, v))


def test_resize_crop_depth_nearest_exact():
    H0, W0 = 30, 40
    depth = torch.full((H0, W0), 1.0)
    depth[:, 20:] = 5.0
    depth[10:14, 5:9] = 0.0
    img = torch.rand(3, H0, W0)
    K = torch.tensor([[30.0, 0, 20], [0, 30.0, 15], [0, 0, 1]])
    for out_hw, zoom, at in [((14, 28), 1.0, (0.5, 0.5)), ((56, 56), 1.2, (0.2, 0.6)), ((28, 14), 1.0, (0.0, 1.0))]:
        _out, K2, d = resize_crop(img, K, out_hw, depth=depth, zoom=zoom, crop_at=at)
        assert d.shape == out_hw
        assert set(d.unique().tolist()) <= {0.0, 1.0, 5.0}  # copied, never interpolated
        # each output pixel centre maps back (through K2 and K) into a source pixel of that value
        A = K.double() @ torch.linalg.inv(K2.double())
        for (i, j) in [(0, 0), (out_hw[0] - 1, out_hw[1] - 1), (out_hw[0] // 2, out_hw[1] // 3)]:
            src = A @ torch.tensor([j + 0.5, i + 0.5, 1.0], dtype=torch.float64)
            assert d[i, j] == depth[int(src[1]), int(src[0])]


def test_resize_crop_rejects_zoom_below_one():
    with pytest.raises(ValueError):
        resize_crop(torch.rand(3, 8, 8), torch.eye(3), (4, 4), zoom=0.5)


def _cluster_scene():
    """8 cameras on a 70-degree arc looking at the origin, 4 on the far side looking away."""
    c2w = ring_c2w(list(np.linspace(0, 70, 8)) + [180, 200, 220, 240], outward=(8, 9, 10, 11))
    K = torch.tensor([[32.0, 0, 20], [0, 32.0, 15], [0, 0, 1]], dtype=torch.float64).repeat(12, 1, 1)
    return c2w, K, [(30, 40)] * 12


def test_overlap_scores_prefer_covisible_views():
    c2w, K, hw = _cluster_scene()
    s = overlap_scores(c2w, K, hw, 0)
    assert s.shape == (12,) and s[0] == 1.0
    assert bool((s[1:8] > 0.2).all()) and bool((s[8:] < 0.02).all())
    assert s[1] > s[7]  # the nearest neighbour on the arc overlaps most
    # depth-based covisibility (the reference view's depth: a plane through the origin)
    depth = torch.full((30, 40), float(c2w[0, :3, 3].norm()))
    sd = overlap_scores(c2w, K, hw, 0, depth_ref=depth)
    assert bool((sd[1:8] > 0.2).all()) and bool((sd[8:] < 0.02).all())
    # near/far bounds (LLFF) are used when given
    nf = torch.tensor([[2.0, 8.0]]).repeat(12, 1).double()
    sn = overlap_scores(c2w, K, hw, 0, near_far=nf)
    assert bool((sn[1:4] > 0.2).all()) and bool((sn[8:] < 0.02).all())


def test_select_views_chosen_overlap():
    c2w, K, hw = _cluster_scene()
    for seed in range(20):
        idx = select_views(c2w, K, hw, 5, np.random.default_rng(seed))
        assert len(idx) == 5 and len(set(idx)) == 5
        if idx[0] < 8:  # a covisible reference: every other view from the cluster
            assert all(i < 8 for i in idx), idx
    # asking for more views than overlap: fills with overlapping views, then repeats (never the outliers)
    idx = select_views(c2w[:8], K[:8], hw[:8], 12, np.random.default_rng(0))
    assert len(idx) == 12 and set(idx) == set(range(8))
    # deterministic given the generator's seed
    assert select_views(c2w, K, hw, 6, np.random.default_rng(3)) == select_views(c2w, K, hw, 6, np.random.default_rng(3))
