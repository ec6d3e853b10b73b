"""The one converter from official Depth Anything 3 checkpoint keys to our module names.

Official checkpoints (``model.safetensors`` of ``depth-anything/DA3-*``) store the network under
``model.``; nested checkpoints hold ``model.da3.`` (any-view) and ``model.da3_metric.``. Inside
a network the official names map onto ours as follows (``N`` = 1..4, ``i`` = level):

| official | ours |
|---|---|
| ``backbone.pretrained.patch_embed.proj.`` | ``backbone.patch_embed.`` |
| ``backbone.pretrained.`` | ``backbone.`` |
| ``cam_enc.`` / ``cam_dec.`` | ``camera_encoder.`` / ``camera_decoder.`` |
| ``head.`` (Dual-DPT or DPT), ``gs_head.`` | ``depth_head.``, ``gs_head.`` |
| head ``norm.``, ``projects.``, ``resize_layers.`` | ``reassemble.norm.`` ... |
| head ``scratch.layerN_rn.`` | ``adapters.layerN_rn.`` |
| Dual-DPT ``scratch.refinenetN.`` / ``scratch.refinenetN_aux.`` | ``depth_fusion.refinenetN.`` / ``ray_fusion.refinenetN.`` |
| Dual-DPT ``scratch.output_conv1.`` / ``scratch.output_conv2.`` | ``depth_out1.`` / ``depth_out2.`` |
| Dual-DPT ``scratch.output_conv1_aux.i.`` | ``ray_out1.i.`` |
| Dual-DPT ``scratch.output_conv2_aux.i.{0,2,5}.`` | ``ray_out2.i.{0,1.norm,3}.`` |
| DPT / GS-DPT ``scratch.refinenetN.``, ``scratch.output_conv1.`` | ``fusion.refinenetN.``, ``out1.`` |
| DPT ``scratch.output_conv2.``, ``scratch.sky_output_conv2.`` | ``depth_out2.``, ``sky_out2.`` |
| GS-DPT ``scratch.output_conv2.`` | ``out2.`` |
| fusion ``resConfUnitN.`` | ``res_unitN.`` |
"""

from __future__ import annotations

import re

import torch

_COMMON = [
    (r"^backbone\.pretrained\.patch_embed\.proj\.", "backbone.patch_embed."),
    (r"^backbone\.pretrained\.", "backbone."),
    (r"^cam_enc\.", "camera_encoder."),
    (r"^cam_dec\.", "camera_decoder."),
    (r"^(head|gs_head)\.(norm|projects|resize_layers)\.", r"\1.reassemble.\2."),
    (r"^(head|gs_head)\.scratch\.(layer\d_rn)\.", r"\1.adapters.\2."),
    (r"\.resConfUnit(\d)\.", r".res_unit\1."),
]
_DUAL = [
    (r"^head\.scratch\.(refinenet\d)_aux\.", r"head.ray_fusion.\1."),
    (r"^head\.scratch\.(refinenet\d)\.", r"head.depth_fusion.\1."),
    (r"^head\.scratch\.output_conv1\.", "head.depth_out1."),
    (r"^head\.scratch\.output_conv2\.", "head.depth_out2."),
    (r"^head\.scratch\.output_conv1_aux\.", "head.ray_out1."),
    (r"^head\.scratch\.output_conv2_aux\.(\d+)\.0\.", r"head.ray_out2.\1.0."),
    (r"^head\.scratch\.output_conv2_aux\.(\d+)\.2\.", r"head.ray_out2.\1.1.norm."),
    (r"^head\.scratch\.output_conv2_aux\.(\d+)\.5\.", r"head.ray_out2.\1.3."),
]
_MONO = [
    (r"^head\.scratch\.(refinenet\d)\.", r"head.fusion.\1."),
    (r"^head\.scratch\.output_conv1\.", "head.out1."),
    (r"^head\.scratch\.output_conv2\.", "head.depth_out2."),
    (r"^head\.scratch\.sky_output_conv2\.", "head.sky_out2."),
]
_GS = [
    (r"^gs_head\.scratch\.(refinenet\d)\.", r"gs_head.fusion.\1."),
    (r"^gs_head\.scratch\.output_conv1\.", "gs_head.out1."),
    (r"^gs_head\.scratch\.output_conv2\.", "gs_head.out2."),
]
_FINAL = [(r"^head\.", "depth_head.")]


class CheckpointMismatch(ValueError):
    """A checkpoint does not fit the network (missing/unexpected keys or shapes)."""


def _convert_key(key: str, dual: bool) -> str:
    for pat, rep in _COMMON + (_DUAL if dual else _MONO) + _GS + _FINAL:
        key = re.sub(pat, rep, key)
    return key


def _is_dual(keys: list[str]) -> bool:
    return any(k.startswith("head.scratch.refinenet1_aux.") for k in keys)


def official_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official state dict (with or without the ``model.`` prefix) to our names."""
    state = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in state.items()}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        for off, ours in (("da3_metric.", "metric."), ("da3.", "anyview.")):
            if k.startswith(off):
                groups.setdefault(ours, {})[k[len(off):]] = v
                break
        else:
            groups.setdefault("", {})[k] = v
    out = {}
    for prefix, sub in groups.items():
        dual = _is_dual(list(sub))
        out.update({prefix + _convert_key(k, dual): v for k, v in sub.items()})
    return out


def is_official_state(state: dict[str, torch.Tensor]) -> bool:
    """True when the keys look like an official DA3 checkpoint."""
    return any(".pretrained." in k or k.startswith("model.") for k in state)


def load_into(net: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint"):
    """Load ``state`` (ours) into ``net`` strictly; raise :class:`CheckpointMismatch` naming the
    missing, unexpected or mis-shaped keys (at most 8 of each)."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for name, items in (("missing", missing), ("unexpected", unexpected),
                            ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{name} {len(items)}: {', '.join(items[:8])}{more}")
        raise CheckpointMismatch(f"{source} does not fit preset {getattr(net.preset, 'name', '?')}: "
                                 + "; ".join(parts))
    net.load_state_dict(state, strict=True)
