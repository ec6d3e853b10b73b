"""3D Gaussian splat PLY files (INRIA 3DGS layout) and plain coloured point clouds.

Layout written by :func:`write_ply` (one ``vertex`` element, binary little
endian, every property ``float``/float32, in this order)::

    x y z  nx ny nz (zeros)  f_dc_0 f_dc_1 f_dc_2  f_rest_0 .. f_rest_{3(K-1)-1}
    opacity (logit)  scale_0 scale_1 scale_2 (log)  rot_0 rot_1 rot_2 rot_3 (wxyz)

``f_rest`` is channel-major: ``f_rest_{c*(K-1) + (k-1)} = sh[:, k, c]`` for
channel ``c`` and coefficient ``k >= 1`` (K = (degree + 1)^2), as INRIA writes
``features_rest.transpose(1, 2).flatten(1)``. Opacities are written as
``logit(clip(p))`` (logits clipped to +-40, so 0 and 1 stay finite), scales as
``log(max(s, 1e-30))`` and rotations unit-normalised.

Exactness
---------
``read_ply`` returns float32 activations (``sigmoid``, ``exp``, normalised
quaternions). ``read_ply(write_ply(g))`` equals ``g`` to float32 rounding
(about 1e-6 relative). The activations are not injective in float32, so to make
``write_ply(read_ply(f))`` reproduce ``f`` byte for byte (for files in this
layout, with float32 properties), ``read_ply`` remembers the raw stored
``opacity``/``scale_*``/``rot_*`` values of the tensors it returns (looked up by
tensor identity, held while the tensor lives); ``write_ply`` writes those raw
values back when given those very tensors *and* they still decode to the
tensors' current values (checked, so edits of any kind are detected). Any other
tensor (new, edited, subset, moved to another device) goes through the
activations' inverses.

Writing by hand
---------------
:func:`write_ply` writes the header and the binary body itself instead of going through
``plyfile`` (still used to read, and as the test reference): ``plyfile`` needs the whole
cloud as one structured array and copies it again on ``write``, about 2 GB of memory traffic
for 4.5 M degree-2 Gaussians. Here the body is filled in blocks of :data:`WRITE_BLOCK` rows,
one preallocated float32 buffer per block (no concatenation), and each block is written with
one ``write`` call. The header is byte for byte the one ``plyfile`` writes for the same array
(tested), so the files are identical.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import torch

from da3gs.geometry.sh import is_sh_count, num_sh_bases, sh_degree_from_bases
from da3gs.types import Gaussians

from .atomic import atomic_path
from .errors import InputError

__all__ = ["write_ply", "read_ply", "write_point_cloud_ply", "ply_property_names", "ply_header",
           "check_gaussians"]

_LOGIT_CLIP = 40.0
_MIN_SCALE = 1e-30

# id(tensor) -> (weakref to tensor, kind, raw float32 array as stored in the file)
_RAW: dict[int, tuple] = {}


def _decode(kind: str, raw: np.ndarray) -> np.ndarray:
    """Stored values -> float32 activations (the one place defining read_ply's maps)."""
    x = raw.astype(np.float64)
    if kind == "opacity":
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
    if kind == "scale":
        return np.exp(x).astype(np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norm > 0, x / np.where(norm > 0, norm, 1.0), np.array([1.0, 0, 0, 0])).astype(np.float32)


def _remember(t: torch.Tensor, kind: str, raw: np.ndarray) -> None:
    key = id(t)
    ref = weakref.ref(t, lambda _r, key=key: _RAW.pop(key, None) if _RAW.get(key, (None,))[0] is _r else None)
    _RAW[key] = (ref, kind, raw)


def _recall(t: torch.Tensor, kind: str) -> np.ndarray | None:
    """The raw values ``t`` was decoded from, if ``t`` came from read_ply and still holds those values."""
    entry = _RAW.get(id(t))
    if entry is None or entry[0]() is not t or entry[1] != kind or t.dtype != torch.float32:
        return None
    raw = entry[2]
    if not np.array_equal(_decode(kind, raw), t.detach().cpu().numpy()):
        return None
    return raw


def ply_property_names(sh_degree: int) -> list[str]:
    """Property names, in file order, of a splat PLY of SH degree ``sh_degree``."""
    n_rest = 3 * (num_sh_bases(sh_degree) - 1)
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def _np32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _all_finite(t: torch.Tensor) -> bool:
    """``isfinite(t).all()``; through NumPy on the CPU (25x faster than torch's there)."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
        return bool(np.isfinite(t.detach().numpy()).all())
    return bool(torch.isfinite(t).all())


def check_gaussians(g: Gaussians, path: Path) -> int:
    """Check ``g`` is a well-formed finite :class:`Gaussians` before writing it to ``path``;
    returns the number of SH coefficients per channel. Raises :class:`InputError`."""
    if not isinstance(g, Gaussians):
        raise InputError(f"{path}: expected a Gaussians object, got {type(g).__name__}")
    n = len(g)
    shapes = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,)}
    for name, shape in shapes.items():
        t = getattr(g, name)
        if tuple(t.shape) != shape:
            raise InputError(f"{path}: gaussians.{name} has shape {tuple(t.shape)}, expected {shape}")
    k = g.sh.shape[1] if g.sh.ndim == 3 else -1
    if g.sh.ndim != 3 or g.sh.shape[0] != n or g.sh.shape[2] != 3 or not is_sh_count(k):
        raise InputError(f"{path}: gaussians.sh has shape {tuple(g.sh.shape)}, expected (N, (deg+1)^2, 3)")
    for name in ("means", "quats", "scales", "opacities", "sh"):
        if not _all_finite(getattr(g, name)):
            raise InputError(f"{path}: gaussians.{name} contains NaN or Inf")
    if n and bool((g.scales < 0).any()):
        raise InputError(f"{path}: gaussians.scales has negative values")
    return k


WRITE_BLOCK = 1 << 20  # rows per block of the binary body (~250 MB of float32 at degree 2)


def ply_header(names: list[str], n: int) -> bytes:
    """The header ``plyfile`` writes for one binary little-endian ``vertex`` element of float32
    properties ``names`` and ``n`` rows."""
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    lines += [f"property float {name}" for name in names]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def _block(g: Gaussians, lo: int, hi: int, k: int, raw: dict, out: np.ndarray, path: Path) -> np.ndarray:
    """Rows ``lo:hi`` of the body, filled into ``out[:hi - lo]`` (float32, one row per Gaussian)."""
    m = hi - lo
    buf = out[:m]
    r = 3 * (k - 1)
    buf[:, 0:3] = _np32(g.means[lo:hi])
    buf[:, 3:6] = 0.0
    sh = _np32(g.sh[lo:hi])
    buf[:, 6:9] = sh[:, 0, :]
    if r:
        rest = buf[:, 9:9 + r].reshape(m, 3, k - 1)  # a view: the channel-major f_rest block
        rest[...] = sh[:, 1:, :].transpose(0, 2, 1)
    c = 9 + r
    if raw["opacity"] is not None:
        buf[:, c] = raw["opacity"][lo:hi]
    else:
        p = g.opacities[lo:hi].detach().to("cpu", torch.float64).clamp(0.0, 1.0)
        buf[:, c] = (torch.log(p) - torch.log1p(-p)).clamp(-_LOGIT_CLIP, _LOGIT_CLIP).to(torch.float32).numpy()
    if raw["scale"] is not None:
        buf[:, c + 1:c + 4] = raw["scale"][lo:hi]
    else:
        buf[:, c + 1:c + 4] = torch.log(g.scales[lo:hi].detach().to("cpu", torch.float64)
                                        .clamp_min(_MIN_SCALE)).to(torch.float32).numpy()
    if raw["rot"] is not None:
        buf[:, c + 4:c + 8] = raw["rot"][lo:hi]
    else:
        q = g.quats[lo:hi].detach().to("cpu", torch.float64)
        norm = q.norm(dim=-1, keepdim=True)
        if m and bool((norm == 0).any()):
            raise InputError(f"{path}: gaussians.quats has zero-length quaternions")
        buf[:, c + 4:c + 8] = (q / norm).to(torch.float32).numpy()
    return buf


def write_ply(path, gaussians: Gaussians) -> Path:
    """Write ``gaussians`` as an INRIA-layout 3DGS PLY (atomically). Returns the path."""
    path = Path(path)
    g = gaussians
    k = check_gaussians(g, path)
    n = len(g)
    raw = {"opacity": _recall(g.opacities, "opacity"), "scale": _recall(g.scales, "scale"),
           "rot": _recall(g.quats, "rot")}
    names = ply_property_names(sh_degree_from_bases(k))
    out = np.empty((min(n, WRITE_BLOCK), len(names)), dtype="<f4")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(ply_header(names, n))
            for lo in range(0, n, WRITE_BLOCK):
                f.write(memoryview(_block(g, lo, min(n, lo + WRITE_BLOCK), k, raw, out, path)))
    return path


def _read_vertex(path: Path):
    from plyfile import PlyData  # lazy: not needed on the training path

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        ply = PlyData.read(str(path))
    except Exception as e:  # plyfile raises a variety of exception types on bad files
        msg = " ".join(str(e).split()) or type(e).__name__
        raise InputError(f"{path}: not a readable PLY file ({msg})") from None
    try:
        vertex = ply["vertex"]
    except KeyError:
        raise InputError(f"{path}: PLY has no 'vertex' element") from None
    return vertex


def read_ply(path) -> Gaussians:
    """Read a 3DGS PLY (ours, INRIA, degree 0-N, extra properties, ASCII) -> float32 CPU ``Gaussians``.

    The SH degree comes from the number of ``f_rest_*`` properties (0 when absent).
    Unknown properties are ignored. Raises :class:`InputError` naming the file and
    what is missing when it is not a Gaussian splat PLY.
    """
    path = Path(path)
    vertex = _read_vertex(path)
    names = [p.name for p in vertex.properties]
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [r for r in required if r not in names]
    if missing:
        raise InputError(f"{path}: not a 3D Gaussian splat PLY, vertex lacks properties {', '.join(missing)}")
    n_rest = sum(1 for nm in names if nm.startswith("f_rest_"))
    k = n_rest // 3 + 1
    if n_rest % 3 or not is_sh_count(k):
        raise InputError(f"{path}: {n_rest} f_rest_* properties is not 3 * ((degree + 1)^2 - 1) for any degree")
    rest_names = [f"f_rest_{i}" for i in range(n_rest)]
    absent = [r for r in rest_names if r not in names]
    if absent:
        raise InputError(f"{path}: f_rest_* properties are not numbered 0..{n_rest - 1} (missing {absent[0]})")

    def cols(keys):
        if not keys:
            return np.zeros((vertex.count, 0), np.float32)
        return np.stack([np.asarray(vertex[key], dtype=np.float32) for key in keys], axis=1)

    means = cols(["x", "y", "z"])
    dc = cols(["f_dc_0", "f_dc_1", "f_dc_2"])
    rest = cols(rest_names)
    opa = cols(["opacity"])[:, 0].copy()
    scl = cols(["scale_0", "scale_1", "scale_2"])
    rot = cols(["rot_0", "rot_1", "rot_2", "rot_3"])
    n = means.shape[0]
    for name, arr in (("x/y/z", means), ("f_dc", dc), ("f_rest", rest), ("opacity", opa),
                      ("scale", scl), ("rot", rot)):
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{path}: {name} properties contain NaN or Inf")

    sh = np.concatenate([dc[:, None, :], rest.reshape(n, 3, k - 1).transpose(0, 2, 1)], axis=1)
    g = Gaussians(
        means=torch.from_numpy(means.copy()),
        quats=torch.from_numpy(_decode("rot", rot)),
        scales=torch.from_numpy(_decode("scale", scl)),
        opacities=torch.from_numpy(_decode("opacity", opa)),
        sh=torch.from_numpy(np.ascontiguousarray(sh, dtype=np.float32)),
    )
    _remember(g.opacities, "opacity", opa)
    _remember(g.scales, "scale", scl)
    _remember(g.quats, "rot", rot)
    return g


def write_point_cloud_ply(path, points, colors=None) -> Path:
    """Write a plain point cloud PLY: ``x y z`` float32 and ``red green blue`` uchar (atomically).

    Args:
        points: (N, 3) numpy array or tensor.
        colors: (N, 3) uint8 (0-255) or float in [0, 1] (clipped, rounded); None -> no colour.
    """
    from plyfile import PlyData, PlyElement  # lazy: not needed on the training path

    path = Path(path)
    pts = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError(f"{path}: points must have shape (N, 3), got {pts.shape}")
    n = pts.shape[0]
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        col = colors.detach().cpu().numpy() if isinstance(colors, torch.Tensor) else np.asarray(colors)
        if col.shape != (n, 3):
            raise InputError(f"{path}: colors must have shape ({n}, 3), got {col.shape}")
        if col.dtype != np.uint8:
            if np.issubdtype(col.dtype, np.integer):
                col = np.clip(col, 0, 255).astype(np.uint8)
            else:
                col = np.round(np.clip(np.nan_to_num(col.astype(np.float64)), 0.0, 1.0) * 255.0).astype(np.uint8)
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertex = np.empty(n, dtype=fields)
    vertex["x"], vertex["y"], vertex["z"] = (pts[:, i].astype(np.float32) for i in range(3))
    if colors is not None:
        vertex["red"], vertex["green"], vertex["blue"] = col[:, 0], col[:, 1], col[:, 2]
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(str(tmp))
    return path
