"""Niantic SPZ files (``.spz``, format versions 1-4): write (2, 3 or 4; 3 by default) and read.

Hand-written from the published format (github.com/nianticlabs/spz, README "File Format",
``load-spz.cc`` and ``splat-utils.h``) because no sound writer is installable from the package
index without heavy dependencies: ``spz`` on PyPI does not build here, and ``gsply`` (MIT, SPZ v3 /
v4) needs Numba + LLVM (~230 MB); it is the reference the tests compare with
(``tests/io/test_spz_gsply.py``) where it is installed. The format is small enough that NumPy +
:mod:`gzip` (+ ``zstandard`` for version 4) do it exactly.

Versions
--------
* 1, 2, 3 ("legacy"): a 16-byte header and the six sections, the whole stream gzipped.
  Version 1 stores positions as float16, versions 2+ as 24-bit fixed point. Versions 1-2 store a
  rotation as 3 bytes (x, y, z of the unit quaternion with w >= 0), version 3 as 4 bytes
  ("smallest three": the index of the largest component on 2 bits, the other three as 9-bit
  magnitude + sign bit, the largest made positive), ~4x more accurate.
* 4: an uncompressed 32-byte header, optional extension records, a table of contents of
  ``numStreams`` x (compressed size u64, uncompressed size u64) at ``tocByteOffset``, then each
  non-empty section as its own zstd stream (level 12, as the reference writes). Reading and
  writing it need the ``zstandard`` package (``pip install 'da3gs[spz4]'``); without it, one line
  says so.

We write version 3 by default: Spark 2.2 (the viewer ``da3gs view`` bundles) reads versions 1-3
but not 4; ``version=2`` for older readers, ``version=4`` for the smallest files.

Writing versions 2-3 runs on ``min(8, cpu_count)`` threads: the raw bytes are encoded in row
chunks straight into one preallocated buffer (:func:`spz_raw`; the bytes do not depend on the
chunking), then the gzip step runs pigz-style (:mod:`da3gs.io.parallel_gzip`): 1 MiB blocks
deflated in parallel at the reference's level 6 and joined into ONE gzip member, which the
reference reader (one ``inflateInit2(16 + MAX_WBITS)`` member) reads like a single-stream file.

Legacy layout (little endian, the whole stream gzipped)::

    header (16 bytes): magic u32 = 0x5053474e ("NGSP"), version u32, numPoints u32,
                       shDegree u8, fractionalBits u8, flags u8 (0x1 antialiased), reserved u8
    positions  N x 3 x 24-bit signed fixed point (value * 2^fractionalBits)   [v1: N x 3 f16]
    alphas     N x u8   round(opacity * 255)
    colors     N x 3 u8 round(sh_dc * 0.15 * 255 + 127.5)    (SH DC, not RGB)
    scales     N x 3 u8 round((log(scale) + 10) * 16)
    rotations  v1-2: N x 3 u8 round(xyz * 127.5 + 127.5) of the unit quaternion with w >= 0
               v3+:  N x u32 LE: (iLargest << 30) | c_a << 20 | c_b << 10 | c_c, the
                     non-largest components a < b < c of (x, y, z, w) each as
                     sign << 9 | round(511 * |q_i| / sqrt(1/2))
    sh         N x dim x 3 u8, coefficient-major, colour-minor; round(x * 128) + 128, snapped to
               5-bit buckets for degree 1 and 4-bit buckets above (as the reference packs)

Positions are stored in the frame of the Gaussians (the reference library's "UNSPECIFIED"
coordinate system, no axis flip), so an SPZ and the PLY written beside it line up in a viewer.
``fractionalBits`` is 12 (0.24 mm at scene scale 1) unless the scene is too large for 24 bits,
then lowered so that every coordinate fits.

Precision of a round trip (what :func:`read_spz` returns against what was written), per element:
positions 2^-(fractionalBits+1); opacity 1/510; SH DC 1/(2*0.15*255) ~ 0.013 (within the stored
range [-3.33, 3.33]); log scale 1/32 (within [-10, 5.94]); quaternion: v2 xyz 1/255 (after sign
normalisation, so q and -q are the same rotation), v3/v4 each component ~0.0007 (sqrt(1/2)/1022);
SH rest 1/16 (degree 1) or 1/8 (above), within [-1, 1].
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

__all__ = ["write_spz", "read_spz", "spz_bytes", "spz_raw", "spz_sections", "gaussians_from_spz_bytes",
           "spz_version_of", "check_zstd", "SPZ_MAGIC", "SPZ_VERSIONS",
           "SPZ_DEFAULT_VERSION", "pack_quats_smallest_three", "unpack_quats_smallest_three"]

SPZ_MAGIC = 0x5053474E
SPZ_VERSIONS = (2, 3, 4)  # written; 1-4 are read
SPZ_DEFAULT_VERSION = 3
COLOR_SCALE = 0.15
ZSTD_LEVEL = 12  # the reference writer's
_HEADER = struct.Struct("<IIIBBBB")
_NGSP_HEADER = struct.Struct("<IIIBBBBI12x")  # 32 bytes (version 4)
_FLAG_ANTIALIASED, _FLAG_EXTENSIONS = 0x1, 0x2
_SQRT1_2 = float(np.sqrt(0.5))
ZSTD_HINT = "SPZ version 4 needs the zstandard package: pip install 'da3gs[spz4]'"


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


def _unit_quats(q: np.ndarray) -> np.ndarray:
    """(M, 4) wxyz -> unit quaternions (float64); zero-length ones become the identity."""
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    return np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), np.array([1.0, 0, 0, 0]))


def pack_quats_smallest_three(q_wxyz: np.ndarray) -> np.ndarray:
    """(M, 4) wxyz quaternions -> (M, 4) uint8, the SPZ v3 "smallest three" code (little-endian
    u32 a Gaussian) of the reference ``packQuaternionSmallestThree`` (its xyzw component order)."""
    q = _unit_quats(q_wxyz.astype(np.float64))[:, [1, 2, 3, 0]]  # xyzw, as the reference stores
    m = len(q)
    largest = np.argmax(np.abs(q), axis=1)  # first of equals, as the reference's strict '>'
    negate = q[np.arange(m), largest] < 0
    comp = largest.astype(np.uint32)
    for i in range(4):
        keep = largest != i
        negbit = ((q[:, i] < 0) ^ negate).astype(np.uint32)
        mag = np.minimum(np.floor(511.0 * np.abs(q[:, i]) / _SQRT1_2 + 0.5), 511).astype(np.uint32)
        comp = np.where(keep, (comp << np.uint32(10)) | (negbit << np.uint32(9)) | mag, comp)
    return comp.astype("<u4").view(np.uint8).reshape(m, 4)


def unpack_quats_smallest_three(r: np.ndarray) -> np.ndarray:
    """(M, 4) uint8 SPZ v3 rotation codes -> (M, 4) float64 unit quaternions, wxyz."""
    comp = np.ascontiguousarray(r).view("<u4").reshape(-1).astype(np.int64)
    m = len(comp)
    largest = comp >> 30
    q = np.zeros((m, 4))  # xyzw
    rows = np.arange(m)
    for i in range(3, -1, -1):  # the last packed component sits in the low bits
        keep = largest != i
        mag = (comp & 511).astype(np.float64) * (_SQRT1_2 / 511.0)
        val = np.where((comp >> 9) & 1, -mag, mag)
        q[:, i] = np.where(keep, val, 0.0)
        comp = np.where(keep, comp >> 10, comp)
    q[rows, largest] = np.sqrt(np.maximum(0.0, 1.0 - (q ** 2).sum(1)))  # unit already: not renormalised,
    return q[:, [3, 0, 1, 2]]  # so that packing the result gives the same code back (as the reference)


_ROWS = 1 << 16  # Gaussians encoded a task


def _degree_of(k: int, version: int) -> int:
    top = 4 if version >= 4 else 3
    degree = {num_sh_bases(d): d for d in range(top + 1)}.get(k)
    if degree is None:
        raise InputError(f"SPZ version {version} stores SH degree 0-{top}, got {k} coefficients per channel")
    return degree


def spz_sections(g: Gaussians, antialiased: bool = False, threads: int | None = None,
                 version: int = SPZ_DEFAULT_VERSION) -> tuple[np.ndarray, list[np.ndarray]]:
    """The uncompressed SPZ bytes of ``g``: ``(raw, sections)`` where ``raw`` (uint8) is the legacy
    16-byte header followed by the six sections (the gzip payload of versions 2-3) and
    ``sections`` the six views into it, each ``(N, bytes a Gaussian)``: positions (9), alphas (1),
    colors (3), scales (3), rotations (3 for v2, 4 for v3+), sh (3 * ((degree+1)^2 - 1)).

    Row chunks are encoded on ``threads`` threads (NumPy and torch release the GIL) straight into
    their slices of one buffer; the bytes do not depend on the chunking."""
    if version not in SPZ_VERSIONS:
        raise InputError(f"SPZ version {version} cannot be written (choose {', '.join(map(str, SPZ_VERSIONS))})")
    n = len(g)
    k = g.sh.shape[1]
    degree = _degree_of(k, version)
    dim = k - 1
    t_means, t_opac, t_scales, t_quats, t_sh = (
        t.detach().cpu() for t in (g.means, g.opacities, g.scales, g.quats, g.sh))
    fb = _fractional_bits(float(t_means.abs().max().double()) if n else 0.0)  # max is exact in any dtype
    rot_w = 4 if version >= 3 else 3
    widths = [9, 1, 3, 3, rot_w, dim * 3]  # pos, alphas, colors, scales, rots, sh: bytes a Gaussian
    raw = np.empty(_HEADER.size + n * sum(widths), np.uint8)
    raw[:_HEADER.size] = np.frombuffer(
        _HEADER.pack(SPZ_MAGIC, version, n, degree, fb, _FLAG_ANTIALIASED if antialiased else 0, 0), np.uint8)
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
        if rot_w == 4:
            rot_o[a:b] = pack_quats_smallest_three(q)
        else:
            q = _unit_quats(q)
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
    return raw, sections


def spz_raw(g: Gaussians, antialiased: bool = False, threads: int | None = None,
            version: int = SPZ_DEFAULT_VERSION) -> np.ndarray:
    """The uncompressed legacy SPZ bytes (16-byte header + sections) of ``g`` as a uint8 array."""
    return spz_sections(g, antialiased, threads, version)[0]


def _zstd(what: str | None = None):
    try:
        import zstandard
    except ImportError:
        raise InputError(f"{what}: {ZSTD_HINT}" if what else ZSTD_HINT) from None
    return zstandard


def check_zstd(what: str) -> None:
    """Raise :class:`InputError` naming ``what`` (a flag or file) when ``zstandard`` is missing."""
    _zstd(what)


def spz_bytes(g: Gaussians, antialiased: bool = False, threads: int | None = None,
              version: int = SPZ_DEFAULT_VERSION) -> bytes:
    """The SPZ file bytes of ``g`` (degree 0-3; 0-4 for version 4).

    Versions 2-3: the raw bytes gzipped at level 6 (zlib's default, as Niantic's writer) as one
    gzip member, deflated on ``threads`` threads (default ``min(8, cpu_count)``; see
    :func:`da3gs.io.parallel_gzip.gzip_compress`). Version 4: the 32-byte header, the table of
    contents and one zstd stream (level 12) a non-empty section."""
    raw, sections = spz_sections(g, antialiased, threads, version)
    if version < 4:
        return gzip_compress(raw, level=6, threads=threads)
    zstd = _zstd()
    bodies = [s.tobytes() for s in sections if s.size]
    with ThreadPoolExecutor(max_workers=max(1, min(len(bodies), default_threads() if threads is None
                                                   else max(1, int(threads))))) as pool:
        streams = list(pool.map(lambda b: zstd.ZstdCompressor(level=ZSTD_LEVEL).compress(b), bodies))
    _, _, n, degree, fb, flags, _ = _HEADER.unpack_from(raw)
    header = _NGSP_HEADER.pack(SPZ_MAGIC, 4, n, degree, fb, flags, len(bodies), _NGSP_HEADER.size)
    toc = b"".join(struct.pack("<QQ", len(s), len(b)) for s, b in zip(streams, bodies))
    return header + toc + b"".join(streams)


def _section_sizes(n: int, version: int, dim: int) -> list[int]:
    return [n * (6 if version == 1 else 9), n, 3 * n, 3 * n, n * (4 if version >= 3 else 3), n * dim * 3]


def _check_header(name: str, magic: int, version: int, degree: int, legacy: bool) -> int:
    if magic != SPZ_MAGIC:
        raise InputError(f"{name}: not an SPZ file (magic {magic:#x}, expected {SPZ_MAGIC:#x})")
    if legacy and version not in (1, 2, 3):
        raise InputError(f"{name}: SPZ version {version} in a gzip stream is not supported (1-3 are; "
                         "version 4 is not gzipped)")
    if not legacy and version != 4:
        raise InputError(f"{name}: SPZ version {version} is not supported (1-4 are)")
    if degree > (4 if version >= 3 else 3):
        raise InputError(f"{name}: SPZ SH degree {degree} is not supported by version {version}")
    return num_sh_bases(degree) - 1


def _legacy_sections(data: bytes, name: str):
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InputError(f"{name}: not an SPZ file (neither gzipped nor starting with NGSP: {e})") from None
    if len(raw) < _HEADER.size:
        raise InputError(f"{name}: SPZ header truncated")
    magic, version, n, degree, fb, flags, _ = _HEADER.unpack_from(raw)
    dim = _check_header(name, magic, version, degree, legacy=True)
    sizes = _section_sizes(n, version, dim)
    have = len(raw) - _HEADER.size
    # extension records (flags & 0x2) follow the sections; we skip them
    if have < sum(sizes) or (have != sum(sizes) and not flags & _FLAG_EXTENSIONS):
        raise InputError(f"{name}: SPZ payload is {have} bytes, expected {sum(sizes)} "
                         f"for {n} Gaussians of degree {degree}")
    parts, off = [], _HEADER.size
    for s in sizes:
        parts.append(np.frombuffer(raw, np.uint8, s, off))
        off += s
    return version, n, degree, fb, parts


def _ngsp_sections(data: bytes, name: str):
    if len(data) < _NGSP_HEADER.size:
        raise InputError(f"{name}: SPZ header truncated")
    magic, version, n, degree, fb, _flags, n_streams, toc = _NGSP_HEADER.unpack_from(data)
    dim = _check_header(name, magic, version, degree, legacy=False)
    sizes = _section_sizes(n, version, dim)
    want = [s for s in sizes if s]
    if n_streams != len(want) or toc < _NGSP_HEADER.size or toc + 16 * n_streams > len(data):
        raise InputError(f"{name}: SPZ v4 table of contents is malformed ({n_streams} streams at byte {toc}, "
                         f"expected {len(want)} for {n} Gaussians of degree {degree})")
    zstd = _zstd(name)
    off = toc + 16 * n_streams
    bodies = []
    for i in range(n_streams):
        csize, usize = struct.unpack_from("<QQ", data, toc + 16 * i)
        if usize != want[i] or off + csize > len(data):
            raise InputError(f"{name}: SPZ v4 stream {i} is {usize} bytes ({csize} compressed), expected "
                             f"{want[i]} within the file")
        try:
            body = zstd.ZstdDecompressor().decompress(data[off:off + csize], max_output_size=usize)
        except zstd.ZstdError as e:
            raise InputError(f"{name}: SPZ v4 stream {i} is not valid zstd ({e})") from None
        if len(body) != usize:
            raise InputError(f"{name}: SPZ v4 stream {i} decompressed to {len(body)} bytes, expected {usize}")
        bodies.append(np.frombuffer(body, np.uint8))
        off += csize
    it = iter(bodies)
    parts = [next(it) if s else np.zeros(0, np.uint8) for s in sizes]
    return version, n, degree, fb, parts


def gaussians_from_spz_bytes(data: bytes, name: str = "SPZ") -> Gaussians:
    """Decode SPZ bytes (versions 1-3 gzipped, version 4 NGSP + zstd) -> float32 CPU Gaussians."""
    if data[:4] == struct.pack("<I", SPZ_MAGIC):
        version, n, degree, fb, parts = _ngsp_sections(data, name)
    else:
        version, n, degree, fb, parts = _legacy_sections(data, name)
    dim = num_sh_bases(degree) - 1
    pos, alphas, colors, scales, rots, sh_q = parts
    if version == 1:
        means = pos.view("<f2").astype(np.float32).reshape(n, 3)
    else:
        b = pos.reshape(-1, 3).astype(np.int32)
        fixed = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
        means = (fixed.astype(np.float64) / (1 << fb)).astype(np.float32).reshape(n, 3)
    if version >= 3:
        q = unpack_quats_smallest_three(rots.reshape(n, 4))
    else:
        xyz = rots.reshape(n, 3).astype(np.float64) / 127.5 - 1.0
        w = np.sqrt(np.maximum(0.0, 1.0 - (xyz ** 2).sum(1, keepdims=True)))
        q = _unit_quats(np.concatenate([w, xyz], axis=1))
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


def spz_version_of(data: bytes) -> int | None:
    """The format version of SPZ file bytes (None when they are not SPZ)."""
    import io

    magic = struct.pack("<I", SPZ_MAGIC)
    if data[:4] == magic and len(data) >= 8:
        return struct.unpack_from("<I", data, 4)[0]
    try:
        head = gzip.GzipFile(fileobj=io.BytesIO(data)).read(8)
    except (OSError, EOFError):
        return None
    return struct.unpack_from("<I", head, 4)[0] if len(head) == 8 and head[:4] == magic else None


def write_spz(path, gaussians: Gaussians, version: int = SPZ_DEFAULT_VERSION) -> Path:
    """Write ``gaussians`` as an SPZ file of format ``version`` (2, 3 or 4; atomically). Returns the path."""
    from .splat_files import write_encoded

    if version not in SPZ_VERSIONS:
        raise InputError(f"{path}: SPZ version {version} cannot be written (choose 2, 3 or 4)")
    return write_encoded(path, gaussians, lambda g: spz_bytes(g, version=version))


def read_spz(path) -> Gaussians:
    """Read an SPZ file (version 1-4, SH degree 0-3, 0-4 for versions 3+) -> float32 CPU ``Gaussians``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return gaussians_from_spz_bytes(path.read_bytes(), str(path))
