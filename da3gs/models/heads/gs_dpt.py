"""GS-DPT head: per-pixel raw Gaussian parameters from the backbone features plus the image."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from da3gs.nn.dpt_blocks import (FusionChain, LayerAdapters, Reassemble, add_uv_embedding,
                                 chunked_views, interpolate, output_conv2)



class GSDPT(nn.Module):
    """Raw per-pixel Gaussian channels and a density logit.

    Input: ``feats[i]: (B, V, h*w, dim_in)`` and ``images: (B, V, 3, H, W)`` as fed to the
    backbone (ImageNet-normalised). Output dict: ``raw_gs: (B, V, H, W, out_dim - 1)`` (linear)
    and ``raw_gs_conf: (B, V, H, W)`` (sigmoid). The channel layout is interpreted by the
    Gaussian adapter (``da3gs.models.gaussian_adapter``).
    """

    def __init__(self, dim_in: int, features: int, out_channels: Sequence[int], out_dim: int = 38,
                 patch_size: int = 14, chunk_size: int = 8):
        super().__init__()
        self.patch_size = patch_size
        self.chunk_size = chunk_size
        self.output_device: torch.device | None = None  # see chunked_views
        self.out_dim = out_dim
        self.reassemble = Reassemble(dim_in, out_channels, norm=False, pos_embed=True)
        self.adapters = LayerAdapters(out_channels, features)
        self.fusion = FusionChain(features)
        self.out1 = nn.Conv2d(features, features // 2, 3, 1, 1)
        self.out2 = output_conv2(features // 2, out_dim)
        m = features // 2
        self.images_merger = nn.Sequential(
            nn.Conv2d(3, m // 4, 3, 1, 1), nn.GELU(), nn.Conv2d(m // 4, m // 2, 3, 1, 1), nn.GELU(),
            nn.Conv2d(m // 2, m, 3, 1, 1), nn.GELU())

    def forward(self, feats: Sequence[torch.Tensor], images: torch.Tensor, H: int, W: int):
        return chunked_views(lambda f, im: self._forward_chunk(f, im, H, W), feats,
                             self.chunk_size, images, out_device=self.output_device)

    def _forward_chunk(self, feats, images, H: int, W: int) -> dict[str, torch.Tensor]:
        ph, pw = H // self.patch_size, W // self.patch_size
        fused = self.out1(self.fusion(*self.adapters(self.reassemble(feats, ph, pw, H, W))))
        fused = interpolate(fused, (ph * self.patch_size, pw * self.patch_size))
        fused = add_uv_embedding(fused + self.images_merger(images), W, H)
        out = self.out2(fused).permute(0, 2, 3, 1)
        return {"raw_gs": out[..., :-1], "raw_gs_conf": torch.sigmoid(out[..., -1])}
