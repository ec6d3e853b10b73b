"""Parallel gzip compression into ONE gzip member (pigz's scheme, in Python on zlib's threads).

The buffer is cut into fixed blocks; each block is deflated on a thread pool (zlib releases the
GIL while it compresses) as a raw deflate stream primed with the previous block's last 32 KiB as
its dictionary (``zdict=``, the whole deflate window, so matches may reach back across the cut as
in a single stream). Every block but the last ends with ``Z_SYNC_FLUSH`` (byte-aligned, no final
bit) and the last with ``Z_FINISH``, so the concatenated blocks are one valid deflate stream. It is
wrapped in a standard 10-byte gzip header and the CRC-32 / ISIZE trailer of the whole input (the
CRC is computed on a worker too). The result is a single-member gzip file that any reader accepts,
including one that inflates a single member only (zlib ``inflateInit2(16 + MAX_WBITS)``, as the
Niantic SPZ reference reader does); the data round-trips byte-exactly. The cost against one stream
is a few bytes a block (the 5-byte empty stored block of each sync flush, and a fresh Huffman
block at each cut): well under 1 % at 1 MiB blocks.

Output depends on ``level`` and ``block_size`` only, never on the number of threads, except that
one thread or an input shorter than two blocks takes the single-stream path, whose bytes equal
``gzip.compress(data, level, mtime=0)``.

Why not a package: ``pgzip`` and ``mgzip`` (PyPI, pure Python) also compress blocks on threads,
but each block becomes its own gzip *member* (with a block index in FEXTRA). Multi-member files
are valid gzip and Python's :mod:`gzip` reads them, but a reader that inflates one member (the
SPZ reference, ``zlib.decompress(data, 31)``) stops after the first block and sees a truncated
buffer. ``zlib-ng`` / ``isal`` bindings are faster single-stream deflaters (different levels and
output), not parallel ones. The single-member scheme is ~60 lines on the standard library, so no
dependency.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

__all__ = ["gzip_compress", "default_threads", "BLOCK_SIZE", "DICT_SIZE"]

BLOCK_SIZE = 1 << 20  # 1 MiB of input a block
DICT_SIZE = 1 << 15  # deflate's whole window (32 KiB)
MAX_THREADS = 8


def default_threads() -> int:
    """``min(8, cpu_count)`` threads."""
    return max(1, min(MAX_THREADS, os.cpu_count() or 1))


def _gzip_header(level: int, mtime: int) -> bytes:
    # As zlib writes it (deflateInit2 with 16 + MAX_WBITS, what gzip.compress(mtime=0) calls): no
    # flags, XFL 2 (level 9) / 4 (levels 0-1) / 0, OS 3 (Unix).
    xfl = 2 if level == 9 else 4 if level < 2 else 0
    return struct.pack("<BBBBLBB", 0x1F, 0x8B, 8, 0, mtime & 0xFFFFFFFF, xfl, 3)


def _gzip_trailer(crc: int, size: int) -> bytes:
    # CRC-32 and ISIZE (the input length modulo 2^32), little endian (RFC 1952).
    return struct.pack("<LL", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)


def _deflate_block(view: memoryview, start: int, end: int, level: int, last: bool) -> bytes:
    if start > 0:
        c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL,
                             zlib.Z_DEFAULT_STRATEGY, view[max(0, start - DICT_SIZE):start])
    else:
        c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL)
    out = c.compress(view[start:end])
    return out + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def gzip_compress(data, level: int = 6, threads: int | None = None, block_size: int = BLOCK_SIZE,
                  mtime: int = 0) -> bytes:
    """Gzip ``data`` (any bytes-like object) into one gzip member, deflating ``block_size`` blocks
    on ``threads`` threads (default :func:`default_threads`). ``level`` is zlib's (default 6, zlib's
    ``Z_DEFAULT_COMPRESSION``)."""
    if not -1 <= level <= 9:
        raise ValueError(f"gzip level must be -1..9, got {level}")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    level = 6 if level == -1 else level
    threads = default_threads() if threads is None else int(threads)
    view = memoryview(data).cast("B")
    n = len(view)
    if threads <= 1 or n < 2 * block_size:
        return gzip.compress(view, compresslevel=level, mtime=mtime)
    starts = range(0, n, block_size)
    with ThreadPoolExecutor(max_workers=min(threads, len(starts) + 1),
                            thread_name_prefix="gzip") as pool:
        crc = pool.submit(zlib.crc32, view)
        blocks = [pool.submit(_deflate_block, view, s, min(s + block_size, n), level, s + block_size >= n)
                  for s in starts]
        parts = [f.result() for f in blocks]
        trailer = _gzip_trailer(crc.result(), n)
    return b"".join([_gzip_header(level, mtime), *parts, trailer])
