"""COLMAP text and binary readers (written by a small writer following COLMAP's documented layout)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from da3gs.data import SceneError, load_scene, read_colmap
from da3gs.data.colmap import CAMERA_MODELS
from da3gs.geometry import c2w_to_colmap

from . import random_c2w, write_image

_IDS = {v[0]: k for k, v in CAMERA_MODELS.items()}
CAMERAS = {  # id: (model, width, height, params)
    1: ("SIMPLE_PINHOLE", 32, 24, [30.0, 16.0, 12.0]),
    2: ("PINHOLE", 32, 24, [30.0, 31.0, 15.5, 12.5]),
    3: ("SIMPLE_RADIAL", 32, 24, [29.0, 16.0, 12.0, 0.05]),
    4: ("RADIAL", 32, 24, [28.0, 16.0, 12.0, 0.05, -0.01]),
    5: ("OPENCV", 32, 24, [30.0, 31.0, 16.0, 12.0, 0.1, -0.02, 0.001, 0.002]),
}
NAMES = ["c.png", "a.png", "e.png", "b.png", "d.png"]  # image ids 1..5 use cameras 1..5


def _model(n=5, seed=0):
    c2w = random_c2w(n, seed)
    q, t = c2w_to_colmap(c2w)
    rng = np.random.default_rng(seed)
    xyz, rgb = rng.normal(size=(7, 3)), rng.integers(0, 256, (7, 3)).astype(np.uint8)
    return c2w, q.numpy(), t.numpy(), xyz, rgb


def write_text(d, q, t, xyz, rgb):
    d.mkdir(parents=True, exist_ok=True)
    lines = ["# Camera list", "# CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    lines += [f"{i} {m} {w} {h} " + " ".join(repr(p) for p in ps) for i, (m, w, h, ps) in CAMERAS.items()]
    (d / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = ["# Image list with two lines of data per image:"]
    for i, name in enumerate(NAMES):
        lines.append(f"{i + 1} " + " ".join(repr(float(v)) for v in (*q[i], *t[i])) + f" {i + 1} {name}")
        lines.append("" if i % 2 else "1.5 2.5 -1 3.0 4.0 0")  # POINTS2D line, sometimes empty
    (d / "images.txt").write_text("\n".join(lines) + "\n")
    lines = ["# 3D point list"]
    lines += [f"{j + 1} {x!r} {y!r} {z!r} {r} {g} {b} 0.5 1 0 2 1"
              for j, ((x, y, z), (r, g, b)) in enumerate(zip(xyz.tolist(), rgb.tolist()))]
    (d / "points3D.txt").write_text("\n".join(lines) + "\n")


def write_binary(d, q, t, xyz, rgb):
    d.mkdir(parents=True, exist_ok=True)
    b = struct.pack("<Q", len(CAMERAS))
    for i, (m, w, h, ps) in CAMERAS.items():
        b += struct.pack("<iiQQ", i, _IDS[m], w, h) + struct.pack(f"<{len(ps)}d", *ps)
    (d / "cameras.bin").write_bytes(b)
    b = struct.pack("<Q", len(NAMES))
    for i, name in enumerate(NAMES):
        b += struct.pack("<I7dI", i + 1, *q[i], *t[i], i + 1) + name.encode() + b"\x00"
        pts = [(1.5, 2.5, -1), (3.0, 4.0, 0)] if i % 2 == 0 else []
        b += struct.pack("<Q", len(pts)) + b"".join(struct.pack("<ddq", *p) for p in pts)
    (d / "images.bin").write_bytes(b)
    b = struct.pack("<Q", len(xyz))
    for j in range(len(xyz)):
        track = [(1, 0), (2, 1)]
        b += struct.pack("<Q3d3BdQ", j + 1, *xyz[j], *rgb[j], 0.5, len(track))
        b += b"".join(struct.pack("<ii", *tr) for tr in track)
    (d / "points3D.bin").write_bytes(b)


def _images(root):
    for name in NAMES:
        write_image(root / "images" / name, 32, 24)


def _check(s, c2w, xyz, rgb):
    order = [NAMES.index(n) for n in sorted(NAMES)]
    assert s.format == "colmap" and s.names == sorted(NAMES)
    assert torch.allclose(s.c2w, c2w[order], atol=1e-10)
    K = {n: s.K[i] for i, n in enumerate(s.names)}
    assert K["c.png"].tolist() == [[30.0, 0, 16.0], [0, 30.0, 12.0], [0, 0, 1]]
    assert K["a.png"].tolist() == [[30.0, 0, 15.5], [0, 31.0, 12.5], [0, 0, 1]]
    dist = {n: s.frame_distortion(i) for i, n in enumerate(s.names)}
    assert dist["c.png"] is None and dist["a.png"] is None
    assert dist["e.png"] == {"model": "SIMPLE_RADIAL", "k1": 0.05}
    assert dist["b.png"] == {"model": "RADIAL", "k1": 0.05, "k2": -0.01}
    assert dist["d.png"] == {"model": "OPENCV", "k1": 0.1, "k2": -0.02, "p1": 0.001, "p2": 0.002}
    assert np.allclose(s.points.numpy(), xyz) and np.array_equal(s.point_colors.numpy(), rgb)
    assert s.point_colors.dtype == torch.uint8


@pytest.mark.parametrize("layout", ["sparse/0", "sparse", "."])
def test_text_and_binary_identical(tmp_path, layout):
    c2w, q, t, xyz, rgb = _model()
    for kind, writer in (("txt", write_text), ("bin", write_binary)):
        root = tmp_path / kind
        writer(root / layout, q, t, xyz, rgb)
        _images(root)
    a, b = load_scene(tmp_path / "txt"), load_scene(tmp_path / "bin")
    _check(a, c2w, xyz, rgb)
    _check(b, c2w, xyz, rgb)
    assert a.names == b.names and torch.equal(a.c2w, b.c2w) and torch.equal(a.K, b.K)
    assert a.distortion == b.distortion and torch.equal(a.points, b.points)
    assert [p.relative_to(tmp_path / "txt") for p in a.image_paths] == \
        [p.relative_to(tmp_path / "bin") for p in b.image_paths]


def test_model_dir_images_option_and_downscaled_images(tmp_path):
    c2w, q, t, xyz, rgb = _model()
    write_binary(tmp_path / "model", q, t, xyz, rgb)
    for name in NAMES:
        write_image(tmp_path / "imgs_2" / name, 16, 12)
    with pytest.raises(SceneError, match="no images folder"):
        load_scene(tmp_path / "model")
    s = load_scene(tmp_path / "model" / "cameras.bin", images=tmp_path / "imgs_2", load_points=False)
    assert s.points is None and s.image_hw == [(12, 16)] * 5
    assert s.K[s.names.index("a.png")].tolist() == [[15.0, 0, 7.75], [0, 15.5, 6.25], [0, 0, 1]]


def test_missing_images_and_corrupt_files(tmp_path):
    c2w, q, t, xyz, rgb = _model()
    write_binary(tmp_path / "sparse" / "0", q, t, xyz, rgb)
    _images(tmp_path)
    (tmp_path / "images" / "b.png").unlink()
    (tmp_path / "images" / "d.png").unlink()
    with pytest.raises(SceneError, match=r"not found: b\.png, d\.png \(2 of 5 missing\)"):
        read_colmap(tmp_path)
    _images(tmp_path)
    data = (tmp_path / "sparse" / "0" / "images.bin").read_bytes()
    (tmp_path / "sparse" / "0" / "images.bin").write_bytes(data[:50])
    with pytest.raises(SceneError, match=r"images\.bin: truncated or corrupt"):
        read_colmap(tmp_path)
    write_text(tmp_path / "t", q, t, xyz, rgb)
    (tmp_path / "t" / "cameras.txt").write_text("1 WEIRD 32 24 1 2 3\n")
    with pytest.raises(SceneError, match=r"cameras\.txt line 1: unknown camera model WEIRD"):
        read_colmap(tmp_path / "t", images_dir=tmp_path / "images")
