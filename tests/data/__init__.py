"""Tests for da3gs.data; small helpers shared by the test modules."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")


def write_image(path: Path, w: int = 8, h: int = 6, rgba: bool = False, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 4 if rgba else 3), dtype=np.uint8)
    Image.fromarray(arr, "RGBA" if rgba else "RGB").save(path)
    return path


def rotation(axis, angle: float) -> torch.Tensor:
    a = torch.as_tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    k = torch.tensor([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def random_c2w(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    for i in range(n):
        axis = torch.randn(3, generator=g, dtype=torch.float64)
        out[i, :3, :3] = rotation(axis, float(torch.rand(1, generator=g)) * 3.0)
    out[:, :3, 3] = 2.0 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    return out


def assert_rigid(c2w: torch.Tensor, tol: float = 1e-5) -> None:
    R = c2w[:, :3, :3]
    eye = torch.eye(3, dtype=R.dtype).expand_as(R)
    assert torch.allclose(R @ R.transpose(1, 2), eye, atol=tol)
    assert torch.allclose(torch.linalg.det(R), torch.ones(len(R), dtype=R.dtype), atol=tol)
    assert torch.equal(c2w[:, 3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=c2w.dtype).expand(len(c2w), 4))
