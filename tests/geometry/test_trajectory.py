"""Camera paths: spline interpolation, orbit, extension, look-at, path intrinsics."""

from __future__ import annotations

import math

import pytest
import torch

from da3gs.geometry import (
    GeometryError,
    evaluate_path,
    extend_path,
    interpolate_path,
    look_at,
    nearest_view,
    orbit_path,
    path_intrinsics,
    scene_center,
)

from .helpers import random_c2w


def _orthonormal(c2w, tol=1e-6):
    R = c2w[:, :3, :3].double()
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    assert torch.allclose(R.transpose(-1, -2) @ R, eye, atol=tol)
    assert torch.allclose(torch.linalg.det(R), torch.ones(R.shape[0], dtype=torch.float64), atol=tol)
    assert torch.equal(c2w[:, 3], torch.tensor([0.0, 0, 0, 1], dtype=c2w.dtype).expand(c2w.shape[0], 4))


def _ring(v=8, radius=3.0, height=-1.0, arc=2 * math.pi):
    th = torch.arange(v, dtype=torch.float64) * (arc / v)
    eye = torch.stack([radius * torch.cos(th), torch.full_like(th, height), radius * torch.sin(th)], -1)
    up = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)
    return look_at(eye, torch.zeros(3, dtype=torch.float64).expand_as(eye), up.expand_as(eye))


def _in_camera(c2w, p):
    w2c_R = c2w[:, :3, :3].transpose(-1, -2)
    return (w2c_R @ (p - c2w[:, :3, 3])[..., None])[..., 0]


def test_look_at():
    c2w = look_at(torch.zeros(3), torch.tensor([0.0, 0, 5]), torch.tensor([0.0, -1, 0]))
    torch.testing.assert_close(c2w, torch.eye(4))
    c2w = look_at(torch.zeros(3), torch.tensor([0.0, -2, 0]), torch.tensor([0.0, -1, 0]))  # up parallel
    _orthonormal(c2w[None])
    torch.testing.assert_close(c2w[:3, 2], torch.tensor([0.0, -1, 0]))


@pytest.mark.parametrize("closed", [False, True])
def test_spline_passes_through_keyframes(closed):
    c2w = random_c2w(6, torch.Generator().manual_seed(0), max_angle=2.5)
    keys = evaluate_path(c2w, torch.arange(6, dtype=torch.float64), closed)
    torch.testing.assert_close(keys, c2w, atol=1e-5, rtol=0)
    path = interpolate_path(c2w, 57, closed=closed)
    assert path.shape == (57, 4, 4) and path.dtype == c2w.dtype
    _orthonormal(path)
    torch.testing.assert_close(path[0], c2w[0], atol=1e-5, rtol=0)
    if not closed:
        torch.testing.assert_close(path[-1], c2w[-1], atol=1e-5, rtol=0)


def test_even_arc_length_spacing():
    gen = torch.Generator().manual_seed(1)
    c2w = random_c2w(5, gen, max_angle=0.5)
    c2w[:, :3, 3] = torch.tensor([[0.0, 0, 0], [0.2, 0, 0], [3.0, 0.5, 0], [3.5, 1, 0], [6.0, 1, 1]],
                                 dtype=torch.float64)
    for closed in (False, True):
        path = interpolate_path(c2w, 200, closed=closed)
        pos = path[:, :3, 3]
        if closed:
            pos = torch.cat([pos, pos[:1]])
        steps = (pos[1:] - pos[:-1]).norm(dim=-1)
        assert float(steps.std() / steps.mean()) < 0.02


def test_rotation_only_and_float32():
    c2w = random_c2w(3, torch.Generator().manual_seed(2), max_angle=1.0).float()
    c2w[:, :3, 3] = 0
    path = interpolate_path(c2w, 11)
    assert path.dtype == torch.float32 and torch.isfinite(path).all()
    _orthonormal(path, tol=1e-5)
    torch.testing.assert_close(path[-1], c2w[-1], atol=1e-5, rtol=0)


def test_single_view_wiggle():
    c2w = random_c2w(1, torch.Generator().manual_seed(3))
    path = interpolate_path(c2w, 30, center_depth=2.0)
    assert path.shape == (30, 4, 4)
    _orthonormal(path)
    torch.testing.assert_close(path[0], c2w[0], atol=1e-9, rtol=0)
    target = c2w[0, :3, 3] + 2.0 * c2w[0, :3, 2]
    pc = _in_camera(path, target)
    assert pc[:, :2].abs().max() < 1e-9 and bool((pc[:, 2] > 0).all())
    assert (path[:, :3, 3] - c2w[0, :3, 3]).norm(dim=-1).max() < 0.2


def test_orbit_looks_at_center():
    half = _ring(v=6, arc=math.pi)  # centre from the optical axes
    torch.testing.assert_close(scene_center(half), torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)
    pc = _in_camera(orbit_path(half, 16), torch.zeros(3, dtype=torch.float64))
    assert pc[:, :2].abs().max() < 1e-9 and bool((pc[:, 2] > 0).all())
    c2w = _ring(v=6)  # full ring: mean up is exactly -y
    path = orbit_path(c2w, 40, radius_scale=1.5)
    _orthonormal(path)
    pc = _in_camera(path, torch.zeros(3, dtype=torch.float64))
    assert pc[:, :2].abs().max() < 1e-9 and bool((pc[:, 2] > 0).all())
    pos = path[:, :3, 3]
    torch.testing.assert_close(pos[:, 1], torch.full((40,), -1.0, dtype=torch.float64))  # plane of the mean up
    torch.testing.assert_close(pos[:, [0, 2]].norm(dim=-1), torch.full((40,), 4.5, dtype=torch.float64))
    torch.testing.assert_close(pos[0], torch.tensor([4.5, -1.0, 0.0], dtype=torch.float64))  # starts at camera 0


def test_orbit_fallbacks():
    one = random_c2w(1, torch.Generator().manual_seed(4))
    c = one[0, :3, 3] + 3.0 * one[0, :3, 2]
    torch.testing.assert_close(scene_center(one, center_depth=3.0), c)
    path = orbit_path(one, 12, center_depth=3.0)
    pc = _in_camera(path, c)
    assert pc[:, :2].abs().max() < 1e-9 and bool((pc[:, 2] > 0).all())
    # parallel optical axes (forward-facing): fallback centre in front of the mean camera
    fwd = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    fwd[:, 0, 3] = torch.tensor([-1.0, 0, 1])
    torch.testing.assert_close(scene_center(fwd, center_depth=5.0), torch.tensor([0.0, 0, 5], dtype=torch.float64))


def test_extend_path():
    c2w = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    c2w[:, 0, 3] = torch.tensor([0.0, 1.0, 2.0])
    path = extend_path(c2w, 21, distance=0.5)
    assert path.shape == (21, 4, 4)
    torch.testing.assert_close(path[0], c2w[-1])
    torch.testing.assert_close(path[-1], c2w[-1])
    torch.testing.assert_close(path[10, :3, 3], torch.tensor([3.0, 0, 0], dtype=torch.float64))
    assert torch.equal(path[:, :3, :3], c2w[-1, :3, :3].expand(21, 3, 3))
    one = extend_path(c2w[:1], 5, distance=0.5, center_depth=4.0)
    torch.testing.assert_close(one[2, :3, 3], torch.tensor([0.0, 0, 2.0], dtype=torch.float64))


def test_path_intrinsics():
    c2w = _ring(v=4)
    K = torch.eye(3, dtype=torch.float64).repeat(4, 1, 1)
    K[:, 0, 0] = torch.tensor([10.0, 20, 30, 40])
    path = orbit_path(c2w, 8)
    idx = nearest_view(path, c2w)
    assert idx.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    torch.testing.assert_close(path_intrinsics(path, K, c2w)[:, 0, 0],
                               torch.tensor([10.0, 10, 20, 20, 30, 30, 40, 40], dtype=torch.float64))
    assert path_intrinsics(path, K[0]).shape == (8, 3, 3)
    with pytest.raises(GeometryError, match="c2w"):
        path_intrinsics(path, K)
    with pytest.raises(GeometryError, match="n_frames"):
        interpolate_path(c2w, 0)
