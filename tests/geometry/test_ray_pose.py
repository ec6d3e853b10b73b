import math

import pytest
import torch

from da3gs.geometry import GeometryError, RayPoseResult, pose_from_ray_map, ray_map

from .helpers import device_param, make_K, random_c2w, rodrigues

F64 = torch.float64
h, w = 24, 32


def _scene(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    c2w = random_c2w(n, g)  # arbitrary orientations, incl. looking along any world axis
    c2w[0, :3, :3] = rodrigues((0, 1, 0), math.pi / 2)  # optical axis along world +x
    Ks = []
    for i in range(n):
        f = 18.0 + 6.0 * i
        Ks.append(make_K(f, f * 1.1, w / 2 + i - 1.5, h / 2 - 0.5 * i, skew=0.1 * i))
    return c2w, torch.stack(Ks)


def _scaled_K(K, H, W):
    K = K.clone()
    K[..., 0, :] *= W / w
    K[..., 1, :] *= H / h
    return K


@device_param
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-4), (torch.float32, 1e-3)])
def test_exact_recovery(device, dtype, tol):
    c2w, K = _scene(4)
    rays = ray_map(c2w, K, h, w).reshape(2, 2, h, w, 6).to(device, dtype)
    # any positive per-pixel scale of the directions
    scale = torch.rand(2, 2, h, w, 1, generator=torch.Generator().manual_seed(1), dtype=F64) * 3 + 0.1
    rays = torch.cat([rays[..., :3] * scale.to(device, dtype), rays[..., 3:]], dim=-1)
    res = pose_from_ray_map(rays, image_hw=(96, 128))
    assert isinstance(res, RayPoseResult)
    assert res.c2w.shape == (2, 2, 4, 4) and res.K.shape == (2, 2, 3, 3)
    assert res.c2w.dtype == dtype and res.c2w.device.type == device
    assert res.valid.all() and (res.inlier_ratio == 1).all()
    torch.testing.assert_close(res.c2w.cpu().double(), c2w.reshape(2, 2, 4, 4), atol=tol, rtol=0)
    K_ref = _scaled_K(K, 96, 128).reshape(2, 2, 3, 3)
    torch.testing.assert_close(res.K.cpu().double(), K_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(torch.linalg.det(res.c2w[..., :3, :3]).cpu().double(), torch.ones(2, 2, dtype=F64), atol=tol, rtol=0)


def test_default_image_size_and_conf():
    c2w, K = _scene(1, seed=3)
    res = pose_from_ray_map(ray_map(c2w, K, h, w)[0], torch.rand(h, w, dtype=F64) + 0.1)
    assert res.c2w.shape == (4, 4) and res.valid.item()
    torch.testing.assert_close(res.K, K[0], atol=1e-8, rtol=1e-8)


def test_robust_to_low_confidence_corruption():
    c2w, K = _scene(3, seed=4)
    rays = ray_map(c2w, K, h, w)
    g = torch.Generator().manual_seed(5)
    bad = torch.rand(3, h, w, generator=g) < 0.3
    noise = torch.randn(3, h, w, 6, generator=g, dtype=F64)
    rays = torch.where(bad[..., None], rays + noise, rays)
    conf = torch.where(bad, 0.05, 1.0).to(F64)
    res = pose_from_ray_map(rays, conf)
    assert res.valid.all()
    assert (res.inlier_ratio > 0.65).all() and (res.inlier_ratio < 0.95).all()
    torch.testing.assert_close(res.c2w[..., :3, :3], c2w[..., :3, :3], atol=3e-3, rtol=0)
    torch.testing.assert_close(res.K, K, atol=1e-2, rtol=1e-2)
    # translation = confidence-weighted mean of origins, corrupted ones weigh little
    torch.testing.assert_close(res.c2w[..., :3, 3], c2w[..., :3, 3], atol=0.05, rtol=0)


def test_deterministic():
    c2w, K = _scene(2, seed=6)
    rays = ray_map(c2w, K, h, w)
    g = torch.Generator().manual_seed(7)
    rays = rays + 0.01 * torch.randn(rays.shape, generator=g, dtype=F64)
    conf = torch.rand(2, h, w, generator=g, dtype=F64)
    a = pose_from_ray_map(rays, conf, seed=11)
    b = pose_from_ray_map(rays, conf, seed=11)
    c = pose_from_ray_map(rays, conf, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a.c2w, b.c2w) and torch.equal(a.K, b.K) and torch.equal(a.c2w, c.c2w)


def _assert_invalid(res):
    assert not res.valid.any()
    assert torch.equal(res.c2w, torch.eye(4, dtype=res.c2w.dtype).expand_as(res.c2w))
    assert torch.equal(res.K, torch.eye(3, dtype=res.K.dtype).expand_as(res.K))
    assert (res.inlier_ratio == 0).all()


def test_degenerate_inputs():
    c2w, K = _scene(1, seed=8)
    rays = ray_map(c2w, K, h, w)[0]
    # all confidences zero
    zero = torch.zeros(h, w, dtype=F64)
    _assert_invalid(pose_from_ray_map(rays, zero))
    with pytest.raises(GeometryError, match="no valid rays"):
        pose_from_ray_map(rays, zero, strict=True)
    # fewer than 4 valid rays
    three = zero.clone()
    three[0, 0] = three[5, 7] = three[10, 3] = 1.0
    _assert_invalid(pose_from_ray_map(rays, three))
    with pytest.raises(GeometryError, match="fewer than 4"):
        pose_from_ray_map(rays, three, strict=True)
    # collinear pixels (a single image row)
    row = zero.clone()
    row[7] = 1.0
    _assert_invalid(pose_from_ray_map(rays, row))
    with pytest.raises(GeometryError, match="collinear"):
        pose_from_ray_map(rays, row, strict=True)
    # all-NaN rays
    _assert_invalid(pose_from_ray_map(torch.full_like(rays, float("nan"))))
    # negative confidence always raises
    with pytest.raises(GeometryError, match="non-negative"):
        pose_from_ray_map(rays, zero - 1)


def test_nan_pixels_are_ignored_unless_strict():
    c2w, K = _scene(2, seed=9)
    rays = ray_map(c2w, K, h, w)
    rays[0, 3, 4, 1] = float("nan")
    rays[0, 5, :, 4] = float("inf")
    res = pose_from_ray_map(rays)
    assert res.valid.all()
    torch.testing.assert_close(res.c2w, c2w, atol=1e-8, rtol=0)
    with pytest.raises(GeometryError, match="rays: contains NaN"):
        pose_from_ray_map(rays, strict=True)


def test_batch_with_one_bad_view():
    c2w, K = _scene(3, seed=10)
    rays = ray_map(c2w, K, h, w)
    conf = torch.ones(3, h, w, dtype=F64)
    conf[1] = 0
    res = pose_from_ray_map(rays, conf)
    assert res.valid.tolist() == [True, False, True]
    assert torch.isfinite(res.c2w).all() and torch.isfinite(res.K).all()
    torch.testing.assert_close(res.c2w[[0, 2]], c2w[[0, 2]], atol=1e-8, rtol=0)
    with pytest.raises(GeometryError, match="view 1 of 3"):
        pose_from_ray_map(rays, conf, strict=True)


def test_shape_errors():
    with pytest.raises(GeometryError, match="rays: expected shape"):
        pose_from_ray_map(torch.zeros(4, 4, 3))
    with pytest.raises(GeometryError, match="conf"):
        pose_from_ray_map(torch.zeros(2, 4, 4, 6), torch.ones(3, 4, 4))


def test_close_to_official():
    ru = pytest.importorskip("depth_anything_3.utils.ray_utils")
    # the official path needs a centred principal point and cameras looking roughly along world +z
    g = torch.Generator().manual_seed(12)
    c2w = random_c2w(3, g, max_angle=0.4).float()
    K = torch.stack([make_K(20.0 + 4 * i, 22.0 + 4 * i, w / 2, h / 2) for i in range(3)]).float()
    rays = ray_map(c2w, K, h, w)[None]
    conf = torch.rand(1, 3, h, w, generator=g) + 0.5
    H, W = 96, 128
    ext, foc, pp = ru.get_extrinsic_from_camray(rays, conf[..., None], h, w)
    K_off = torch.zeros(1, 3, 3, 3)
    K_off[..., 0, 0] = foc[..., 0] / 2 * W
    K_off[..., 1, 1] = foc[..., 1] / 2 * H
    K_off[..., 0, 2] = pp[..., 0] * W * 0.5
    K_off[..., 1, 2] = pp[..., 1] * H * 0.5
    K_off[..., 2, 2] = 1
    res = pose_from_ray_map(rays, conf, (H, W))
    torch.testing.assert_close(res.c2w[..., :3, :], ext[..., :3, :], atol=1e-5, rtol=0)
    torch.testing.assert_close(res.K, K_off, atol=1e-4, rtol=1e-5)
