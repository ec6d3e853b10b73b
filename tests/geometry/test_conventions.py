import numpy as np
import pytest
import torch

from da3gs.geometry import (
    GeometryError,
    as_homogeneous,
    c2w_opencv_to_opengl,
    c2w_opengl_to_opencv,
    c2w_to_colmap,
    c2w_to_w2c,
    colmap_to_c2w,
    llff_to_opencv,
    mat_to_quat,
    opencv_to_llff,
    w2c_to_c2w,
)

from .helpers import device_param, make_K, random_c2w

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_as_homogeneous():
    m = torch.randn(2, 5, 3, 4)
    h = as_homogeneous(m)
    assert h.shape == (2, 5, 4, 4)
    assert torch.equal(h[..., :3, :], m)
    assert h[..., 3, :].tolist() == [[[0.0, 0.0, 0.0, 1.0]] * 5] * 2
    assert as_homogeneous(h) is h
    with pytest.raises(GeometryError, match="m: expected shape"):
        as_homogeneous(torch.zeros(2, 4))


@device_param
def test_rigid_inverse(device):
    c2w = random_c2w(6, _gen()).reshape(2, 3, 4, 4).to(device)
    w2c = c2w_to_w2c(c2w)
    torch.testing.assert_close(w2c, torch.linalg.inv(c2w), atol=1e-13, rtol=0)
    torch.testing.assert_close(w2c_to_c2w(w2c), c2w, atol=1e-14, rtol=0)
    assert torch.equal(w2c[..., 3, :], torch.tensor([0, 0, 0, 1.0], dtype=F64, device=device).expand(2, 3, 4))
    torch.testing.assert_close(c2w_to_w2c(c2w[..., :3, :]), w2c)  # accepts (..., 3, 4)


def test_opengl_opencv():
    c2w = random_c2w(4, _gen(1))
    gl = c2w_opencv_to_opengl(c2w)
    torch.testing.assert_close(gl, c2w @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=F64)))
    torch.testing.assert_close(c2w_opengl_to_opencv(gl), c2w)
    assert torch.equal(gl[:, :3, 3], c2w[:, :3, 3])  # same camera centre
    # A point in front of the OpenCV camera (z > 0) is at z < 0 in the OpenGL camera, same x, flipped y.
    p_cam = torch.tensor([0.3, 0.2, 2.0, 1.0], dtype=F64)
    p_world = c2w[0] @ p_cam
    p_gl = torch.linalg.inv(gl[0]) @ p_world
    torch.testing.assert_close(p_gl, torch.tensor([0.3, -0.2, -2.0, 1.0], dtype=F64))


def _nerf_reference(poses_bounds, factor):
    """What the original NeRF LLFF loader + an OpenGL->OpenCV flip produce."""
    poses = poses_bounds[:, :15].reshape(-1, 3, 5)
    hwf = poses[0, :, 4].copy()
    poses = np.concatenate([poses[:, :, 1:2], -poses[:, :, 0:1], poses[:, :, 2:4]], axis=2)  # OpenGL [R|t]
    c2w_gl = np.tile(np.eye(4), (len(poses), 1, 1))
    c2w_gl[:, :3, :4] = poses
    c2w_cv = c2w_gl @ np.diag([1.0, -1.0, -1.0, 1.0])
    return c2w_cv, hwf[0] / factor, hwf[1] / factor, hwf[2] / factor


@pytest.mark.parametrize("downscale", [1, 4, 8])
def test_llff_round_trip(downscale):
    n = 5
    c2w = random_c2w(n, _gen(2))
    H, W, f = 3024 // downscale, 4032 // downscale, 3200.0 / downscale
    K = make_K(f, f, W / 2, H / 2).expand(n, 3, 3)
    bounds = torch.rand(n, 2, generator=_gen(3), dtype=F64) + torch.tensor([1.0, 5.0], dtype=F64)
    rows = opencv_to_llff(c2w, K, (H, W), bounds, downscale=downscale)
    assert rows.shape == (n, 17) and rows.dtype == np.float64
    np.testing.assert_allclose(rows[:, 4], 3024.0)  # full-res H stored in the rows
    np.testing.assert_allclose(rows[:, 9], 4032.0)
    np.testing.assert_allclose(rows[:, 14], 3200.0)
    c2w2, K2, hw2, b2 = llff_to_opencv(rows, downscale=downscale)
    assert hw2 == (H, W)
    torch.testing.assert_close(c2w2, c2w, atol=1e-14, rtol=0)
    torch.testing.assert_close(K2, K, atol=1e-12, rtol=0)
    torch.testing.assert_close(b2, bounds)
    ref_c2w, ref_h, ref_w, ref_f = _nerf_reference(rows, downscale)
    np.testing.assert_allclose(c2w2.numpy(), ref_c2w, atol=1e-14)
    assert (ref_h, ref_w) == (H, W) and ref_f == pytest.approx(float(K2[0, 0, 0]))


def test_llff_axes():
    # A camera with identity LLFF rotation looks along world -z, its image "down" is world +x.
    row = np.zeros(17)
    row[:15] = np.array([[1, 0, 0, 0, 100], [0, 1, 0, 0, 200], [0, 0, 1, 0, 150]], dtype=np.float64).reshape(-1)
    row[15:] = [0.5, 10.0]
    c2w, K, hw, bounds = llff_to_opencv(row[None])
    R = c2w[0, :3, :3]
    torch.testing.assert_close(R @ torch.tensor([0, 0, 1.0], dtype=F64), torch.tensor([0, 0, -1.0], dtype=F64))  # forward
    torch.testing.assert_close(R @ torch.tensor([0, 1.0, 0], dtype=F64), torch.tensor([1.0, 0, 0], dtype=F64))  # down
    assert torch.linalg.det(R) == pytest.approx(1.0)
    assert hw == (100, 200) and K[0].tolist() == [[150.0, 0, 100.0], [0, 150.0, 50.0], [0, 0, 1.0]]


def test_llff_errors():
    with pytest.raises(GeometryError, match=r"poses_bounds: expected shape \(N, 17\)"):
        llff_to_opencv(np.zeros((3, 15)))
    rows = np.zeros((2, 17))
    rows[0, 4], rows[1, 4] = 10, 11
    with pytest.raises(GeometryError, match="different image sizes"):
        llff_to_opencv(rows)


@device_param
def test_colmap_round_trip(device):
    g = _gen(4)
    c2w = random_c2w(7, g).to(device)
    qvec, tvec = c2w_to_colmap(c2w)
    assert (qvec[:, 0] >= 0).all()
    w2c = torch.linalg.inv(c2w)
    torch.testing.assert_close(tvec, w2c[:, :3, 3], atol=1e-13, rtol=0)
    torch.testing.assert_close(qvec, mat_to_quat(w2c[:, :3, :3]), atol=1e-13, rtol=0)
    torch.testing.assert_close(colmap_to_c2w(qvec, tvec), c2w, atol=1e-13, rtol=0)
    # COLMAP: x_cam = R(q) X + t
    X = torch.tensor([0.1, -2.0, 3.0], dtype=F64, device=device)
    cam = w2c[0, :3, :3] @ X + w2c[0, :3, 3]
    torch.testing.assert_close(colmap_to_c2w(qvec[0], tvec[0]) @ torch.cat([cam, cam.new_ones(1)]), torch.cat([X, X.new_ones(1)]))


def test_colmap_errors():
    with pytest.raises(GeometryError, match="tvec"):
        colmap_to_c2w(torch.tensor([1.0, 0, 0, 0]), torch.zeros(4))
    with pytest.raises(GeometryError, match="do not broadcast"):
        colmap_to_c2w(torch.tensor([[1.0, 0, 0, 0]] * 2), torch.zeros(3, 3))
