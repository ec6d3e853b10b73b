import math

import pytest
import torch

from da3gs.geometry import GeometryError, decode_pose, encode_pose, mat_to_quat, wxyz_to_xyzw

from .helpers import device_param, make_K, random_c2w, rodrigues

F64 = torch.float64


def _cams(n, seed=0, H=280, W=504):
    g = torch.Generator().manual_seed(seed)
    c2w = random_c2w(n, g)
    # include exact and near 180-degree rotations
    c2w[0, :3, :3] = rodrigues((0, 1, 0), math.pi)
    c2w[1, :3, :3] = rodrigues((1, 1, 0), math.pi - 1e-4)
    f = torch.rand(n, generator=g, dtype=F64) * 400 + 100
    K = torch.stack([make_K(float(fi), float(fi) * 1.05, W / 2, H / 2) for fi in f])
    return c2w, K, (H, W)


def test_layout():
    c2w, K, hw = _cams(5)
    enc = encode_pose(c2w, K, hw)
    assert enc.shape == (5, 9) and enc.dtype == torch.float32
    torch.testing.assert_close(enc[:, :3], c2w[:, :3, 3].float())
    torch.testing.assert_close(enc[:, 3:7], wxyz_to_xyzw(mat_to_quat(c2w[:, :3, :3])).float())
    assert (enc[:, 6] >= 0).all()  # scalar last, standardised
    # fov_h from fy and H, fov_w from fx and W
    torch.testing.assert_close(enc[:, 7], (2 * torch.atan(hw[0] / 2 / K[:, 1, 1])).float())
    torch.testing.assert_close(enc[:, 8], (2 * torch.atan(hw[1] / 2 / K[:, 0, 0])).float())


def test_fov_values():
    K = make_K(50.0, 25.0, 50.0, 25.0)  # fx = W/2 -> 90 deg; fy = H/2 -> 90 deg
    enc = encode_pose(torch.eye(4, dtype=F64), K, (50, 100), keep_dtype=True)
    assert enc.dtype == F64
    assert float(enc[7]) == pytest.approx(math.pi / 2) and float(enc[8]) == pytest.approx(math.pi / 2)
    enc[7] = 2 * math.atan(0.5)  # tan(fov_h/2) = 0.5 -> fy = H/2 / 0.5 = H
    _, K2 = decode_pose(enc, (50, 100))
    assert float(K2[1, 1]) == pytest.approx(50.0) and float(K2[0, 0]) == pytest.approx(50.0)
    assert K2[:, 2].tolist() == [50.0, 25.0, 1.0]


@device_param
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
def test_round_trip(device, dtype, tol):
    c2w, K, hw = _cams(8)
    c2w, K = c2w.to(device, dtype).reshape(2, 4, 4, 4), K.to(device, dtype).reshape(2, 4, 3, 3)
    enc = encode_pose(c2w, K, hw, keep_dtype=True)
    assert enc.shape == (2, 4, 9)
    c2w2, K2 = decode_pose(enc, hw)
    assert c2w2.shape == (2, 4, 4, 4) and K2.shape == (2, 4, 3, 3)
    torch.testing.assert_close(c2w2, c2w, atol=tol * 10, rtol=0)
    torch.testing.assert_close(K2, K, atol=0, rtol=tol)


def test_accepts_3x4_and_non_unit_quaternion():
    c2w, K, hw = _cams(3)
    enc = encode_pose(c2w[:, :3, :], K, hw, keep_dtype=True)
    enc2 = enc.clone()
    enc2[:, 3:7] *= 2.5
    torch.testing.assert_close(decode_pose(enc2, hw)[0], decode_pose(enc, hw)[0], atol=1e-14, rtol=0)


def test_errors():
    with pytest.raises(GeometryError, match="enc: expected shape"):
        decode_pose(torch.zeros(8), (10, 10))
    with pytest.raises(GeometryError, match="c2w"):
        encode_pose(torch.eye(3), torch.eye(3), (10, 10))
    with pytest.raises(GeometryError, match="image_hw"):
        encode_pose(torch.eye(4), torch.eye(3), (10,))


def test_matches_official_exactly():
    tr = pytest.importorskip("depth_anything_3.model.utils.transform")
    c2w, K, hw = _cams(12, seed=5)
    # sprinkle extra edge cases: identity and rotations about single axes by ~pi
    c2w[2, :3, :3] = torch.eye(3, dtype=F64)
    c2w[3, :3, :3] = rodrigues((0, 0, 1), math.pi - 1e-7)
    ext = c2w[:, :3, :].float().reshape(3, 4, 3, 4)
    Kf = K.float().reshape(3, 4, 3, 3)
    ref = tr.extri_intri_to_pose_encoding(ext, Kf, hw)
    ours = encode_pose(ext, Kf, hw)
    assert torch.equal(ours, ref)
    noisy = ref + 0.05 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))  # non-unit q
    ref_ext, ref_K = tr.pose_encoding_to_extri_intri(noisy, hw)
    c2w2, K2 = decode_pose(noisy, hw)
    assert torch.equal(c2w2[..., :3, :], ref_ext)
    assert torch.equal(K2, ref_K)


def test_differentiable():
    c2w, K, hw = _cams(4)
    c2w.requires_grad_(True)
    K.requires_grad_(True)
    enc = encode_pose(c2w, K, hw, keep_dtype=True)
    enc.sum().backward()
    assert torch.isfinite(c2w.grad).all() and torch.isfinite(K.grad).all()
    enc = enc.detach().requires_grad_(True)
    c2w2, K2 = decode_pose(enc, hw)
    (c2w2.sum() + K2.sum()).backward()
    assert torch.isfinite(enc.grad).all() and enc.grad.abs().sum() > 0
