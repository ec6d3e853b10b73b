"""``da3gs pseudo-label`` end to end on a tiny generated COLMAP scene."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from da3gs.apps import pseudo_label as pl
from da3gs.cli import main
from da3gs.io.cameras import write_colmap_text

H, W = 42, 56
K0 = np.array([[50.0, 0, W / 2], [0, 48.0, H / 2], [0, 0, 1]])


def _look(yaw):
    c, s = np.cos(yaw), np.sin(yaw)
    c2w = np.eye(4)
    c2w[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    c2w[:3, 3] = [0.3 * yaw, 0.05, -0.2 * yaw]
    return c2w


def _plane_depth(K, H, W, c2w=None):
    """z-depth of the world plane n.X = 4, n = (0.1, 0.05, 1), at every pixel centre of a view."""
    c2w = np.eye(4) if c2w is None else c2w
    v, u = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1) @ c2w[:3, :3].T
    n = np.array([0.1, 0.05, 1.0])
    return (4.0 - n @ c2w[:3, 3]) / (d @ n)


def _scene(tmp_path: Path, n_views=3, points=True, outliers=0.0, seed=0):
    rng = np.random.default_rng(seed)
    root = tmp_path / "scene"
    (root / "images").mkdir(parents=True)
    names, c2ws = [], []
    pts = []
    for i in range(n_views):
        name = f"v{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "images" / name)
        c2w = _look(0.15 * i)
        names.append(name)
        c2ws.append(c2w)
        # 3D points on the plane of view i (the fake teacher below sees exactly that plane)
        z = _plane_depth(K0, H, W, c2w)
        ii, jj = rng.integers(0, H, 60), rng.integers(0, W, 60)
        zz = z[ii, jj].copy()
        bad = rng.random(60) < outliers
        zz[bad] *= rng.uniform(1.5, 3.0, bad.sum())
        x = ((jj + 0.5) - K0[0, 2]) / K0[0, 0] * zz
        y = ((ii + 0.5) - K0[1, 2]) / K0[1, 1] * zz
        pc = np.stack([x, y, zz], -1)
        pts.append(pc @ c2w[:3, :3].T + c2w[:3, 3])
    write_colmap_text(root / "sparse" / "0", torch.tensor(np.stack(c2ws)), torch.tensor(np.stack([K0] * n_views)),
                      [(H, W)] * n_views, names,
                      points=torch.tensor(np.concatenate(pts)) if points else None)
    return root, names


def _run(*args):
    return main(["pseudo-label", *map(str, args)])


def test_end_to_end_with_random_tiny_mono(tmp_path, capsys):
    scene, names = _scene(tmp_path)
    out = tmp_path / "labels"
    rc = _run("--scene", scene, "--model", "random:tiny-mono", "--out", out, "--device", "cpu",
              "--process-res", 56, "-q")
    assert rc == 0, capsys.readouterr().err
    s = json.loads((out / "summary.json").read_text())
    assert s["sparse"] == "colmap" and s["views_written"] == 3 and s["preset"] == "tiny-mono"
    for v, n in zip(s["views"], names):
        assert v["status"] == "ok" and v["name"] == n and v["s"] > 0 and 2 <= v["inliers"] <= v["points"]
        d = np.load(out / v["file"])
        assert d.shape == (H, W) and d.dtype == np.float32 and np.isfinite(d).all()
    assert sorted(p.name for p in (out / "depth").iterdir()) == [n.replace(".png", ".npy") for n in names]
    # never overwrite: the same --out again fails with one line and leaves the folder alone
    before = (out / "summary.json").read_text()
    rc = _run("--scene", scene, "--model", "random:tiny-mono", "--out", out, "--device", "cpu", "-q")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "already exists" in err
    assert (out / "summary.json").read_text() == before


class _FakeTeacher:
    """'Predicts' (true plane depth - 0.5) / 2 at the original resolution (no resize)."""

    preset = SimpleNamespace(name="fake")

    def infer(self, paths, process_res=504):
        d = (_plane_depth(K0, H, W, _look(0.15 * int(Path(paths[0]).stem[1:]))) - 0.5) / 2.0
        return SimpleNamespace(depth=torch.tensor(d, dtype=torch.float32)[None], resize_scale=[(1.0, 1.0)],
                               crop_offsets=[(0, 0)])


def test_alignment_recovers_metric_depth_despite_outliers(tmp_path, monkeypatch):
    from da3gs.models import loading

    monkeypatch.setattr(loading, "load_model", lambda source, device="cpu": _FakeTeacher())
    scene, _names = _scene(tmp_path, outliers=0.3, seed=1)
    out = tmp_path / "labels"
    assert _run("--scene", scene, "--model", "fake", "--out", out, "--device", "cpu", "-q") == 0
    s = json.loads((out / "summary.json").read_text())
    for i, v in enumerate(s["views"]):
        want = _plane_depth(K0, H, W, _look(0.15 * i))
        assert v["s"] == pytest.approx(2.0, rel=1e-3) and v["t"] == pytest.approx(0.5, abs=5e-3)
        assert v["inliers"] < v["points"]  # the outliers were rejected
        assert np.allclose(np.load(out / v["file"]), want, rtol=2e-3)


def test_dense_at_original_undoes_resize_and_crop():
    # processed image = original scaled by 0.5 then cropped by (1, 2): pixel-edge convention
    Ho, Wo = 8, 12
    yy, xx = np.meshgrid(np.arange(Ho) + 0.5, np.arange(Wo) + 0.5, indexing="ij")
    f = lambda u, v: 1 + 0.1 * u + 0.2 * v
    hp, wp = 3, 4
    vp, up = np.meshgrid(np.arange(hp) + 0.5, np.arange(wp) + 0.5, indexing="ij")
    proc = f((up + 1) / 0.5, (vp + 2) / 0.5)
    pred = SimpleNamespace(depth=torch.tensor(proc, dtype=torch.float32)[None], resize_scale=[(0.5, 0.5)],
                           crop_offsets=[(1, 2)])
    d = pl.dense_at_original(pred, (Ho, Wo)).numpy()
    inner = (slice(5, 8), slice(3, 9))  # original pixels whose processed position is inside the crop
    assert np.allclose(d[inner], f(xx, yy)[inner], atol=1e-4)


def test_sparse_helpers():
    pts = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, -1.0], [100.0, 0.0, 1.0]], dtype=torch.float64)
    K = torch.tensor(K0)
    idx, z = pl.sparse_from_points(pts, torch.eye(4, dtype=torch.float64), K, (H, W))
    assert idx.tolist() == [int(H / 2) * W + int(W / 2)] and z.tolist() == [2.0]
    dep = np.zeros((4, 6), np.float32)
    dep[1, 2] = 3.0
    idx, z = pl.sparse_from_sensor(dep, (8, 12))
    assert idx.tolist() == [3 * 12 + 5] and z.tolist() == [3.0]


def test_user_errors_are_one_line(tmp_path, capsys):
    scene, _ = _scene(tmp_path, points=False)
    rc = _run("--scene", scene, "--model", "random:tiny-mono", "--out", tmp_path / "o", "--device", "cpu")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no sparse 3D points" in err
    assert not (tmp_path / "o").exists()
    scene2, _ = _scene(tmp_path / "b")
    rc = _run("--scene", scene2, "--model", "random:tiny-mono", "--out", scene2 / "labels", "--device", "cpu")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "inside" in err
    rc = _run("--scene", scene2, "--model", "random:tiny-mono", "--out", tmp_path / "o2", "--min-points", 1000,
              "--device", "cpu", "-q")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "min-points" in err and not (tmp_path / "o2").exists()
