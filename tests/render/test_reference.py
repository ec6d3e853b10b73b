"""Scene builders and a brute-force float64 splatting reference, shared by the render tests.

``dense_reference`` follows gsplat's per-pixel loop literally (every Gaussian against every
pixel, no tiles, no bounding boxes): it is the ground truth the tiled rasterisers must match.
"""

from __future__ import annotations

import math

import torch

from da3gs.geometry import quat_to_mat
from da3gs.render.sh import C0, eval_sh, sh_to_color
from da3gs.types import Gaussians


def look_at_w2c(eye, target, up=(0.0, -1.0, 0.0)) -> torch.Tensor:
    """(4, 4) float64 OpenCV world-to-camera looking from ``eye`` at ``target``."""
    eye, target, up = (torch.as_tensor(v, dtype=torch.float64) for v in (eye, target, up))
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, up)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])                       # rows: camera axes in world
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ eye
    return w2c


def random_scene(n: int = 50, seed: int = 0, width: int = 32, height: int = 24,
                 sh_degree: int = 1, cams: int = 1, dtype=torch.float64):
    """A small random scene around the origin seen by ``cams`` cameras.

    Mixes big and small, elongated and round Gaussians, some behind the cameras, some off
    screen, some with opacity 1 (alpha clamp, transmittance stop) or below 1/255.
    Returns (Gaussians, w2c (C, 4, 4), K (C, 3, 3)).
    """
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    means = (torch.rand(n, 3, generator=g, dtype=f64) - 0.5) * torch.tensor([3.0, 2.4, 3.0], dtype=f64)
    scales = torch.exp(torch.empty(n, 3, dtype=f64).uniform_(math.log(0.02), math.log(0.6), generator=g))
    quats = torch.randn(n, 4, generator=g, dtype=f64)
    opac = torch.rand(n, generator=g, dtype=f64) * 0.95 + 0.05
    opac[: n // 8] = 1.0
    opac[n // 8: n // 8 + 2] = 0.002
    if n >= 8:  # opaque Gaussians stacked on camera 0's axis: alpha clamp and 1e-4 stop
        s = torch.tensor([0.2, 0.35, 0.5, 0.65], dtype=f64)[:, None]
        means[:4] = torch.tensor([0.0, 0.0, -3.2], dtype=f64) * (1 - s) + torch.tensor(
            [0.1, 0.0, 0.0], dtype=f64) * s
        scales[:4] = 0.3
    k = (sh_degree + 1) ** 2
    sh = torch.randn(n, k, 3, generator=g, dtype=f64) * 0.4
    sh[:, 0] = (torch.rand(n, 3, generator=g, dtype=f64) - 0.5) / C0
    w2cs, Ks = [], []
    for c in range(cams):
        ang = 0.4 * c
        eye = (3.2 * math.sin(ang), 0.3 * c, -3.2 * math.cos(ang))
        w2cs.append(look_at_w2c(eye, (0.1, 0.0, 0.0)))
        fx = 0.9 * width + 2 * c
        Ks.append(torch.tensor([[fx, 0, width / 2 + 1.3], [0, fx * 1.05, height / 2 - 0.7],
                                [0, 0, 1]], dtype=f64))
    gs = Gaussians(means=means, quats=quats, scales=scales, opacities=opac, sh=sh)
    gs = Gaussians(**{k_: (v.to(dtype) if isinstance(v, torch.Tensor) else v)
                      for k_, v in gs.__dict__.items()})
    return gs, torch.stack(w2cs).to(dtype), torch.stack(Ks).to(dtype)


def dense_reference(g: Gaussians, w2c, K, width: int, height: int, sh_degree=None,
                    background=None, near=0.01, far=1e10, eps2d=0.3, stats=None):
    """Brute-force float64 render: (C, H, W, 3) colour, (C, H, W, 1) alpha and depth.

    ``stats``: optional dict receiving "stopped", the number of pixels that hit the 1e-4
    transmittance stop, and "clamped", the number of (pixel, Gaussian) alphas clamped at 0.999.
    """
    f64 = torch.float64
    means, opac, sh = g.means.to(f64), g.opacities.to(f64), g.sh.to(f64)
    deg = g.sh_degree if sh_degree is None else sh_degree
    rot = quat_to_mat(g.quats.to(f64))
    cov = rot @ torch.diag_embed(g.scales.to(f64) ** 2) @ rot.transpose(-1, -2)
    w2c, K = w2c.to(f64).reshape(-1, 4, 4), K.to(f64).reshape(-1, 3, 3)
    py, px = torch.meshgrid(torch.arange(height, dtype=f64) + 0.5,
                            torch.arange(width, dtype=f64) + 0.5, indexing="ij")
    colors, alphas, depths = [], [], []
    for c in range(w2c.shape[0]):
        R, t = w2c[c, :3, :3], w2c[c, :3, 3]
        fx, fy, cx, cy = K[c, 0, 0], K[c, 1, 1], K[c, 0, 2], K[c, 1, 2]
        campos = torch.linalg.inv(w2c[c])[:3, 3]
        items = []
        for i in range(means.shape[0]):
            x, y, z = (R @ means[i] + t).tolist()
            if not near <= z <= far:
                continue
            lx = 0.3 * 0.5 * width / fx
            ly = 0.3 * 0.5 * height / fy
            tx = z * min(max(x / z, -(cx / fx + lx)), (width - cx) / fx + lx)
            ty = z * min(max(y / z, -(cy / fy + ly)), (height - cy) / fy + ly)
            J = torch.tensor([[fx / z, 0, -fx * tx / z ** 2], [0, fy / z, -fy * ty / z ** 2]], dtype=f64)
            S2 = J @ R @ cov[i] @ R.T @ J.T + eps2d * torch.eye(2, dtype=f64)
            if torch.linalg.det(S2) <= 0:
                continue
            conic = torch.linalg.inv(S2)
            mu = torch.stack([fx * x / z + cx, fy * y / z + cy])
            col = sh_to_color(deg, means[i] - campos, sh[i])
            items.append((z, i, mu, conic, col))
        items.sort(key=lambda it: (it[0], it[1]))
        T = torch.ones(height, width, dtype=f64)
        done = torch.zeros(height, width, dtype=torch.bool)
        acc = torch.zeros(height, width, 3, dtype=f64)
        dacc = torch.zeros(height, width, dtype=f64)
        for z, i, mu, conic, col in items:
            dx, dy = px - mu[0], py - mu[1]
            sigma = 0.5 * (conic[0, 0] * dx * dx + conic[1, 1] * dy * dy) + conic[0, 1] * dx * dy
            alpha = torch.clamp_max(opac[i] * torch.exp(-sigma), 0.999)
            if stats is not None:
                stats["clamped"] = stats.get("clamped", 0) + int((alpha == 0.999).sum())
            valid = (sigma >= 0) & (alpha >= 1.0 / 255.0) & ~done
            next_T = T * (1 - alpha)
            stop = valid & (next_T <= 1e-4)
            done = done | stop
            use = valid & ~stop
            w = torch.where(use, alpha * T, torch.zeros_like(T))
            acc = acc + w[..., None] * col
            dacc = dacc + w * z
            T = torch.where(use, next_T, T)
        a = 1 - T
        if stats is not None:
            stats["stopped"] = stats.get("stopped", 0) + int(done.sum())
        if background is not None:
            acc = acc + T[..., None] * torch.as_tensor(background, dtype=f64).reshape(-1, 3)[
                min(c, torch.as_tensor(background).reshape(-1, 3).shape[0] - 1)]
        colors.append(acc)
        alphas.append(a[..., None])
        depths.append((dacc / a.clamp_min(1e-10))[..., None])
    return torch.stack(colors), torch.stack(alphas), torch.stack(depths)


# ---------------------------------------------------------------- tests of the reference itself

def test_reference_single_gaussian_peak_at_pixel_centre():
    """A round Gaussian centred on pixel (5, 3)'s centre peaks there with alpha = opacity."""
    W, H, f = 12, 8, 10.0
    K = torch.tensor([[f, 0, 0.0], [0, f, 0.0], [0, 0, 1]], dtype=torch.float64)
    z = 2.0
    mean = torch.tensor([[5.5 * z / f, 3.5 * z / f, z]], dtype=torch.float64)
    g = Gaussians(means=mean, quats=torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64),
                  scales=torch.full((1, 3), 0.1, dtype=torch.float64),
                  opacities=torch.tensor([0.7], dtype=torch.float64),
                  sh=torch.zeros(1, 1, 3, dtype=torch.float64))
    color, alpha, depth = dense_reference(g, torch.eye(4, dtype=torch.float64), K, W, H)
    assert alpha.shape == (1, H, W, 1)
    assert torch.isclose(alpha[0, 3, 5, 0], torch.tensor(0.7, dtype=torch.float64))
    assert alpha[0].argmax() == 3 * W + 5
    assert torch.allclose(color[0, 3, 5], torch.full((3,), 0.35, dtype=torch.float64))
    assert torch.isclose(depth[0, 3, 5, 0], torch.tensor(z, dtype=torch.float64))
    # point-symmetric about the pixel centre (the off-axis Jacobian shears, but keeps that)
    assert torch.allclose(alpha[0, 0:7, 4].flip(0), alpha[0, 0:7, 6])
    assert not torch.allclose(alpha[0, 0:7, 4], alpha[0, 0:7, 6])


def test_random_scene_is_not_trivial():
    g, w2c, K = random_scene(50, seed=1)
    stats = {}
    color, alpha, _ = dense_reference(g, w2c, K, 32, 24, stats=stats)
    assert 0.2 < alpha.mean() < 1.0 and color.std() > 0.05
    assert stats["stopped"] > 0 and stats["clamped"] > 0, stats
    assert torch.allclose(eval_sh(0, torch.ones(3), g.sh[:1, :1])[0], C0 * g.sh[0, 0])


def frustum_cloud(n: int, seed: int = 0, width: int = 256, height: int = 256,
                  sh_degree: int = 0, device="cpu", dtype=torch.float32):
    """n small random Gaussians filling the view of an identity camera (benchmarks).

    Depths in [2, 6], pixel-scale footprints (like per-pixel Gaussians of a depth map).
    Returns (Gaussians, w2c (1, 4, 4), K (1, 3, 3)).
    """
    g = torch.Generator().manual_seed(seed)
    f = 0.8 * width
    z = torch.rand(n, generator=g) * 4 + 2
    u = torch.rand(n, generator=g) * width
    v = torch.rand(n, generator=g) * height
    means = torch.stack([(u - width / 2) * z / f, (v - height / 2) * z / f, z], -1)
    scales = (torch.rand(n, 3, generator=g) * 1.5 + 0.25) * (z / f)[:, None]
    sh = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.3
    gs = Gaussians(means=means, quats=torch.randn(n, 4, generator=g), scales=scales,
                   opacities=torch.rand(n, generator=g), sh=sh).to(device)
    gs = Gaussians(**{k: (v.to(dtype) if isinstance(v, torch.Tensor) else v)
                      for k, v in gs.__dict__.items()})
    K = torch.tensor([[[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]], dtype=dtype, device=device)
    return gs, torch.eye(4, dtype=dtype, device=device)[None], K
