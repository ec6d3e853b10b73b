"""Camera decoder: MLP on the final camera token -> official 9-D pose encoding."""

from __future__ import annotations

import torch
from torch import nn


class CameraDecoder(nn.Module):
    """``token: (B, V, dim_in)`` -> ``(B, V, 9)`` = [t (3), quaternion xyzw (4), fov_h, fov_w].

    The encoding describes camera-to-world; decode with ``da3gs.geometry.decode_pose``.
    """

    def __init__(self, dim_in: int):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(),
                                      nn.Linear(dim_in, dim_in), nn.ReLU())
        self.fc_t = nn.Linear(dim_in, 3)
        self.fc_qvec = nn.Linear(dim_in, 4)
        self.fc_fov = nn.Sequential(nn.Linear(dim_in, 2), nn.ReLU())

    def forward(self, token: torch.Tensor) -> torch.Tensor:
        B, V = token.shape[:2]
        feat = self.backbone(token.reshape(B * V, -1)).float()
        out = torch.cat([self.fc_t(feat), self.fc_qvec(feat), self.fc_fov(feat)], dim=-1)
        return out.reshape(B, V, 9)
