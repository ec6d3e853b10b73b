"""Real scenes from ../shared/data (skipped when absent)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from da3gs.data import SceneError, load_scene

from . import SHARED, assert_rigid, needs_shared

pytestmark = needs_shared


def test_llff_fern():
    s = load_scene(SHARED / "llff_fern", factor=8)
    assert s.format == "llff" and len(s) == 20 and s.image_hw == [(378, 504)] * 20
    f_full = float(np.load(SHARED / "llff_fern" / "poses_bounds.npy")[0, 14])
    assert abs(f_full - 3260.5) < 0.1
    assert torch.allclose(s.K[:, 0, 0], torch.full((20,), f_full / 8, dtype=torch.float64))
    assert s.K[0, 0, 2] == 252.0 and s.K[0, 1, 2] == 189.0
    assert_rigid(s.c2w)
    assert s.near_far.shape == (20, 2) and bool((s.near_far[:, 0] < s.near_far[:, 1]).all())
    assert s.split["test"] == [0, 8, 16] and s.llff_holdout() == (s.split["train"], s.split["test"])
    # front-facing: every camera looks roughly the same way
    z = s.c2w[:, :3, 2]
    assert bool((z @ z.mean(0) > 0.9).all())
    s4 = load_scene(SHARED / "llff_fern" / "poses_bounds.npy", factor=4)
    assert torch.allclose(s4.K[:, 0, 0], 2 * s.K[:, 0, 0]) and s4.image_hw[0] == (756, 1008)
    with pytest.raises(SceneError, match=r"no images/ folder \(found: images_4, images_8\)"):
        load_scene(SHARED / "llff_fern")


def test_lego_400():
    root = SHARED / "lego_400"
    angle = json.loads((root / "transforms_train.json").read_text())["camera_angle_x"]
    fx = 0.5 * 400 / math.tan(angle / 2)
    s = load_scene(root)
    assert s.format == "blender" and len(s) == 100 and s.background == (1.0, 1.0, 1.0)
    assert torch.allclose(s.K[:, 0, 0], torch.full((100,), fx, dtype=torch.float64))
    assert s.K[0, 0, 2] == 200.0 and s.image_hw[0] == (400, 400)
    assert_rigid(s.c2w)
    # cameras on a sphere around the origin, looking at it (OpenCV +z forward)
    centres, fwd = s.c2w[:, :3, 3], s.c2w[:, :3, 2]
    to_origin = -centres / centres.norm(dim=1, keepdim=True)
    assert bool(((fwd * to_origin).sum(1) > 0.95).all())
    all_ = load_scene(root, split="all")
    assert len(all_) == 200 and {k: len(v) for k, v in all_.split.items()} == {"train": 100, "test": 100}
    assert len(load_scene(root, split="test")) == 100
    img = s.subset([0]).load_images()[0]
    assert img.shape == (400, 400, 3) and img[0, 0].tolist() == [1.0, 1.0, 1.0]  # white background


def test_icl_nuim():
    s = load_scene(SHARED / "icl_nuim_livingroom_rgbd5")
    assert s.format == "open3d_log" and len(s) == 5 and s.image_hw == [(480, 640)] * 5
    assert s.K[0].tolist() == [[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]]
    assert_rigid(s.c2w)
    d = s.load_depth(0)
    assert d.shape == (480, 640) and d.dtype == np.float32
    valid = d[d > 0]
    assert valid.size > 0.7 * d.size and 0.3 < float(np.median(valid)) < 6.0 and float(valid.max()) < 10.0
    steps = (s.c2w[1:, :3, 3] - s.c2w[:-1, :3, 3]).norm(dim=1)
    assert bool((steps < 0.1).all())  # consecutive frames
