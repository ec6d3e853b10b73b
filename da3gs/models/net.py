"""The DA3 networks: any-view (backbone + Dual-DPT + camera head [+ GS-DPT]), monocular /
metric (backbone + DPT with sky), and the nested any-view + metric model.

``forward`` takes ImageNet-normalised ``x: (B, V, 3, H, W)`` and returns the raw outputs under
the official names: ``depth (B, V, H, W)``, ``depth_conf``, ``extrinsics`` (w2c, ``(B, V, 3, 4)``),
``intrinsics (B, V, 3, 3)``, plus ``ray (B, V, h, w, 6)``, ``ray_conf``, ``sky`` (mono/metric),
``raw_gs``/``raw_gs_conf`` (GS head, when asked), ``scale_factor`` (nested) and ``ref_view``;
any-view models also return the camera head's raw encoding ``pose_enc (B, V, 9)``.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from da3gs.errors import Da3gsError
from da3gs.geometry import c2w_to_w2c, decode_pose
from da3gs.geometry.sh import num_sh_bases
from da3gs.models.backbone import Backbone
from da3gs.models.camera_encoder import CameraEncoder
from da3gs.models.heads.camera import CameraDecoder
from da3gs.models.heads.dpt import DPT
from da3gs.models.heads.dual_dpt import DualDPT
from da3gs.models.heads.gs_dpt import GSDPT
from da3gs.models.metric import fill_sky, metric_scale
from da3gs.models.presets import NestedPreset, Preset, get_preset
from da3gs.nn.context_parallel import ViewShard


def _no_autocast(device_type: str):
    return torch.autocast(device_type=device_type, enabled=False)


def _head_context(device_type: str, fast: bool):
    """Precision of the DPT heads: fp32 (the official numerics) unless ``fast``, where they run
    in the caller's autocast dtype (bf16) with only their last 1x1 convolutions in fp32."""
    return nullcontext() if fast else _no_autocast(device_type)


def _head_dtype(device_type: str, fast: bool) -> torch.dtype:
    if fast and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.float32


class DA3Net(nn.Module):
    """One DA3 network built from a :class:`Preset`."""

    def __init__(self, preset: Preset, head_chunk: int = 8):
        super().__init__()
        self.preset = preset
        self.backbone = Backbone(preset)
        d, f, oc = preset.head_dim_in, preset.head_features, preset.head_out_channels
        if preset.kind == "anyview":
            self.depth_head = DualDPT(d, f, oc, chunk_size=head_chunk)
            self.camera_encoder = CameraEncoder(preset.vit.dim, preset.cam_enc_heads)
            self.camera_decoder = CameraDecoder(d)
        else:
            self.depth_head = DPT(d, f, oc, chunk_size=head_chunk)
        sh = num_sh_bases(preset.sh_degree)
        self.gs_head = GSDPT(d, f, oc, out_dim=2 + 3 + 4 + 3 * sh + 1 + 1,
                             chunk_size=head_chunk) if preset.gs_head else None

    @property
    def has_cameras(self) -> bool:
        return self.preset.kind == "anyview"

    output_device: torch.device | None = None

    def set_output_device(self, device: torch.device | str | None) -> None:
        """Keep the outputs on ``device`` (e.g. the host, for thousands of views: each head
        chunk's outputs move there as they are made); None: where the network runs."""
        self.output_device = None if device is None else torch.device(device)
        for head in (self.depth_head, self.gs_head):
            if head is not None:
                head.output_device = self.output_device

    def forward(self, x: torch.Tensor, extrinsics: torch.Tensor | None = None,
                intrinsics: torch.Tensor | None = None, ref_view_strategy: str = "saddle_balanced",
                infer_gs: bool = False, fast: bool = False,
                pose_mask: torch.Tensor | None = None,
                shard: ViewShard | None = None) -> dict[str, torch.Tensor]:
        """``x: (B, V, 3, H, W)`` normalised; optional ``extrinsics`` (w2c) ``(B, V, 4, 4)`` and
        ``intrinsics (B, V, 3, 3)`` condition the camera tokens (any-view models only).
        ``fast``: under autocast, the heads run in the autocast dtype on features kept in that
        dtype (the default is the official numerics: heads in fp32); a no-op without autocast.
        ``pose_mask: (B,)`` bool (with ``extrinsics``): only the samples where it is True are
        pose-conditioned, the others get the learnable camera tokens, in one forward with a
        fixed sequence of kernels whatever the mask (training under CUDA graphs); equal per
        sample to running the two groups apart: the pose-free samples choose their reference
        view by ``ref_view_strategy`` (with ``"first"``, view 0, and no reordering at all), the
        pose-conditioned ones keep the input order.
        ``shard``: context parallelism (:mod:`da3gs.models.context_parallel`; any-view
        networks): ``x`` holds this rank's ``shard.local_views`` views, ``extrinsics`` and
        ``intrinsics`` every view's (the camera encoder attends across all views; its input is
        9 numbers a view); the outputs are this rank's views."""
        out, feats = self.forward_features(x, extrinsics, intrinsics, ref_view_strategy, fast,
                                           pose_mask, shard)
        if infer_gs and self.gs_head is not None:
            ref = out.pop("ref_view", None)
            with _head_context(x.device.type, fast):
                out.update(self.gs_from_features(feats, x, fast))
            if ref is not None:
                out["ref_view"] = ref
        return out

    def forward_features(self, x: torch.Tensor, extrinsics: torch.Tensor | None = None,
                         intrinsics: torch.Tensor | None = None,
                         ref_view_strategy: str = "saddle_balanced", fast: bool = False,
                         pose_mask: torch.Tensor | None = None, shard: ViewShard | None = None
                         ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """Everything but the GS head: ``(out, feats)`` with ``out`` as :meth:`forward`
        without ``raw_gs*`` and ``feats[i]: (B, V, h*w, 2C)`` the features handed to the
        heads, fp32 (bf16 with ``fast`` under bf16 autocast); feed them to
        :meth:`gs_from_features` (stage 2 runs this part frozen). ``shard``: see :meth:`forward`."""
        B, V, _, H, W = x.shape
        dev = x.device.type
        if shard is not None and not self.has_cameras:
            raise Da3gsError(f"preset {self.preset.name}: context parallelism needs an any-view "
                             f"network (one with cross-view attention)")
        V_all = V if shard is None else shard.num_views
        cam_token = None
        if extrinsics is not None and self.has_cameras:
            if intrinsics is None:
                raise Da3gsError("intrinsics are required together with extrinsics")
            with _no_autocast(dev):
                cam_token = self.camera_encoder(extrinsics.float(), intrinsics.float(), (H, W))
                if pose_mask is not None:
                    learned = self.backbone.learned_camera_tokens(B, V_all).to(cam_token.dtype)
                    cam_token = torch.where(pose_mask.reshape(B, 1, 1), cam_token, learned)
                if shard is not None:  # every view's tokens made (cross-view), this rank's kept
                    cam_token = cam_token[:, shard.local_slice()]
        head_dtype = _head_dtype(dev, fast)
        ref_mask = None
        if cam_token is not None and pose_mask is not None and ref_view_strategy != "first":
            ref_mask = ~pose_mask.reshape(B).bool()
        bb = self.backbone(x, cam_token=cam_token, ref_view_strategy=ref_view_strategy,
                           feat_dtype=head_dtype, ref_mask=ref_mask, shard=shard)
        feats = bb.feats
        with _head_context(dev, fast):
            out = dict(self.depth_head(feats, H, W))
        with _no_autocast(dev):
            if self.has_cameras:
                pose_enc = self.camera_decoder(bb.cam_tokens[-1].float())
                out["pose_enc"] = pose_enc  # raw 9-D [t, q xyzw, fov_h, fov_w] (c2w), for L_C
                c2w, K = decode_pose(pose_enc, (H, W))
                # no value check (a device sync per forward); non-finite outputs show in the loss
                out["extrinsics"] = c2w_to_w2c(c2w, check=False)[..., :3, :]
                out["intrinsics"] = K
        if self.output_device is not None:
            out = {k: v.to(self.output_device) for k, v in out.items()}
        if "sky" in out:
            out["depth"], _ = fill_sky(out["depth"], out["sky"])
        if bb.ref_view is not None:
            out["ref_view"] = bb.ref_view
        return out, feats

    def gs_from_features(self, feats: list[torch.Tensor], x: torch.Tensor,
                         fast: bool = False) -> dict[str, torch.Tensor]:
        """GS head on ``feats`` from :meth:`forward_features` and the normalised ``x: (B, V, 3,
        H, W)``: ``raw_gs (B, V, H, W, C)``, ``raw_gs_conf (B, V, H, W)``. Runs in the caller's
        autocast state (:meth:`forward` runs it in fp32 unless ``fast``); ``fast`` also feeds
        the image channels-last, the layout of the feature maps."""
        if self.gs_head is None:
            raise Da3gsError(f"preset {self.preset.name} has no GS head")
        H, W = x.shape[-2:]
        images = x.float()
        if fast:
            B, V = images.shape[:2]
            images = images.reshape(B * V, 3, H, W).contiguous(
                memory_format=torch.channels_last).reshape(B, V, 3, H, W)
        return self.gs_head(feats, images, H, W)


class NestedDA3Net(nn.Module):
    """Any-view model whose depth and camera translations are scaled to metres by a metric model;
    sky pixels are pushed to the far (capped) depth with confidence 1."""

    def __init__(self, preset: NestedPreset, head_chunk: int = 8):
        super().__init__()
        self.preset = preset
        self.anyview = DA3Net(get_preset(preset.anyview), head_chunk)
        self.metric = DA3Net(get_preset(preset.metric), head_chunk)

    has_cameras = True

    def set_output_device(self, device: torch.device | str | None) -> None:
        """See :meth:`DA3Net.set_output_device` (both networks)."""
        self.anyview.set_output_device(device)
        self.metric.set_output_device(device)

    def forward(self, x: torch.Tensor, extrinsics: torch.Tensor | None = None,
                intrinsics: torch.Tensor | None = None, ref_view_strategy: str = "saddle_balanced",
                infer_gs: bool = False, fast: bool = False) -> dict[str, torch.Tensor]:
        out = self.anyview(x, extrinsics, intrinsics, ref_view_strategy, infer_gs, fast)
        metric = self.metric(x, fast=fast)
        with _no_autocast(x.device.type):
            scale = metric_scale(out["depth"], out["depth_conf"], metric["depth"], metric["sky"],
                                 out["intrinsics"])
            out["depth"] = out["depth"] * scale
            ext = out["extrinsics"].clone()
            ext[..., :3, 3] = ext[..., :3, 3] * scale
            out["extrinsics"] = ext
            out["scale_factor"] = scale
            if "raw_gs" in out:  # the depth offset channel is in the same units as depth
                raw = out["raw_gs"].clone()
                raw[..., -1] = raw[..., -1] * scale
                out["raw_gs"] = raw
            out["depth"], out["depth_conf"] = fill_sky(out["depth"], metric["sky"],
                                                       out["depth_conf"], cap=200.0)
            out["sky"] = metric["sky"]
        return out


def with_gs_head(net: DA3Net, preset: Preset, head_chunk: int = 8) -> DA3Net:
    """``net`` (no GS head) rebuilt as ``preset``, the same network plus a GS-DPT head at
    random initialisation (e.g. official DA3-SMALL -> ``small-gs`` for stage 2); every other
    tensor is copied. Raises ValueError when ``preset`` differs in more than the head."""
    import dataclasses

    same = dataclasses.replace(preset, name=net.preset.name, gs_head=False,
                               official_name=net.preset.official_name)
    if not preset.gs_head or net.gs_head is not None or same != net.preset:
        raise ValueError(f"preset {preset.name!r} is not preset {net.preset.name!r} plus a GS head")
    out = DA3Net(preset, head_chunk).to(next(net.parameters()).device)
    missing, unexpected = out.load_state_dict(net.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("gs_head.") for k in missing)
    return out


def build_net(preset: str | Preset | NestedPreset, head_chunk: int = 8) -> nn.Module:
    """Network for a preset name (ours or official) or preset object, randomly initialised."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    return NestedDA3Net(p, head_chunk) if isinstance(p, NestedPreset) else DA3Net(p, head_chunk)


def compile_network(net: nn.Module, blocks: bool = True, heads: bool = True,
                    backend: str = "inductor") -> nn.Module:
    """``torch.compile`` in place, for inference: every transformer block of ``net``
    (``nn.Module.compile``, so the state dict is unchanged) and each head's per-chunk forward
    (``_forward_chunk``, wrapped once however often this is called). Returns ``net``."""
    from da3gs.nn.transformer import Block

    for m in net.modules():
        if blocks and isinstance(m, Block):
            m.compile(backend=backend)
        chunk_fn = getattr(m, "_forward_chunk", None) if heads else None
        if chunk_fn is not None and not hasattr(chunk_fn, "_torchdynamo_orig_callable"):
            m._forward_chunk = torch.compile(chunk_fn, backend=backend)
    return net
