"""SPZ and .splat: round trips to each format's quantisation precision, hand-built bytes decoded
as the published format says, and ``da3gs export IN --to ...`` / ``render --splat-format``."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import torch

from da3gs.cli import main
from da3gs.io.errors import InputError
from da3gs.io.ply import read_ply, write_ply
from da3gs.io.splat import read_splat, splat_bytes, write_splat
from da3gs.io.splat_files import read_gaussians
from da3gs.io.spz import (
    SPZ_MAGIC,
    gaussians_from_spz_bytes,
    pack_quats_smallest_three,
    read_spz,
    spz_bytes,
    spz_version_of,
    unpack_quats_smallest_three,
    write_spz,
)
from da3gs.types import Gaussians


def _cloud(n=500, degree=2, seed=0, extent=3.0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    sh = torch.rand(n, k, 3, generator=g) * 2 - 1
    sh[:, 0] = torch.rand(n, 3, generator=g) * 4 - 2
    q = torch.randn(n, 4, generator=g)
    return Gaussians(means=(torch.rand(n, 3, generator=g) * 2 - 1) * extent,
                     quats=q / q.norm(dim=1, keepdim=True),
                     scales=torch.exp(torch.rand(n, 3, generator=g) * 8 - 7),
                     opacities=torch.rand(n, generator=g), sh=sh)


def _same_rotation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Largest per-component error between quaternions, q and -q counted as the same."""
    return torch.minimum((a - b).abs().amax(1), (a + b).abs().amax(1)).max()


def _zstd_or_skip(version):
    if version == 4:
        pytest.importorskip("zstandard", reason="SPZ version 4 needs zstandard (da3gs[spz4])")


@pytest.mark.parametrize("version", [2, 3, 4])
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_spz_round_trip_within_quantisation(tmp_path, degree, version):
    _zstd_or_skip(version)
    g = _cloud(degree=degree)
    path = write_spz(tmp_path / "a.spz", g, version=version)
    data = path.read_bytes()
    head = data if version == 4 else gzip.decompress(data)
    magic, v, n, deg, fb, flags, _ = struct.unpack_from("<IIIBBBB", head)
    assert (magic, v, n, deg, fb, flags) == (SPZ_MAGIC, version, len(g), degree, 12, 0)
    assert spz_version_of(data) == version
    h = read_spz(path)
    assert len(h) == len(g) and h.sh.shape == g.sh.shape
    assert (h.means - g.means).abs().max() <= 2.0 ** -13 + 1e-6
    assert (h.opacities - g.opacities).abs().max() <= 1 / 510 + 1e-6
    assert (h.sh[:, 0] - g.sh[:, 0]).abs().max() <= 1 / (2 * 0.15 * 255) + 1e-5
    assert (h.scales.log() - g.scales.log()).abs().max() <= 1 / 32 + 1e-5
    if version == 2:  # xyz quantised to 1/255, w derived from them: a few 1/255 steps at worst
        assert _same_rotation(h.quats, g.quats) < 0.1
    else:  # smallest three: 9 bits of sqrt(1/2) each (0.0007), the largest derived from them
        assert _same_rotation(h.quats, g.quats) < 0.002
    assert (h.quats.norm(dim=1) - 1).abs().max() < 1e-5
    if degree:
        assert (h.sh[:, 1:4] - g.sh[:, 1:4]).abs().max() <= 1 / 16 + 1e-5
    if degree > 1:
        assert (h.sh[:, 4:] - g.sh[:, 4:]).abs().max() <= 1 / 8 + 1e-5
    again = write_spz(tmp_path / "b.spz", h, version=version)
    if version == 2:
        assert again.read_bytes() == data  # stable
    else:  # a zero magnitude keeps its sign bit, a near-tie of the two largest may swap: compare values
        h2 = read_spz(again)
        for name in ("means", "scales", "opacities", "sh"):
            assert torch.equal(getattr(h2, name), getattr(h, name)), name
        assert _same_rotation(h2.quats, h.quats) < 2e-3


def test_spz_default_is_version_3():
    assert spz_version_of(spz_bytes(_cloud(n=10))) == 3
    assert write_spz.__defaults__ == (3,)


def test_spz_smallest_three_hand_built():
    """Codes packed by hand from the published bit layout decode to the intended quaternions."""
    s = np.sqrt(0.5)
    assert round(511 * 0.5 / s) == 361 and round(511 * 0.25 / s) == 181
    # largest w (index 3 in xyzw); x = +0.5 (magnitude 361), y = -0.25 (sign bit, 181), z = 0
    q = np.array([np.sqrt(1 - 0.25 - 0.0625), 0.5, -0.25, 0.0])
    comp = (3 << 30) | (361 << 20) | ((1 << 9 | 181) << 10) | 0
    code = np.array([comp], "<u4").view(np.uint8).reshape(1, 4)
    back = unpack_quats_smallest_three(code)[0]
    assert np.allclose(back, q / np.linalg.norm(q), atol=2e-3)
    assert np.array_equal(pack_quats_smallest_three(q[None]), code)
    # largest negative x: the whole quaternion is negated, so the others' signs flip
    q2 = np.array([0.1, -0.9, 0.3, 0.2])
    b2 = unpack_quats_smallest_three(pack_quats_smallest_three(q2[None]))[0]
    assert np.allclose(b2, -q2 / np.linalg.norm(q2), atol=2e-3) and (pack_quats_smallest_three(q2[None])
                                                                      .view("<u4")[0, 0] >> 30) == 0


def test_spz_v4_without_zstandard_says_what_to_install(tmp_path, monkeypatch, capsys):
    import sys

    g = _cloud(n=20)
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import fails
    with pytest.raises(InputError, match=r"zstandard.*da3gs\[spz4\]"):
        spz_bytes(g, version=4)
    fake = struct.pack("<IIIBBBBI12x", SPZ_MAGIC, 4, 1, 0, 12, 0, 5, 32) + bytes(80)
    with pytest.raises(InputError, match=r"x.spz: SPZ version 4 needs the zstandard"):
        gaussians_from_spz_bytes(fake, "x.spz")
    src = write_ply(tmp_path / "g.ply", g)
    assert main(["export", str(src), "--to", "spz", "--spz-version", "4"]) == 2
    err = capsys.readouterr().err
    assert "--spz-version 4" in err and "da3gs[spz4]" in err and "Traceback" not in err
    assert not (tmp_path / "g.spz").exists()


def test_spz_large_scene_lowers_fractional_bits(tmp_path):
    g = _cloud(n=10, extent=5000.0)
    raw = gzip.decompress(write_spz(tmp_path / "big.spz", g).read_bytes())
    fb = raw[13]
    assert fb < 12 and 5000 * 2 ** fb < 2 ** 23
    assert (read_spz(tmp_path / "big.spz").means - g.means).abs().max() <= 2.0 ** -(fb + 1) + 1e-3


def test_spz_decodes_hand_built_bytes():
    """One Gaussian packed by hand from the published layout decodes to the intended values."""
    pos = b"".join(int(v * 4096).to_bytes(3, "little", signed=True) for v in (1.5, -2.0, 0.25))
    alpha, color = bytes([255]), bytes([128, 0, 255])
    scales = bytes([int((np.log(0.5) + 10) * 16 + 0.5)] * 3)
    rot = bytes([128, 128, 128])  # xyz ~ 0 -> identity
    sh = bytes([128 + 64, 128, 128 - 64] + [128] * 6)  # degree 1
    header = struct.pack("<IIIBBBB", SPZ_MAGIC, 2, 1, 1, 12, 0, 0)
    g = gaussians_from_spz_bytes(gzip.compress(header + pos + alpha + color + scales + rot + sh))
    assert torch.allclose(g.means[0], torch.tensor([1.5, -2.0, 0.25]))
    assert g.opacities[0] == 1.0
    assert torch.allclose(g.sh[0, 0], torch.tensor([(128 / 255 - 0.5) / 0.15, -0.5 / 0.15, 0.5 / 0.15]))
    assert torch.allclose(g.scales[0], torch.full((3,), 0.5), rtol=0.04)
    assert torch.allclose(g.quats[0], torch.tensor([1.0, 0, 0, 0]), atol=0.01)
    assert torch.allclose(g.sh[0, 1], torch.tensor([0.5, 0.0, -0.5]))


def test_spz_rejects_bad_files(tmp_path):
    with pytest.raises(InputError, match="neither gzipped"):
        gaussians_from_spz_bytes(b"not gzip")
    with pytest.raises(InputError, match="magic"):
        gaussians_from_spz_bytes(gzip.compress(struct.pack("<IIIBBBB", 1, 2, 0, 0, 12, 0, 0)))
    with pytest.raises(InputError, match="expected"):
        gaussians_from_spz_bytes(gzip.compress(struct.pack("<IIIBBBB", SPZ_MAGIC, 2, 5, 0, 12, 0, 0)))


def test_splat_layout_order_and_round_trip(tmp_path):
    g = _cloud(degree=1)
    data = splat_bytes(g)
    assert len(data) == 32 * len(g)
    rec = np.frombuffer(data, np.dtype([("pos", "<f4", 3), ("scale", "<f4", 3),
                                        ("rgba", "u1", 4), ("rot", "u1", 4)]))
    key = rec["scale"].astype(np.float64).prod(1) * rec["rgba"][:, 3]
    assert (np.diff(key) <= 1e-9 * key.max() + key.max() / 255).all()  # opacity*volume descending
    h = read_splat(write_splat(tmp_path / "a.splat", g))
    order = torch.from_numpy(np.argsort(-(g.scales.double().prod(1) * g.opacities.double()).numpy(),
                                        kind="stable"))
    means, scales = g.means[order], g.scales[order]
    assert torch.equal(h.means, means) and torch.equal(h.scales, scales)
    assert (h.opacities - g.opacities[order]).abs().max() <= 1 / 510 + 1e-6
    rgb = (0.5 + 0.28209479177387814 * g.sh[order, 0]).clamp(0, 1)
    assert ((0.5 + 0.28209479177387814 * h.sh[:, 0]) - rgb).abs().max() <= 1 / 510 + 1e-5
    assert _same_rotation(h.quats, g.quats[order]) < 0.02
    assert h.sh.shape[1] == 1


def test_export_cli_converts_and_never_replaces(tmp_path, capsys):
    g = _cloud(n=2000, degree=2)
    src = write_ply(tmp_path / "g.ply", g)
    assert main(["export", str(src), "--to", "spz"]) == 0
    spz = tmp_path / "g.spz"
    assert len(read_spz(spz)) == len(g) and spz.stat().st_size * 4 < src.stat().st_size
    assert spz_version_of(spz.read_bytes()) == 3
    assert main(["export", str(src), "--to", "spz", "--spz-version", "2", "--out", str(tmp_path / "v2.spz")]) == 0
    assert spz_version_of((tmp_path / "v2.spz").read_bytes()) == 2
    assert main(["export", str(spz), "--to", "splat", "--out", str(tmp_path / "x.splat")]) == 0
    assert len(read_gaussians(tmp_path / "x.splat")) == len(g)
    assert main(["export", str(spz), "--to", "ply", "--out", str(tmp_path / "back.ply")]) == 0
    back = read_ply(tmp_path / "back.ply")
    assert (back.means - g.means).abs().max() < 1e-3
    before = spz.read_bytes()
    capsys.readouterr()
    assert main(["export", str(src), "--to", "spz"]) == 2  # exists: never replaced
    assert "never replaces" in capsys.readouterr().err and spz.read_bytes() == before
    assert main(["export", str(src), "--to", "spz", "--out", str(tmp_path / "y.ply")]) == 2
    assert main(["export", str(tmp_path / "none.ply"), "--to", "spz",
                 "--out", str(tmp_path / "z.spz")]) == 2
    assert main(["export", "--to", "spz"]) == 2
    assert not (tmp_path / "z.spz").exists()


def test_render_splat_format(tmp_path):
    from tests.apps.test_render_cli import _make_views, _run

    _make_views(tmp_path / "v", n=2)
    out = tmp_path / "o"
    assert _run("--views", tmp_path / "v", "--model", "random:tiny-gs", "--out", out,
                "--no-video", "--no-colmap") == 0
    s = json.loads((out / "summary.json").read_text())
    assert set(s["splat_files"]) == {"gaussians.ply", "gaussians.spz"}
    assert len(read_spz(out / "gaussians.spz")) == len(read_ply(out / "gaussians.ply"))
    assert b"@sparkjsdev/spark" in (out / "viewer.html").read_bytes()
    out2 = tmp_path / "o2"
    assert _run("--views", tmp_path / "v", "--model", "random:tiny-gs", "--out", out2,
                "--no-video", "--no-colmap", "--splat-format", "splat") == 0
    assert (out2 / "gaussians.splat").is_file() and not (out2 / "gaussians.ply").exists()
