"""The parallel single-member gzip of the SPZ writer (da3gs.io.parallel_gzip)."""

from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np
import pytest
import torch

from da3gs.io import parallel_gzip
from da3gs.io.parallel_gzip import BLOCK_SIZE, gzip_compress
from da3gs.io.spz import gaussians_from_spz_bytes, read_spz, spz_bytes, write_spz
from da3gs.types import Gaussians

SMALL = 4096  # a block size that makes many blocks out of small test buffers


def _data(n: int, kind: str, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    # compressible: a few symbols, runs and repeats reaching back across block cuts
    base = rng.integers(0, 8, max(1, n // 7 + 1), dtype=np.uint8)
    return np.repeat(base, 7)[:n].tobytes()


def _single_member(z: bytes) -> bytes:
    """Inflate one gzip member as zlib's inflateInit2(16 + MAX_WBITS) does; nothing may follow."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(z) + d.flush()
    assert d.eof and d.unused_data == b""
    return out


@pytest.mark.parametrize("kind", ["random", "compressible"])
@pytest.mark.parametrize("n", [0, 1, SMALL - 1, SMALL, SMALL + 1, 2 * SMALL - 1, 2 * SMALL, 2 * SMALL + 1,
                               9 * SMALL + 17, 40 * SMALL])
@pytest.mark.parametrize("threads", [1, 2, 4])
def test_round_trip_around_block_boundaries(n, kind, threads):
    data = _data(n, kind)
    z = gzip_compress(data, level=6, threads=threads, block_size=SMALL)
    assert gzip.decompress(z) == data
    assert zlib.decompress(z, 31) == data
    assert _single_member(z) == data


@pytest.mark.parametrize("n", [BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 2 * BLOCK_SIZE - 1,
                               2 * BLOCK_SIZE, 2 * BLOCK_SIZE + 1, 5 * BLOCK_SIZE + 3])
def test_round_trip_default_block_size(n):
    data = _data(n, "compressible", seed=n)
    z = gzip_compress(data, threads=2)
    assert _single_member(z) == data and gzip.decompress(z) == data


def test_output_independent_of_thread_count_and_one_thread_is_gzip_compress():
    data = _data(30 * SMALL + 5, "compressible")
    outs = {t: gzip_compress(data, 6, threads=t, block_size=SMALL) for t in (2, 3, 4, 8)}
    assert len(set(outs.values())) == 1
    assert gzip_compress(data, 6, threads=1, block_size=SMALL) == gzip.compress(data, 6, mtime=0)
    small = data[: 2 * SMALL - 1]  # under two blocks: the single-stream path whatever the threads
    assert gzip_compress(small, 6, threads=4, block_size=SMALL) == gzip.compress(small, 6, mtime=0)


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_header_and_trailer_fields(level):
    data = _data(20 * SMALL + 3, "random", seed=level)
    z = gzip_compress(data, level=level, threads=2, block_size=SMALL)
    id1, id2, cm, flg, mtime, xfl, os_ = struct.unpack_from("<BBBBLBB", z)
    assert (id1, id2, cm, flg, mtime) == (0x1F, 0x8B, 8, 0, 0)
    assert xfl == {0: 4, 1: 4, 6: 0, 9: 2}[level] and os_ == 3
    assert z[:10] == gzip.compress(b"x", level, mtime=0)[:10]  # the header zlib writes
    crc, isize = struct.unpack("<LL", z[-8:])
    assert crc == zlib.crc32(data) and isize == len(data)
    assert _single_member(z) == data
    # ISIZE is the length modulo 2^32 (RFC 1952); a > 4 GiB buffer is too large for a test
    assert parallel_gzip._gzip_trailer(0x12345678, 2**32 + 5) == struct.pack("<LL", 0x12345678, 5)


@pytest.mark.parametrize("kind,tol", [("random", 0.001), ("compressible", 0.03)])
def test_size_close_to_single_stream(kind, tol):
    data = _data(6 * BLOCK_SIZE + 999, kind)
    one = len(gzip.compress(data, 6, mtime=0))
    par = len(gzip_compress(data, 6, threads=2))
    assert abs(par - one) <= tol * one


def test_accepts_buffers_and_rejects_bad_arguments():
    arr = np.frombuffer(_data(5 * SMALL, "random"), np.uint8).reshape(-1, 4)
    assert gzip.decompress(gzip_compress(arr, threads=2, block_size=SMALL)) == arr.tobytes()
    assert gzip_compress(b"abc", level=-1) == gzip.compress(b"abc", 6, mtime=0)
    with pytest.raises(ValueError):
        gzip_compress(b"abc", level=10)
    with pytest.raises(ValueError):
        gzip_compress(b"abc", block_size=0)


def _gaussians(n: int, degree: int, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return Gaussians(means=torch.randn(n, 3, generator=g), quats=torch.randn(n, 4, generator=g),
                     scales=torch.rand(n, 3, generator=g) * 0.05 + 1e-3,
                     opacities=torch.rand(n, generator=g), sh=torch.randn(n, k, 3, generator=g) * 0.3)


def test_spz_written_in_parallel_reads_back(tmp_path, monkeypatch):
    g = _gaussians(40_000, 3)  # 40k x 64 bytes: 2.4 blocks of 1 MiB
    single = spz_bytes(g, threads=1)
    monkeypatch.setattr(parallel_gzip, "default_threads", lambda: 4)
    path = write_spz(tmp_path / "p.spz", g)
    data = path.read_bytes()
    assert data != single  # the block path was taken
    assert _single_member(data) == gzip.decompress(single)  # the same raw SPZ bytes
    assert abs(len(data) - len(single)) <= 0.001 * len(single)
    back, ref = read_spz(path), gaussians_from_spz_bytes(single)
    for name in ("means", "quats", "scales", "opacities", "sh"):
        assert torch.equal(getattr(back, name), getattr(ref, name)), name
    assert (back.means - g.means).abs().max() <= 2.0 ** -13 + 1e-6
    assert (back.opacities - g.opacities).abs().max() <= 1 / 510 + 1e-6
    assert write_spz(tmp_path / "q.spz", g).read_bytes() == data  # deterministic


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_spz_raw_does_not_depend_on_row_chunks_or_threads(monkeypatch, degree, version):
    from da3gs.io import spz

    g = _gaussians(1003, degree, seed=degree)
    g.quats[:3] = 0  # zero quaternions encode as identity
    g.quats[3:6, 0] = -1  # negative w flips xyz
    one = spz.spz_raw(g, threads=1, version=version)
    rot = 3 if version == 2 else 4
    assert len(one) == 16 + 1003 * (9 + 1 + 3 + 3 + rot + 3 * ((degree + 1) ** 2 - 1))
    monkeypatch.setattr(spz, "_ROWS", 100)  # 11 chunks, the last one short
    for threads in (1, 3):
        assert np.array_equal(spz.spz_raw(g, threads=threads, version=version), one)
    assert gzip.decompress(spz_bytes(g, threads=3, version=version)) == one.tobytes()
    assert len(spz.spz_raw(_gaussians(0, degree), threads=2, version=version)) == 16
