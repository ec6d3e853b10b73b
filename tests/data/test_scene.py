"""Scene dataclass methods and the load_scene dispatcher / format detection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from da3gs.data import Scene, SceneError, detect_format, load_scene
from da3gs.errors import Da3gsError

from . import random_c2w, write_image


def _scene(tmp_path, n=10):
    paths = [write_image(tmp_path / f"{i}.png", 8, 6, seed=i) for i in range(n)]
    K = torch.tensor([[5.0, 0, 4], [0, 5.0, 3], [0, 0, 1]], dtype=torch.float64).repeat(n, 1, 1)
    dist = [None] * n
    dist[3] = {"model": "OPENCV", "k1": 0.1, "k2": 0.0, "p1": 0.0, "p2": 0.0}
    return Scene(image_paths=paths, c2w=random_c2w(n), K=K, image_hw=[(6, 8)] * n, names=[p.name for p in paths],
                 format="test", distortion=dist, split={"train": [1, 2, 3], "test": [0, 4]},
                 near_far=np.ones((n, 2)), points=np.zeros((4, 3)), point_colors=np.zeros((4, 3), np.uint8))


def test_subset_and_holdout(tmp_path):
    s = _scene(tmp_path)
    train, test = s.llff_holdout()
    assert test == [0, 8] and train == [1, 2, 3, 4, 5, 6, 7, 9]
    assert s.llff_holdout(3)[1] == [0, 3, 6, 9]
    sub = s.subset([4, 3, 0])
    assert sub.names == ["4.png", "3.png", "0.png"] and torch.equal(sub.c2w, s.c2w[[4, 3, 0]])
    assert sub.split == {"train": [1], "test": [0, 2]}
    assert sub.frame_distortion(1)["k1"] == 0.1 and sub.frame_distortion(0) is None
    assert sub.near_far.shape == (3, 2) and sub.points.shape == (4, 3) and len(s) == 10
    only = s.subset(torch.tensor([3]))
    assert only.distortion == {"model": "OPENCV", "k1": 0.1, "k2": 0.0, "p1": 0.0, "p2": 0.0}
    assert s.subset([0, 1]).distortion is None
    with pytest.raises(SceneError, match="out of range"):
        s.subset([10])
    imgs = s.subset([0, 1]).load_images()
    assert len(imgs) == 2 and imgs[0].shape == (6, 8, 3) and imgs[0].dtype == np.float32
    assert s.load_depth(0) is None


def test_scene_validation(tmp_path):
    s = _scene(tmp_path, 5)
    with pytest.raises(SceneError, match="expected c2w"):
        Scene(image_paths=s.image_paths, c2w=s.c2w[:1], K=s.K, image_hw=s.image_hw, names=s.names, format="x")


def test_detection_and_unknown_folder(tmp_path):
    write_image(tmp_path / "a.png")
    with pytest.raises(Da3gsError, match=r"no known scene format found; looked for transforms\*\.json.*COLMAP"):
        load_scene(tmp_path)
    with pytest.raises(SceneError, match="no such file or folder"):
        load_scene(tmp_path / "nope")
    with pytest.raises(SceneError, match="format: unknown 'mvs'"):
        load_scene(tmp_path, format="mvs")
    with pytest.raises(SceneError, match="unknown scene file"):
        load_scene(tmp_path / "a.png")
    for name, fam in [("poses_bounds.npy", "llff"), ("cameras_sphere.npz", "dtu"), ("groundtruth.txt", "tum"),
                      ("trajectory.log", "log"), ("transforms.json", "nerf")]:
        d = tmp_path / fam
        d.mkdir()
        (d / name).write_text("")
        assert detect_format(d) == fam and detect_format(d / name) == fam
    (tmp_path / "c" / "sparse" / "0").mkdir(parents=True)
    (tmp_path / "c" / "sparse" / "0" / "cameras.bin").write_bytes(b"")
    assert detect_format(tmp_path / "c") == "colmap"


def test_format_forced_and_option_errors(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "transforms.json").write_text(json.dumps(
        {"camera_angle_x": 1.0, "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]}))
    assert load_scene(tmp_path).format == "blender"
    assert load_scene(tmp_path, format="nerfstudio").format == "nerfstudio"
    with pytest.raises(SceneError, match="factor not understood by the nerf reader"):
        load_scene(tmp_path, factor=4)
    with pytest.raises(SceneError, match="no COLMAP model"):
        load_scene(tmp_path, format="colmap")
