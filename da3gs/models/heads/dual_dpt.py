"""Dual-DPT head: shared reassembly, separate fusion chains for depth and ray maps."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from da3gs.nn.dpt_blocks import (FusionChain, LayerAdapters, Reassemble, add_uv_embedding,
                                 chunked_views, interpolate, output_conv2)



def _ray_neck(ch: int) -> nn.Sequential:
    half = ch // 2
    return nn.Sequential(nn.Conv2d(ch, half, 3, 1, 1), nn.Conv2d(half, ch, 3, 1, 1),
                         nn.Conv2d(ch, half, 3, 1, 1), nn.Conv2d(half, ch, 3, 1, 1),
                         nn.Conv2d(ch, half, 3, 1, 1))


class DualDPT(nn.Module):
    """Depth (+ confidence) at full resolution and a 6-channel ray map (+ confidence).

    Input: four feature maps ``feats[i]: (B, V, h*w, dim_in)`` on the patch grid h x w.
    Output dict:
      ``depth: (B, V, H, W)`` (exp activation), ``depth_conf: (B, V, H, W)`` (exp + 1),
      ``ray: (B, V, 8h, 8w, 6)`` (0:3 direction, 3:6 origin; linear), ``ray_conf: (B, V, 8h, 8w)``.
    Views are processed ``chunk_size`` at a time to bound memory. The LayerNorm of ``ray_out2`` is
    one module shared by all levels, as in the official head.
    """

    RAY_LEVELS = 4  # the checkpoint holds a ray neck per pyramid level; only the finest is used

    def __init__(self, dim_in: int, features: int, out_channels: Sequence[int],
                 patch_size: int = 14, chunk_size: int = 8):
        super().__init__()
        self.patch_size = patch_size
        self.chunk_size = chunk_size
        self.output_device: torch.device | None = None  # see chunked_views
        self.reassemble = Reassemble(dim_in, out_channels, norm=True, pos_embed=True)
        self.adapters = LayerAdapters(out_channels, features)
        self.depth_fusion = FusionChain(features)
        self.ray_fusion = FusionChain(features)
        self.depth_out1 = nn.Conv2d(features, features // 2, 3, 1, 1)
        self.depth_out2 = output_conv2(features // 2, 2)
        self.ray_out1 = nn.ModuleList([_ray_neck(features) for _ in range(self.RAY_LEVELS)])
        self.ray_out2 = nn.ModuleList(
            [output_conv2(features // 2, 7, layer_norm=True) for _ in range(self.RAY_LEVELS)])
        # As in the official head, one LayerNorm object sits in every level (weight tying; see
        # da3gs.models.convert.TIED): checkpoints hold it once.
        for level in self.ray_out2[1:]:
            level[1] = self.ray_out2[0][1]

    def forward(self, feats: Sequence[torch.Tensor], H: int, W: int) -> dict[str, torch.Tensor]:
        return chunked_views(lambda f: self._forward_chunk(f, H, W), feats, self.chunk_size,
                             out_device=self.output_device)

    def _forward_chunk(self, feats, H: int, W: int) -> dict[str, torch.Tensor]:
        ph, pw = H // self.patch_size, W // self.patch_size
        pyramid = self.adapters(self.reassemble(feats, ph, pw, H, W))
        depth = self.depth_out1(self.depth_fusion(*pyramid))
        ray = self.ray_fusion(*pyramid)
        depth = interpolate(depth, (ph * self.patch_size, pw * self.patch_size))
        depth = self.depth_out2(add_uv_embedding(depth, W, H)).permute(0, 2, 3, 1)
        ray = self.ray_out1[-1](ray)
        ray = self.ray_out2[-1](add_uv_embedding(ray, W, H)).permute(0, 2, 3, 1)
        return {
            "depth": torch.exp(depth[..., 0]),
            "depth_conf": torch.exp(depth[..., -1]) + 1,
            "ray": ray[..., :-1],
            "ray_conf": torch.exp(ray[..., -1]) + 1,
        }
