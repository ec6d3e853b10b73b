"""Ground-truth geometry files for the reconstruction benchmark: PLY (mesh or point cloud) and STL.

* PLY (ASCII or binary, via plyfile, already a da3gs dependency): ``vertex`` ``x y z``; faces
  from a ``face`` element's ``vertex_indices`` (or ``vertex_index``) lists, polygons split
  into fans of triangles. No faces: a point cloud.
* STL: binary (80-byte header, uint32 triangle count, 50 bytes per triangle) or ASCII
  (``solid`` ... ``facet normal`` / ``outer loop`` / three ``vertex x y z`` ...). A small numpy
  reader rather than numpy-stl or trimesh: neither is a da3gs dependency, and both formats fit
  in a few lines. A file is binary when its size is exactly ``84 + 50 n`` for its header's
  ``n`` (an ASCII file that happens to match is read as binary, as other readers do).
  Each triangle keeps its own three vertices (no welding; sampling does not need it).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["read_geometry", "GEOMETRY_SUFFIXES"]

GEOMETRY_SUFFIXES = (".ply", ".stl")
_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _read_ply(path: Path):
    from plyfile import PlyData

    try:
        ply = PlyData.read(str(path))
    except Exception as e:
        raise InputError(f"{path}: not a readable PLY file ({_one_line(e)})") from None
    names = [el.name for el in ply.elements]
    if "vertex" not in names:
        raise InputError(f"{path}: PLY file has no 'vertex' element")
    v = ply["vertex"].data
    if not all(k in v.dtype.names for k in ("x", "y", "z")):
        raise InputError(f"{path}: PLY vertices have no x, y, z properties")
    pts = np.stack([np.asarray(v[k], dtype=np.float64) for k in ("x", "y", "z")], -1).reshape(-1, 3)
    faces = None
    if "face" in names and len(ply["face"].data):
        f = ply["face"].data
        key = next((k for k in ("vertex_indices", "vertex_index") if k in f.dtype.names), None)
        if key is None:
            raise InputError(f"{path}: PLY faces have no vertex_indices property")
        tris = []
        for poly in f[key]:
            poly = np.asarray(poly, dtype=np.int64)
            if len(poly) >= 3:
                tris.append(np.stack([np.full(len(poly) - 2, poly[0]), poly[1:-1], poly[2:]], -1))
        faces = np.concatenate(tris) if tris else np.zeros((0, 3), np.int64)
        if faces.size and (faces.min() < 0 or faces.max() >= len(pts)):
            raise InputError(f"{path}: PLY face indices outside the {len(pts)} vertices")
    return pts, faces


def _read_stl(path: Path):
    data = path.read_bytes()
    if len(data) >= 84:
        n = int(np.frombuffer(data, "<u4", 1, 80)[0])
        if len(data) == 84 + 50 * n:
            rec = np.frombuffer(data, np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")]), n, 84)
            pts = rec["v"].reshape(-1, 3).astype(np.float64)
            return pts, np.arange(len(pts), dtype=np.int64).reshape(-1, 3)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not an STL file (binary size does not match its triangle count, "
                         "and not ASCII)") from None
    if not text.lstrip().lower().startswith("solid"):
        raise InputError(f"{path}: not an STL file (no 'solid' header, and not binary STL)")
    verts = re.findall(rf"vertex\s+({_FLOAT})\s+({_FLOAT})\s+({_FLOAT})", text)
    n_facets = len(re.findall(r"\bendfacet\b", text))
    if len(verts) != 3 * n_facets:
        raise InputError(f"{path}: ASCII STL with {len(verts)} vertices for {n_facets} facets "
                         "(expected 3 per facet)")
    pts = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
    return pts, np.arange(len(pts), dtype=np.int64).reshape(-1, 3)


def read_geometry(path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a PLY or STL file (module docstring).

    Returns:
        ``(points (N, 3) float64, faces (F, 3) int64 or None)``; ``faces`` None for a PLY
        point cloud (no face element).
    Raises:
        InputError: missing, unreadable or malformed file, non-finite coordinates, no points.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".ply":
        pts, faces = _read_ply(path)
    elif suffix == ".stl":
        pts, faces = _read_stl(path)
    else:
        raise InputError(f"{path}: unknown geometry file type; expected {', '.join(GEOMETRY_SUFFIXES)}")
    if len(pts) == 0:
        raise InputError(f"{path}: no points")
    if not np.isfinite(pts).all():
        raise InputError(f"{path}: NaN or Inf coordinates")
    return pts, faces
