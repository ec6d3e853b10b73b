"""Held-out novel-view numbers of a stage-2 network: :func:`nvs_metrics`.

For every held-out batch, the views are split as in training but deterministically
(``target_select="interleaved"``: targets evenly spaced, never view 0), the context views
go through the network twice, pose-free and pose-conditioned, and the targets are rendered
(pose-free: through the predicted cameras aligned to the ground truth on the context
cameras, as in training and as ``da3gs eval nvs`` does). PSNR and SSIM of the targets
(renders clamped to [0, 1]), and LPIPS through the same path as ``da3gs eval nvs``
(:func:`da3gs.metrics.lpips_models`; VGG by default, ``lpips_nets`` picks). Missing LPIPS weights
are reported (one warning on the ``da3gs`` logger, naming the fetch command), not silently
dropped; the other metrics are still computed.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
from torch import nn

from da3gs.geometry import c2w_to_w2c
from da3gs.models.gaussian_adapter import build_gaussians
from da3gs.render import render
from da3gs.train.stage2 import Stage2Config, _geometry, _net, frozen_forward, gs_head_forward

__all__ = ["nvs_metrics"]


log = logging.getLogger("da3gs")
_REPORTED: set[str] = set()  # LPIPS weight errors already reported in this process


def _lpips_nets(device, nets, weights=None) -> dict:
    """``{net: LPIPS}`` for scoring (:func:`da3gs.metrics.lpips_models`; ``weights``: the
    training config's ``stage2.loss.lpips_weights``, for a single net). Missing weights: ``{}``
    and one warning per distinct error (so every evaluation does not repeat it)."""
    from da3gs.metrics import LPIPSWeightsError, lpips_models

    try:
        return lpips_models(nets, device, weights if len(nets) == 1 else None)
    except LPIPSWeightsError as e:
        if str(e) not in _REPORTED:
            _REPORTED.add(str(e))
            log.warning("held-out LPIPS not computed: %s", e)
        return {}


@torch.no_grad()
def nvs_metrics(model: nn.Module, batches: list, cfg: Stage2Config, device: torch.device,
                lpips: bool = True, lpips_nets=("vgg",)) -> dict[str, float]:
    """Mean target-view PSNR / SSIM / LPIPS over ``batches`` (ViewBatch list, V >= 2 views),
    per pose mode: keys ``nvs_psnr/pose_free``, ``nvs_ssim/pose_conditioned``, ... LPIPS keys
    (``nvs_lpips/MODE`` for VGG, ``nvs_lpips_alex/MODE`` for AlexNet) only when ``lpips`` and
    the weights are found; missing weights are warned about (:func:`_lpips_nets`). The
    network's train/eval modes are restored afterwards."""
    from da3gs.metrics import psnr, ssim

    net = _net(model)
    was = net.training
    net.eval()
    lps = _lpips_nets(device, list(lpips_nets), cfg.loss.lpips_weights) if lpips else {}
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
                    for n, lp in lps.items():
                        key = "nvs_lpips" if n == "vgg" else f"nvs_lpips_{n}"
                        acc.setdefault(f"{key}/{mode}", []).extend(lp(pred, gt).tolist())
    finally:
        net.train(was)
    return {k: float(np.mean(v)) for k, v in acc.items() if v}
