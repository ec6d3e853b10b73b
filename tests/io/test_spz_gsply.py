"""SPZ versions 3 and 4 against ``gsply`` (PyPI, MIT), an independent writer and reader, both ways:

* files gsply writes decode with ours to the values gsply's own reader returns (float32 exact up
  to the last bit of the activations);
* for Gaussians whose values lie on the format's quantisation grid (so that no writer has a
  rounding choice to make), our uncompressed sections are byte for byte gsply's, header included;
* files we write decode with gsply's reader to the values ours returns.

gsply depends on Numba + LLVM (~230 MB installed), so it is not a dev dependency: these tests
skip without it (``pip install 'gsply[spz]'``; ``zstandard`` for version 4).
"""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from da3gs.io.spz import SPZ_MAGIC, gaussians_from_spz_bytes, spz_bytes, spz_sections
from da3gs.types import Gaussians

gsply = pytest.importorskip("gsply", reason="gsply not installed (pip install 'gsply[spz]')")


def _needs_zstd(version):
    if version == 4:
        pytest.importorskip("zstandard", reason="SPZ version 4 needs zstandard")


def _grid_cloud(n=1500, degree=3, seed=0) -> Gaussians:
    """Gaussians on the SPZ quantisation grid: positions on 1/4096, opacity k/255, colour bytes,
    log scales on 1/16, SH rest on the 5-bit (degree 1) and 4-bit (above) bucket centres."""
    rng = np.random.default_rng(seed)
    k = (degree + 1) ** 2
    means = rng.integers(-3 * 4096, 3 * 4096, (n, 3)) / 4096.0
    opac = rng.integers(0, 256, n) / 255.0
    opac = np.clip(opac, 1 / 255, 254 / 255)  # logit finite for gsply's PLY-space input
    dc = (rng.integers(0, 256, (n, 3)) - 127.5) / (0.15 * 255)
    log_s = rng.integers(16, 240, (n, 3)) / 16.0 - 10.0
    sh = np.zeros((n, k, 3))
    sh[:, 0] = dc
    if degree:
        sh[:, 1:4] = (rng.integers(0, 32, (n, 3, 3)) * 8 - 128) / 128.0
    if degree > 1:
        sh[:, 4:] = (rng.integers(0, 16, (n, k - 4, 3)) * 16 - 128) / 128.0
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    f = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return Gaussians(means=f(means), quats=f(q), scales=f(np.exp(log_s)), opacities=f(opac), sh=f(sh))


def _to_gsdata(g: Gaussians):
    p = g.opacities.double().numpy()
    shn = g.sh[:, 1:].numpy().astype(np.float32)
    return gsply.GSData.from_arrays(
        means=g.means.numpy(), scales=g.scales.double().log().numpy().astype(np.float32),
        quats=g.quats.numpy(), opacities=np.log(p / (1 - p)).astype(np.float32),
        sh0=g.sh[:, 0].numpy(), shN=shn if shn.shape[1] else None, format="ply")


def _from_gsdata(d) -> dict:
    """gsply's reading (PLY space: log scales, logit opacities) as our activations, float64."""
    n = d.means.shape[0]
    shn = np.zeros((n, 0, 3)) if d.shN is None else np.asarray(d.shN, np.float64).reshape(n, -1, 3)
    op = np.asarray(d.opacities, np.float64).reshape(-1)
    return {"means": np.asarray(d.means, np.float64), "quats": np.asarray(d.quats, np.float64),
            "scales": np.exp(np.asarray(d.scales, np.float64)), "opacities": 1 / (1 + np.exp(-op)),
            "sh": np.concatenate([np.asarray(d.sh0, np.float64)[:, None], shn], axis=1)}


def _assert_same_decoding(ours: Gaussians, theirs: dict):
    assert np.array_equal(ours.means.numpy(), theirs["means"].astype(np.float32))
    np.testing.assert_allclose(ours.sh.numpy(), theirs["sh"], rtol=0, atol=1e-6)
    # gsply returns float32 logits: their sigmoid is off by a few float32 ulps
    np.testing.assert_allclose(ours.opacities.numpy(), theirs["opacities"], rtol=0, atol=3e-6)
    np.testing.assert_allclose(ours.scales.numpy(), theirs["scales"], rtol=1e-6, atol=0)
    q, r = ours.quats.double().numpy(), theirs["quats"]
    r = r / np.linalg.norm(r, axis=1, keepdims=True)
    sign = np.where((q * r).sum(1, keepdims=True) < 0, -1.0, 1.0)
    np.testing.assert_allclose(q, r * sign, rtol=0, atol=2e-6)


def _payload(data: bytes) -> tuple[bytes, list[bytes]]:
    """(header fields, uncompressed sections) of SPZ bytes of either container."""
    if data[:4] == struct.pack("<I", SPZ_MAGIC):
        import zstandard

        magic, version, n, deg, fb, flags, ns, toc = struct.unpack_from("<IIIBBBBI", data)
        off, secs = toc + 16 * ns, []
        for i in range(ns):
            c, u = struct.unpack_from("<QQ", data, toc + 16 * i)
            secs.append(zstandard.ZstdDecompressor().decompress(data[off:off + c], max_output_size=u))
            off += c
        return (magic, version, n, deg, fb, flags, ns, data[20:32]), secs
    raw = gzip.decompress(data)
    return struct.unpack_from("<IIIBBBB", raw), [raw[16:]]


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("degree", [0, 1, 3])
def test_gsply_files_decode_as_gsply_reads_them(tmp_path, version, degree):
    _needs_zstd(version)
    g = _grid_cloud(degree=degree, seed=degree)
    path = tmp_path / f"gsply_v{version}.spz"
    gsply.write_spz(path, _to_gsdata(g), version=version)
    data = path.read_bytes()
    assert (data[:4] == struct.pack("<I", SPZ_MAGIC)) == (version == 4)
    _assert_same_decoding(gaussians_from_spz_bytes(data, str(path)), _from_gsdata(gsply.read_spz(path)))


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_our_sections_equal_gsply_bytes_on_the_grid(tmp_path, version, degree):
    _needs_zstd(version)
    g = _grid_cloud(degree=degree, seed=10 + degree)
    path = tmp_path / "gsply.spz"
    gsply.write_spz(path, _to_gsdata(g), version=version)
    ours, theirs = _payload(spz_bytes(g, version=version)), _payload(path.read_bytes())
    assert ours[0] == theirs[0]  # header: magic, version, count, degree, bits, flags (, streams)
    assert b"".join(ours[1]) == b"".join(theirs[1])
    assert len(ours[1]) == len(theirs[1])
    raw, sections = spz_sections(g, version=version)
    assert b"".join(s.tobytes() for s in sections) == b"".join(theirs[1])


@pytest.mark.parametrize("version", [3, 4])
def test_gsply_reads_our_files(tmp_path, version):
    _needs_zstd(version)
    from tests.io.test_splat_formats import _cloud

    g = _cloud(n=3000, degree=3, seed=5)  # off the grid: the quantisers round
    path = tmp_path / "ours.spz"
    path.write_bytes(spz_bytes(g, version=version))
    _assert_same_decoding(gaussians_from_spz_bytes(path.read_bytes()), _from_gsdata(gsply.read_spz(path)))
