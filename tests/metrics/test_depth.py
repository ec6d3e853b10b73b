import math

import pytest
import torch

from da3gs.metrics import MetricsError, depth_metrics
from da3gs.metrics.depth import DEPTH_METRICS, align_depth


def _gt(B=2, H=12, W=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, H, W, generator=g) * 4 + 1


def test_scaled_prediction():
    gt = _gt()
    m = depth_metrics(2 * gt, gt, align="none")
    assert m["abs_rel"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(float(gt.pow(2).mean(dim=(1, 2)).sqrt().mean()), rel=1e-6)
    assert m["log_rmse"] == pytest.approx(math.log(2), rel=1e-6)
    assert m["delta1"] == m["delta2"] == m["delta3"] == 0.0  # ratio 2 > 1.25^3
    assert m["n_images"] == 2
    for align in ("median", "lstsq", "lstsq_scale"):
        m = depth_metrics(2 * gt, gt, align=align)
        assert m["abs_rel"] == pytest.approx(0.0, abs=1e-7)
        assert m["rmse"] == pytest.approx(0.0, abs=1e-6)
        assert m["delta1"] == 1.0
    m = depth_metrics(2 * gt + 1, gt, align="lstsq")
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-7)
    assert set(DEPTH_METRICS) <= set(m)


def test_known_values():
    gt = torch.tensor([[1.0, 2.0], [4.0, 4.0]])
    pred = torch.tensor([[1.1, 2.0], [4.0, 6.0]])
    m = depth_metrics(pred, gt, align="none")
    assert m["abs_rel"] == pytest.approx((0.1 + 0.5) / 4)
    assert m["sq_rel"] == pytest.approx((0.01 + 1.0) / 4)
    assert m["rmse"] == pytest.approx(math.sqrt((0.01 + 4.0) / 4))
    assert m["delta1"] == pytest.approx(0.75)
    assert m["delta2"] == pytest.approx(1.0)


def test_invalid_gt_and_mask():
    gt = _gt(B=1)
    pred = gt.clone()
    pred[0, :2] = 100.0  # wrong where gt is invalid or masked: must not count
    gt_bad = gt.clone()
    gt_bad[0, 0] = 0.0
    gt_bad[0, 1, :5] = float("nan")
    gt_bad[0, 1, 5:] = float("inf")
    m = depth_metrics(pred, gt_bad, align="none")
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-7)
    mask = torch.ones(12, 16, dtype=torch.bool)
    mask[:2] = False
    m = depth_metrics(pred, gt, mask=mask, align="median")
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-7)
    m = depth_metrics(pred[:, None], gt[:, None], mask=mask.float()[None, None], align="none")
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-7)


def test_reduction_none_and_empty_images():
    gt = _gt(B=3)
    gt[1] = 0.0  # no valid pixel
    out = depth_metrics(1.1 * gt, gt, align="none", reduction="none")
    assert out["abs_rel"].shape == (3,)
    assert math.isnan(float(out["abs_rel"][1]))
    assert float(out["abs_rel"][0]) == pytest.approx(0.1, rel=1e-5)
    m = depth_metrics(1.1 * gt, gt, align="none")
    assert m["n_images"] == 2 and m["abs_rel"] == pytest.approx(0.1, rel=1e-5)
    with pytest.raises(MetricsError, match="no valid pixel"):
        depth_metrics(gt, torch.zeros_like(gt))


def test_nonpositive_prediction_is_finite():
    gt = _gt(B=1)
    pred = gt.clone()
    pred[0, 0, 0] = -1.0
    m = depth_metrics(pred, gt, align="none")
    assert all(math.isfinite(v) for v in m.values())
    assert m["delta1"] < 1.0


def test_align_depth_and_errors():
    gt = _gt(B=2)
    valid = torch.ones_like(gt, dtype=torch.bool)
    assert torch.allclose(align_depth(0.5 * gt, gt, valid, "median"), gt.double(), atol=1e-6)
    assert torch.allclose(align_depth(0.5 * gt - 2, gt, valid, "lstsq"), gt.double(), atol=1e-5)
    with pytest.raises(MetricsError, match="pred/gt"):
        depth_metrics(torch.rand(2, 4, 4), torch.rand(2, 4, 5))
    with pytest.raises(MetricsError, match="align"):
        depth_metrics(gt, gt, align="mean")
    with pytest.raises(MetricsError, match="lstsq_scale"):
        align_depth(gt, gt, valid, "mean")
    with pytest.raises(MetricsError, match="mask"):
        depth_metrics(gt, gt, mask=torch.ones(3, 3))
    with pytest.raises(MetricsError, match="pred"):
        depth_metrics(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4))
