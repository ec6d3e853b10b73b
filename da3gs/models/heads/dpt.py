"""Single DPT head of the monocular / metric models: depth (exp) and a sky map (ReLU)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from da3gs.nn.dpt_blocks import (FusionChain, LayerAdapters, Reassemble, chunked_views, interpolate,
                                 output_conv2)


class DPT(nn.Module):
    """Depth and sky from four feature maps ``feats[i]: (B, V, h*w, dim_in)``.

    Output dict: ``depth: (B, V, H, W)`` and ``sky: (B, V, H, W)`` (ReLU, >= 0.3 means sky).
    """

    def __init__(self, dim_in: int, features: int, out_channels: Sequence[int],
                 patch_size: int = 14, chunk_size: int = 8):
        super().__init__()
        self.patch_size = patch_size
        self.chunk_size = chunk_size
        self.output_device: torch.device | None = None  # see chunked_views
        self.reassemble = Reassemble(dim_in, out_channels, norm=False, pos_embed=False)
        self.adapters = LayerAdapters(out_channels, features)
        self.fusion = FusionChain(features)
        self.out1 = nn.Conv2d(features, features // 2, 3, 1, 1)
        self.depth_out2 = output_conv2(features // 2, 1)
        self.sky_out2 = output_conv2(features // 2, 1)

    def forward(self, feats: Sequence[torch.Tensor], H: int, W: int) -> dict[str, torch.Tensor]:
        return chunked_views(lambda f: self._forward_chunk(f, H, W), feats, self.chunk_size,
                             out_device=self.output_device)

    def _forward_chunk(self, feats, H: int, W: int) -> dict[str, torch.Tensor]:
        ph, pw = H // self.patch_size, W // self.patch_size
        fused = self.out1(self.fusion(*self.adapters(self.reassemble(feats, ph, pw, H, W))))
        fused = interpolate(fused, (ph * self.patch_size, pw * self.patch_size))
        return {
            "depth": torch.exp(self.depth_out2(fused))[:, 0],
            "sky": torch.relu(self.sky_out2(fused))[:, 0],
        }
