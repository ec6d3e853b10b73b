"""DINOv2 ViT with within-view / cross-view alternation, camera tokens, QK-norm and 2D RoPE.

Per-size caches (inference): the position embedding bicubic-resized to the patch grid and the
RoPE cos/sin tables are kept per (grid size, device, dtype, autocast and inference mode) instead
of being recomputed at every forward. The position embedding entry is also keyed on the
parameter's storage and version counter (so an optimizer step or any in-place edit recomputes
it) and is bypassed while the parameter takes gradients; every cache is dropped on
``load_state_dict``, ``train()``/``eval()`` and device or dtype moves. Outputs are bit-identical
with the caches off (``Backbone.use_cache = False``; tested).

Sparse cross-view attention (long sequences): ``Backbone.cross_view_attention`` (a
:class:`~da3gs.nn.sparse_attention.CrossViewPattern`, default None = full attention) restricts
the cross-view blocks to keyframes plus temporal neighbours; the window counts in the input
order of the views, the pattern follows the reference-view reordering. With a pattern that
covers every view pair (few views) the dense path runs, bit-identical to None (tested).

Context parallelism (``forward(..., shard=)``, :mod:`da3gs.nn.context_parallel`): the same loop
over the same blocks runs on this rank's views only; three steps differ, each in one place: the
reference view is chosen from every rank's class tokens (gathered), the cross-view blocks
attend over every rank's keys and values, and the views are not moved: the reference-first
order, which in one process reorders the tokens, here places the learned camera tokens (index 0
on the reference view wherever it lives). Per-view operations do not depend on a view's place
in the sequence, and attention sums over keys (whose order only changes rounding), so the
outputs equal the single-process ones to rounding (tested under gloo with 2 and 3 processes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from da3gs.errors import ConfigError
from da3gs.models.presets import Preset
from da3gs.models.reference_view import (MIN_VIEWS, gather_views, inverse_order,
                                         reference_first_order, select_reference_view)
from da3gs.nn.context_parallel import ViewShard
from da3gs.nn.rope import RoPE2D, RotaryTable, constant_positions, patch_positions
from da3gs.nn.sparse_attention import CrossViewPattern, cross_view_attention_fn
from da3gs.nn.transformer import Block


@dataclass
class BackboneOutput:
    """``feats[i]: (B, V, h*w, C')`` patch tokens of each output layer (C' = 2C with cat_token),
    ``cam_tokens[i]: (B, V, C')`` their camera/class tokens, ``ref_view: (B,)`` or None."""

    feats: list[torch.Tensor]
    cam_tokens: list[torch.Tensor]
    ref_view: torch.Tensor | None


class Backbone(nn.Module):
    """Blocks before ``alt_start`` attend within each view; from ``alt_start`` on, odd blocks
    attend across all views' tokens jointly and even blocks within a view. At ``alt_start`` the
    class token slot becomes a camera token (encoded pose, or a learnable one)."""

    def __init__(self, preset: Preset, rope_base: float = 100.0):
        super().__init__()
        v = preset.vit
        self.patch_size, self.dim, self.pos_grid = v.patch_size, v.dim, v.pos_grid
        self.alt_start = preset.alt_start
        self.out_layers = tuple(preset.out_layers)
        self.cat_token = preset.cat_token
        self.grad_checkpointing = False
        self.patch_embed = nn.Conv2d(3, v.dim, kernel_size=v.patch_size, stride=v.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, v.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, v.pos_grid**2 + 1, v.dim))
        if self.alt_start >= 0:
            self.camera_token = nn.Parameter(torch.randn(1, 2, v.dim))
        rope = RoPE2D(rope_base) if self.alt_start >= 0 else None
        self.blocks = nn.ModuleList([
            Block(v.dim, v.heads, ffn=v.ffn, qk_norm=0 <= self.alt_start <= i,
                  rope=rope if 0 <= self.alt_start <= i else None)
            for i in range(v.depth)])
        self.norm = nn.LayerNorm(v.dim)
        self.rope = rope
        self.use_cache = True
        self._cache: dict = {}
        #: sparse cross-view attention pattern (None: full attention); see the module docstring
        self.cross_view_attention: CrossViewPattern | None = None

    _CACHE_SIZE = 16  # entries kept (sizes x devices x modes); oldest dropped first

    def clear_cache(self) -> None:
        """Drop the cached position embeddings and RoPE tables."""
        self._cache.clear()

    def _cached(self, key, make):
        if not self.use_cache:
            return make()
        hit = self._cache.get(key)
        if hit is None:
            hit = make()
            if len(self._cache) >= self._CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = hit
        return hit

    def _apply(self, *args, **kwargs):  # .to(), .cuda(), .half(), ...
        self.clear_cache()
        return super()._apply(*args, **kwargs)

    def train(self, mode: bool = True):
        self.clear_cache()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self.clear_cache()
        return super()._load_from_state_dict(*args, **kwargs)

    @staticmethod
    def _mode(device: torch.device) -> tuple:
        return (torch.is_inference_mode_enabled(), torch.is_autocast_enabled(device.type))

    def is_cross_view(self, i: int) -> bool:
        return self.alt_start >= 0 and i >= self.alt_start and i % 2 == 1

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Learned position embedding bicubic-resized to an h x w grid, ``(1, 1 + h*w, C)``
        (cached unless the parameter takes gradients; see the module docstring)."""
        M = self.pos_grid
        if h * w == M * M and h == w:
            return self.pos_embed
        pe = self.pos_embed
        if pe.requires_grad and torch.is_grad_enabled():
            return self._resize_pos_embed(h, w)
        key = ("pos_embed", h, w, pe.device, pe.dtype, pe.data_ptr(), pe._version, self._mode(pe.device))
        return self._cached(key, lambda: self._resize_pos_embed(h, w))

    def _rope_tables(self, h: int, w: int, device: torch.device) -> tuple[RotaryTable, RotaryTable]:
        """RoPE tables of the within-view blocks (patch grid) and the cross-view blocks (every
        view's tokens at the same constant positions), one view's ``1 + h*w`` tokens each."""
        n = 1 + h * w

        def make():
            tables = (self.rope.table(patch_positions(1, h, w, 1, device)),
                      self.rope.table(constant_positions(1, n, 1, device)))
            # filled here, outside the blocks: a table first filled inside a compiled block is
            # a dict mutation Dynamo guards on, so every block would compile an "empty" and a
            # "filled" variant (tiny: N x head_dim per dtype; a dtype not made here is still
            # made on first use)
            attn = self.blocks[0].attn
            head_dim = attn.qkv.in_features // attn.num_heads
            dtypes = {torch.float32, self.pos_embed.dtype}  # what the blocks' queries will be
            if torch.is_autocast_enabled(device.type):
                dtypes.add(torch.get_autocast_dtype(device.type))
            for t in tables:
                for dt in dtypes:
                    t.cos_sin(head_dim, dt)
            return tables

        return self._cached(("rope", h, w, device, self._mode(device)), make)

    def _resize_pos_embed(self, h: int, w: int) -> torch.Tensor:
        M = self.pos_grid
        pe = self.pos_embed.float()
        grid = pe[:, 1:].reshape(1, M, M, -1).permute(0, 3, 1, 2)
        # DINOv2 resizes by a scale factor with a +0.1 offset; kept for checkpoint fidelity.
        grid = F.interpolate(grid, scale_factor=((h + 0.1) / M, (w + 0.1) / M), mode="bicubic",
                             antialias=False)
        if grid.shape[-2:] != (h, w):
            raise RuntimeError(f"position embedding resized to {tuple(grid.shape[-2:])}, not {(h, w)}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([pe[:, :1], grid], dim=1).to(self.pos_embed.dtype)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, V, 3, H, W)`` normalised images -> tokens ``(B, V, 1 + h*w, C)``."""
        B, V, _, H, W = x.shape
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {self.patch_size}")
        t = self.patch_embed(x.reshape(B * V, 3, H, W)).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(B * V, -1, -1), t], dim=1)
        t = t + self._pos_embed(H // self.patch_size, W // self.patch_size)
        return t.reshape(B, V, *t.shape[1:])

    def _run_block(self, blk: Block, x: torch.Tensor, pos: torch.Tensor | None,
                   attn_fn=None) -> torch.Tensor:
        args = (x, pos) if attn_fn is None else (x, pos, attn_fn)
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(blk, *args, use_reentrant=False)
        return blk(*args)

    def learned_camera_tokens(self, B: int, V: int) -> torch.Tensor:
        """The learnable camera tokens of pose-free inputs, ``(B, V, C)``: index 0 for the
        reference view (first), index 1 for the others."""
        return torch.cat([self.camera_token[:, :1].expand(B, 1, -1),
                          self.camera_token[:, 1:].expand(B, V - 1, -1)], dim=1)

    def _shard_camera_tokens(self, cam_token: torch.Tensor | None, positions: torch.Tensor,
                             ref_mask: torch.Tensor | None) -> torch.Tensor:
        """Camera tokens of this rank's views under context parallelism, ``(B, V_local, C)``.
        ``positions: (B, V_local)``: each held view's place in the reference-first order of all
        views. The learned tokens go by that place (index 0 at place 0, the reference view), as
        :meth:`learned_camera_tokens` does on the reordered sequence in one process; given
        ``cam_token`` (this rank's views, input order) is kept, except for the ``ref_mask``
        samples, whose tokens are the learned ones by contract (see :meth:`forward`)."""
        first = (positions == 0)[..., None]
        learned = torch.where(first, self.camera_token[:, :1], self.camera_token[:, 1:])
        if cam_token is None:
            return learned
        if ref_mask is None:
            return cam_token
        return torch.where(ref_mask.reshape(-1, 1, 1), learned.to(cam_token.dtype), cam_token)

    def _sparse_attention(self, blk: Block, V: int, N: int, order: torch.Tensor | None,
                          ref: torch.Tensor | None, device: torch.device):
        """The cross-view attention callable of :attr:`cross_view_attention` for this input
        (None: full attention). ``order: (B, V)`` is the reference-first permutation (the input
        index of the view at each position), None when the input order is kept."""
        key = None if ref is None else tuple(ref.tolist())
        return cross_view_attention_fn(self.cross_view_attention, V, N, blk.attn.num_heads,
                                       device, view_time=order, order_key=key,
                                       need_grad=torch.is_grad_enabled())

    def forward(self, x: torch.Tensor, cam_token: torch.Tensor | None = None,
                ref_view_strategy: str = "saddle_balanced",
                feat_dtype: torch.dtype | None = None,
                ref_mask: torch.Tensor | None = None,
                shard: ViewShard | None = None) -> BackboneOutput:
        """``x: (B, V, 3, H, W)``; ``cam_token: (B, V, C)`` from the camera encoder or None;
        ``feat_dtype``: the dtype of ``feats`` (default: as computed; the camera tokens stay).
        ``ref_mask: (B,)`` bool, with ``cam_token``: the samples whose tokens are the learned
        pose-free ones (:meth:`learned_camera_tokens`, which are positional) and that choose
        their reference view by ``ref_view_strategy`` as without ``cam_token``; the others keep
        the input order. None: with ``cam_token`` every sample keeps the input order.
        ``shard``: context parallelism (see the module docstring): ``x`` and ``cam_token`` are
        this rank's ``shard.local_views`` views (input order) and so are the outputs; every
        rank of ``shard.group`` must call this with the same arguments otherwise."""
        B, V, _, H, W = x.shape
        V_all = V if shard is None else shard.num_views
        if shard is not None:
            if self.cross_view_attention is not None:
                raise ConfigError("sparse cross-view attention does not run context-parallel; "
                                  "use full attention (cross_view_attention = None)")
            if V != shard.local_views:
                raise ValueError(f"backbone: {V} views on rank {shard.rank}, its shard holds "
                                 f"{shard.local_views}")
            positions = torch.arange(shard.offset, shard.offset + V, device=x.device)
            positions = positions[None].expand(B, -1)
        h, w = H // self.patch_size, W // self.patch_size
        x = self.embed(x)
        N = x.shape[2]
        if self.rope is None:
            local_pos = global_pos = None
        elif self.use_cache:
            local_pos, global_pos = self._rope_tables(h, w, x.device)
        else:  # positions as tensors, tables computed at every block (the reference path)
            local_pos = patch_positions(B * V, h, w, 1, x.device)
            global_pos = constant_positions(B * V, N, 1, x.device).reshape(B, V * N, 2)
        order = None
        ref = None
        local_x = x
        feats, cams = [], []
        sparse, sparse_ready = None, self.cross_view_attention is None and shard is None
        for i, blk in enumerate(self.blocks):
            if (self.alt_start >= 0 and i == self.alt_start - 1 and V_all >= MIN_VIEWS
                    and (cam_token is None or ref_mask is not None)):
                cls = x[:, :, 0] if shard is None else shard.gather_views(x[:, :, 0])
                ref = select_reference_view(cls, ref_view_strategy)
                if cam_token is not None:  # pose-conditioned samples: reference 0, order kept
                    ref = torch.where(ref_mask, ref, torch.zeros_like(ref))
                order = reference_first_order(ref, V_all)
                if shard is None:
                    x, local_x = gather_views(x, order), gather_views(local_x, order)
                else:  # the views stay; their places in the order place the camera tokens
                    positions = inverse_order(order)[:, shard.local_slice()]
            if self.alt_start >= 0 and i == self.alt_start:
                if shard is not None:
                    cam_token = self._shard_camera_tokens(cam_token, positions, ref_mask)
                elif cam_token is None:
                    cam_token = self.learned_camera_tokens(B, V)
                x = torch.cat([cam_token[:, :, None].to(x.dtype), x[:, :, 1:]], dim=2)
            if self.is_cross_view(i):
                if not sparse_ready:  # the view order is final from here on
                    sparse = (shard.cross_view_attention if shard is not None else
                              self._sparse_attention(blk, V, N, order, ref, x.device))
                    sparse_ready = True
                x = self._run_block(blk, x.reshape(B, V * N, -1), global_pos,
                                    sparse).reshape(B, V, N, -1)
            else:
                x = self._run_block(blk, x.reshape(B * V, N, -1), local_pos).reshape(B, V, N, -1)
                local_x = x
            if i in self.out_layers:
                if self.cat_token:
                    parts = [local_x, self.norm(x)]
                    if feat_dtype is not None:  # cast before the concatenation: less memory
                        parts = [t.to(feat_dtype) for t in parts]
                    out = torch.cat(parts, dim=-1)
                    cam = torch.cat([local_x[:, :, 0], x[:, :, 0]], dim=-1)
                else:
                    out, cam = self.norm(x), x[:, :, 0]
                    if feat_dtype is not None:
                        out = out.to(feat_dtype)
                if order is not None and shard is None:
                    inv = inverse_order(order)
                    out, cam = gather_views(out, inv), gather_views(cam, inv)
                feats.append(out[:, :, 1:])
                cams.append(cam)
        return BackboneOutput(feats, cams, ref)
