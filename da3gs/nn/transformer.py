"""Transformer pieces: attention with optional QK-norm and RoPE, MLP / SwiGLU, LayerScale, Block."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from da3gs.errors import ConfigError
from da3gs.nn.rope import RoPE2D, RotaryTable


class LayerScale(nn.Module):
    """Per-channel learnable residual scale (``gamma``)."""

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """Two-layer GELU MLP (``fc1``, ``fc2``)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None,
                 bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """SwiGLU feed-forward of DINOv2 ViT-g: hidden = round_up(2/3 * hidden, 8) (``w12``, ``w3``)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None,
                 bias: bool = True):
        super().__init__()
        hidden = (int(hidden_features * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(in_features, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, out_features or in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class Attention(nn.Module):
    """Multi-head self-attention on ``x: (B, N, C)``; ``pos: (B, N, 2)`` feeds the RoPE if any."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_norm: bool = False,
                 rope: RoPE2D | None = None):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None,
                attn_fn: Callable | None = None) -> torch.Tensor:
        """``attn_fn(q, k, v)``: replaces scaled dot-product attention on the ``(B, heads, N,
        head_dim)`` queries, keys and values (after QK-norm and RoPE), e.g. a sparse pattern
        (:mod:`da3gs.nn.sparse_attention`); None (default): full attention."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and pos is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        x = F.scaled_dot_product_attention(q, k, v) if attn_fn is None else attn_fn(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale: x + ls1(attn(norm1 x)); x + ls2(mlp(norm2 x)).

    Without autograd, inputs of more than :attr:`chunk_rows` token rows run in pieces of at
    most that many rows (:meth:`_forward_chunked`): only the attention core sees every token
    at once, so the transient memory of a block is the queries, keys and values plus the
    output, not the MLP's 4x hidden width over all tokens (thousands of views in one forward).
    """

    #: token rows (batch x tokens) above which an inference forward runs in row pieces
    chunk_rows: int = 1 << 18

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *, ffn: str = "mlp",
                 init_values: float | None = 1.0, qk_norm: bool = False,
                 rope: RoPE2D | None = None, ln_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm, rope=rope)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        ffn_cls = {"mlp": Mlp, "swiglu": SwiGLU}[ffn]
        self.mlp = ffn_cls(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None,
                attn_fn: Callable | None = None) -> torch.Tensor:
        if not torch.is_grad_enabled() and x.shape[0] * x.shape[1] > self.chunk_rows:
            return self._forward_chunked(x, pos, attn_fn)
        x = x + self.ls1(self.attn(self.norm1(x), pos=pos, attn_fn=attn_fn))  # see Attention.forward
        return x + self.ls2(self.mlp(self.norm2(x)))

    def _pieces(self, B: int, N: int, pos) -> list[tuple[int, int, int, int]]:
        """``(b0, b1, s0, s1)`` pieces of ``(B, N)`` rows, at most :attr:`chunk_rows` each (at
        least one sample, or one group of a RoPE table's positions): whole samples when a
        sample fits, else slices of one sample cut at multiples of the table's positions."""
        step = self.chunk_rows
        if N <= step:
            per = max(1, step // N)
            return [(b, min(B, b + per), 0, N) for b in range(0, B, per)]
        g = pos.num_positions if isinstance(pos, RotaryTable) else 1
        s_step = max(g, step // g * g)
        return [(b, b + 1, s, min(N, s + s_step)) for b in range(B) for s in range(0, N, s_step)]

    @torch.compiler.disable  # a Python loop over pieces: never unrolled by torch.compile
    def _forward_chunked(self, x: torch.Tensor, pos, attn_fn: Callable | None) -> torch.Tensor:
        """:meth:`forward` (same operations, same dtypes) piece by piece (see the class)."""
        a = self.attn
        B, N, C = x.shape
        H, d = a.num_heads, C // a.num_heads
        pieces = self._pieces(B, N, pos)
        q = k = v = None
        for b0, b1, s0, s1 in pieces:
            qkv = a.qkv(self.norm1(x[b0:b1, s0:s1])).reshape(b1 - b0, s1 - s0, 3, H, d)
            qc, kc, vc = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            qc, kc = a.q_norm(qc), a.k_norm(kc)
            if a.rope is not None and pos is not None:
                p = pos if isinstance(pos, RotaryTable) else pos[b0:b1, s0:s1]
                qc, kc = a.rope(qc, p), a.rope(kc, p)
            if q is None:  # the dtypes attention computes in (autocast casts its inputs)
                dev = x.device.type
                cast = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
                q, k, v = (torch.empty(B, H, N, d, dtype=cast or t.dtype, device=x.device)
                           for t in (qc, kc, vc))
            q[b0:b1, :, s0:s1], k[b0:b1, :, s0:s1], v[b0:b1, :, s0:s1] = qc, kc, vc
            del qkv, qc, kc, vc
        o = F.scaled_dot_product_attention(q, k, v) if attn_fn is None else attn_fn(q, k, v)
        del q, k, v
        y = None
        for b0, b1, s0, s1 in pieces:
            oc = o[b0:b1, :, s0:s1].transpose(1, 2).reshape(b1 - b0, s1 - s0, C)
            yc = x[b0:b1, s0:s1] + self.ls1(a.proj(oc))
            if y is None:
                y = torch.empty(B, N, C, dtype=yc.dtype, device=x.device)
            y[b0:b1, s0:s1] = yc
        del o
        for b0, b1, s0, s1 in pieces:
            yc = y[b0:b1, s0:s1]
            y[b0:b1, s0:s1] = yc + self.ls2(self.mlp(self.norm2(yc)))
        return y
