"""Niantic SPZ files (``.spz``, format version 2): write and read.

Hand-written from the published format (github.com/nianticlabs/spz, README "File Format" and
``load-spz.cc``) because no sound writer is installable from the package index: ``spz`` on PyPI
is a 0.0.1 Rust binding with no wheel for this platform, and the reference library needs a C++
build. The format is small enough that NumPy + :mod:`gzip` do it exactly.

Writing runs on ``min(8, cpu_count)`` threads: the raw bytes are encoded in row chunks straight
into one preallocated buffer (:func:`spz_raw`; the bytes do not depend on the chunking), then the
gzip step (the largest cost: 4.6 s single-threaded for 1 M Gaussians) runs pigz-style
(:mod:`da3gs.io.parallel_gzip`): 1 MiB blocks deflated in parallel at the reference's level 6
(``Z_DEFAULT_COMPRESSION``) and joined into ONE gzip member, which the reference reader (one
``inflateInit2(16 + MAX_WBITS)`` member) reads like a single-stream file.

Layout (all little endian, the whole stream gzipped)::

    header (16 bytes): magic u32 = 0x5053474e ("NGSP"), version u32 = 2, numPoints u32,
                       shDegree u8, fractionalBits u8, flags u8 (0x1 antialiased), reserved u8
    positions  N x 3 x 24-bit signed fixed point (value * 2^fractionalBits)
    alphas     N x u8   round(opacity * 255)
    colors     N x 3 u8 round(sh_dc * 0.15 * 255 + 127.5)    (SH DC, not RGB)
    scales     N x 3 u8 round((log(scale) + 10) * 16)
    rotations  N x 3 u8 round(xyz * 127.5 + 127.5) of the unit quaternion with w >= 0
    sh         N x dim x 3 u8, coefficient-major, colour-minor; round(x * 128) + 128, snapped to
               5-bit buckets for degree 1 and 4-bit buckets above (as the reference packs)

Positions are stored in the frame of the Gaussians (the reference library's "UNSPECIFIED"
coordinate system, no axis flip), so an SPZ and the PLY written beside it line up in a viewer.
``fractionalBits`` is 12 (0.24 mm at scene scale 1) unless the scene is too large for 24 bits,
then lowered so that every coordinate fits.

Precision of a round trip (what :func:`read_spz` returns against what was written), per element:
positions 2^-(fractionalBits+1); opacity 1/510; SH DC 1/(2*0.15*255) ~ 0.013 (within the stored
range [-3.33, 3.33]); log scale 1/32 (within [-10, 5.94]); quaternion xyz 1/255 (after sign
normalisation, so q and -q are the same rotation); SH rest 1/16 (degree 1) or 1/8 (above), within
[-1, 1].
"""

from __future__ import annotations

import gzip
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from da3gs.geometry.sh import num_sh_bases
from da3gs.types import Gaussians

from .errors import InputError
from .parallel_gzip import default_threads, gzip_compress

__all__ = ["write_spz", "read_spz", "spz_bytes", "spz_raw", "gaussians_from_spz_bytes", "SPZ_MAGIC"]

SPZ_MAGIC = 0x5053474E
SPZ_VERSION = 2
COLOR_SCALE = 0.15
_HEADER = struct.Struct("<IIIBBBB")


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _quantize_sh(x: np.ndarray, bits: int) -> np.ndarray:
    bucket = 1 << (8 - bits)
    q = np.round(x.astype(np.float64) * 128.0).astype(np.int64) + 128
    q = (q + bucket // 2) // bucket * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


def _fractional_bits(extent: float) -> int:
    """Fractional bits of the 24-bit fixed point for coordinates up to ``extent`` in magnitude."""
    fb = 12
    while fb > 0 and extent * (1 << fb) >= (1 << 23) - 1:
        fb -= 1
    if extent * (1 << fb) >= (1 << 23) - 1:
        raise InputError(f"SPZ: coordinates up to {extent:g} do not fit 24-bit fixed point")
    return fb


_ROWS = 1 << 16  # Gaussians encoded a task


def spz_raw(g: Gaussians, antialiased: bool = False, threads: int | None = None) -> np.ndarray:
    """The uncompressed SPZ v2 bytes of ``g`` (degree 0-3) as a uint8 array. Row chunks are encoded
    on ``threads`` threads (NumPy and torch release the GIL) straight into their slices of one
    buffer; the bytes do not depend on the chunking."""
    n = len(g)
    k = g.sh.shape[1]
    degree = {1: 0, 4: 1, 9: 2, 16: 3}.get(k)
    if degree is None:
        raise InputError(f"SPZ stores SH degree 0-3, got {k} coefficients per channel")
    dim = k - 1
    t_means, t_opac, t_scales, t_quats, t_sh = (
        t.detach().cpu() for t in (g.means, g.opacities, g.scales, g.quats, g.sh))
    fb = _fractional_bits(float(t_means.abs().max().double()) if n else 0.0)  # max is exact in any dtype
    widths = [9, 1, 3, 3, 3, dim * 3]  # pos, alphas, colors, scales, rots, sh: bytes a Gaussian
    raw = np.empty(_HEADER.size + n * sum(widths), np.uint8)
    raw[:_HEADER.size] = np.frombuffer(
        _HEADER.pack(SPZ_MAGIC, SPZ_VERSION, n, degree, fb, 1 if antialiased else 0, 0), np.uint8)
    sections, off = [], _HEADER.size
    for w in widths:
        sections.append(raw[off:off + n * w].reshape(n, w))
        off += n * w
    pos_o, alpha_o, color_o, scale_o, rot_o, sh_o = sections

    def encode(a: int, b: int) -> None:
        means = t_means[a:b].double().numpy()
        fixed = np.round(means * (1 << fb)).astype(np.int64).reshape(-1) & 0xFFFFFF
        pos_o[a:b] = np.stack([fixed & 0xFF, (fixed >> 8) & 0xFF, (fixed >> 16) & 0xFF],
                              axis=1).astype(np.uint8).reshape(-1, 9)
        alpha_o[a:b, 0] = _u8(t_opac[a:b].double().numpy() * 255.0)
        sh = t_sh[a:b].double().numpy()
        color_o[a:b] = _u8(sh[:, 0, :] * (COLOR_SCALE * 255.0) + 0.5 * 255.0)
        scale_o[a:b] = _u8((np.log(np.maximum(t_scales[a:b].double().numpy(), 1e-30)) + 10.0) * 16.0)
        q = t_quats[a:b].double().numpy()
        norm = np.linalg.norm(q, axis=1, keepdims=True)
        q = np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), np.array([1.0, 0, 0, 0]))
        xyz = q[:, 1:] * np.where(q[:, :1] < 0, -1.0, 1.0)
        rot_o[a:b] = _u8(xyz * 127.5 + 127.5)
        if dim:  # (rows, dim, 3): coefficient-major, colour-minor, as the file wants
            rest = sh[:, 1:, :]
            sh_o[a:b] = np.concatenate([_quantize_sh(rest[:, :3], 5), _quantize_sh(rest[:, 3:], 4)],
                                       axis=1).reshape(b - a, -1)

    chunks = [(a, min(a + _ROWS, n)) for a in range(0, n, _ROWS)]
    threads = default_threads() if threads is None else int(threads)
    if threads <= 1 or len(chunks) <= 1:
        for a, b in chunks:
            encode(a, b)
    else:
        with ThreadPoolExecutor(max_workers=min(threads, len(chunks)), thread_name_prefix="spz") as pool:
            for f in [pool.submit(encode, a, b) for a, b in chunks]:
                f.result()
    return raw


def spz_bytes(g: Gaussians, antialiased: bool = False, threads: int | None = None) -> bytes:
    """The gzipped SPZ v2 encoding of ``g`` (degree 0-3), encoded and deflated on ``threads`` threads
    (default ``min(8, cpu_count)``; see :func:`da3gs.io.parallel_gzip.gzip_compress`)."""
    raw = spz_raw(g, antialiased, threads)
    # Level 6 = zlib's Z_DEFAULT_COMPRESSION, as Niantic's writer; one gzip member, on threads.
    return gzip_compress(raw, level=6, threads=threads)


def gaussians_from_spz_bytes(data: bytes, name: str = "SPZ") -> Gaussians:
    """Decode SPZ bytes (gzipped, version 2; version 1's float16 positions too) -> float32 CPU Gaussians."""
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InputError(f"{name}: not a gzipped SPZ file ({e})") from None
    if len(raw) < _HEADER.size:
        raise InputError(f"{name}: SPZ header truncated")
    magic, version, n, degree, fb, _flags, _ = _HEADER.unpack_from(raw)
    if magic != SPZ_MAGIC:
        raise InputError(f"{name}: not an SPZ file (magic {magic:#x}, expected {SPZ_MAGIC:#x})")
    if version not in (1, 2):
        raise InputError(f"{name}: SPZ version {version} is not supported (1 and 2 are)")
    if degree > 3:
        raise InputError(f"{name}: SPZ SH degree {degree} is not supported (0-3)")
    dim = num_sh_bases(degree) - 1
    pos_bytes = 6 if version == 1 else 9
    sizes = [n * pos_bytes, n, 3 * n, 3 * n, 3 * n, n * dim * 3]
    if len(raw) != _HEADER.size + sum(sizes):
        raise InputError(f"{name}: SPZ payload is {len(raw) - _HEADER.size} bytes, expected {sum(sizes)} "
                         f"for {n} Gaussians of degree {degree}")
    parts, off = [], _HEADER.size
    for s in sizes:
        parts.append(np.frombuffer(raw, np.uint8, s, off))
        off += s
    pos, alphas, colors, scales, rots, sh_q = parts
    if version == 1:
        means = pos.view("<f2").astype(np.float32).reshape(n, 3)
    else:
        b = pos.reshape(-1, 3).astype(np.int32)
        fixed = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
        means = (fixed.astype(np.float64) / (1 << fb)).astype(np.float32).reshape(n, 3)
    xyz = rots.reshape(n, 3).astype(np.float64) / 127.5 - 1.0
    w = np.sqrt(np.maximum(0.0, 1.0 - (xyz ** 2).sum(1, keepdims=True)))
    q = np.concatenate([w, xyz], axis=1)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    dc = (colors.reshape(n, 3).astype(np.float64) / 255.0 - 0.5) / COLOR_SCALE
    rest = (sh_q.reshape(n, dim, 3).astype(np.float64) - 128.0) / 128.0
    sh = np.concatenate([dc[:, None, :], rest], axis=1)
    return Gaussians(
        means=torch.from_numpy(np.ascontiguousarray(means)),
        quats=torch.from_numpy(q.astype(np.float32)),
        scales=torch.from_numpy(np.exp(scales.reshape(n, 3) / 16.0 - 10.0).astype(np.float32)),
        opacities=torch.from_numpy((alphas.astype(np.float64) / 255.0).astype(np.float32)),
        sh=torch.from_numpy(sh.astype(np.float32)),
    )


def write_spz(path, gaussians: Gaussians) -> Path:
    """Write ``gaussians`` as an SPZ v2 file (atomically). Returns the path."""
    from .splat_files import write_encoded

    return write_encoded(path, gaussians, spz_bytes)


def read_spz(path) -> Gaussians:
    """Read an SPZ file (version 1 or 2, SH degree 0-3) -> float32 CPU ``Gaussians``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return gaussians_from_spz_bytes(path.read_bytes(), str(path))
