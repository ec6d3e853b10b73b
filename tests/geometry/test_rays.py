import pytest
import torch

from da3gs.geometry import (
    GeometryError,
    c2w_to_w2c,
    pixel_grid,
    project_points,
    ray_directions,
    ray_map,
    unproject_depth,
)

from .helpers import device_param, make_K, random_c2w

F64 = torch.float64


def test_pixel_grid():
    g = pixel_grid(2, 3)
    assert g.shape == (2, 3, 2) and g.dtype == torch.float32
    assert g[0, 0].tolist() == [0.5, 0.5]
    assert g[1, 2].tolist() == [2.5, 1.5]  # (u, v) = (column, row)
    g0 = pixel_grid(2, 3, offset=0.0, dtype=F64)
    assert g0.dtype == F64 and g0[1, 2].tolist() == [2.0, 1.0]
    with pytest.raises(GeometryError, match="H, W"):
        pixel_grid(0, 3)


def test_directions_camera_frame_z_is_one():
    c2w = random_c2w(3, torch.Generator().manual_seed(0))
    K = make_K(40.0, 35.0, 17.0, 11.0, skew=0.5)
    d = ray_directions(c2w, K, 20, 30)
    assert d.shape == (3, 20, 30, 3)
    d_cam = torch.einsum("bji,bhwj->bhwi", c2w[:, :3, :3], d)  # R^T d
    torch.testing.assert_close(d_cam[..., 2], torch.ones(3, 20, 30, dtype=F64), atol=1e-14, rtol=0)
    # K applied to the camera direction gives back the pixel centre
    uv = torch.einsum("ij,bhwj->bhwi", K, d_cam)[..., :2]
    torch.testing.assert_close(uv, pixel_grid(20, 30, dtype=F64).expand(3, 20, 30, 2), atol=1e-12, rtol=0)


def test_principal_point_ray_is_optical_axis():
    c2w = random_c2w(1, torch.Generator().manual_seed(1))[0]
    K = make_K(10.0, 10.0, 2.5, 1.5)  # principal point at the centre of pixel (row 1, col 2)
    d = ray_directions(c2w, K, 3, 5)
    torch.testing.assert_close(d[1, 2], c2w[:3, 2], atol=1e-15, rtol=0)


def test_ray_map_layout():
    c2w = random_c2w(2, torch.Generator().manual_seed(2))
    K = make_K(20.0, 20.0, 8.0, 6.0)
    rm = ray_map(c2w, K, 12, 16)
    assert rm.shape == (2, 12, 16, 6)
    torch.testing.assert_close(rm[..., :3], ray_directions(c2w, K, 12, 16))
    torch.testing.assert_close(rm[..., 3:], c2w[:, None, None, :3, 3].expand(2, 12, 16, 3))


@device_param
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-3)])
def test_unproject_project_round_trip(device, dtype, tol):
    g = torch.Generator().manual_seed(3)
    c2w = random_c2w(6, g).reshape(2, 3, 4, 4).to(device, dtype)
    K = make_K(50.0, 45.0, 31.0, 19.0, skew=0.2).to(device, dtype)
    H, W = 40, 64
    depth = (torch.rand(2, 3, H, W, generator=g, dtype=F64) * 10 + 0.5).to(device, dtype)
    pts = unproject_depth(depth, c2w, K)
    assert pts.shape == (2, 3, H, W, 3) and pts.dtype == dtype and pts.device.type == device
    uv, z = project_points(pts.reshape(2, 3, H * W, 3), c2w_to_w2c(c2w), K)
    ref_uv = pixel_grid(H, W, device=device, dtype=dtype).reshape(1, 1, H * W, 2).expand(2, 3, H * W, 2)
    torch.testing.assert_close(uv, ref_uv, atol=tol * 10, rtol=0)
    torch.testing.assert_close(z, depth.reshape(2, 3, H * W), atol=tol, rtol=tol)


def test_unproject_broadcast_and_nan_depth():
    c2w = random_c2w(1, torch.Generator().manual_seed(4))[0]
    K = make_K(10.0, 10.0, 4.0, 3.0)
    depth = torch.ones(5, 6, 8, dtype=F64)  # 5 depth maps, one camera
    depth[0, 0, 0] = float("nan")
    pts = unproject_depth(depth, c2w, K)
    assert pts.shape == (5, 6, 8, 3)
    assert torch.isnan(pts[0, 0, 0]).all() and torch.isfinite(pts[1:]).all()


def test_errors():
    c2w = torch.eye(4)
    K = torch.eye(3)
    with pytest.raises(GeometryError, match="c2w: expected shape"):
        ray_directions(torch.eye(3), K, 2, 2)
    with pytest.raises(GeometryError, match="K: expected shape"):
        ray_directions(c2w, torch.eye(4), 2, 2)
    with pytest.raises(GeometryError, match="focal"):
        ray_directions(c2w, torch.zeros(3, 3), 2, 2)
    bad = torch.eye(4)
    bad[0, 0] = float("inf")
    with pytest.raises(GeometryError, match="c2w: contains NaN or Inf"):
        ray_map(bad, K, 2, 2)
    with pytest.raises(GeometryError, match="depth"):
        unproject_depth(torch.ones(4), c2w, K)
    with pytest.raises(GeometryError, match="do not broadcast"):
        ray_directions(c2w.expand(2, 4, 4), K.expand(3, 3, 3), 2, 2)
    with pytest.raises(GeometryError, match="points"):
        project_points(torch.ones(4, 2), c2w, K)
