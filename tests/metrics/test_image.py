import math

import numpy as np
import pytest
import torch

from da3gs.errors import Da3gsError
from da3gs.metrics import MetricsError, psnr, ssim


def _images(H, W, seed=0):
    """A few (pred, gt) pairs of shape (3, H, W): random, structured, blurred, constant."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    rnd = torch.rand(3, H, W, generator=g, dtype=torch.float64)
    grad = torch.stack([xx, yy, (xx + yy) / 2]).double()
    checker = (((torch.arange(H)[:, None] // 3 + torch.arange(W)[None] // 3) % 2).double()).expand(3, H, W)
    sines = torch.stack([torch.sin(k * 7 * xx) * torch.cos(k * 5 * yy) * 0.5 + 0.5 for k in (1, 2, 3)]).double()
    pairs = [
        (rnd, torch.rand(3, H, W, generator=g, dtype=torch.float64)),
        (grad, (grad + 0.05 * torch.randn(3, H, W, generator=g, dtype=torch.float64)).clamp(0, 1)),
        (checker, 0.8 * checker + 0.1),
        (sines, torch.roll(sines, 1, dims=-1)),
        (torch.full((3, H, W), 0.3, dtype=torch.float64), torch.full((3, H, W), 0.6, dtype=torch.float64)),
    ]
    return pairs


def test_psnr_constant_offset_is_20db():
    gt = torch.rand(4, 3, 17, 23)
    out = psnr(gt + 0.1, gt)
    assert out.shape == (4,)
    assert torch.allclose(out, torch.full((4,), 20.0), atol=1e-4)
    single = psnr(torch.zeros(3, 8, 8), torch.full((3, 8, 8), 0.1))
    assert single.shape == (1,) and abs(float(single) - 20.0) < 1e-5


def test_psnr_data_range_mask_and_identical():
    gt = torch.rand(2, 3, 8, 8)
    assert torch.allclose(psnr(255 * (gt + 0.1), 255 * gt, data_range=255.0), torch.full((2,), 20.0), atol=1e-3)
    assert torch.isinf(psnr(gt, gt)).all()
    pred = gt.clone()
    pred[:, :, :4] += 0.5  # error only in the top half
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, 4:] = True
    assert torch.isinf(psnr(pred, gt, mask=mask)).all()
    mask_top = ~mask
    expected = 10 * math.log10(1 / 0.25)
    assert torch.allclose(psnr(pred, gt, mask=mask_top[:, None]), torch.full((2,), expected), atol=1e-4)
    assert torch.allclose(psnr(pred, gt, mask=mask_top[0]), torch.full((2,), expected), atol=1e-4)


def test_psnr_errors():
    with pytest.raises(MetricsError, match="pred/gt"):
        psnr(torch.rand(3, 8, 8), torch.rand(3, 8, 9))
    with pytest.raises(MetricsError, match="data_range"):
        psnr(torch.rand(3, 8, 8), torch.rand(3, 8, 8), data_range=0)
    with pytest.raises(Da3gsError, match="pred"):
        psnr(torch.rand(8, 8), torch.rand(8, 8))
    with pytest.raises(MetricsError, match="mask"):
        psnr(torch.rand(3, 8, 8), torch.rand(3, 8, 8), mask=torch.ones(5, 5))


@pytest.mark.parametrize("H,W", [(11, 11), (23, 37), (64, 65), (101, 67)])
def test_ssim_skimage_mode_matches_skimage(H, W):
    skm = pytest.importorskip("skimage.metrics")
    worst = 0.0
    for a, b in _images(H, W, seed=H * W):
        ref = skm.structural_similarity(
            a.permute(1, 2, 0).numpy(), b.permute(1, 2, 0).numpy(), channel_axis=-1, data_range=1.0,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )
        for dtype in (torch.float64, torch.float32):
            ours = ssim(a.to(dtype), b.to(dtype), mode="skimage")
            worst = max(worst, abs(float(ours[0]) - ref))
    assert worst < 1e-4, worst


@pytest.mark.parametrize("H,W", [(6, 9), (23, 37), (64, 65), (101, 67)])
def test_ssim_default_is_torchmetrics(H, W):
    tm = pytest.importorskip("torchmetrics.functional.image")
    pairs = _images(H, W, seed=H + W)
    a = torch.stack([p for p, _ in pairs]).float()
    b = torch.stack([q for _, q in pairs]).float()
    ref = tm.structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    ours = ssim(a, b)
    assert ours.shape == (len(pairs),)
    assert (ours - ref).abs().max() < 1e-4


def test_ssim_properties():
    a, b = torch.rand(2, 3, 32, 40), torch.rand(2, 3, 32, 40)
    for mode in ("gaussian", "skimage"):
        assert torch.allclose(ssim(a, a, mode=mode), torch.ones(2), atol=1e-6)
        assert torch.allclose(ssim(a, b, mode=mode), ssim(b, a, mode=mode), atol=1e-6)
    assert ssim(a[0], b[0]).shape == (1,)
    # the two conventions differ only by the border: close, not equal
    gap = (ssim(a, b) - ssim(a, b, mode="skimage")).abs().max()
    assert 0 < gap < 0.05


def test_ssim_errors():
    with pytest.raises(MetricsError, match="mode"):
        ssim(torch.rand(3, 16, 16), torch.rand(3, 16, 16), mode="box")
    with pytest.raises(MetricsError, match="at least 11"):
        ssim(torch.rand(3, 10, 16), torch.rand(3, 10, 16), mode="skimage")
    with pytest.raises(MetricsError, match="at least 6"):
        ssim(torch.rand(3, 5, 16), torch.rand(3, 5, 16))
    with pytest.raises(MetricsError, match="dtype"):
        ssim(torch.zeros(3, 16, 16, dtype=torch.uint8), torch.zeros(3, 16, 16, dtype=torch.uint8))
    assert np.isfinite(float(ssim(torch.zeros(3, 16, 16), torch.zeros(3, 16, 16))))
