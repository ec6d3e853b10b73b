"""Scale-shift alignment: least squares, weighted L1 (IRLS) and RANSAC with MAD threshold."""

import pytest
import torch

from da3gs.geometry.depth_align import (
    l1_scale_shift,
    lstsq_scale_shift,
    robust_scale_shift,
)
from da3gs.geometry.errors import GeometryError


def _data(n=2000, s=2.5, t=-0.7, outlier_frac=0.3, noise=1e-3, seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(n, generator=g, dtype=torch.float64) * 4 + 0.5
    target = s * pred + t + noise * torch.randn(n, generator=g, dtype=torch.float64)
    out = torch.rand(n, generator=g) < outlier_frac
    target[out] = torch.rand(int(out.sum()), generator=g, dtype=torch.float64) * 30 - 5
    return pred, target, out


def test_lstsq_exact_masked_and_batched():
    p = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 9.0]], dtype=torch.float64)
    g = 3 * p + 1
    g[1, 3] = 100.0  # masked out
    m = torch.tensor([[True] * 4, [True, True, True, False]])
    s, t = lstsq_scale_shift(p, g, m)
    assert torch.allclose(s, torch.tensor([3.0, 3.0], dtype=torch.float64))
    assert torch.allclose(t, torch.tensor([1.0, 1.0], dtype=torch.float64))


def test_lstsq_matches_normal_equations():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(50, generator=g, dtype=torch.float64)
    y = torch.rand(50, generator=g, dtype=torch.float64)
    w = torch.rand(50, generator=g, dtype=torch.float64)
    s, t = lstsq_scale_shift(p, y, weight=w)
    A = torch.stack([p, torch.ones_like(p)], -1) * w.sqrt()[:, None]
    sol = torch.linalg.lstsq(A, (y * w.sqrt())[:, None]).solution[:, 0]
    assert torch.allclose(torch.stack([s, t]), sol, atol=1e-10)


def test_lstsq_degenerate():
    s, t = lstsq_scale_shift(torch.ones(5), torch.arange(5.0))
    assert float(s) == 0.0 and float(t) == pytest.approx(2.0)
    s, t = lstsq_scale_shift(torch.ones(5), torch.arange(5.0), torch.zeros(5, dtype=torch.bool))
    assert float(s) == 1.0 and float(t) == 0.0


def test_l1_fit_ignores_a_few_outliers():
    p = torch.linspace(1, 5, 40, dtype=torch.float64)
    g = 1.5 * p + 0.25
    g[[3, 17, 30]] += torch.tensor([9.0, -4.0, 20.0], dtype=torch.float64)
    s, t = l1_scale_shift(p, g, iters=50)
    assert float(s) == pytest.approx(1.5, abs=1e-4) and float(t) == pytest.approx(0.25, abs=1e-4)


def test_l1_fit_clamps_negative_scale():
    p = torch.linspace(1, 5, 10)
    s, _t = l1_scale_shift(p, -p + 10, min_scale=1e-3)
    assert float(s) == pytest.approx(1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ransac_recovers_scale_shift_under_30_percent_outliers(seed):
    pred, target, out = _data(seed=seed)
    s, t, inl = robust_scale_shift(pred, target, iters=100, generator=torch.Generator().manual_seed(seed),
                                   return_inliers=True)
    assert float(s) == pytest.approx(2.5, rel=1e-3)
    assert float(t) == pytest.approx(-0.7, abs=2e-3)
    # most true inliers kept, (almost) no outlier among the inliers; plain LS is far off
    assert float((inl & ~out).sum()) / float((~out).sum()) > 0.5
    assert float((inl & out).sum()) / float(inl.sum()) < 0.01
    s_ls, _ = lstsq_scale_shift(pred, target)
    assert abs(float(s_ls) - 2.5) > 0.2


def test_ransac_mask_shape_2d_and_determinism():
    pred, target, _ = _data(n=400, seed=3)
    pred, target = pred.reshape(20, 20), target.reshape(20, 20)
    mask = torch.ones(20, 20, dtype=torch.bool)
    mask[:, :2] = False
    a = robust_scale_shift(pred, target, mask)
    b = robust_scale_shift(pred, target, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert float(a[0]) > 0


def test_ransac_scale_is_positive_and_errors():
    p = torch.linspace(1, 2, 30)
    with pytest.raises(GeometryError):
        robust_scale_shift(p, -3 * p)  # only negative-scale fits exist
    with pytest.raises(GeometryError):
        robust_scale_shift(torch.ones(1), torch.ones(1))
    with pytest.raises(GeometryError):
        robust_scale_shift(torch.ones(3), torch.ones(4))
