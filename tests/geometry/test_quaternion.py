import math

import pytest
import torch

from da3gs.geometry import (
    GeometryError,
    mat_to_quat,
    quat_conjugate,
    quat_multiply,
    quat_normalize,
    quat_slerp,
    quat_to_mat,
    wxyz_to_xyzw,
    xyzw_to_wxyz,
)

from .helpers import axis_angle_quat, device_param, rodrigues

# (axis, angle) cases incl. identity, tiny, and near/at 180 degrees about various axes.
CASES = [
    ((1, 0, 0), 0.0),
    ((0, 0, 1), 1e-9),
    ((0.3, -0.5, 0.8), 0.7),
    ((1, 2, 3), 2.5),
    ((1, 0, 0), math.pi),
    ((0, 1, 0), math.pi),
    ((0, 0, 1), math.pi),
    ((1, 1, 0), math.pi),
    ((-0.2, 0.9, 0.4), math.pi - 1e-7),
    ((0.6, -0.1, -0.7), math.pi - 1e-3),
    ((1, -1, 1), 3 * math.pi / 2),  # w < 0 before standardisation
]


@pytest.mark.parametrize("axis,angle", CASES)
def test_quat_to_mat_matches_rodrigues(axis, angle):
    R = quat_to_mat(axis_angle_quat(axis, angle))
    torch.testing.assert_close(R, rodrigues(axis, angle), atol=1e-14, rtol=0)


@pytest.mark.parametrize("axis,angle", CASES)
def test_mat_to_quat_matches_reference(axis, angle):
    q_ref = axis_angle_quat(axis, angle)
    q = mat_to_quat(rodrigues(axis, angle))
    assert q[0] >= 0
    sign = 1.0 if (q * q_ref).sum() >= 0 else -1.0
    torch.testing.assert_close(q, sign * q_ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(q.norm(), torch.tensor(1.0, dtype=torch.float64), atol=1e-14, rtol=0)


@pytest.mark.parametrize("axis,angle", CASES)
def test_round_trip_float32(axis, angle):
    R = rodrigues(axis, angle).float()
    torch.testing.assert_close(quat_to_mat(mat_to_quat(R)), R, atol=2e-6, rtol=0)


def test_batched_random_round_trip():
    g = torch.Generator().manual_seed(0)
    q = quat_normalize(torch.randn(2, 3, 50, 4, generator=g, dtype=torch.float64))
    q = torch.where(q[..., :1] < 0, -q, q)
    R = quat_to_mat(q)
    assert R.shape == (2, 3, 50, 3, 3)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(R), atol=1e-14, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(2, 3, 50, dtype=torch.float64))
    torch.testing.assert_close(mat_to_quat(R), q, atol=1e-13, rtol=0)


def test_non_unit_quaternion():
    q = axis_angle_quat((1, 2, -1), 1.1)
    torch.testing.assert_close(quat_to_mat(3.7 * q), quat_to_mat(q), atol=1e-14, rtol=0)


def test_mat_to_quat_gradient_finite():
    R = torch.eye(3, dtype=torch.float64, requires_grad=True)
    mat_to_quat(R).sum().backward()
    assert torch.isfinite(R.grad).all()


def test_multiply_matches_matrix_product():
    g = torch.Generator().manual_seed(1)
    q1 = quat_normalize(torch.randn(10, 4, generator=g, dtype=torch.float64))
    q2 = quat_normalize(torch.randn(10, 4, generator=g, dtype=torch.float64))
    torch.testing.assert_close(quat_to_mat(quat_multiply(q1, q2)), quat_to_mat(q1) @ quat_to_mat(q2), atol=1e-14, rtol=0)
    ident = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(quat_multiply(q1, quat_conjugate(q1)), ident.expand(10, 4), atol=1e-15, rtol=0)


def test_order_conversions():
    q = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert wxyz_to_xyzw(q).tolist() == [2.0, 3.0, 4.0, 1.0]
    assert xyzw_to_wxyz(q).tolist() == [4.0, 1.0, 2.0, 3.0]
    torch.testing.assert_close(xyzw_to_wxyz(wxyz_to_xyzw(q)), q)


def test_slerp():
    axis = (0.2, -0.3, 0.9)
    q0 = axis_angle_quat(axis, 0.2)
    q1 = axis_angle_quat(axis, 1.4)
    torch.testing.assert_close(quat_slerp(q0, q1, 0.0), q0, atol=1e-14, rtol=0)
    torch.testing.assert_close(quat_slerp(q0, q1, 1.0), q1, atol=1e-14, rtol=0)
    torch.testing.assert_close(quat_slerp(q0, q1, 0.25), axis_angle_quat(axis, 0.5), atol=1e-14, rtol=0)
    # shortest arc: -q1 is the same rotation
    torch.testing.assert_close(quat_slerp(q0, -q1, 0.5), axis_angle_quat(axis, 0.8), atol=1e-14, rtol=0)
    # nearly identical inputs and tensor t with broadcasting
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    out = quat_slerp(q0, q0 + 1e-12, t)
    assert out.shape == (3, 4) and torch.isfinite(out).all()
    torch.testing.assert_close(out, q0.expand(3, 4), atol=1e-11, rtol=0)


@device_param
def test_device(device):
    R = rodrigues((1, 2, 3), 3.0).float().to(device)
    q = mat_to_quat(R)
    assert q.device.type == device
    torch.testing.assert_close(quat_to_mat(q), R, atol=1e-6, rtol=0)


def test_shape_errors():
    with pytest.raises(GeometryError, match="R: expected shape"):
        mat_to_quat(torch.eye(4))
    with pytest.raises(GeometryError, match="q1"):
        quat_multiply(torch.zeros(3), torch.zeros(4))
