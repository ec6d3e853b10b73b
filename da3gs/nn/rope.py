"""2D rotary position embedding (RoPE) as used by the DA3 backbone.

The head dimension is split in two halves: the first half is rotated by the token's
row (y) position, the second by its column (x) position. Inside each half the usual
"rotate half" 1D RoPE is applied with frequencies ``base ** -(2i / d)``.

:class:`RotaryTable` holds the cos/sin tables of one set of positions, computed once (per head
dimension and dtype, on the positions' device, with the very operations of the per-call path)
and applied by :class:`RoPE2D` in place of a position tensor; the results are bit-identical to
computing the angles at every call (tested). A table of ``N`` positions also applies to
sequences of ``k * N`` tokens made of ``k`` groups with the same positions (the cross-view
blocks: every view's tokens repeat the same positions), without materialising ``k`` copies.
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


def _inv_freq(base: float, d: int, device) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, d, 2, device=device).float() / d))


class RotaryTable:
    """cos/sin of 2D RoPE for positions ``pos: (1, N, 2)`` (y, x), computed lazily per (head
    dimension, dtype) and kept. Pass it as ``pos`` to :class:`RoPE2D` (through ``Block`` /
    ``Attention``)."""

    def __init__(self, pos: torch.Tensor, base: float):
        if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[-1] != 2:
            raise ValueError(f"RotaryTable: expected positions of shape (1, N, 2), got {tuple(pos.shape)}")
        self.pos = pos
        self.base = float(base)
        self._tables: dict = {}

    @property
    def num_positions(self) -> int:
        return self.pos.shape[1]

    def cos_sin(self, head_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` of shape ``(1, 1, N, head_dim)``: y half then x half."""
        key = (head_dim, dtype)
        hit = self._tables.get(key)
        if hit is None:
            d = head_dim // 2
            inv_freq = _inv_freq(self.base, d, self.pos.device)
            cos, sin = [], []
            for axis in (0, 1):  # exactly RoPE2D._rotate_1d's operations
                angles = (self.pos[..., axis].float()[..., None] * inv_freq).to(dtype)
                angles = torch.cat([angles, angles], dim=-1)[:, None]
                cos.append(angles.cos())
                sin.append(angles.sin())
            hit = self._tables[key] = (torch.cat(cos, dim=-1), torch.cat(sin, dim=-1))
        return hit


class RoPE2D(nn.Module):
    """Apply 2D RoPE to ``tokens: (B, heads, N, D)`` given ``pos: (B, N, 2)`` (y, x)."""

    def __init__(self, base: float = 100.0):
        super().__init__()
        self.base = float(base)

    def table(self, pos: torch.Tensor) -> RotaryTable:
        """A :class:`RotaryTable` of ``pos: (1, N, 2)`` with this module's base."""
        return RotaryTable(pos, self.base)

    def _rotate_1d(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        inv_freq = _inv_freq(self.base, d, x.device)
        angles = (pos.float()[..., None] * inv_freq).to(x.dtype)  # (B, N, d/2)
        angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, N, d)
        cos, sin = angles.cos(), angles.sin()
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor | RotaryTable) -> torch.Tensor:
        """``tokens: (B, heads, L, D)``; ``pos: (B, L, 2)`` positions, or a :class:`RotaryTable`
        of ``N`` positions with ``L`` a multiple of ``N`` (groups of tokens at the same positions)."""
        if isinstance(pos, RotaryTable):
            return self._apply_table(tokens, pos)
        y_half, x_half = tokens.chunk(2, dim=-1)
        return torch.cat(
            [self._rotate_1d(y_half, pos[..., 0]), self._rotate_1d(x_half, pos[..., 1])], dim=-1
        )

    @staticmethod
    def _apply_table(x: torch.Tensor, table: RotaryTable) -> torch.Tensor:
        D, L, N = x.shape[-1], x.shape[-2], table.num_positions
        if L % N:
            raise ValueError(f"RoPE2D: {L} tokens are not groups of the table's {N} positions")
        cos, sin = table.cos_sin(D, x.dtype)
        q = D // 4  # rotate-half within each of the y and x halves
        rot = torch.cat([-x[..., q:2 * q], x[..., :q], -x[..., 3 * q:], x[..., 2 * q:3 * q]], dim=-1)
        if L == N:
            return x * cos + rot * sin
        shape = (L // N, N)
        out = x.unflatten(-2, shape) * cos[..., None, :, :] + rot.unflatten(-2, shape) * sin[..., None, :, :]
        return out.flatten(-3, -2)
