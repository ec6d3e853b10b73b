"""One entry point for the Gaussian splat file formats: PLY (INRIA), SPZ (Niantic), ``.splat`` and
SOG (PlayCanvas; a ``.sog`` bundle or an unbundled folder's ``meta.json``).

:func:`read_gaussians` picks the reader from the file name's suffix; :func:`write_gaussians` the
writer from ``fmt`` (default: the suffix). The formats themselves live in :mod:`.ply`,
:mod:`.spz`, :mod:`.splat` and :mod:`.sog`.
"""

from __future__ import annotations

from pathlib import Path

from da3gs.types import Gaussians

from .errors import InputError

__all__ = ["SPLAT_FORMATS", "splat_format_of", "read_gaussians", "write_gaussians", "write_encoded"]

SPLAT_FORMATS = ("ply", "spz", "splat", "sog")


def splat_format_of(path) -> str | None:
    """``"ply"``, ``"spz"``, ``"splat"`` or ``"sog"`` from ``path``'s suffix (case-insensitive; a file
    named ``meta.json`` is an unbundled SOG); None otherwise."""
    if Path(path).name.lower() == "meta.json":
        return "sog"
    suffix = Path(path).suffix.lower().lstrip(".")
    return suffix if suffix in SPLAT_FORMATS else None


def write_encoded(path, gaussians: Gaussians, encode) -> Path:
    """Check ``gaussians``, encode them with ``encode(gaussians) -> bytes`` and write the bytes to
    ``path`` atomically (the byte formats SPZ and ``.splat``). Returns the path."""
    from .atomic import atomic_path
    from .ply import check_gaussians

    path = Path(path)
    check_gaussians(gaussians, path)
    data = encode(gaussians)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return path


def read_gaussians(path) -> Gaussians:
    """Read a ``.ply``, ``.spz``, ``.splat`` or ``.sog`` file (or a SOG folder's ``meta.json``)
    -> float32 CPU ``Gaussians``."""
    fmt = splat_format_of(path)
    if fmt == "ply":
        from .ply import read_ply

        return read_ply(path)
    if fmt == "spz":
        from .spz import read_spz

        return read_spz(path)
    if fmt == "splat":
        from .splat import read_splat

        return read_splat(path)
    if fmt == "sog":
        from .sog import read_sog

        return read_sog(path)
    raise InputError(f"{path}: unknown splat file type (expected .ply, .spz, .splat, .sog or meta.json)")


def write_gaussians(path, gaussians: Gaussians, fmt: str | None = None, spz_version: int | None = None) -> Path:
    """Write ``gaussians`` to ``path`` (atomically) as ``fmt`` (default: from the suffix);
    ``spz_version`` (2, 3 or 4; default 3) picks the SPZ format version."""
    fmt = fmt or splat_format_of(path)
    if fmt == "ply":
        from .ply import write_ply

        return write_ply(path, gaussians)
    if fmt == "spz":
        from .spz import write_spz

        from .spz import SPZ_DEFAULT_VERSION

        return write_spz(path, gaussians, SPZ_DEFAULT_VERSION if spz_version is None else spz_version)
    if fmt == "splat":
        from .splat import write_splat

        return write_splat(path, gaussians)
    if fmt == "sog":
        from .sog import write_sog

        return write_sog(path, gaussians)
    raise InputError(f"{path}: unknown splat format {fmt!r} (expected one of {', '.join(SPLAT_FORMATS)})")
