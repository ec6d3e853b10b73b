"""Tiny synthetic scenes and a fake procedural generator for the multi-view data tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from da3gs.data.batch import ViewBatch
from da3gs.data.scene import Scene


@pytest.fixture(autouse=True)
def one_thread():
    """Tests run single-threaded (tiny tensors; the CI machine's cores are shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """(4, 4) float64 OpenCV c2w at ``eye`` looking at ``target`` (y down ~ -up)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-6:
        x = np.cross(z, (0.0, 1.0, 0.0))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return torch.from_numpy(m)


def ring_c2w(angles_deg, radius=4.0, height=1.0, outward=()) -> torch.Tensor:
    """Cameras on a circle looking at the origin; indices in ``outward`` look away from it."""
    out = []
    for k, a in enumerate(angles_deg):
        eye = np.array([radius * math.cos(math.radians(a)), radius * math.sin(math.radians(a)), height])
        out.append(look_at(eye, eye * 2.0 if k in outward else (0.0, 0.0, 0.0)))
    return torch.stack(out)


def make_scene(root: Path, c2w: torch.Tensor, hw=(30, 40), depth: bool = False, seed: int = 0) -> Scene:
    """A scene of random-noise PNGs (and uint16 millimetre depth PNGs) with the cameras ``c2w``."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    H, W = hw
    n = len(c2w)
    paths, dpaths = [], []
    for i in range(n):
        p = root / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(p)
        paths.append(p)
        if depth:
            d = rng.integers(500, 4000, (H, W)).astype(np.uint16)
            d[: H // 4] = 0  # a band with no measurement
            dp = root / f"depth{i:03d}.png"
            Image.fromarray(d).save(dp)
            dpaths.append(dp)
    f = 0.8 * W
    K = torch.tensor([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]], dtype=torch.float64).repeat(n, 1, 1)
    return Scene(image_paths=paths, c2w=c2w, K=K, image_hw=[hw] * n, names=[p.name for p in paths],
                 format="tum" if depth else "blender", depth_paths=dpaths if depth else None,
                 depth_scale=1000.0 if depth else None)


def write_blender(root: Path, n: int = 6, size: int = 16) -> Path:
    """A readable Blender-style folder (transforms_train.json + PNGs) on a ring."""
    root.mkdir(parents=True, exist_ok=True)
    c2w = ring_c2w(np.linspace(0, 90, n))
    gl = c2w.clone()
    gl[:, :3, 1:3] *= -1  # OpenCV -> OpenGL axes
    frames = []
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"r_{i}.png")
        frames.append({"file_path": f"./r_{i}", "transform_matrix": gl[i].tolist()})
    (root / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.8, "frames": frames}))
    return root


class FakeGenerator:
    """Stands in for ``ProceduralGenerator``: ``sample(B, V, H, W, seed)`` -> random ViewBatch
    determined by ``seed``; records the calls."""

    def __init__(self):
        self.calls = []

    def sample(self, batch_size, num_views, height, width, seed=None):
        self.calls.append((batch_size, num_views, height, width, seed))
        g = torch.Generator().manual_seed(int(seed or 0))
        B, V, H, W = batch_size, num_views, height, width
        c2w = torch.eye(4).repeat(B, V, 1, 1)
        c2w[..., :3, 3] = torch.randn(B, V, 3, generator=g)
        K = torch.tensor([[W * 0.8, 0, W / 2], [0, W * 0.8, H / 2], [0, 0, 1.0]]).repeat(B, V, 1, 1)
        depth = 1 + torch.rand(B, V, H, W, generator=g)
        return ViewBatch(images=torch.rand(B, V, 3, H, W, generator=g), depth=depth, valid=depth > 1.1,
                         c2w=c2w, K=K, normals=None, sky=depth <= 1.1, pose_conditioned=None, scene_ids=None)
