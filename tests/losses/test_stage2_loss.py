"""Stage-2 loss: MSE, LPIPS and the scale-shift-invariant depth term against hand values."""

import math

import pytest
import torch

from da3gs.errors import Da3gsError
from da3gs.losses.stage2 import Stage2LossConfig, build_lpips_loss, ssi_depth_loss, stage2_loss
from da3gs.metrics.lpips import lpips_cache_dir


def test_mse_part_by_hand():
    pred = torch.zeros(2, 3, 4, 5)
    gt = torch.full((2, 3, 4, 5), 0.5)
    gt[1] = 0.25
    loss, logs = stage2_loss(pred, gt, cfg=Stage2LossConfig(lpips_weight=0.0, mse_weight=2.0))
    mse = (0.25 + 0.0625) / 2
    assert float(logs["mse"]) == pytest.approx(mse)
    assert float(loss) == pytest.approx(2 * mse)
    assert float(logs["psnr"]) == pytest.approx(-10 * math.log10(mse), rel=1e-5)
    assert "lpips" not in logs and "depth" not in logs


def test_ssi_depth_by_hand():
    # gt [1, 2, 3, 4]: median 2 (lower middle), mean |d - 2| = 1 -> [-1, 0, 1, 2]
    # pred [1, 2, 3, 10]: median 2, mean |d - 2| = 2.5 -> [-0.4, 0, 0.4, 3.2]; mean |diff| = 0.6
    gt = torch.tensor([1.0, 2, 3, 4]).reshape(1, 2, 2)
    pred = torch.tensor([1.0, 2, 3, 10]).reshape(1, 2, 2).requires_grad_()
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    val = ssi_depth_loss(pred, gt, valid, min_valid=1)
    assert float(val.detach()) == pytest.approx(0.6)
    val.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    # through stage2_loss with its weight, beside the MSE part
    rgb = torch.zeros(1, 3, 2, 2)
    loss, logs = stage2_loss(rgb, rgb + 0.1, pred.detach(), gt, valid,
                             Stage2LossConfig(lpips_weight=0.0, depth_weight=0.5, depth_min_valid=1))
    assert float(logs["depth"]) == pytest.approx(0.6)
    assert float(loss) == pytest.approx(0.01 + 0.5 * 0.6, rel=1e-5)


def test_ssi_depth_invariance_and_masks():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 6, 7, generator=g) + 1
    valid = torch.rand(3, 6, 7, generator=g) > 0.3
    assert float(ssi_depth_loss(3.0 * gt + 5.0, gt, valid)) == pytest.approx(0.0, abs=1e-6)
    # invalid pixels do not count, whatever their values
    noisy = torch.where(valid, gt, torch.full_like(gt, 1e3))
    assert float(ssi_depth_loss(noisy, gt, valid)) == pytest.approx(0.0, abs=1e-6)
    # an image with too few valid pixels is left out; none left: 0, still differentiable
    pred = torch.rand(3, 6, 7, generator=g).requires_grad_()
    few = torch.zeros_like(valid)
    few[:, 0, :2] = True
    out = ssi_depth_loss(pred, gt, few, min_valid=16)
    assert float(out.detach()) == 0.0 and out.requires_grad
    mixed = valid.clone()
    mixed[0] = few[0]
    ref = ssi_depth_loss(pred[1:], gt[1:], valid[1:])
    assert float(ssi_depth_loss(pred, gt, mixed).detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    with pytest.raises(Da3gsError):
        ssi_depth_loss(pred, gt[:2], valid)


def test_lpips_term_and_errors(tmp_path):
    pred, gt = torch.rand(2, 3, 28, 42), torch.rand(2, 3, 28, 42)
    with pytest.raises(Da3gsError, match="lpips_fn"):
        stage2_loss(pred, gt, cfg=Stage2LossConfig(lpips_weight=0.05))
    assert build_lpips_loss(Stage2LossConfig(lpips_weight=0.0)) is None
    with pytest.raises(Da3gsError, match="lpips_weight=0"):
        build_lpips_loss(Stage2LossConfig(lpips_weights=str(tmp_path / "missing.safetensors")))
    # a fake LPIPS: the term enters with its weight
    loss, logs = stage2_loss(pred, gt, cfg=Stage2LossConfig(lpips_weight=0.05),
                             lpips_fn=lambda p, g: torch.full((p.shape[0],), 0.4))
    assert float(logs["lpips"]) == pytest.approx(0.4)
    assert float(loss) == pytest.approx(float(logs["mse"]) + 0.02, rel=1e-5)


@pytest.mark.skipif(not (lpips_cache_dir() / "lpips_alex.safetensors").is_file(),
                    reason="LPIPS weights not fetched (da3gs fetch lpips)")
def test_lpips_fp16_copy_loads(tmp_path):
    """The weights travel to the GPU machine as an fp16 copy (half the size); it loads into
    the fp32 network and gives the same loss to ~1e-3. AlexNet here for speed; VGG alike."""
    from safetensors.torch import load_file, save_file

    src = lpips_cache_dir() / "lpips_alex.safetensors"
    half = tmp_path / "lpips_alex_fp16.safetensors"
    save_file({k: v.half().contiguous() for k, v in load_file(str(src)).items()}, str(half))
    cfg32 = Stage2LossConfig(lpips_net="alex", lpips_weights=str(src))
    cfg16 = Stage2LossConfig(lpips_net="alex", lpips_weights=str(half))
    net32, net16 = build_lpips_loss(cfg32), build_lpips_loss(cfg16)
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 3, 64, 64, generator=g).requires_grad_()
    gt = torch.rand(2, 3, 64, 64, generator=g)
    l32, l16 = net32(pred, gt), net16(pred, gt)
    assert torch.allclose(l32, l16, atol=2e-3)
    assert float(net32(gt, gt).abs().max()) < 1e-6
    loss, logs = stage2_loss(pred, gt, cfg=cfg32, lpips_fn=net32)
    loss.backward()
    assert pred.grad.abs().sum() > 0
    assert logs["lpips"] == pytest.approx(float(l32.mean()), rel=1e-5)


def test_config_checks():
    with pytest.raises(Da3gsError, match="depth_source"):
        Stage2LossConfig(depth_source="sparse")
    with pytest.raises(Da3gsError, match="lpips_net"):
        Stage2LossConfig(lpips_net="squeeze")
    with pytest.raises(Da3gsError, match=">= 0"):
        Stage2LossConfig(mse_weight=-1)
