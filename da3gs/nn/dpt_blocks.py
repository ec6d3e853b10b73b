"""DPT building blocks: reassembly, residual conv units, top-down fusion, UV position embedding."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_INTERP_LIMIT = 1_610_612_736  # elements; F.interpolate overflows int32 indexing beyond this


def interpolate(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear",
                align_corners: bool = True) -> torch.Tensor:
    """Bilinear resize of ``x: (B, C, h, w)`` to ``size``, chunked over B for huge outputs."""
    total = size[0] * size[1] * x.shape[0] * x.shape[1]
    if total > _INTERP_LIMIT:
        chunks = torch.chunk(x, total // _INTERP_LIMIT + 1, dim=0)
        return torch.cat([interpolate(c, size, mode, align_corners) for c in chunks], dim=0)
    return F.interpolate(x, size=size, mode=mode, align_corners=align_corners)


def uv_embedding(channels: int, h: int, w: int, aspect: float, dtype, device,
                 omega_0: float = 100.0) -> torch.Tensor:
    """Sinusoidal embedding of a centred UV grid, ``(channels, h, w)``.

    The grid spans [-a, a] x [-b, b] (pixel centres) with (a, b) = (aspect, 1) / |(aspect, 1)|;
    x gets the first ``channels / 2`` features (sin then cos), y the rest.
    """
    diag = (aspect**2 + 1.0) ** 0.5
    span_x, span_y = aspect / diag, 1.0 / diag
    xs = torch.linspace(-span_x * (w - 1) / w, span_x * (w - 1) / w, w, dtype=dtype, device=device)
    ys = torch.linspace(-span_y * (h - 1) / h, span_y * (h - 1) / h, h, dtype=dtype, device=device)
    uu, vv = torch.meshgrid(xs, ys, indexing="xy")  # (h, w)

    def sincos(d: int, pos: torch.Tensor) -> torch.Tensor:
        omega = torch.arange(d // 2, dtype=torch.float32, device=device) / (d / 2.0)
        omega = 1.0 / omega_0**omega
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    emb = torch.cat([sincos(channels // 2, uu), sincos(channels // 2, vv)], dim=-1)
    return emb.view(h, w, channels).permute(2, 0, 1)


def add_uv_embedding(x: torch.Tensor, W: int, H: int, ratio: float = 0.1) -> torch.Tensor:
    """``x: (B, C, h, w)`` plus ``ratio`` times the UV embedding for an image of size H x W
    (computed in fp32 whatever the dtype of ``x``, then cast)."""
    pe = uv_embedding(x.shape[1], x.shape[-2], x.shape[-1], W / H, torch.float32, x.device)
    return x + (pe * ratio)[None].to(x.dtype)


class ResidualConvUnit(nn.Module):
    """relu -> conv3x3 -> relu -> conv3x3, plus the input."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(F.relu(x))))
        return out + x


class FusionBlock(nn.Module):
    """Top-down fusion: optional lateral residual, residual unit, bilinear upsample, 1x1 conv."""

    def __init__(self, features: int, has_residual: bool = True):
        super().__init__()
        self.res_unit1 = ResidualConvUnit(features) if has_residual else None
        self.res_unit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1, 1, 0, bias=True)

    def forward(self, x: torch.Tensor, lateral: torch.Tensor | None = None,
                size: tuple[int, int] | None = None) -> torch.Tensor:
        if lateral is not None and self.res_unit1 is not None:
            x = x + self.res_unit1(lateral)
        x = self.res_unit2(x)
        if size is None:
            size = (int(x.shape[-2] * 2), int(x.shape[-1] * 2))
        return self.out_conv(interpolate(x, size))


class Reassemble(nn.Module):
    """Token maps -> 4-level pyramid: 1x1 projections then resizes x4, x2, x1, x0.5.

    ``tokens: 4 x (N, h*w, dim_in)`` -> 4 maps (N, out_channels[i], h*s_i, w*s_i).
    """

    def __init__(self, dim_in: int, out_channels: Sequence[int], norm: bool, pos_embed: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim_in) if norm else nn.Identity()
        self.pos_embed = pos_embed
        self.projects = nn.ModuleList([nn.Conv2d(dim_in, oc, 1) for oc in out_channels])
        oc = out_channels
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
        ])

    def forward(self, tokens: Sequence[torch.Tensor], ph: int, pw: int, H: int, W: int):
        out = []
        for i, t in enumerate(tokens):
            t = self.norm(t)
            x = t.permute(0, 2, 1).reshape(t.shape[0], t.shape[-1], ph, pw)
            x = self.projects[i](x)
            if self.pos_embed:
                x = add_uv_embedding(x, W, H)
            out.append(self.resize_layers[i](x))
        return out


class FusionChain(nn.Module):
    """Four fusion blocks run coarse to fine over the ``layer_rn``-adapted pyramid."""

    def __init__(self, features: int):
        super().__init__()
        self.refinenet1 = FusionBlock(features)
        self.refinenet2 = FusionBlock(features)
        self.refinenet3 = FusionBlock(features)
        self.refinenet4 = FusionBlock(features, has_residual=False)

    def forward(self, l1, l2, l3, l4) -> torch.Tensor:
        out = self.refinenet4(l4, size=l3.shape[2:])
        out = self.refinenet3(out, l3, size=l2.shape[2:])
        out = self.refinenet2(out, l2, size=l1.shape[2:])
        return self.refinenet1(out, l1)


class LayerAdapters(nn.Module):
    """3x3 convs (no bias) taking each pyramid level to ``features`` channels."""

    def __init__(self, out_channels: Sequence[int], features: int):
        super().__init__()
        self.layer1_rn = nn.Conv2d(out_channels[0], features, 3, 1, 1, bias=False)
        self.layer2_rn = nn.Conv2d(out_channels[1], features, 3, 1, 1, bias=False)
        self.layer3_rn = nn.Conv2d(out_channels[2], features, 3, 1, 1, bias=False)
        self.layer4_rn = nn.Conv2d(out_channels[3], features, 3, 1, 1, bias=False)

    def forward(self, feats):
        return (self.layer1_rn(feats[0]), self.layer2_rn(feats[1]),
                self.layer3_rn(feats[2]), self.layer4_rn(feats[3]))


class ChannelsLastLayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``(B, C, H, W)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class OutputConv(nn.Sequential):
    """conv3x3 (-> 32) [-> LayerNorm] -> ReLU -> conv1x1 (-> out_ch); the last 1x1 convolution
    always runs in fp32 (autocast off, input upcast), since the heads' outputs go through
    ``exp``: a bf16 logit would cost up to 0.4 % of relative depth error. In fp32 (the
    official numerics) it is the plain sequence."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in list(self)[:-1]:
            x = layer(x)
        with torch.autocast(x.device.type, enabled=False):
            return self[-1](x.float())


def output_conv2(in_ch: int, out_ch: int, layer_norm: bool = False) -> OutputConv:
    """conv3x3 (-> 32) [-> LayerNorm] -> ReLU -> conv1x1 (-> out_ch), see :class:`OutputConv`."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, 32, 3, 1, 1)]
    if layer_norm:
        layers.append(ChannelsLastLayerNorm(32))
    layers += [nn.ReLU(inplace=True), nn.Conv2d(32, out_ch, 1, 1, 0)]
    return OutputConv(*layers)


def chunked_views(fn, feats, chunk_size: int | None, *per_view: torch.Tensor,
                  out_device: torch.device | None = None) -> dict:
    """Run a head ``fn(feats_chunk, *per_view_chunk) -> dict`` over views in chunks.

    ``feats[i]: (B, V, N, C)`` and ``per_view`` tensors ``(B, V, ...)`` are flattened to B*V
    items, processed ``chunk_size`` at a time (all at once when None/0), and the outputs
    reshaped back to ``(B, V, ...)``. ``out_device``: move each chunk's outputs there as they
    are made (host memory for thousands of views), instead of keeping them on the device.
    """
    B, V, N, C = feats[0].shape
    flat = [f.reshape(B * V, N, C) for f in feats]
    extra = [t.reshape(B * V, *t.shape[2:]) for t in per_view]
    step = chunk_size or B * V
    outs = []
    for s in range(0, B * V, step):
        o = fn([f[s:s + step] for f in flat], *[t[s:s + step] for t in extra])
        outs.append(o if out_device is None else {k: v.to(out_device) for k, v in o.items()})
    return {k: torch.cat([o[k] for o in outs]).reshape(B, V, *outs[0][k].shape[1:])
            for k in outs[0]}
