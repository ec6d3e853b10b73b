"""2D rotary position embedding (RoPE) as used by the DA3 backbone.

The head dimension is split in two halves: the first half is rotated by the token's
row (y) position, the second by its column (x) position. Inside each half the usual
"rotate half" 1D RoPE is applied with frequencies ``base ** -(2i / d)``.
"""

from __future__ import annotations

import torch
from torch import nn


def patch_positions(batch: int, h: int, w: int, n_special: int, device) -> torch.Tensor:
    """Integer (y, x) positions for ``n_special`` leading tokens followed by an h x w grid.

    Returns ``(batch, n_special + h * w, 2)`` long. Special tokens sit at (0, 0) and grid
    positions are shifted by +1 so that they never coincide with the special tokens.
    """
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
    grid = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=-1) + (1 if n_special else 0)
    special = torch.zeros(n_special, 2, dtype=grid.dtype, device=device)
    pos = torch.cat([special, grid], dim=0)
    return pos[None].expand(batch, -1, -1)


def constant_positions(batch: int, n_tokens: int, n_special: int, device) -> torch.Tensor:
    """Positions used in cross-view blocks: special tokens at 0, every patch token at 1."""
    pos = torch.ones(n_tokens, 2, dtype=torch.long, device=device)
    pos[:n_special] = 0
    return pos[None].expand(batch, -1, -1)


class RoPE2D(nn.Module):
    """Apply 2D RoPE to ``tokens: (B, heads, N, D)`` given ``pos: (B, N, 2)`` (y, x)."""

    def __init__(self, base: float = 100.0):
        super().__init__()
        self.base = float(base)

    def _rotate_1d(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        inv_freq = 1.0 / (self.base ** (torch.arange(0, d, 2, device=x.device).float() / d))
        angles = (pos.float()[..., None] * inv_freq).to(x.dtype)  # (B, N, d/2)
        angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, N, d)
        cos, sin = angles.cos(), angles.sin()
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        y_half, x_half = tokens.chunk(2, dim=-1)
        return torch.cat(
            [self._rotate_1d(y_half, pos[..., 0]), self._rotate_1d(x_half, pos[..., 1])], dim=-1
        )
