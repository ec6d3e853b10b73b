"""Blender / nerfstudio / instant-ngp transforms readers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from da3gs.data import SceneError, load_scene
from da3gs.errors import Da3gsError
from da3gs.geometry import c2w_opencv_to_opengl

from . import random_c2w, write_image

FOV = 0.7


def _blender(root, splits=("train", "test"), n=3, w=16, h=12):
    c2w = {}
    for k, s in enumerate(splits):
        cv = random_c2w(n, seed=k)
        c2w[s] = cv
        frames = []
        for i in range(n):
            write_image(root / s / f"r_{i}.png", w, h, rgba=True, seed=i)
            gl = c2w_opencv_to_opengl(cv[i])
            frames.append({"file_path": f"./{s}/r_{i}", "rotation": 0.01, "transform_matrix": gl.tolist()})
        (root / f"transforms_{s}.json").write_text(json.dumps({"camera_angle_x": FOV, "frames": frames}))
    return c2w


def test_blender_train_default(tmp_path):
    c2w = _blender(tmp_path)
    s = load_scene(tmp_path)
    assert s.format == "blender" and len(s) == 3
    assert torch.allclose(s.c2w, c2w["train"], atol=1e-12)
    fx = 0.5 * 16 / math.tan(FOV / 2)
    assert torch.allclose(s.K[0], torch.tensor([[fx, 0, 8.0], [0, fx, 6.0], [0, 0, 1]], dtype=torch.float64))
    assert s.image_hw == [(12, 16)] * 3
    assert s.names == ["train/r_0.png", "train/r_1.png", "train/r_2.png"]
    assert s.image_paths[1] == tmp_path / "train" / "r_1.png"
    assert s.background == (1.0, 1.0, 1.0) and s.distortion is None and s.split == {"train": [0, 1, 2]}
    assert s.c2w.dtype == torch.float64 and s.K.dtype == torch.float64


def test_blender_splits_and_background(tmp_path):
    c2w = _blender(tmp_path)
    test = load_scene(tmp_path, split="test")
    assert torch.allclose(test.c2w, c2w["test"], atol=1e-12)
    s = load_scene(tmp_path, split="all", background=(0, 0, 0))
    assert len(s) == 6 and s.split == {"train": [0, 1, 2], "test": [3, 4, 5]}
    assert s.background == (0.0, 0.0, 0.0)
    img = s.load_images()[0]
    rgba = np.asarray(Image.open(s.image_paths[0])).astype(np.float32) / 255
    assert np.allclose(img, rgba[..., :3] * rgba[..., 3:], atol=1e-6)  # composited on black
    white = s.load_images(background=(1, 1, 1))[0]
    assert np.allclose(white, rgba[..., :3] * rgba[..., 3:] + 1 - rgba[..., 3:], atol=1e-6)
    with pytest.raises(SceneError, match="val"):
        load_scene(tmp_path, split="val")
    one = load_scene(tmp_path / "transforms_test.json")  # a file picks its split
    assert one.split == {"test": [0, 1, 2]}


def test_blender_missing_image_and_corrupt_json(tmp_path):
    _blender(tmp_path)
    (tmp_path / "train" / "r_1.png").unlink()
    with pytest.raises(Da3gsError, match=r"transforms_train\.json.*train/r_1.*1 of 3"):
        load_scene(tmp_path)
    (tmp_path / "transforms_test.json").write_text('{"frames": [ }')
    with pytest.raises(SceneError, match=r"transforms_test\.json: invalid JSON"):
        load_scene(tmp_path, split="test")


def _nerfstudio(root, n=3):
    cv = random_c2w(n, seed=5)
    frames = []
    for i in range(n):
        write_image(root / "images" / f"frame_{i:05d}.png", 40, 30, seed=i)
        frames.append({"file_path": f"images/frame_{i:05d}.png", "transform_matrix": c2w_opencv_to_opengl(cv[i]).tolist()})
    frames[1].update(fl_x=50.0, fl_y=52.0)  # per-frame intrinsics override
    frames[2].update(k1=0.3)  # per-frame distortion override
    meta = {"camera_model": "OPENCV", "fl_x": 30.0, "fl_y": 31.0, "cx": 20.5, "cy": 14.5, "w": 40, "h": 30,
            "k1": 0.1, "k2": -0.02, "p1": 0.001, "p2": 0.002, "applied_transform": np.eye(4)[:3].tolist(),
            "frames": frames[::-1], "train_filenames": [f["file_path"] for f in frames[:2]],
            "test_filenames": [frames[2]["file_path"]]}
    (root / "transforms.json").write_text(json.dumps(meta))
    return cv


def test_nerfstudio_intrinsics_distortion_split(tmp_path):
    cv = _nerfstudio(tmp_path)
    s = load_scene(tmp_path)
    assert s.format == "nerfstudio" and len(s) == 3
    assert s.names == [f"images/frame_{i:05d}.png" for i in range(3)]  # sorted by file_path
    assert torch.allclose(s.c2w, cv, atol=1e-12)
    assert s.K[0].tolist() == [[30.0, 0, 20.5], [0, 31.0, 14.5], [0, 0, 1]]
    assert s.K[1, 0, 0] == 50.0 and s.K[1, 1, 1] == 52.0 and s.K[1, 0, 2] == 20.5
    d0 = {"model": "OPENCV", "k1": 0.1, "k2": -0.02, "p1": 0.001, "p2": 0.002}
    assert s.frame_distortion(0) == d0 and s.frame_distortion(1) == d0
    assert s.frame_distortion(2) == {**d0, "k1": 0.3}
    assert s.split == {"train": [0, 1], "test": [2]}
    assert s.background is None
    test = load_scene(tmp_path / "transforms.json", split="test")
    assert test.names == ["images/frame_00002.png"] and test.split == {"train": [], "test": [0]}


def test_nerfstudio_rescales_K_to_disk_and_fisheye(tmp_path):
    _nerfstudio(tmp_path)
    meta = json.loads((tmp_path / "transforms.json").read_text())
    meta.update(w=80, h=60, camera_model="OPENCV_FISHEYE", k1=0.0, k2=0.0, p1=0.0, p2=0.0)
    for fr in meta["frames"]:
        fr.pop("k1", None)
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    s = load_scene(tmp_path, format="nerfstudio")
    assert s.K[0].tolist() == [[15.0, 0, 10.25], [0, 15.5, 7.25], [0, 0, 1]]  # disk is half of w x h
    assert s.distortion == {"model": "OPENCV_FISHEYE", "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0}


def test_ngp_zero_distortion_is_pinhole(tmp_path):
    write_image(tmp_path / "a.jpg", 20, 10)
    meta = {"camera_angle_x": 1.0, "fl_x": 12.0, "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "w": 20, "h": 10,
            "aabb_scale": 16, "frames": [{"file_path": "a.jpg", "transform_matrix": np.eye(4).tolist()}]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    s = load_scene(tmp_path)
    assert s.distortion is None and s.K[0].tolist() == [[12.0, 0, 10.0], [0, 12.0, 5.0], [0, 0, 1]]
    assert torch.equal(s.c2w[0], torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)))


def test_bad_frames(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 5, "frames": [{"file_path": "a.png"}]}))
    with pytest.raises(SceneError, match="frame 0: missing or malformed 'transform_matrix'"):
        load_scene(tmp_path)
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": [{"file_path": "a.png",
                                                                        "transform_matrix": np.eye(4).tolist()}]}))
    with pytest.raises(SceneError, match="no focal length"):
        load_scene(tmp_path)
    (tmp_path / "transforms.json").write_text(json.dumps([1, 2]))
    with pytest.raises(SceneError, match="'frames' list"):
        load_scene(tmp_path)
