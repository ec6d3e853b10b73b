"""``da3gs.metrics.recon`` against the official ``evaluate_3d_reconstruction`` point-cloud
metrics (``down_sample=None``; numpy inputs so open3d is only used as a container)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from da3gs.metrics import MetricsError
from da3gs.metrics.recon import BENCH_THRESHOLDS, nn_distances, recon_metrics
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
