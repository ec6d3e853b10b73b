"""Pure-PyTorch differentiable 3D Gaussian rasteriser matching gsplat's maths.

Projection (gsplat ``fully_fused_projection``, pinhole, "classic" mode):
  * 3D covariance ``R S S^T R^T`` from the (normalised) wxyz quaternion and linear scales;
  * world -> camera with ``w2c``; Gaussians with camera z outside ``[near, far]`` are culled;
  * EWA Jacobian of the perspective map, with ``x/z`` and ``y/z`` clamped to 1.3x the
    field-of-view limits (``lim = (W - cx) / fx + 0.3 * W / (2 fx)``, etc.);
  * 2D covariance ``J Sigma_c J^T + eps2d * I`` (eps2d = 0.3 low-pass dilation);
  * per-axis radii ``ceil(e * sqrt(Sigma2d_ii))`` with gsplat 1.5's opacity-aware extent
    ``e = min(3.33, sqrt(2 ln(255 * opacity)))`` (Gaussians with opacity < 1/255 are culled);
    the box then contains every pixel where alpha >= 1/255, so the image does not depend on
    the tiling; Gaussians whose box misses the image are culled.

Compositing (gsplat ``rasterize_to_pixels``): pixel centres at ``(u + 0.5, v + 0.5)``;
Gaussians sorted front to back by camera z; ``alpha = min(0.999, o * exp(-sigma))`` with
``sigma = 0.5 d^T Sigma2d^-1 d``; contributions with ``sigma < 0`` or ``alpha < 1/255`` are
skipped; a pixel stops *before* the Gaussian that would bring its transmittance to <= 1e-4.

Memory stays bounded: the image is cut into ``tile_size`` tiles, each tile only sees the
Gaussians whose box overlaps it (sorted by depth), tiles of similar load are batched and
padded up to ``max_elems`` (pixel x Gaussian) pairs per step, longer lists are processed in
chunks carrying the transmittance. With autograd on, each step runs without a graph and its
backward recomputes it (a checkpoint, :class:`_CompositeCheckpoint`), so backward holds one
step's (pixel x Gaussian) intermediates at a time instead of all of them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from da3gs.render.sh import sh_to_color
from da3gs.geometry.sh import sh_degree_from_bases

__all__ = ["project_gaussians", "rasterize", "auto_tile_size", "quat_to_rotmat", "ALPHA_THRESHOLD", "T_STOP"]

ALPHA_THRESHOLD = 1.0 / 255.0
T_STOP = 1e-4
_LOG_ALPHA_THRESHOLD = math.log(ALPHA_THRESHOLD)
_NF = 10  # packed per-Gaussian features, see _composite_step


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """(..., 4) wxyz quaternions (normalised here) -> (..., 3, 3) rotation matrices."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    r = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1)
    return r.reshape(quats.shape[:-1] + (3, 3))


def project_gaussians(means, quats, scales, opacities, w2c, K, width: int, height: int,
                      near: float = 0.01, far: float = 1e10, eps2d: float = 0.3):
    """EWA projection of N Gaussians into C pinhole cameras (gsplat 1.5 semantics).

    Args:
      means (N, 3), quats (N, 4) wxyz, scales (N, 3) linear, opacities (N,);
      w2c (C, 4, 4) world-to-camera (OpenCV); K (C, 3, 3) pixels.
    Returns:
      means2d (C, N, 2) pixels, conics (C, N, 3) upper triangle of the inverse 2D covariance,
      depths (C, N) camera z, radii (C, N, 2) int32 pixel half-extents (0 = culled).
      Culled entries hold finite placeholder values.
    """
    R = quat_to_rotmat(quats)
    M = R * scales[:, None, :]
    cov = M @ M.transpose(-1, -2)                                          # (N, 3, 3)
    Rw, t = w2c[:, :3, :3], w2c[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", Rw, means) + t[:, None, :]       # (C, N, 3)
    cov_c = torch.einsum("cij,njk,clk->cnil", Rw, cov, Rw)                 # (C, N, 3, 3)

    x, y, z = means_c.unbind(-1)
    in_depth = (z >= near) & (z <= far)
    zs = torch.where(in_depth, z, torch.ones_like(z))                      # safe divisor
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_xp, lim_xn = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_yp, lim_yn = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    tx = zs * torch.minimum(torch.maximum(x / zs, -lim_xn), lim_xp)
    ty = zs * torch.minimum(torch.maximum(y / zs, -lim_yn), lim_yp)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / (zs * zs),
                     zero, fy / zs, -fy * ty / (zs * zs)], dim=-1).reshape(z.shape + (2, 3))
    cov2d = J @ cov_c @ J.transpose(-1, -2)                                # (C, N, 2, 2)
    a = cov2d[..., 0, 0] + eps2d
    b = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    c = cov2d[..., 1, 1] + eps2d
    det = a * c - b * b
    ok = in_depth & (det > 0)
    det_s = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_s, -b / det_s, a / det_s], dim=-1)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], dim=-1)

    with torch.no_grad():
        op = opacities.detach().expand_as(z)
        ok = ok & (op >= ALPHA_THRESHOLD)
        extend = torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
        extend = extend.clamp_max(3.33)
        rx = torch.ceil(extend * torch.sqrt(a.detach().clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.detach().clamp_min(0)))
        mx, my = means2d.detach().unbind(-1)
        ok = ok & ((rx > 0) | (ry > 0))
        ok = ok & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii = torch.stack([rx, ry], dim=-1).nan_to_num(0.0)
        radii = torch.where(ok[..., None], radii, torch.zeros_like(radii)).to(torch.int32)
    return means2d, conics, z, radii


def _composite_step(feats, pix, T_in, done_in):
    """Front-to-back compositing of one padded batch of tiles.

    Args:
      feats: (G, L, 10) packed Gaussians, depth-sorted per tile: mx, my, -a/2, -b, -c/2
        (conic (a, b, c)), log opacity, r, g, b, z; padding has log opacity -inf.
      pix: (G, P, 2) pixel centres; T_in: (G, P) transmittance so far; done_in: (G, P) bool.
    Returns:
      rgbd (G, P, 4) accumulated colour and z (weighted), T_out (G, P), done_out (G, P).
    """
    f = feats.transpose(1, 2)[:, :, None, :]                               # (G, 10, 1, L)
    mx, my, qa, qb, qc, log_op = f[:, 0], f[:, 1], f[:, 2], f[:, 3], f[:, 4], f[:, 5]
    dx = pix[..., 0:1] - mx                                                 # (G, P, L)
    dy = pix[..., 1:2] - my
    q = dx * (qa * dx + qb * dy) + qc * (dy * dy)                           # -sigma
    power = q + log_op
    alpha = torch.clamp_max(torch.exp(power), 0.999)                       # o * exp(-sigma)
    keep = (q <= 0) & (power >= _LOG_ALPHA_THRESHOLD)
    alpha = torch.where(keep, alpha, 0.0)
    Tc = torch.cumprod(1.0 - alpha, dim=-1)                                 # T after each
    T_excl = T_in[..., None] * torch.cat([torch.ones_like(Tc[..., :1]), Tc[..., :-1]], dim=-1)
    with torch.no_grad():
        live = (T_in[..., None] * Tc > T_STOP) & ~done_in[..., None]        # prefix mask
        done_out = done_in | (keep & ~live).any(dim=-1)
    w = torch.where(live, alpha * T_excl, 0.0)                             # (G, P, L)
    rgbd = torch.bmm(w, feats[..., 6:10])                                  # (G, P, 4)
    T_out = T_in - w.sum(dim=-1)
    return rgbd, T_out, done_out


class _CompositeCheckpoint(torch.autograd.Function):
    """:func:`_composite_step` run without a graph; backward recomputes it with one.

    Like ``torch.utils.checkpoint`` (only the inputs are kept, so peak memory is one step's
    intermediates), but its forward builds no graph and it works with ``torch.autograd.grad``
    (gradcheck) because the recomputed graph is differentiated locally. First order only.
    """

    @staticmethod
    def forward(ctx, feats, pix, T_in, done_in):
        ctx.save_for_backward(feats, pix, T_in, done_in)
        rgbd, T_out, done_out = _composite_step(feats, pix, T_in, done_in)
        ctx.mark_non_differentiable(done_out)
        return rgbd, T_out, done_out

    @staticmethod
    @once_differentiable
    def backward(ctx, g_rgbd, g_T, _g_done):
        feats, pix, T_in, done_in = ctx.saved_tensors
        need_f, need_T = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        with torch.enable_grad():
            f = feats.detach().requires_grad_(need_f)
            T = T_in.detach().requires_grad_(need_T)
            rgbd, T_out, _ = _composite_step(f, pix, T, done_in)
            inputs = [x for x, need in ((f, need_f), (T, need_T)) if need]
            outs, grads = [], []
            for o, g in ((rgbd, g_rgbd), (T_out, g_T)):
                if g is not None:
                    outs.append(o)
                    grads.append(g)
            res = torch.autograd.grad(outs, inputs, grads, allow_unused=True) if outs else []
        res = list(res)
        gf = res.pop(0) if need_f else None
        gT = res.pop(0) if need_T else None
        return gf, None, gT, None


def auto_tile_size(radii: torch.Tensor) -> int:
    """Tile edge for one camera from its ``radii (N, 2)`` (0 = culled): 4, or 8 when the
    visible Gaussians' mean larger half-extent is 7 px or more.

    Each of a tile's pixels evaluates every Gaussian whose box meets the tile, so small tiles
    waste less on small splats and cost more per-tile work on large ones. Measured on the CPU
    (docs/benchmarks.md, "Rendering"): a render output of 296 k Gaussians at mean radius 2.3 /
    3.1 / 4.9 / 8.4 px renders in 0.38 / 0.48 / 0.82 / 2.18 s with 4 x 4 tiles against
    0.69 / 0.70 / 0.95 / 2.04 s with 8 x 8 (16 x 16 is slower at all four).
    """
    r = radii[(radii > 0).all(-1)]
    if r.numel() == 0:
        return 4
    return 8 if float(r.max(-1).values.float().mean()) >= 7.0 else 4


def _tile_intersections(means2d, radii, depths, tile_size, tiles_x, tiles_y):
    """(tile, Gaussian) pairs of one camera, sorted by tile then depth (no grad).

    Returns vis (V,) ids of the visible Gaussians, ids (M,) long indices into ``vis``, and
    tile_counts (tiles_y * tiles_x,) long.
    """
    dev = means2d.device
    vis = torch.nonzero((radii > 0).all(-1), as_tuple=True)[0]
    n_tiles = tiles_x * tiles_y
    if vis.numel() == 0:
        return vis, vis, torch.zeros(n_tiles, dtype=torch.long, device=dev)
    m = means2d.detach()[vis].double() / tile_size
    r = radii[vis].double() / tile_size
    lo = torch.floor(m - r).long()
    hi = torch.ceil(m + r).long()
    x0, x1 = lo[:, 0].clamp(0, tiles_x), hi[:, 0].clamp(0, tiles_x)
    y0, y1 = lo[:, 1].clamp(0, tiles_y), hi[:, 1].clamp(0, tiles_y)
    nx = x1 - x0
    cnt = nx * (y1 - y0)
    rank = torch.empty_like(vis)                                            # depth rank
    rank[torch.sort(depths.detach()[vis], stable=True).indices] = torch.arange(
        vis.numel(), device=dev)
    g = torch.repeat_interleave(torch.arange(vis.numel(), device=dev), cnt)
    start = torch.cumsum(cnt, 0) - cnt
    k = torch.arange(g.numel(), device=dev) - start[g]                      # index in box
    nxg = nx[g].clamp_min(1)
    tile = (y0[g] + k // nxg) * tiles_x + x0[g] + k % nxg
    order = torch.sort(tile * vis.numel() + rank[g]).indices
    counts = torch.bincount(tile, minlength=n_tiles)
    return vis, g[order], counts


def rasterize(means, quats, scales, opacities, sh, w2c, K, width: int, height: int,
              sh_degree: int | None = None, background=None, near: float = 0.01,
              far: float = 1e10, eps2d: float = 0.3, tile_size: int | None = None,
              max_elems: int = 1 << 18, meta: dict | None = None):
    """Render N Gaussians into C cameras on any device with plain autograd ops.

    Args:
      means (N, 3), quats (N, 4) wxyz, scales (N, 3), opacities (N,), sh (N, K, 3);
      w2c (C, 4, 4), K (C, 3, 3); sh_degree (default: all of sh);
      background: None or (C, 3) colour added as ``T * background``;
      tile_size: tile edge in pixels; the images do not depend on it. None (default): per
        camera, :func:`auto_tile_size` of its visible Gaussians' radii;
      max_elems: (pixel x Gaussian) pairs evaluated per step; peak memory is about
        ``30 * max_elems * itemsize`` bytes on top of O(N + intersections) buffers.
      meta: optional dict, filled (as gsplat's ``rasterization`` meta, unpacked) with
        ``means2d`` (C, N, 2) projected centres in pixels, the tensor the images are
        differentiated through (``meta["means2d"].retain_grad()`` before backward gives the
        per-Gaussian screen-space gradients densification uses; culled entries get 0),
        ``radii`` (C, N, 2) int32, ``depths`` (C, N), ``width``, ``height``, ``n_cameras``
        (C), ``gaussian_ids`` None (not packed).
    Returns:
      color (C, H, W, 3), alpha (C, H, W, 1) = 1 - T, depth (C, H, W, 1) expected z
      (sum w z / alpha, 0 where alpha == 0), radii (C, N, 2) int32.
    """
    if sh_degree is None:
        sh_degree = sh_degree_from_bases(sh.shape[1])
    dev, dt = means.device, means.dtype
    C = w2c.shape[0]
    means2d, conics, depths, radii = project_gaussians(
        means, quats, scales, opacities, w2c, K, width, height, near, far, eps2d)
    if meta is not None:
        meta.update(means2d=means2d, radii=radii, depths=depths, width=int(width),
                    height=int(height), n_cameras=C, gaussian_ids=None)
    campos = torch.linalg.inv(w2c)[:, :3, 3]                                # (C, 3)
    use_ckpt = torch.is_grad_enabled() and any(
        isinstance(v, torch.Tensor) and v.requires_grad
        for v in (means, quats, scales, opacities, sh, w2c, background))
    images = []
    for ci in range(C):
        ts = int(tile_size) if tile_size is not None else auto_tile_size(radii[ci])
        tiles_x, tiles_y = math.ceil(width / ts), math.ceil(height / ts)
        n_tiles, P = tiles_x * tiles_y, ts * ts
        local = torch.arange(P, device=dev)
        offs = torch.stack([local % ts, local // ts], -1).to(dt) + 0.5    # (P, 2)
        vis, gids, counts = _tile_intersections(means2d[ci], radii[ci], depths[ci], ts,
                                                tiles_x, tiles_y)
        pad = vis.numel()                                        # row V = zero padding row
        colors = sh_to_color(sh_degree, means[vis] - campos[ci], sh[vis])
        quad = conics[ci, vis] * conics.new_tensor([-0.5, -1.0, -0.5])
        feats = torch.cat([means2d[ci, vis], quad, torch.log(opacities[vis, None]), colors,
                           depths[ci, vis, None]], dim=-1)
        padding = feats.new_zeros((1, _NF))
        padding[0, 5] = -math.inf
        feats = torch.cat([feats, padding], 0)                             # (V + 1, 10)
        starts = torch.cumsum(counts, 0) - counts
        order = torch.sort(counts, descending=True, stable=True).indices
        cnt_sorted = counts[order].tolist()
        outs, t = [], 0
        while t < n_tiles and cnt_sorted[t] > 0:
            L = cnt_sorted[t]
            G = max(1, min(n_tiles - t, max_elems // (P * L)))
            while G > 1 and cnt_sorted[t + G - 1] == 0:
                G -= 1
            tid = order[t:t + G]
            tile_xy = torch.stack([tid % tiles_x, tid // tiles_x], -1).to(dt) * ts
            pix = tile_xy[:, None, :] + offs                                # (G, P, 2)
            T = torch.ones((G, P), dtype=dt, device=dev)
            done = torch.zeros((G, P), dtype=torch.bool, device=dev)
            acc = torch.zeros((G, P, 4), dtype=dt, device=dev)
            Lc = max(1, max_elems // (G * P))
            for l0 in range(0, L, Lc):
                ar = torch.arange(l0, min(L, l0 + Lc), device=dev)
                idx = starts[tid, None] + ar
                # index_select gathers whole rows, several times faster than advanced indexing
                pick = gids.index_select(0, idx.clamp_max(gids.numel() - 1).view(-1)).view(idx.shape)
                idx = torch.where(ar < counts[tid, None], pick, pad)
                f = feats.index_select(0, idx.view(-1)).view(*idx.shape, _NF)  # (G, Lc, 10)
                if use_ckpt:
                    rgbd, T, done = _CompositeCheckpoint.apply(f, pix, T, done)
                else:
                    rgbd, T, done = _composite_step(f, pix, T, done)
                acc = acc + rgbd
                if bool(done.all()):
                    break
            outs.append(torch.cat([acc, T[..., None]], -1))
            t += G
        empty = torch.zeros((n_tiles - t, P, 5), dtype=dt, device=dev)
        empty[..., 4] = 1.0
        outs.append(empty)
        inv = torch.empty_like(order)
        inv[order] = torch.arange(n_tiles, device=dev)
        tiles = torch.cat(outs, 0)[inv]                                     # (n_tiles, P, 5)
        img = tiles.view(tiles_y, tiles_x, ts, ts, 5).permute(0, 2, 1, 3, 4)
        images.append(img.reshape(tiles_y * ts, tiles_x * ts, 5)[:height, :width])
    out = torch.stack(images, 0)                                            # (C, H, W, 5)
    T = out[..., 4:5]
    alpha = 1.0 - T
    color = out[..., :3]
    if background is not None:
        color = color + T * background[:, None, None, :]
    depth = out[..., 3:4] / alpha.clamp_min(1e-10)
    return color, alpha, depth, radii
