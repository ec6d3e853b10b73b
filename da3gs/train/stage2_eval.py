"""Held-out novel-view numbers of a stage-2 network: :func:`nvs_metrics`.

For every held-out batch, the views are split as in training but deterministically
(``target_select="interleaved"``: targets evenly spaced, never view 0), the context views
go through the network twice, pose-free and pose-conditioned, and the targets are rendered
(pose-free: through the predicted cameras aligned to the ground truth on the context
cameras, as in training and as ``da3gs eval nvs`` does). PSNR and SSIM of the targets
(renders clamped to [0, 1]), and LPIPS (VGG) when its weights are available offline.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from da3gs.geometry import c2w_to_w2c
from da3gs.models.gaussian_adapter import build_gaussians
from da3gs.render import render
from da3gs.train.stage2 import Stage2Config, _geometry, _net, frozen_forward, gs_head_forward

__all__ = ["nvs_metrics"]


def _lpips_net(device, weights=None):
    """LPIPS (VGG) for scoring, from ``weights`` (the training config's
    ``stage2.loss.lpips_weights``) or the default search places; None when not found."""
    from da3gs.metrics.lpips import LPIPSWeightsError, load_lpips

    try:
        return load_lpips("vgg", weights=weights, device=device)
    except LPIPSWeightsError:
        return None


@torch.no_grad()
def nvs_metrics(model: nn.Module, batches: list, cfg: Stage2Config, device: torch.device,
                lpips: bool = True) -> dict[str, float]:
    """Mean target-view PSNR / SSIM / LPIPS over ``batches`` (ViewBatch list, V >= 2 views),
    per pose mode: keys ``nvs_psnr/pose_free``, ``nvs_ssim/pose_conditioned``, ... (LPIPS
    keys only when ``lpips`` and the VGG weights are found). The network's train/eval modes
    are restored afterwards."""
    from da3gs.metrics import psnr, ssim

    net = _net(model)
    was = net.training
    net.eval()
    lp = _lpips_net(device, cfg.loss.lpips_weights) if lpips else None
    acc: dict[str, list[float]] = {}
    try:
        for batch in batches:
            batch = batch.to(device)
            B, V, H, W = batch.shape
            n_t = max(1, min(cfg.num_targets, (V - 1) // 2))
            ecfg = dataclasses.replace(cfg, num_targets=n_t, target_select="interleaved")
            for mode, flag in (("pose_free", False), ("pose_conditioned", True)):
                batch.pose_conditioned = torch.full((B,), flag, device=device)
                fo = frozen_forward(model, batch, ecfg)
                raw, density = gs_head_forward(model, fo, ecfg)
                bg = torch.tensor(cfg.background, dtype=torch.float32, device=device)
                for b in range(B):
                    g = build_gaussians(raw[b], density[b], fo.depth[b], fo.frame_c2w[b],
                                        fo.frame_K[b], net.preset.sh_degree,
                                        _geometry(model, cfg), depth_scale=float(fo.depth_scale[b]))
                    w2c = c2w_to_w2c(batch.c2w[b, fo.tgt].float())
                    out = render(g, w2c, batch.K[b, fo.tgt].float(), W, H, backend=cfg.backend,
                                 background=bg)
                    pred = out.color.permute(0, 3, 1, 2).clamp(0, 1)
                    gt = batch.images[b, fo.tgt].float()
                    acc.setdefault(f"nvs_psnr/{mode}", []).extend(psnr(pred, gt).tolist())
                    acc.setdefault(f"nvs_ssim/{mode}", []).extend(ssim(pred, gt).tolist())
                    if lp is not None:
                        acc.setdefault(f"nvs_lpips/{mode}", []).extend(lp(pred, gt).tolist())
    finally:
        net.train(was)
    return {k: float(np.mean(v)) for k, v in acc.items() if v}
