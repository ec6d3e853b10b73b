"""cameras.json, nerfstudio transforms.json and COLMAP text: writers, and round trips through
the project's scene readers (``da3gs.data``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from PIL import Image

from da3gs.data import load_scene
from da3gs.data.colmap import read_model
from da3gs.errors import Da3gsError
from da3gs.geometry import c2w_opencv_to_opengl, c2w_to_w2c, colmap_to_c2w
from da3gs.io import read_cameras_json, write_cameras_json, write_colmap_text, write_transforms_json


def _images(folder, names, hw):
    """Blank images of the given sizes (the scene readers check that images exist)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, (h, w) in zip(names, hw):
        Image.new("RGB", (w, h)).save(folder / n)


def _colmap(folder):
    """(c2w, K, hw, names, points, colors) of a COLMAP model, sorted by image name."""
    cams, images, points = read_model(folder)
    images = sorted(images, key=lambda im: im[0])
    q = torch.tensor([im[1] for im in images], dtype=torch.float64).reshape(-1, 4)
    t = torch.tensor([im[2] for im in images], dtype=torch.float64).reshape(-1, 3)
    K, hw = [], []
    for im in images:
        model, w, h, prm = cams[im[3]]
        fx, fy, cx, cy = (prm[0], prm[0], prm[1], prm[2]) if model.startswith("SIMPLE") else prm[:4]
        K.append([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        hw.append((h, w))
    return (colmap_to_c2w(q, t), torch.tensor(K, dtype=torch.float64), hw, [im[0] for im in images],
            *(points if points is not None else (None, None)))


def _rot(axis, angle):
    a = torch.as_tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    k = torch.tensor([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def _cams(v=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4, dtype=torch.float64).repeat(v, 1, 1)
    for i in range(v):
        c2w[i, :3, :3] = _rot(torch.randn(3, generator=gen, dtype=torch.float64), 0.4 * i + 0.3)
        c2w[i, :3, 3] = torch.randn(3, generator=gen, dtype=torch.float64)
    K = torch.zeros(v, 3, 3, dtype=torch.float64)
    K[:, 0, 0] = 500.0 + torch.arange(v)
    K[:, 1, 1] = 510.0
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = 320.5, 240.25, 1.0
    hw = [(480, 640)] * (v - 1) + [(300, 400)]
    names = [f"frame_{i:04d}.png" for i in range(v)]
    return c2w, K, hw, names


def test_cameras_json(tmp_path):
    c2w, K, hw, names = _cams()
    write_cameras_json(tmp_path / "cameras.json", c2w.float(), K, hw, names)
    data = json.loads((tmp_path / "cameras.json").read_text())
    assert isinstance(data, list) and set(data[0]) == {"name", "width", "height", "K", "c2w", "w2c"}
    assert data[3]["width"] == 400 and data[3]["height"] == 300
    torch.testing.assert_close(torch.tensor(data[1]["w2c"], dtype=torch.float64),
                               c2w_to_w2c(c2w.float().double())[1], atol=1e-12, rtol=0)
    cs = read_cameras_json(tmp_path / "cameras.json")
    torch.testing.assert_close(cs.c2w, c2w.float().double(), atol=0, rtol=0)
    assert cs.image_hw == hw and cs.names == names


def test_transforms_json(tmp_path):
    c2w, K, hw, names = _cams()
    write_transforms_json(tmp_path / "transforms.json", c2w, K, hw, names, ply_file_path="sparse_pc.ply",
                          image_dir="images")
    meta = json.loads((tmp_path / "transforms.json").read_text())
    assert meta["camera_model"] == "OPENCV" and meta["ply_file_path"] == "sparse_pc.ply"
    gl = c2w_opencv_to_opengl(c2w)
    for i, fr in enumerate(meta["frames"]):
        assert fr["file_path"] == f"images/frame_{i:04d}.png"
        torch.testing.assert_close(torch.tensor(fr["transform_matrix"], dtype=torch.float64), gl[i], atol=0, rtol=0)
        assert (fr["fl_x"], fr["fl_y"], fr["cx"], fr["cy"]) == (500.0 + i, 510.0, 320.5, 240.25)
        assert (fr["h"], fr["w"]) == hw[i]
    _images(tmp_path / "images", names, hw)
    scene = load_scene(tmp_path / "transforms.json")
    torch.testing.assert_close(scene.c2w, c2w, atol=1e-12, rtol=0)
    torch.testing.assert_close(scene.K, K, atol=0, rtol=0)
    assert scene.image_hw == hw


def test_transforms_json_blender_style(tmp_path):
    meta = {"camera_angle_x": 2 * math.atan(0.5), "w": 100, "h": 80,
            "frames": [{"file_path": "r_0", "transform_matrix": np.eye(4).tolist()}]}
    (tmp_path / "transforms_train.json").write_text(json.dumps(meta))
    _images(tmp_path, ["r_0.png"], [(80, 100)])
    scene = load_scene(tmp_path / "transforms_train.json")
    assert scene.K[0, 0, 0].item() == pytest.approx(100.0) and scene.K[0, 1, 2].item() == 40.0
    torch.testing.assert_close(scene.c2w[0], torch.diag(torch.tensor([1.0, -1, -1, 1], dtype=torch.float64)))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "transforms.json").write_text(json.dumps({"frames": [{"file_path": "x"}]}))
    with pytest.raises(Da3gsError, match="transforms.json"):
        load_scene(tmp_path / "bad" / "transforms.json")


def test_colmap_round_trip(tmp_path):
    c2w, K, hw, names = _cams(v=5)
    pts = np.random.default_rng(0).normal(size=(7, 3))
    cols = np.random.default_rng(1).integers(0, 256, (7, 3)).astype(np.uint8)
    write_colmap_text(tmp_path / "sparse" / "0", c2w, K, hw, names, points=pts, colors=cols)
    lines = (tmp_path / "sparse" / "0" / "images.txt").read_text().splitlines()
    data = [ln for ln in lines if not ln.startswith("#")]
    assert len(data) == 10 and all(data[i] == "" for i in range(1, 10, 2))
    assert data[0].split()[-1] == names[0] and data[0].split()[0] == "1"
    cams = [ln for ln in (tmp_path / "sparse" / "0" / "cameras.txt").read_text().splitlines() if ln[:1] != "#"]
    assert cams[4].split()[:4] == ["5", "PINHOLE", "400", "300"]
    rc2w, rK, rhw, rnames, p, c = _colmap(tmp_path / "sparse" / "0")
    torch.testing.assert_close(rc2w, c2w, atol=1e-6, rtol=0)
    torch.testing.assert_close(rK, K, atol=1e-6, rtol=0)
    assert rhw == hw and rnames == names
    np.testing.assert_allclose(p, pts, atol=1e-6)
    np.testing.assert_array_equal(c, cols)
    _images(tmp_path / "images", names, hw)
    scene = load_scene(tmp_path)
    torch.testing.assert_close(scene.c2w, c2w, atol=1e-6, rtol=0)
    # no points: header-only points3D.txt
    write_colmap_text(tmp_path / "np", c2w, K, (480, 640), names)
    *_, rhw, _, p, c = _colmap(tmp_path / "np")
    assert (p is None or len(p) == 0) and (c is None or len(c) == 0) and rhw == [(480, 640)] * 5


def test_colmap_reads_points2d_lines(tmp_path):
    (tmp_path / "cameras.txt").write_text("# c\n1 SIMPLE_PINHOLE 64 48 50 32 24\n")
    (tmp_path / "images.txt").write_text(
        "# header\n2 1 0 0 0 0 0 1 1 b.png\n10.0 20.0 -1 11 12 3\n1 1 0 0 0 0 0 0 1 a.png\n\n")
    rc2w, rK, _, rnames, p, _ = _colmap(tmp_path)
    assert rnames == ["a.png", "b.png"] and p is None
    assert rc2w[1, 2, 3].item() == -1.0 and rK[0, 1, 1].item() == 50.0


def test_bad_inputs(tmp_path):
    c2w, K, hw, names = _cams()
    with pytest.raises(Da3gsError, match="names"):
        write_cameras_json(tmp_path / "c.json", c2w, K, hw, names[:2])
    with pytest.raises(Da3gsError, match="K"):
        write_transforms_json(tmp_path / "t.json", c2w, K[:2], hw, names)
    with pytest.raises(Da3gsError, match="image_hw"):
        write_colmap_text(tmp_path, c2w, K, [(1, 2)], names)
    assert list(tmp_path.iterdir()) == []


def test_colmap_skew_dropped_with_one_log_line(tmp_path, caplog):
    """Skew is reported through logging (logger da3gs.io.cameras), not a warnings.warn with a
    source line; text and binary writers alike."""
    import warnings

    from da3gs.io.cameras import write_colmap_binary

    c2w, K, hw, names = _cams(v=2)
    K = K.clone()
    K[:, 0, 1] = 0.5
    with warnings.catch_warnings(), caplog.at_level("WARNING", logger="da3gs"):
        warnings.simplefilter("error")
        write_colmap_text(tmp_path / "t", c2w, K, hw, names)
        write_colmap_binary(tmp_path / "b", c2w, K, hw, names)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2 and all("skew dropped" in m for m in msgs)


def _colmap_binary_reference(P, C) -> bytes:
    """points3D.bin as COLMAP's read_write_model.py packs it, one struct per point."""
    import struct

    out = [struct.pack("<Q", len(P))]
    out += [struct.pack("<Q3d3BdQ", j + 1, *map(float, p), *map(int, c), 0.0, 0) for j, (p, c) in enumerate(zip(P, C))]
    return b"".join(out)


def test_colmap_binary_points_bytes_and_round_trip(tmp_path):
    from da3gs.io.cameras import write_colmap

    c2w, K, hw, names = _cams(v=3)
    rng = np.random.default_rng(2)
    pts = rng.normal(size=(1001, 3)).astype(np.float32)  # float32 means, as render passes them
    cols = rng.integers(0, 256, (1001, 3)).astype(np.uint8)
    assert write_colmap(tmp_path / "b", c2w, K, hw, names, points=pts, colors=cols, fmt="binary") == "binary"
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["cameras.bin", "images.bin", "points3D.bin"]
    assert (tmp_path / "b" / "points3D.bin").read_bytes() == _colmap_binary_reference(pts.astype(np.float64), cols)
    rc2w, rK, rhw, rnames, p, c = _colmap(tmp_path / "b")
    torch.testing.assert_close(rc2w, c2w, atol=1e-12, rtol=0)
    assert rhw == hw and rnames == names
    np.testing.assert_array_equal(p, pts.astype(np.float64))
    np.testing.assert_array_equal(c, cols)
    # both: text beside binary, same content; the text points equal the binary ones exactly
    assert write_colmap(tmp_path / "t", c2w, K, hw, names, points=pts, colors=cols, fmt="both") == "text+binary"
    for f in ("cameras.bin", "images.bin", "points3D.bin"):
        assert (tmp_path / "t" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    rows = [ln.split() for ln in (tmp_path / "t" / "points3D.txt").read_text().splitlines() if ln[:1] != "#"]
    np.testing.assert_array_equal(np.array([[float(x) for x in r[1:4]] for r in rows]), pts.astype(np.float64))
    assert [int(r[0]) for r in rows] == list(range(1, 1002)) and rows[5][4:8] == [str(v) for v in cols[5]] + ["0"]
    # empty point set; names with spaces: binary only
    write_colmap(tmp_path / "e", c2w, K, hw, names, points=np.zeros((0, 3)), fmt="binary")
    assert (tmp_path / "e" / "points3D.bin").read_bytes() == (0).to_bytes(8, "little")
    spaced = [n.replace(".", " x.") for n in names]
    assert write_colmap(tmp_path / "s", c2w, K, hw, spaced) == "binary"
    with pytest.raises(Da3gsError, match="whitespace"):
        write_colmap(tmp_path / "s2", c2w, K, hw, spaced, fmt="both")
    with pytest.raises(Da3gsError, match="fmt"):
        write_colmap(tmp_path / "s3", c2w, K, hw, names, fmt="bin")
