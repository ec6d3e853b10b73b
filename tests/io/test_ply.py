"""PLY export/import (INRIA 3DGS layout), point clouds and atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from da3gs.errors import Da3gsError
from da3gs.io import atomic_dir, atomic_path, read_ply, write_ply, write_point_cloud_ply
from da3gs.io.ply import ply_property_names
from da3gs.types import Gaussians


def _gaussians(n=64, degree=3, seed=0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    q = torch.randn(n, 4, generator=g)
    return Gaussians(
        means=torch.randn(n, 3, generator=g),
        quats=q / q.norm(dim=-1, keepdim=True),
        scales=torch.rand(n, 3, generator=g) * 0.1 + 1e-3,
        opacities=torch.rand(n, generator=g) * 0.98 + 0.01,
        sh=torch.randn(n, k, 3, generator=g),
    )


def _inria_file(path, n=20, degree=3, text=False, extra=(), seed=1):
    """A PLY as INRIA 3DGS writes it (raw unnormalised rotations), written with plyfile directly."""
    rng = np.random.default_rng(seed)
    names = ply_property_names(degree) + list(extra)
    arr = np.empty(n, dtype=[(nm, "f4") for nm in names])
    for nm in names:
        arr[nm] = rng.normal(size=n).astype(np.float32)
    for nm in ("nx", "ny", "nz"):
        arr[nm] = 0
    PlyData([PlyElement.describe(arr, "vertex")], text=text).write(str(path))
    return arr


def test_layout_loads_in_plyfile(tmp_path):
    g = _gaussians(degree=3)
    write_ply(tmp_path / "a.ply", g)
    ply = PlyData.read(str(tmp_path / "a.ply"))
    assert not ply.text and ply.byte_order == "<"
    names = [p.name for p in ply["vertex"].properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:54] == [f"f_rest_{i}" for i in range(45)]
    assert names[54:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert all(p.val_dtype in ("f4", "<f4", "float32") for p in ply["vertex"].properties)
    v = ply["vertex"]
    # channel-major f_rest: index c * (K - 1) + (k - 1)
    for c in range(3):
        for k in (1, 7, 15):
            np.testing.assert_array_equal(v[f"f_rest_{c * 15 + k - 1}"], g.sh[:, k, c].numpy())
    np.testing.assert_allclose(v["opacity"], torch.logit(g.opacities.double()).numpy(), rtol=1e-5)
    np.testing.assert_allclose(v["scale_1"], torch.log(g.scales[:, 1].double()).numpy(), rtol=1e-5)
    assert np.all(v["nx"] == 0)


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_round_trip_gaussians(tmp_path, degree):
    g = _gaussians(degree=degree)
    write_ply(tmp_path / "g.ply", g)
    r = read_ply(tmp_path / "g.ply")
    assert r.sh_degree == degree and len(r) == len(g)
    assert torch.equal(r.means, g.means) and torch.equal(r.sh, g.sh)
    torch.testing.assert_close(r.opacities, g.opacities, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(r.scales, g.scales, rtol=1e-6, atol=0)
    torch.testing.assert_close(r.quats, g.quats, rtol=1e-6, atol=1e-7)


def test_round_trip_file_bytes_exact(tmp_path):
    _inria_file(tmp_path / "in.ply", degree=3)
    g = read_ply(tmp_path / "in.ply")
    assert torch.allclose(g.quats.norm(dim=-1), torch.ones(len(g)))
    write_ply(tmp_path / "out.ply", g)
    assert (tmp_path / "out.ply").read_bytes() == (tmp_path / "in.ply").read_bytes()
    # ours, too
    write_ply(tmp_path / "o1.ply", _gaussians())
    write_ply(tmp_path / "o2.ply", read_ply(tmp_path / "o1.ply"))
    assert (tmp_path / "o1.ply").read_bytes() == (tmp_path / "o2.ply").read_bytes()


def _plyfile_reference(path, g):
    """The file as plyfile writes the INRIA layout (the writer before the hand-written body)."""
    n, k = len(g), g.sh.shape[1]
    p = g.opacities.double().clamp(0, 1)
    opa = (torch.log(p) - torch.log1p(-p)).clamp(-40, 40).float().numpy()
    scl = torch.log(g.scales.double().clamp_min(1e-30)).float().numpy()
    q = g.quats.double()
    rot = (q / q.norm(dim=-1, keepdim=True)).float().numpy()
    sh = g.sh.numpy()
    cols = [g.means.numpy(), np.zeros((n, 3), np.float32), sh[:, 0], sh[:, 1:].transpose(0, 2, 1).reshape(n, 3 * (k - 1)),
            opa[:, None], scl, rot]
    data = np.ascontiguousarray(np.concatenate(cols, axis=1), dtype="<f4")
    names = ply_property_names(int(round(k ** 0.5)) - 1)
    vertex = data.view(np.dtype([(nm, "<f4") for nm in names])).reshape(n)
    PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(str(path))


@pytest.mark.parametrize("degree,n,block", [(0, 37, 8), (2, 100, 33), (3, 64, 1 << 20), (1, 0, 8)])
def test_bytes_equal_plyfile(tmp_path, monkeypatch, degree, n, block):
    """The hand-written header and block-wise body equal plyfile's file byte for byte."""
    import da3gs.io.ply as ply

    monkeypatch.setattr(ply, "WRITE_BLOCK", block)
    g = _gaussians(n=n, degree=degree, seed=degree)
    g.opacities[:2] = torch.tensor([0.0, 1.0])[: min(2, n)] if n else g.opacities[:0]
    write_ply(tmp_path / "ours.ply", g)
    _plyfile_reference(tmp_path / "ref.ply", g)
    assert (tmp_path / "ours.ply").read_bytes() == (tmp_path / "ref.ply").read_bytes()


def test_non_finite_and_zero_quaternion_refused(tmp_path):
    for field in ("means", "sh", "scales", "quats", "opacities"):
        g = _gaussians(n=10)
        getattr(g, field).view(-1)[3] = float("nan")
        with pytest.raises(Da3gsError, match=f"{field} contains NaN"):
            write_ply(tmp_path / "x.ply", g)
    g = _gaussians(n=10)
    g.quats[4] = 0
    with pytest.raises(Da3gsError, match="zero-length"):
        write_ply(tmp_path / "x.ply", g)
    assert not list(tmp_path.iterdir())  # nothing left behind


def test_edited_tensors_are_re_encoded(tmp_path):
    _inria_file(tmp_path / "in.ply", degree=1)
    g = read_ply(tmp_path / "in.ply")
    g.opacities[0] = 0.25
    g.scales = g.scales * 2
    write_ply(tmp_path / "out.ply", g)
    r = read_ply(tmp_path / "out.ply")
    assert abs(float(r.opacities[0]) - 0.25) < 1e-6
    torch.testing.assert_close(r.scales, g.scales, rtol=1e-6, atol=0)


def test_read_inria_degree3(tmp_path):
    arr = _inria_file(tmp_path / "inria.ply", n=30, degree=3)
    g = read_ply(tmp_path / "inria.ply")
    assert g.sh_degree == 3 and g.sh.shape == (30, 16, 3)
    np.testing.assert_array_equal(g.sh[:, 5, 2].numpy(), arr["f_rest_34"])  # c=2, k=5 -> 2*15+4
    np.testing.assert_array_equal(g.sh[:, 0, 1].numpy(), arr["f_dc_1"])
    np.testing.assert_allclose(g.opacities.numpy(), 1 / (1 + np.exp(-arr["opacity"].astype(np.float64))), rtol=1e-6)
    np.testing.assert_allclose(g.scales[:, 2].numpy(), np.exp(arr["scale_2"].astype(np.float64)), rtol=1e-6)
    rot = np.stack([arr[f"rot_{i}"] for i in range(4)], 1).astype(np.float64)
    np.testing.assert_allclose(g.quats.numpy(), rot / np.linalg.norm(rot, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_read_degree0_extra_properties_and_ascii(tmp_path):
    _inria_file(tmp_path / "d0.ply", degree=0, extra=("red", "custom"))
    g = read_ply(tmp_path / "d0.ply")
    assert g.sh_degree == 0 and g.sh.shape == (20, 1, 3)
    arr = _inria_file(tmp_path / "ascii.ply", degree=2, text=True)
    g = read_ply(tmp_path / "ascii.ply")
    assert g.sh_degree == 2
    np.testing.assert_array_equal(g.means[:, 0].numpy(), arr["x"])


def test_bad_files(tmp_path):
    with pytest.raises(Da3gsError, match="no such file"):
        read_ply(tmp_path / "missing.ply")
    (tmp_path / "junk.ply").write_bytes(b"this is not a ply\n")
    with pytest.raises(Da3gsError, match="junk.ply"):
        read_ply(tmp_path / "junk.ply")
    write_point_cloud_ply(tmp_path / "pc.ply", np.zeros((4, 3)), np.zeros((4, 3), np.uint8))
    with pytest.raises(Da3gsError, match=r"pc\.ply.*opacity.*scale_0"):
        read_ply(tmp_path / "pc.ply")
    _inria_file(tmp_path / "rest.ply", degree=0, extra=("f_rest_0", "f_rest_1"))
    with pytest.raises(Da3gsError, match="f_rest"):
        read_ply(tmp_path / "rest.ply")


def test_point_cloud(tmp_path):
    pts = np.random.default_rng(0).normal(size=(10, 3))
    write_point_cloud_ply(tmp_path / "u8.ply", pts, np.full((10, 3), 7, np.uint8))
    write_point_cloud_ply(tmp_path / "f.ply", torch.from_numpy(pts), torch.full((10, 3), 1.0))
    for name, val in (("u8.ply", 7), ("f.ply", 255)):
        v = PlyData.read(str(tmp_path / name))["vertex"]
        assert [p.name for p in v.properties] == ["x", "y", "z", "red", "green", "blue"]
        assert v["red"].dtype == np.uint8 and np.all(v["green"] == val)
        np.testing.assert_array_equal(v["z"], pts[:, 2].astype(np.float32))


def test_bad_gaussians_leave_nothing(tmp_path):
    g = _gaussians(n=5)
    g.means[2, 0] = float("nan")
    with pytest.raises(Da3gsError, match="means"):
        write_ply(tmp_path / "x.ply", g)
    assert list(tmp_path.iterdir()) == []


def test_atomic_path(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.suffix == ".txt"
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(target.parent.iterdir()) == []
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and len(list(target.parent.iterdir())) == 1
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and len(list(target.parent.iterdir())) == 1


def test_atomic_dir(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("a")
            raise KeyError("x")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("a")
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("b")
    assert [p.name for p in target.iterdir()] == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_numpy_view_edit_detected_and_empty(tmp_path):
    _inria_file(tmp_path / "in.ply", degree=0)
    g = read_ply(tmp_path / "in.ply")
    g.opacities.numpy()[3] = 0.75  # bypasses torch's version counter
    write_ply(tmp_path / "out.ply", g)
    assert abs(float(read_ply(tmp_path / "out.ply").opacities[3]) - 0.75) < 1e-6
    empty = _gaussians(n=0, degree=1)
    write_ply(tmp_path / "empty.ply", empty)
    r = read_ply(tmp_path / "empty.ply")
    assert len(r) == 0 and r.sh_degree == 1
