"""Per-pixel raw GS-DPT channels -> world-space :class:`Gaussians`.

Channel layout of ``raw: (V, H, W, 5 + 4 + 3K + 1)`` (K = (sh_degree + 1) ** 2), as the official
38-channel head for degree 2: ``[0:2]`` sub-pixel xy offset (pixels), ``[2:5]`` scale logits,
``[5:9]`` rotation, ``[9:9+3K]`` SH channel-major (all of R, then G, then B), ``[-1]`` depth offset.
The density ``(V, H, W)`` (sigmoid) is the opacity.

Two geometries:
  * ``"da3gs"`` (ours, correct): mean ``t + (D + dD) * d`` with ``d = R K^-1 p`` unnormalised, so
    that D is z-depth; rotation read as wxyz and rotated into the world frame.
  * ``"official"``: reproduces the official adapter exactly, because the published Giant GS
    weights were trained with it: z-depth used as distance along a unit ray, and the rotation
    read as xyzw, composed through a mis-ordered conversion, and emitted scalar-last where
    renderers read wxyz. Our ``quats`` hold exactly what the official code hands to gsplat.
Both: scale = (s_min + (s_max - s_min) sigmoid(logit)) * depth * 0.1 (1/fx + 1/fy); SH bands
of degree l >= 1 damped by 0.1 * 0.25^l, then rotated from camera to world.
"""

from __future__ import annotations

import torch

from da3gs.errors import ConfigError
from da3gs.geometry import mat_to_quat, quat_to_mat
from da3gs.geometry.sh import num_sh_bases, rotate_sh
from da3gs.types import Gaussians

GEOMETRIES = ("da3gs", "official")
SCALE_MIN, SCALE_MAX = 1e-5, 30.0


def raw_channels(sh_degree: int) -> int:
    """Number of raw channels (without the density) for ``sh_degree``."""
    return 2 + 3 + 4 + 3 * num_sh_bases(sh_degree) + 1


def _pixel_centres(H: int, W: int, device, dtype) -> torch.Tensor:
    """(H, W, 2) pixel centres (u + 0.5, v + 0.5) in pixels."""
    v, u = torch.meshgrid(torch.arange(H, device=device, dtype=dtype),
                          torch.arange(W, device=device, dtype=dtype), indexing="ij")
    return torch.stack([u + 0.5, v + 0.5], dim=-1)


def build_gaussians(raw: torch.Tensor, density: torch.Tensor, depth: torch.Tensor,
                    c2w: torch.Tensor, K: torch.Tensor, sh_degree: int = 2,
                    geometry: str = "da3gs", conf: torch.Tensor | None = None,
                    depth_scale: float | torch.Tensor = 1.0) -> Gaussians:
    """World-space Gaussians, one per pixel of each of V views.

    Args:
      raw: (V, H, W, C) raw head channels (layout above); density: (V, H, W) in [0, 1].
      depth: (V, H, W) z-depth from the depth head, in the frame of ``c2w``.
      c2w: (V, 4, 4) OpenCV camera-to-world; K: (V, 3, 3) pixels of the H x W images.
      geometry: ``"da3gs"`` or ``"official"`` (see the module docstring).
      conf: optional (V, H, W) depth confidence, kept per Gaussian for pruning.
      depth_scale: factor taking the network's depth units to those of ``c2w`` (applied to
        depth plus its predicted offset): a float or a (V,) tensor (one per view).
    """
    if geometry not in GEOMETRIES:
        raise ConfigError(f"geometry: expected one of {GEOMETRIES}, got {geometry!r}")
    V, H, W, C = raw.shape
    n_sh = num_sh_bases(sh_degree)
    if C != raw_channels(sh_degree):
        raise ConfigError(f"raw: {C} channels, expected {raw_channels(sh_degree)} for SH degree {sh_degree}")
    dev, dt = raw.device, raw.dtype
    if isinstance(depth_scale, torch.Tensor):
        depth_scale = depth_scale.to(dt).reshape(-1, 1, 1)
    d = (depth + raw[..., -1]) * depth_scale
    offset, scale_logit, rot = raw[..., 0:2], raw[..., 2:5], raw[..., 5:9]
    sh = raw[..., 9:9 + 3 * n_sh].reshape(V, H, W, 3, n_sh)
    mask = torch.ones(n_sh, dtype=dt, device=dev)
    for band in range(1, sh_degree + 1):
        mask[band**2:(band + 1) ** 2] = 0.1 * 0.25**band
    sh = sh * mask
    R = c2w[:, :3, :3]
    if geometry == "official":
        means, scales, quats = _official_geometry(offset, scale_logit, rot, d, c2w, K)
        opac = 0.5 * (1 - (1 - density) ** 1.0 + density ** (1 / 1.0))
    else:
        uv = _pixel_centres(H, W, dev, dt) + offset  # (V, H, W, 2)
        pix = torch.cat([uv, torch.ones_like(uv[..., :1])], dim=-1)
        dirs_cam = torch.einsum("vij,vhwj->vhwi", torch.linalg.inv_ex(K.to(dt))[0], pix)
        dirs = torch.einsum("vij,vhwj->vhwi", R, dirs_cam)
        means = c2w[:, None, None, :3, 3] + dirs * d[..., None]
        foot = 0.1 * (1 / K[:, 0, 0] + 1 / K[:, 1, 1])
        scales = (SCALE_MIN + (SCALE_MAX - SCALE_MIN) * torch.sigmoid(scale_logit)) \
            * d[..., None] * foot[:, None, None, None]
        q = rot / (rot.norm(dim=-1, keepdim=True) + 1e-8)
        quats = mat_to_quat(R[:, None, None] @ quat_to_mat(q))
        opac = density
    # SH: (V, H, W, 3, K) rotated over its last axis, stored as (N, K, 3)
    sh_world = rotate_sh(sh.transpose(-1, -2), R[:, None, None]).transpose(-1, -2)
    rows, cols = torch.meshgrid(torch.arange(H, device=dev), torch.arange(W, device=dev),
                                indexing="ij")
    view = torch.arange(V, device=dev)[:, None, None].expand(V, H, W)
    pixel = torch.stack([rows, cols], dim=-1)[None].expand(V, H, W, 2)
    N = V * H * W
    return Gaussians(means=means.reshape(N, 3), quats=quats.reshape(N, 4),
                     scales=scales.reshape(N, 3), opacities=opac.reshape(N),
                     sh=sh_world.transpose(-1, -2).reshape(N, n_sh, 3),
                     conf=None if conf is None else conf.reshape(N),
                     view=view.reshape(N), pixel=pixel.reshape(N, 2))


def build_gaussians_batched(raw: torch.Tensor, density: torch.Tensor, depth: torch.Tensor,
                            c2w: torch.Tensor, K: torch.Tensor, sh_degree: int = 2,
                            geometry: str = "da3gs",
                            depth_scale: float | torch.Tensor = 1.0) -> Gaussians:
    """:func:`build_gaussians` for B samples at once: ``raw (B, V, H, W, C)``, ``density`` and
    ``depth (B, V, H, W)``, ``c2w (B, V, 4, 4)``, ``K (B, V, 3, 3)``, ``depth_scale`` a float or
    a (B,) tensor (one per sample). Returns Gaussians whose fields have a leading batch dim,
    ``means (B, V*H*W, 3)``, ..., ``view (B, V*H*W)`` (index within the sample), the input of
    :func:`da3gs.render.render_batch`; sample b equals ``build_gaussians`` of sample b."""
    B, V = raw.shape[:2]
    if isinstance(depth_scale, torch.Tensor):
        depth_scale = depth_scale.reshape(B, 1).expand(B, V).reshape(B * V)
    g = build_gaussians(raw.flatten(0, 1), density.flatten(0, 1), depth.flatten(0, 1),
                        c2w.flatten(0, 1), K.flatten(0, 1), sh_degree, geometry,
                        depth_scale=depth_scale)
    fields = {k: v.reshape(B, -1, *v.shape[1:]) for k, v in vars(g).items()
              if isinstance(v, torch.Tensor)}
    fields["view"] = fields["view"] % V
    return Gaussians(**fields)


def _official_geometry(offset, scale_logit, rot, d, c2w, K):
    """The official adapter's means, scales and (scalar-last) rotations, op for op."""
    V, H, W, _ = offset.shape
    dev, dt = offset.device, offset.dtype
    Kn = K.clone()
    Kn[..., 0, :] /= W
    Kn[..., 1, :] /= H
    xy = _pixel_centres(H, W, dev, dt) / torch.tensor((W, H), dtype=dt, device=dev)
    pixel_size = 1 / torch.tensor((W, H), dtype=dt, device=dev)
    xy = xy + offset * pixel_size
    pts = torch.cat([xy, torch.ones_like(xy[..., :1])], dim=-1)
    Kn_inv = torch.linalg.inv_ex(Kn.float())[0].to(Kn)
    dirs = torch.einsum("vij,vhwj->vhwi", Kn_inv, pts)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    dirs_h = torch.cat([dirs, torch.zeros_like(dirs[..., :1])], dim=-1)
    dirs = torch.einsum("vij,vhwj->vhwi", c2w, dirs_h)[..., :3]
    means = c2w[:, None, None, :3, 3] + dirs * d[..., None]
    scales = SCALE_MIN + (SCALE_MAX - SCALE_MIN) * scale_logit.sigmoid()
    mult = 0.1 * torch.einsum("vij,j->vi", torch.linalg.inv_ex(Kn[..., :2, :2].float())[0].to(Kn), pixel_size)
    scales = scales * d[..., None] * mult.sum(-1)[:, None, None, None]
    q = rot / (rot.norm(dim=-1, keepdim=True) + 1e-8)
    # official: xyzw -> "wxyz" reorder, then a scalar-last matrix conversion of that
    R_cam = quat_to_mat(q[..., [2, 3, 0, 1]])
    R_world = c2w[:, None, None, :3, :3] @ R_cam
    quats = mat_to_quat(R_world)[..., [1, 2, 3, 0]]  # official returns scalar-last
    return means, scales, quats
