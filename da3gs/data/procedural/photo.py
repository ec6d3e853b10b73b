"""Per-view photographic effects of the procedural generator (images only; batched, no host sync).

The renderer gives linear radiance; :func:`develop` turns it into a photograph, in the order of a
camera's pipeline:

1. **defocus** (optics, linear light): a thin lens focused on the scene's focus point; a pixel at
   z-depth ``z`` has a circle of confusion ``c = |1 - z_f / z|`` (capped at 1; sky 1) and
   becomes ``lerp(sharp, blurred, c)``, the blurred copy a separable Gaussian of ``sigma``
   pixels (the blur of points at infinity): a two-layer depth of field, exact in focus and at
   full blur, cheap (one blur per view).
2. **motion blur** (linear light): a line kernel of random direction and length (a
   ``(2r + 1)^2`` depthwise convolution, the segment rasterised with a one-pixel tent).
3. **vignetting** (linear light): ``1 - a r^2`` with r the distance from the principal point
   over the distance of the farthest image corner.
4. exposure, white balance (then clipped: sensor saturation), gamma encoding ``x ** (g / 2.2)``
   and Gaussian noise, as before.
5. **JPEG**: RGB -> YCbCr (JFIF), chroma averaged over 2 x 2 pixels (4:2:0), 8 x 8 DCT-II blocks
   quantised with the IJG luminance / chrominance tables scaled to the quality (libjpeg's
   scaling), inverse DCT, chroma upsampled (bilinear, like libjpeg's fancy upsampling), back to
   RGB; all in torch.

Every effect has a probability per view (``ProceduralConfig.*_prob``) and is computed densely
for every view (strength zero, or the identity kernel, where it is off), so a call is one fixed
sequence of kernels (the static path and CUDA graphs need that); an effect whose probability is
0 in the config is skipped altogether. Parameters are drawn by :func:`draw` from the call's
generator before rendering (deterministic given the seed, independent of chunking).

Lens distortion is not an image effect here: it bends the rays of the render
(:func:`distort_directions`), so depth, normals and masks stay exact per pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .primitives import const

__all__ = ["draw", "develop", "defocus", "motion_blur", "vignette", "jpeg", "distortion_coeff",
           "distort_directions", "tone"]

#: IJG (libjpeg) quantisation tables at quality 50: luminance, chrominance (row-major 8 x 8).
_Q_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
           14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
           49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_Q_CHROMA = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
             47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32


def _dct_matrix(device) -> torch.Tensor:
    """The orthonormal 8 x 8 DCT-II matrix D (coefficients = D X D^T)."""
    vals = [[(math.sqrt(1 / 8) if k == 0 else math.sqrt(2 / 8)) * math.cos(math.pi * (2 * n + 1) * k / 16)
             for n in range(8)] for k in range(8)]
    return const("dct8", vals, torch.float32, (8, 8), device)


def _dct2_matrix(device) -> torch.Tensor:
    """(64, 64) Kronecker product D x D: the 2D DCT of row-major 8 x 8 blocks as one matrix
    product (``coef = block @ M.T``, ``block = coef @ M``)."""
    vals = [[(math.sqrt(1 / 8) if k == 0 else math.sqrt(2 / 8)) * math.cos(math.pi * (2 * n + 1) * k / 16)
             for n in range(8)] for k in range(8)]
    kron = [[vals[a][c] * vals[b][d] for c in range(8) for d in range(8)] for a in range(8) for b in range(8)]
    return const("dct8x8", kron, torch.float32, (64, 64), device)


def draw(r, cfg, B: int, V: int, H: int, W: int) -> dict:
    """Per-view effect parameters (B, V) from the call's generator (``r``: a :class:`.scene._Rng`);
    zero strength where an effect is off. Always the same draws, whatever the probabilities."""
    side = max(H, W)
    on = lambda p: r.u((B, V)) < p  # noqa: E731
    prm = {}
    prm["defocus"] = torch.where(on(cfg.defocus_prob), r.u((B, V), *cfg.defocus) * side, 0.0)
    mb_on = on(cfg.motion_blur_prob)
    prm["motion"] = torch.where(mb_on, r.u((B, V), *cfg.motion_blur) * side, 0.0)
    prm["motion_angle"] = r.u((B, V), 0.0, math.pi)
    prm["vignette"] = torch.where(on(cfg.vignetting_prob), r.u((B, V), *cfg.vignetting), 0.0)
    prm["jpeg_on"] = on(cfg.jpeg_prob)
    prm["jpeg_quality"] = r.u((B, V), *cfg.jpeg_quality)
    prm["distortion"] = torch.where(on(cfg.distortion_prob), r.u((B, V), *cfg.distortion), 0.0)
    return prm


def distortion_coeff(c: torch.Tensor, K: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Radial coefficients k (S, V) such that the farthest image corner moves by the fraction c
    (S, V) of its distance from the principal point: ``k = c / r_c^2`` with r_c the corner's
    normalised radius (K: (S, V, 3, 3))."""
    cx, cy = K[..., 0, 2], K[..., 1, 2]
    ax = torch.maximum(cx, W - cx) / K[..., 0, 0]
    ay = torch.maximum(cy, H - cy) / K[..., 1, 1]
    return c / (ax * ax + ay * ay)


def distort_directions(dcam: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bend camera-frame directions (S, V, H, W, 3) with z = 1 radially: ``(x, y) (1 + k r^2)``,
    r^2 = x^2 + y^2, k: (S, V). k > 0: the rays of off-centre pixels point further out (barrel
    distortion: content moves towards the centre). k = 0 leaves the directions bit-identical."""
    xy = dcam[..., :2]
    r2 = (xy * xy).sum(-1, keepdim=True)
    return torch.cat([xy * (1 + k[..., None, None, None] * r2), dcam[..., 2:]], -1)


def _gauss_taps(sigma: torch.Tensor, R: int) -> torch.Tensor:
    """(N, 2R + 1) normalised Gaussian taps of per-image sigma (N,) (identity where sigma = 0)."""
    t = torch.arange(-R, R + 1, device=sigma.device, dtype=sigma.dtype)
    k = torch.exp(-0.5 * (t / sigma.clamp_min(1e-6)[:, None]) ** 2)
    return k / k.sum(-1, keepdim=True)


def _sep_blur(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable blur of x (N, C, H, W) with M kernels per image, taps (N, M, 2R + 1) -> (N, M, C, H, W)."""
    N, C, H, W = x.shape
    M, K = taps.shape[1], taps.shape[2]
    R = K // 2
    w = taps[:, :, None, :].expand(N, M, C, K).transpose(1, 2).reshape(N * C * M, 1, 1, K)
    y = F.conv2d(F.pad(x.reshape(1, N * C, H, W), (R, R, 0, 0), mode="replicate"), w, groups=N * C)
    y = F.conv2d(F.pad(y, (0, 0, R, R), mode="replicate"), w.transpose(-1, -2), groups=N * C * M)
    return y.reshape(N, C, M, H, W).transpose(1, 2)


def defocus(x: torch.Tensor, depth: torch.Tensor, zf: torch.Tensor, sigma: torch.Tensor, R: int) -> torch.Tensor:
    """Depth-dependent defocus. x: (N, 3, H, W) linear; depth: (N, H, W) z-depth (0: sky); zf: (N,)
    focus z-depth; sigma: (N,) blur at infinity in pixels (0: off); R: kernel radius (host int).
    The sharp image and one blurred by ``sigma`` are mixed per pixel by its circle of
    confusion ``|1 - z_f / z|`` (capped at 1; sky 1): exact in focus and at full blur, a
    two-layer approximation in between (the blurs are small: a few pixels)."""
    b = _sep_blur(x, _gauss_taps(sigma, R)[:, None])[:, 0]  # (N, 3, H, W)
    coc = torch.where(depth > 0, (1 - zf[:, None, None] / depth.clamp_min(1e-6)).abs().clamp_max(1.0), 1.0)
    return torch.lerp(x, b, torch.where(sigma[:, None, None] > 0, coc, 0.0)[:, None])


def motion_blur(x: torch.Tensor, length: torch.Tensor, angle: torch.Tensor, R: int) -> torch.Tensor:
    """Linear motion blur. x: (N, C, H, W); length: (N,) pixels (0: off); angle: (N,) radians; R:
    kernel radius (host int). The kernel is the segment of that length through the centre,
    rasterised with a one-pixel tent of the distance to it, normalised."""
    N, C, H, W = x.shape
    t = torch.arange(-R, R + 1, device=x.device, dtype=x.dtype)
    gy, gx = t[:, None].expand(2 * R + 1, 2 * R + 1), t[None, :].expand(2 * R + 1, 2 * R + 1)
    c, s = angle.cos()[:, None, None], angle.sin()[:, None, None]
    along = gx * c + gy * s
    across = -gx * s + gy * c
    half = 0.5 * length[:, None, None]
    dist = torch.hypot((along.abs() - half).clamp_min(0), across)
    k = (1 - dist).clamp_min(0)
    k = k / k.sum((-1, -2), keepdim=True)
    w = k[:, None].expand(N, C, 2 * R + 1, 2 * R + 1).reshape(N * C, 1, 2 * R + 1, 2 * R + 1)
    y = F.conv2d(F.pad(x.reshape(1, N * C, H, W), (R, R, R, R), mode="replicate"), w, groups=N * C)
    return y.reshape(N, C, H, W)


def vignette(K: torch.Tensor, a: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(N, 1, H, W) gains ``1 - a r^2``: r the distance from the principal point (K: (N, 3, 3))
    over the farthest corner's; a: (N,) darkening at that corner."""
    cx, cy = K[:, 0, 2, None, None], K[:, 1, 2, None, None]
    v = torch.arange(H, device=K.device, dtype=K.dtype)[:, None] + 0.5
    u = torch.arange(W, device=K.device, dtype=K.dtype)[None, :] + 0.5
    rc2 = torch.maximum(cx, W - cx) ** 2 + torch.maximum(cy, H - cy) ** 2
    r2 = ((u - cx) ** 2 + (v - cy) ** 2) / rc2
    return (1 - a[:, None, None] * r2)[:, None]


def tone(x: torch.Tensor, expo: torch.Tensor, wb: torch.Tensor, gamma: torch.Tensor, sigma: torch.Tensor,
         noise: torch.Tensor) -> torch.Tensor:
    """Exposure, white balance (clipped), gamma encoding and noise on (N, 3, H, W); parameters
    (N, 1 or 3, 1, 1). Not clipped after the noise (the caller clips once at the end)."""
    return (x * (expo * wb)).clamp(0, 1) ** (gamma / 2.2) + sigma * noise


_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))


def _quant_tables(quality: torch.Tensor) -> torch.Tensor:
    """(N, 2, 8, 8) luminance and chrominance steps for qualities (N,) in [1, 100] (libjpeg scaling)."""
    q = quality.clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)
    base = const("jpegq", (_Q_LUMA, _Q_CHROMA), torch.float32, (2, 8, 8), quality.device)
    return torch.floor((base * scale[:, None, None, None] + 50) / 100).clamp(1, 255)


def _blocks_quantise(x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """x: (N, H, W, C) with H, W multiples of 8, level-shifted; step: (N, C, 64) row-major
    quantisation steps. 8 x 8 DCT (one matrix product per block with the Kronecker matrix),
    round to the steps, inverse DCT."""
    N, H, W, C = x.shape
    M = _dct2_matrix(x.device)
    b = x.reshape(N, H // 8, 8, W // 8, 8, C).permute(0, 1, 3, 5, 2, 4).reshape(N, -1, C, 64)
    coef = b @ M.T
    st = step[:, None]  # (N, 1, C, 64)
    coef = torch.round(coef / st) * st
    b = (coef @ M).reshape(N, H // 8, W // 8, C, 8, 8)
    return b.permute(0, 1, 4, 2, 5, 3).reshape(N, H, W, C)


def jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """JPEG-like compression of x (N, 3, H, W) in [0, 1] at qualities (N,): YCbCr, 4:2:0 chroma,
    8 x 8 DCT quantisation with the IJG tables, back to RGB (not clipped)."""
    N, _, H, W = x.shape
    H2, W2 = -(-H // 16) * 16, -(-W // 16) * 16
    xp = F.pad(x, (0, W2 - W, 0, H2 - H), mode="replicate").permute(0, 2, 3, 1) * 255.0  # (N, H2, W2, 3)
    ycc = xp @ const("ycc", _YCC, torch.float32, (3, 3), x.device).T
    tab = _quant_tables(quality).reshape(N, 2, 64)
    y = _blocks_quantise(ycc[..., :1] - 128, tab[:, :1]) + 128
    cc = F.avg_pool2d(ycc[..., 1:].permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)  # 4:2:0
    cc = _blocks_quantise(cc.contiguous(), tab[:, 1:2].expand(N, 2, 64))
    cc = F.interpolate(cc.permute(0, 3, 1, 2), scale_factor=2.0, mode="bilinear",
                       align_corners=False)  # libjpeg's fancy upsampling
    rgb = torch.cat([y.permute(0, 3, 1, 2), cc], 1).permute(0, 2, 3, 1) @ const(
        "rgb", _RGB, torch.float32, (3, 3), x.device).T
    return rgb.permute(0, 3, 1, 2)[:, :, :H, :W] / 255.0


def develop(rgb: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, zf: torch.Tensor, tone_prm: tuple,
            prm: dict, cfg, tone_fn=tone) -> torch.Tensor:
    """Linear renders (B, V, H, W, 3) -> photographs (B, V, 3, H, W) in [0, 1].

    depth: (B, V, H, W) z-depth (0 on sky); K: (B, V, 3, 3); zf: (B, V) z-depth of the focus
    point; tone_prm: (expo, wb, gamma, sigma, noise) as drawn by the generator ((B, V, 1, 1, 1 or 3)
    and noise (B, V, H, W, 3)); prm: :func:`draw`'s parameters; cfg: the ProceduralConfig (the
    probabilities and ranges decide, on the host, which effects run and their kernel radii).
    """
    B, V, H, W, _ = rgb.shape
    N, side = B * V, max(H, W)
    x = rgb.reshape(N, H, W, 3).permute(0, 3, 1, 2)
    if cfg.defocus_prob > 0:
        R = max(1, math.ceil(2.5 * cfg.defocus[1] * side))
        x = defocus(x, depth.reshape(N, H, W), zf.reshape(N), prm["defocus"].reshape(N), R)
    if cfg.motion_blur_prob > 0:
        R = max(1, math.ceil(0.5 * cfg.motion_blur[1] * side + 0.5))
        x = motion_blur(x, prm["motion"].reshape(N), prm["motion_angle"].reshape(N), R)
    if cfg.vignetting_prob > 0:
        x = x * vignette(K.reshape(N, 3, 3), prm["vignette"].reshape(N), H, W)
    expo, wb, gamma, sigma, noise = tone_prm
    ch = lambda t: t.reshape(N, t.shape[-1], 1, 1)  # noqa: E731
    x = tone_fn(x, ch(expo), ch(wb), ch(gamma), ch(sigma), noise.reshape(N, H, W, 3).permute(0, 3, 1, 2))
    if cfg.jpeg_prob > 0:
        x = torch.where(prm["jpeg_on"].reshape(N, 1, 1, 1), jpeg(x.clamp(0, 1), prm["jpeg_quality"].reshape(N)), x)
    return x.clamp(0, 1).reshape(B, V, 3, H, W).contiguous()
