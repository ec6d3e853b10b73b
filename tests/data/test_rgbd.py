"""TUM RGB-D and Open3D / ICL-NUIM trajectory.log readers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from da3gs.data import SceneError, load_scene
from da3gs.geometry import mat_to_quat, wxyz_to_xyzw

from . import random_c2w, write_image


def _depth(path, mm):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(mm, np.uint16)).save(path)


def _tum(root):
    c2w = random_c2w(3, seed=2)
    rgb_ts, depth_ts = [10.00, 10.10, 10.20, 10.30], [10.005, 10.098, 10.21, 10.50]
    gt = ["# ground truth trajectory", "# timestamp tx ty tz qx qy qz qw"]
    for k, ts in enumerate([9.999, 10.101, 10.199]):
        q = wxyz_to_xyzw(mat_to_quat(c2w[k, :3, :3]))
        gt.append(f"{ts:.4f} " + " ".join(repr(float(v)) for v in (*c2w[k, :3, 3], *q)))
    (root / "groundtruth.txt").write_text("\n".join(gt) + "\n")
    (root / "rgb.txt").write_text("# color images\n" + "".join(f"{t:.6f} rgb/{t:.6f}.png\n" for t in rgb_ts))
    (root / "depth.txt").write_text("".join(f"{t:.6f} depth/{t:.6f}.png\n" for t in depth_ts))
    for t in rgb_ts:
        write_image(root / "rgb" / f"{t:.6f}.png", 8, 6)
    for t in depth_ts:
        _depth(root / "depth" / f"{t:.6f}.png", np.full((6, 8), int(t * 1000)))
    return c2w


def test_tum_association_and_depth(tmp_path):
    c2w = _tum(tmp_path)
    s = load_scene(tmp_path)
    assert s.format == "tum" and len(s) == 3  # 10.30 has no pose within 0.02 s
    assert s.names == ["rgb/10.000000.png", "rgb/10.100000.png", "rgb/10.200000.png"]
    assert [p.name for p in s.depth_paths] == ["10.005000.png", "10.098000.png", "10.210000.png"]
    assert torch.allclose(s.c2w, c2w, atol=1e-10)
    assert s.K[0].tolist() == [[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]]
    assert s.depth_scale == 5000.0
    assert np.allclose(s.load_depth(1), 10098 / 5000.0)
    s2 = load_scene(tmp_path / "groundtruth.txt", fx=517.3, fy=516.5, cx=318.6, cy=255.3)
    assert s2.K[0].tolist() == [[517.3, 0, 318.6], [0, 516.5, 255.3], [0, 0, 1]]


def test_tum_errors(tmp_path):
    _tum(tmp_path)
    with pytest.raises(SceneError, match="no colour frame"):
        load_scene(tmp_path, max_dt=1e-5)
    (tmp_path / "rgb" / "10.100000.png").unlink()
    with pytest.raises(SceneError, match=r"images not found: rgb/10\.100000\.png \(1 of 3 missing\)"):
        load_scene(tmp_path, format="tum")
    (tmp_path / "rgb.txt").unlink()
    with pytest.raises(SceneError, match="rgb.txt not found"):
        load_scene(tmp_path)


def _log(root, n=3, match=True):
    c2w = random_c2w(n, seed=4)
    lines = []
    for i in range(n):
        lines.append(f"{i} {i} {i + 1}")
        lines += [" ".join(repr(float(v)) for v in row) for row in c2w[i]]
    (root / "trajectory.log").write_text("\n".join(lines) + "\n")
    for i in range(n):
        write_image(root / "color" / f"{i:05d}.jpg", 8, 6)
        _depth(root / "depth" / f"{i:05d}.png", np.full((6, 8), 1500 + i))
    if match:
        (root / "rgbd.match").write_text("".join(f"depth/{i:05d}.png color/{i:05d}.jpg\n" for i in range(n)))
    return c2w


@pytest.mark.parametrize("match", [True, False])
def test_trajectory_log(tmp_path, match):
    c2w = _log(tmp_path, match=match)
    s = load_scene(tmp_path)
    assert s.format == "open3d_log" and len(s) == 3 and s.names[2] == "color/00002.jpg"
    assert torch.equal(s.c2w, c2w)
    assert s.K[0].tolist() == [[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]]
    assert s.depth_scale == 1000.0 and np.allclose(s.load_depth(2), 1.502)
    sub = s.subset([2, 0])
    assert sub.names == ["color/00002.jpg", "color/00000.jpg"] and np.allclose(sub.load_depth(0), 1.502)


def test_trajectory_log_intrinsics_json_and_errors(tmp_path):
    _log(tmp_path)
    cam = {"width": 8, "height": 6, "intrinsic_matrix": [500.0, 0, 0, 0, 510.0, 0, 4.0, 3.0, 1]}
    (tmp_path / "camera.json").write_text(json.dumps(cam))
    s = load_scene(tmp_path / "trajectory.log", fy=505.0)
    assert s.K[0].tolist() == [[500.0, 0, 4.0], [0, 505.0, 3.0], [0, 0, 1]]
    s = load_scene(tmp_path, format="rgbd", intrinsics=np.diag([100.0, 90.0, 1.0]))
    assert s.K[0, 0, 0] == 100.0 and s.K[0, 1, 1] == 90.0
    (tmp_path / "color" / "00001.jpg").unlink()
    with pytest.raises(SceneError, match=r"trajectory\.log: images for frame ids not found: 1 \(1 of 3"):
        load_scene(tmp_path)
    (tmp_path / "trajectory.log").write_text("0 0 1\n1 0 0 0\n")
    with pytest.raises(SceneError, match="blocks of 5 lines"):
        load_scene(tmp_path)
