"""Shared float64 reference helpers for the geometry tests (not a test module)."""

import math

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
device_param = pytest.mark.parametrize("device", DEVICES)


def rodrigues(axis, angle: float) -> torch.Tensor:
    """(3, 3) float64 rotation of ``angle`` radians about ``axis`` (Rodrigues)."""
    a = torch.as_tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    k = torch.tensor([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def axis_angle_quat(axis, angle: float) -> torch.Tensor:
    """(4,) float64 wxyz quaternion of the same rotation."""
    a = torch.as_tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    return torch.cat([torch.tensor([math.cos(angle / 2)], dtype=torch.float64), math.sin(angle / 2) * a])


def random_rotation(gen: torch.Generator, max_angle: float = math.pi) -> torch.Tensor:
    axis = torch.randn(3, generator=gen, dtype=torch.float64)
    angle = float(torch.rand(1, generator=gen, dtype=torch.float64)) * max_angle
    return rodrigues(axis, angle)


def random_c2w(n: int, gen: torch.Generator, max_angle: float = math.pi, trans: float = 2.0) -> torch.Tensor:
    """(n, 4, 4) float64 rigid camera-to-world matrices."""
    out = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    for i in range(n):
        out[i, :3, :3] = random_rotation(gen, max_angle)
    out[:, :3, 3] = trans * torch.randn(n, 3, generator=gen, dtype=torch.float64)
    return out


def make_K(fx, fy, cx, cy, skew=0.0, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor([[fx, skew, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype)
