"""``da3gs.metrics.recon`` against the official ``evaluate_3d_reconstruction`` point-cloud
metrics: ``down_sample=None`` always (numpy inputs, open3d only a container, stubbed if it does
not import); the voxel down-sampling against the real open3d, skipped where it does not import."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from da3gs.metrics import MetricsError
from da3gs.metrics.recon import (BENCH_DOWN_SAMPLE, BENCH_THRESHOLDS, nn_distances, recon_metrics,
                                 voxel_down_sample)
from tests.official_bench import bench_utils, open3d_stubbed


class _Cloud:
    """Stand-in for ``open3d.geometry.PointCloud`` when open3d does not import: the official
    function only stores and reads back ``.points`` with ``down_sample=None``."""

    points = None


def _official(pred, gt, thr, monkeypatch):
    u = bench_utils()
    if open3d_stubbed():
        o3d = SimpleNamespace(geometry=SimpleNamespace(PointCloud=_Cloud),
                              utility=SimpleNamespace(Vector3dVector=np.asarray))
        monkeypatch.setattr(u, "o3d", o3d)
    return u.evaluate_3d_reconstruction(pred, gt, threshold=thr, down_sample=None)


@pytest.mark.parametrize("seed,m,n,noise", [(0, 500, 700, 0.02), (1, 2000, 300, 0.1), (2, 1, 50, 0.0),
                                            (3, 800, 800, 0.5)])
def test_matches_official(seed, m, n, noise, monkeypatch):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(-1, 1, (n, 3))
    pred = gt[rng.integers(0, n, m)] + rng.normal(0, noise, (m, 3))
    for thr in sorted(set(BENCH_THRESHOLDS.values())):
        ours, ref = recon_metrics(pred, gt, thr), _official(pred, gt, thr, monkeypatch)
        assert set(ours) == set(ref)
        for k in ours:
            assert ours[k] == pytest.approx(ref[k], abs=1e-9), k


def test_identical_and_empty_and_errors():
    gt = torch.rand(100, 3, dtype=torch.float64)
    r = recon_metrics(gt, gt)
    assert r["acc"] == r["comp"] == r["overall"] == 0.0 and r["fscore"] == 1.0
    r = recon_metrics(np.zeros((0, 3)), gt)
    assert r["acc"] == float("inf") and r["fscore"] == 0.0
    far = gt + 10.0
    assert recon_metrics(far, gt)["fscore"] == 0.0
    assert torch.allclose(nn_distances(gt, far[:3]), (far[:3, None] - gt[None]).norm(dim=-1).min(1).values)
    with pytest.raises(MetricsError, match="threshold"):
        recon_metrics(gt, gt, threshold=0)
    with pytest.raises(MetricsError, match="pred_points"):
        recon_metrics(gt[:, :2], gt)
    bad = gt.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(MetricsError, match="NaN"):
        recon_metrics(gt, bad)


def _real_open3d():
    bench_utils()
    if open3d_stubbed():
        pytest.skip("open3d does not import here (system libraries such as libusb-1.0 missing)")
    import open3d

    return open3d


@pytest.mark.parametrize("seed,n,voxel", [(0, 3000, 0.05), (1, 500, 4.0 / 512.0 * 5), (2, 2000, 0.02),
                                          (3, 1, 0.1), (4, 4000, 4.0 / 512.0)])
def test_voxel_down_sample_matches_open3d(seed, n, voxel):
    o3d = _real_open3d()
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-1, 1, (n, 3)) * rng.uniform(0.1, 3.0, 3) + rng.normal(0, 5, 3)
    if n > 10:  # points exactly on voxel faces of the grid open3d builds
        pts[:10] = pts.min(0) - voxel / 2 + voxel * rng.integers(1, 5, (10, 3))
    pc = o3d.geometry.PointCloud()
    pc.points = o3d.utility.Vector3dVector(pts)
    ref = np.asarray(pc.voxel_down_sample(voxel).points)
    ours = voxel_down_sample(pts, voxel).numpy()
    assert ours.shape == ref.shape
    key = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    np.testing.assert_allclose(key(ours), key(ref), atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_down_sampled_metrics_match_official(seed):
    _real_open3d()
    u = bench_utils()
    rng = np.random.default_rng(seed)
    gt = rng.uniform(-1, 1, (3000, 3))
    pred = gt[rng.integers(0, 3000, 2500)] + rng.normal(0, 0.03, (2500, 3))
    for name, thr in BENCH_THRESHOLDS.items():
        ds = BENCH_DOWN_SAMPLE[name]
        ours = recon_metrics(pred, gt, thr, down_sample=ds)
        ref = u.evaluate_3d_reconstruction(pred, gt, threshold=thr, down_sample=ds)
        for k in ref:
            assert ours[k] == pytest.approx(ref[k], abs=1e-9), (name, k)


def test_voxel_down_sample_basics():
    pts = np.array([[0.0, 0, 0], [0.01, 0, 0], [1.0, 1, 1]])
    out = voxel_down_sample(pts, 0.1).numpy()
    np.testing.assert_allclose(out, [[0.005, 0, 0], [1.0, 1, 1]])
    assert voxel_down_sample(np.zeros((0, 3)), 0.1).shape == (0, 3)
    with pytest.raises(MetricsError, match="voxel_size"):
        voxel_down_sample(pts, 0)
