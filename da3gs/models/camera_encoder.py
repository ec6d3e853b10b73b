"""Camera encoder: known poses -> camera tokens that condition the backbone."""

from __future__ import annotations

import torch
from torch import nn

from da3gs.geometry import encode_pose, w2c_to_c2w
from da3gs.nn.transformer import Block, Mlp


class CameraEncoder(nn.Module):
    """``w2c: (B, V, 4, 4)``, ``K: (B, V, 3, 3)`` -> tokens ``(B, V, dim)``.

    The official 9-D encoding (t, quaternion, fov) goes through an MLP, a LayerNorm, four
    transformer blocks attending across the views, and a final LayerNorm.
    """

    def __init__(self, dim: int, num_heads: int = 16, depth: int = 4):
        super().__init__()
        self.pose_branch = Mlp(9, dim // 2, dim)
        self.token_norm = nn.LayerNorm(dim)
        self.trunk = nn.Sequential(*[
            Block(dim, num_heads, init_values=0.01, ln_eps=1e-5) for _ in range(depth)])
        self.trunk_norm = nn.LayerNorm(dim)

    def forward(self, w2c: torch.Tensor, K: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        enc = encode_pose(w2c_to_c2w(w2c, check=False), K, image_hw)  # no value check: no sync
        tokens = self.token_norm(self.pose_branch(enc))
        return self.trunk_norm(self.trunk(tokens))
