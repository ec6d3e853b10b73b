"""``da3gs eval recon`` end to end on a tiny synthetic RGB-D scene (CPU, seconds).

The scene (a sphere in front of a wall, 6 views of 64 x 48, ``trajectory.log`` + 16-bit depth)
comes with its exact depth, so a "prediction" built from it by a known similarity (scale 0.5,
a rotation, a shift) at a lower resolution must fuse back onto the ground truth: the bench's
Sim(3) recovers scale 2, and both modes score near-perfectly.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from da3gs.cli import main
from da3gs.metrics.tsdf import marching_cubes_available
from tests.metrics.test_tsdf import H, K, W, _scene

pytestmark = pytest.mark.skipif(not marching_cubes_available(), reason="scikit-image not installed")
OPTS = ["--scene-opt", f"fx={K[0, 0]}", f"fy={K[1, 1]}", f"cx={K[0, 2]}", f"cy={K[1, 2]}"]
# 7scenes protocol, coarser volume (2 cm voxels) to keep the CPU test fast
FAST = ["--bench", "7scenes", "--voxel-length", "0.02", "--sdf-trunc", "0.06", "--down-sample", "0.02",
        "--samples", "20000", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def rgbd(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("recon") / "scene"
    (root / "color").mkdir(parents=True)
    (root / "depth").mkdir()
    depths, w2c = _scene(n=6)
    lines = []
    for i, (d, e) in enumerate(zip(depths, w2c)):
        shade = np.clip(np.where(d > 0, 1.2 - d / 2, 0) * 255, 0, 255).astype(np.uint8)
        Image.fromarray(np.stack([shade, shade // 2, 255 - shade], -1)).save(root / "color" / f"{i:03d}.png")
        Image.fromarray(np.round(d * 1000).astype(np.uint16)).save(root / "depth" / f"{i:03d}.png")
        c2w = np.linalg.inv(e)
        lines += [f"{i} {i} 0"] + [" ".join(repr(float(v)) for v in row) for row in c2w]
    (root / "trajectory.log").write_text("\n".join(lines) + "\n")
    return root


def _sphere_mesh():
    """The sphere (r 0.3) as triangles (UV sphere, chord error < 1 mm)."""
    th, ph = np.meshgrid(np.linspace(0, np.pi, 25), np.linspace(0, 2 * np.pi, 49), indexing="ij")
    v = 0.3 * np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1).reshape(-1, 3)
    f = []
    for i in range(24):
        for j in range(48):
            a, b, c, d = i * 49 + j, i * 49 + j + 1, (i + 1) * 49 + j, (i + 1) * 49 + j + 1
            f += [[a, c, b], [b, c, d]]
    return v, np.asarray(f)


def _write_ply(path, v, f):
    from plyfile import PlyData, PlyElement

    vert = np.array([tuple(p) for p in v], dtype=[("x", "f8"), ("y", "f8"), ("z", "f8")])
    face = np.array([(list(t),) for t in f], dtype=[("vertex_indices", "i4", (3,))])
    PlyData([PlyElement.describe(vert, "vertex"), PlyElement.describe(face, "face")]).write(str(path))


def _write_stl(path, v, f, ascii_=False):
    tri = v[f]
    if ascii_:
        body = "".join("facet normal 0 0 0\n outer loop\n" + "".join(f"  vertex {a!r} {b!r} {c!r}\n" for a, b, c in t)
                       + " endloop\nendfacet\n" for t in tri)
        path.write_text(f"solid gt\n{body}endsolid gt\n")
    else:
        with open(path, "wb") as fh:
            fh.write(b"\0" * 80 + struct.pack("<I", len(tri)))
            for t in tri:
                fh.write(struct.pack("<12fH", 0, 0, 0, *t.reshape(-1), 0))


@pytest.fixture(scope="module")
def pred(rgbd, tmp_path_factory) -> Path:
    """A 'da3gs render'-style folder: exact depth at half resolution in a frame scaled by 0.5,
    rotated and shifted; intrinsics for the half-size maps."""
    from da3gs.geometry import Sim3, apply_sim3_to_c2w
    from da3gs.io.cameras import write_cameras_json
    from da3gs.io.depth import save_depth

    out = tmp_path_factory.mktemp("pred") / "render"
    depths, w2c = _scene(n=6)
    c = np.cos(0.7)
    R = torch.tensor([[c, -np.sin(0.7), 0], [np.sin(0.7), c, 0], [0, 0, 1.0]], dtype=torch.float64)
    sim = Sim3(R, torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64))
    c2w = apply_sim3_to_c2w(sim, torch.linalg.inv(torch.from_numpy(w2c)))
    Kp = torch.from_numpy(K).clone()
    Kp[:2] *= 0.5
    names = [f"{i:03d}" for i in range(6)]
    for n, d in zip(names, depths):
        save_depth(out / "depth", n, d[::2, ::2] * 0.5)
    write_cameras_json(out / "cameras.json", c2w, Kp.expand(6, 3, 3), [(H // 2, W // 2)] * 6,
                       [f"{n}.png" for n in names])
    return out


def _run(*args) -> int:
    return main(["eval", "recon", *map(str, args)])


def test_pred_folder_depth_gt(rgbd, pred, tmp_path):
    out = tmp_path / "m"
    assert _run("--scene", rgbd, *OPTS, "--pred", pred, "--out", out, *FAST) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "recon" and m["gt"]["kind"] == "depth" and m["gt_depth_mask"]
    assert m["alignment"]["scale"] == pytest.approx(2.0, rel=1e-9)
    assert m["params"] == {"voxel_length": 0.02, "sdf_trunc": 0.06, "max_depth": 1e6, "samples": 20000,
                           "threshold": 0.05, "down_sample": 0.02, "crop_margin": None}
    for mode in ("posed", "unposed"):
        r = m["metrics"][mode]
        assert r["fscore"] > 0.98 and r["overall"] < 0.02, (mode, r)  # half-res nearest depth: steps
        assert r["points"] == 20000 and r["mesh_triangles"] > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_mesh_gt_ply_and_stl_agree(rgbd, pred, tmp_path):
    v, f = _sphere_mesh()
    _write_ply(tmp_path / "gt.ply", v, f)
    _write_stl(tmp_path / "gt.stl", v, f)
    _write_stl(tmp_path / "gt_ascii.stl", v, f, ascii_=True)
    res = {}
    for name in ("gt.ply", "gt.stl", "gt_ascii.stl"):
        out = tmp_path / name.replace(".", "_")
        assert _run("--scene", rgbd, *OPTS, "--pred", pred, "--gt", tmp_path / name, "--mode", "posed",
                    "--crop-margin", "0.05", "--out", out, *FAST) == 0  # crop: the wall is not in the mesh
        res[name] = json.loads((out / "metrics.json").read_text())["metrics"]["posed"]
    r = res["gt.ply"]
    assert r["acc"] < 0.02 and r["precision"] > 0.95  # on the true surface (2 cm voxels, half-res depth)
    assert r["recall"] < 0.8  # no view saw the back of the sphere
    for name in ("gt.stl", "gt_ascii.stl"):  # same triangles, same seed: same samples
        for k in ("acc", "comp", "fscore"):
            assert res[name][k] == pytest.approx(r[k], rel=1e-6), (name, k)


def test_point_cloud_gt_and_crop(rgbd, pred, tmp_path):
    from da3gs.io.ply import write_point_cloud_ply

    rng = np.random.default_rng(0)
    d = rng.normal(size=(4000, 3))
    pts = 0.3 * d / np.linalg.norm(d, axis=1, keepdims=True)  # the sphere only
    write_point_cloud_ply(tmp_path / "cloud.ply", torch.from_numpy(pts).float())
    out = tmp_path / "c"
    assert _run("--scene", rgbd, *OPTS, "--pred", pred, "--gt", tmp_path / "cloud.ply", "--mode", "unposed",
                "--crop-margin", "0.05", "--out", out, *FAST) == 0
    m = json.loads((out / "metrics.json").read_text())
    r = m["metrics"]["unposed"]
    assert m["gt"] == {"kind": "points", "source": str(tmp_path / "cloud.ply"), "points": 4000}
    assert r["points_after_crop"] < r["points"]  # the wall is cropped away
    assert r["acc"] < 0.02


def test_model_run(rgbd, tmp_path):
    out = tmp_path / "model"
    assert _run("--scene", rgbd, *OPTS, "--model", "random:tiny", "--process-res", 28, "--views", 4,
                "--mode", "posed", "--out", out, *FAST, "--voxel-length", 0.05, "--sdf-trunc", 0.15,
                "--samples", 2000) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["predictions"] == "model" and len(m["views"]) == 4
    r = m["metrics"]["posed"]
    assert set(r) >= {"acc", "comp", "overall", "precision", "recall", "fscore"}
    assert 0 <= r["fscore"] <= 1


@pytest.mark.parametrize("extra,needle", [
    (["--gt", "missing.ply"], "missing.ply: no such file"),
    (["--gt", "{tmp}/gt.obj"], "unknown geometry file type"),
    (["--gt", "{tmp}/bad.stl"], "not an STL file"),
    (["--voxel-length", "0"], "--voxel-length: expected a value > 0"),
    (["--samples", "0"], "--samples: expected a positive integer"),
    (["--pred", "{tmp}"], "cameras.json: no such file"),
    (["--pred", "{tmp}/nope"], "--pred"),
])
def test_bad_input(rgbd, tmp_path, capsys, extra, needle):
    (tmp_path / "gt.obj").write_text("v 0 0 0\n")
    (tmp_path / "bad.stl").write_bytes(b"\x00\xff" * 30)
    args = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    if "--pred" not in args:
        args += ["--model", "random:tiny"]
    assert _run("--scene", rgbd, *OPTS, "--out", tmp_path / "o", *FAST, *args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_no_depth_needs_gt(tmp_path, capsys, rgbd):
    import shutil

    scene = tmp_path / "s"
    shutil.copytree(rgbd, scene, ignore=shutil.ignore_patterns("depth"))
    assert _run("--scene", scene, *OPTS, "--model", "random:tiny", "--out", tmp_path / "o", *FAST) == 2
    assert "--gt: required" in capsys.readouterr().err
