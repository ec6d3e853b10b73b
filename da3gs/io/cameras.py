"""Camera files: our ``cameras.json``, nerfstudio ``transforms.json`` and COLMAP text.

All functions take/return OpenCV camera-to-world ``c2w (V, 4, 4)``, intrinsics
``K (V, 3, 3)`` (or one shared (3, 3)) in pixels, ``image_hw`` = one (H, W) or
one per view, and ``names`` (one relative image path per view). Axis changes go
through :mod:`da3gs.geometry.conventions` only. The pixel convention (centre of
the top-left pixel at (0.5, 0.5)) is the one of COLMAP and nerfstudio, so ``K``
is written unchanged. Floats are written with ``repr`` (round-trip exact).

* ``cameras.json``: a JSON list of ``{name, width, height, K, c2w, w2c}`` (OpenCV).
* ``transforms.json``: ``camera_model: OPENCV`` (zero distortion), per frame
  ``fl_x fl_y cx cy w h``, ``file_path`` and ``transform_matrix`` = nerfstudio
  (OpenGL-axes) camera-to-world; the world frame itself is not changed. Optional
  top-level ``ply_file_path`` (splatfacto initialisation).
Readers for transforms.json and COLMAP models are the scene readers in :mod:`da3gs.data`.

* COLMAP binary model (:func:`write_colmap_binary`, same content; image names may hold spaces,
  which the text format cannot): ``cameras.bin``, ``images.bin``, ``points3D.bin`` in COLMAP's
  documented layout (``read_write_model.py``), points written as one NumPy structured array
  (51 packed bytes a point), so 200k points take milliseconds where text takes ~0.5 s.
  :func:`write_colmap` writes ``fmt`` = ``"binary"``, ``"text"``, ``"both"`` or ``"auto"`` (text
  unless a name needs the binary form).
* COLMAP text model: ``cameras.txt`` (one PINHOLE camera per image),
  ``images.txt`` (world-to-camera qvec wxyz + tvec, empty 2D-points line),
  ``points3D.txt`` (optional points, error 0, empty tracks).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from da3gs.geometry import c2w_opencv_to_opengl, c2w_to_colmap, c2w_to_w2c

from .atomic import atomic_path
from .errors import InputError

log = logging.getLogger(__name__)

__all__ = ["CameraSet", "write_cameras_json", "read_cameras_json", "write_transforms_json",
           "write_colmap_text", "write_colmap_binary", "write_colmap", "colmap_text_ok",
           "COLMAP_FORMATS"]


@dataclass
class CameraSet:
    """Cameras read from a file: float64 OpenCV ``c2w (V,4,4)``, ``K (V,3,3)``, sizes and names."""

    c2w: torch.Tensor
    K: torch.Tensor
    image_hw: list[tuple[int, int]]
    names: list[str]
    ply_file_path: str | None = None


def _t64(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a numpy array or torch.Tensor, got {type(x).__name__}")
    return x.detach().to("cpu", torch.float64)


def _check(c2w, K, image_hw, names):
    c2w = _t64(c2w, "c2w")
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise InputError(f"c2w: expected shape (V, 4, 4), got {tuple(c2w.shape)}")
    v = c2w.shape[0]
    K = _t64(K, "K")
    if K.shape == (3, 3):
        K = K.expand(v, 3, 3)
    if K.shape != (v, 3, 3):
        raise InputError(f"K: expected shape (3, 3) or ({v}, 3, 3), got {tuple(K.shape)}")
    if not (bool(torch.isfinite(c2w).all()) and bool(torch.isfinite(K).all())):
        raise InputError("c2w/K: contain NaN or Inf")
    hw = np.asarray(image_hw, dtype=np.int64)
    if hw.shape == (2,):
        hw = np.broadcast_to(hw, (v, 2))
    if hw.shape != (v, 2) or (hw <= 0).any():
        raise InputError(f"image_hw: expected a positive (H, W) or {v} of them, got {image_hw!r}")
    names = [str(PurePosixPath(*Path(str(n)).parts)) if str(n) else "" for n in names]
    if len(names) != v or any(not n for n in names):
        raise InputError(f"names: expected {v} non-empty names, got {len(names)}")
    if any(PurePosixPath(n).is_absolute() or Path(n).is_absolute() for n in names):
        raise InputError("names: expected relative image paths")
    return c2w, K, [(int(h), int(w)) for h, w in hw], names


def _mat(m: torch.Tensor) -> list:
    return [[float(x) for x in row] for row in m.tolist()]


def _write_json(path: Path, obj) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
    return path


def _read_json(path: Path):
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({' '.join(str(e).split())})") from None


def write_cameras_json(path, c2w, K, image_hw, names) -> Path:
    """Write our ``cameras.json``: a list of ``{name, width, height, K, c2w, w2c}`` (OpenCV)."""
    c2w, K, hw, names = _check(c2w, K, image_hw, names)
    w2c = c2w_to_w2c(c2w)
    cams = [{"name": n, "width": w, "height": h, "K": _mat(K[i]), "c2w": _mat(c2w[i]), "w2c": _mat(w2c[i])}
            for i, (n, (h, w)) in enumerate(zip(names, hw))]
    return _write_json(Path(path), cams)


def read_cameras_json(path) -> CameraSet:
    """Read a ``cameras.json`` written by :func:`write_cameras_json`."""
    path = Path(path)
    data = _read_json(path)
    try:
        c2w = torch.tensor([c["c2w"] for c in data], dtype=torch.float64).reshape(-1, 4, 4)
        K = torch.tensor([c["K"] for c in data], dtype=torch.float64).reshape(-1, 3, 3)
        hw = [(int(c["height"]), int(c["width"])) for c in data]
        names = [str(c["name"]) for c in data]
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise InputError(f"{path}: not a cameras.json list of {{name, width, height, K, c2w}} ({e!r})") from None
    return CameraSet(c2w, K, hw, names)


def write_transforms_json(path, c2w, K, image_hw, names, ply_file_path=None, image_dir: str | None = None) -> Path:
    """Write a nerfstudio ``transforms.json`` (camera_model OPENCV, per-frame intrinsics).

    ``file_path`` of frame i is ``names[i]`` (relative to the json's folder), prefixed
    by ``image_dir`` when given. ``ply_file_path`` (relative to the json's folder) is
    stored as is; nerfstudio reads it as a coloured point cloud (see
    :func:`da3gs.io.ply.write_point_cloud_ply`) to initialise splatfacto.
    """
    c2w, K, hw, names = _check(c2w, K, image_hw, names)
    gl = c2w_opencv_to_opengl(c2w)
    frames = []
    for i, (n, (h, w)) in enumerate(zip(names, hw)):
        fp = str(PurePosixPath(image_dir) / n) if image_dir else n
        frames.append({"file_path": fp, "transform_matrix": _mat(gl[i]),
                       "fl_x": float(K[i, 0, 0]), "fl_y": float(K[i, 1, 1]),
                       "cx": float(K[i, 0, 2]), "cy": float(K[i, 1, 2]), "w": w, "h": h})
    meta = {"camera_model": "OPENCV", "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames}
    if ply_file_path is not None:
        p = PurePosixPath(*Path(str(ply_file_path)).parts)
        if p.is_absolute():
            raise InputError(f"ply_file_path: expected a path relative to {Path(path).parent}, got {ply_file_path}")
        meta["ply_file_path"] = str(p)
    return _write_json(Path(path), meta)


def _warn_skew(K: torch.Tensor, folder) -> None:
    if bool((K[:, 0, 1] != 0).any()):
        log.warning("%s: K has skew, which COLMAP's PINHOLE cannot store; skew dropped", folder)


def write_colmap_text(folder, c2w, K, image_hw, names, points=None, colors=None) -> Path:
    """Write a COLMAP text model (``cameras.txt``, ``images.txt``, ``points3D.txt``) into ``folder``.

    ``points``: optional (P, 3); ``colors``: (P, 3) uint8 or float in [0, 1] (default grey).
    """
    c2w, K, hw, names = _check(c2w, K, image_hw, names)
    if any(any(c.isspace() for c in n) for n in names):
        raise InputError("names: COLMAP image names must not contain whitespace")
    _warn_skew(K, folder)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    r = repr
    cams = ["# Camera list with one line of data per camera:",
            "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]", f"# Number of cameras: {len(names)}"]
    qvec, tvec = c2w_to_colmap(c2w)
    imgs = ["# Image list with two lines of data per image:",
            "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
            "#   POINTS2D[] as (X, Y, POINT3D_ID)", f"# Number of images: {len(names)}"]
    for i, (n, (h, w)) in enumerate(zip(names, hw)):
        k = K[i]
        cams.append(f"{i + 1} PINHOLE {w} {h} {r(float(k[0, 0]))} {r(float(k[1, 1]))} "
                    f"{r(float(k[0, 2]))} {r(float(k[1, 2]))}")
        q, t = qvec[i].tolist(), tvec[i].tolist()
        imgs.append(f"{i + 1} " + " ".join(r(float(x)) for x in q + t) + f" {i + 1} {n}")
        imgs.append("")
    pts = ["# 3D point list with one line of data per point:",
           "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)"]
    P, C = _points_colors(points, colors)
    if P is not None:
        pts.append(f"# Number of points: {P.shape[0]}, mean track length: 0")
        cols = [range(1, P.shape[0] + 1), *P.T.tolist(), *C.T.astype(np.int64).tolist()]
        pts += ["%d %r %r %r %d %d %d 0" % row for row in zip(*cols)]  # %r = repr, round-trip exact
    for fname, lines in (("cameras.txt", cams), ("images.txt", imgs), ("points3D.txt", pts)):
        with atomic_path(folder / fname) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
    return folder


def colmap_text_ok(names) -> bool:
    """True when every image name can be written in a COLMAP text model (no whitespace)."""
    return not any(any(c.isspace() for c in str(n)) for n in names)


def _points_colors(points, colors):
    if points is None:
        return None, None
    P = _t64(points, "points").numpy()
    if P.ndim != 2 or P.shape[1] != 3:
        raise InputError(f"points: expected shape (P, 3), got {P.shape}")
    if colors is None:
        return P, np.full(P.shape, 128, np.uint8)
    C = colors.detach().cpu().numpy() if isinstance(colors, torch.Tensor) else np.asarray(colors)
    if C.shape != P.shape:
        raise InputError(f"colors: expected shape {P.shape}, got {C.shape}")
    if not np.issubdtype(C.dtype, np.integer):
        C = np.round(np.clip(C.astype(np.float64), 0, 1) * 255)
    return P, np.clip(C, 0, 255).astype(np.uint8)


# COLMAP's points3D.bin record without its track: id, xyz, rgb, error, track length (packed).
_POINT_BIN = np.dtype([("id", "<u8"), ("xyz", "<f8", (3,)), ("rgb", "u1", (3,)), ("error", "<f8"),
                       ("track_length", "<u8")])


def write_colmap_binary(folder, c2w, K, image_hw, names, points=None, colors=None) -> Path:
    """Write a COLMAP binary model (``cameras.bin``, ``images.bin``, ``points3D.bin``) into
    ``folder``: one PINHOLE camera per image, no 2D points, points with empty tracks. Image
    names may contain spaces (the text format cannot hold them)."""
    import struct

    c2w, K, hw, names = _check(c2w, K, image_hw, names)
    if any("\x00" in n for n in names):
        raise InputError("names: COLMAP image names must not contain NUL characters")
    _warn_skew(K, folder)
    P, C = _points_colors(points, colors)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    qvec, tvec = c2w_to_colmap(c2w)
    cams = [struct.pack("<Q", len(names))]
    imgs = [struct.pack("<Q", len(names))]
    for i, (n, (h, w)) in enumerate(zip(names, hw)):
        k = K[i]
        cams.append(struct.pack("<iiQQ4d", i + 1, 1, w, h, float(k[0, 0]), float(k[1, 1]),
                                float(k[0, 2]), float(k[1, 2])))  # model id 1: PINHOLE
        imgs.append(struct.pack("<I7dI", i + 1, *[float(x) for x in qvec[i].tolist()],
                                *[float(x) for x in tvec[i].tolist()], i + 1))
        imgs.append(n.encode("utf-8") + b"\x00" + struct.pack("<Q", 0))
    rec = np.zeros(0 if P is None else len(P), _POINT_BIN)
    if P is not None:
        rec["id"] = np.arange(1, len(P) + 1)
        rec["xyz"] = P
        rec["rgb"] = C
    pts = [struct.pack("<Q", len(rec)), memoryview(rec).cast("B")]
    for fname, chunks in (("cameras.bin", cams), ("images.bin", imgs), ("points3D.bin", pts)):
        with atomic_path(folder / fname) as tmp:
            with open(tmp, "wb") as f:
                for c in chunks:
                    f.write(c)
    return folder


COLMAP_FORMATS = ("binary", "text", "both", "auto")


def write_colmap(folder, c2w, K, image_hw, names, points=None, colors=None, fmt: str = "auto") -> str:
    """A COLMAP model in ``folder`` as ``fmt`` (:data:`COLMAP_FORMATS`): ``"binary"``, ``"text"``,
    ``"both"`` (the two side by side; COLMAP and most readers take the ``.bin`` files first) or
    ``"auto"`` (text, or binary when an image name holds whitespace). Returns what was written:
    ``"binary"``, ``"text"`` or ``"text+binary"``."""
    if fmt not in COLMAP_FORMATS:
        raise InputError(f"fmt: expected one of {', '.join(COLMAP_FORMATS)}, got {fmt!r}")
    if fmt == "auto":
        fmt = "text" if colmap_text_ok(names) else "binary"
    if fmt in ("text", "both") and not colmap_text_ok(names):
        raise InputError("names: COLMAP image names must not contain whitespace in a text model "
                         "(write the binary model)")
    if fmt in ("binary", "both"):
        write_colmap_binary(folder, c2w, K, image_hw, names, points, colors)
    if fmt in ("text", "both"):
        write_colmap_text(folder, c2w, K, image_hw, names, points, colors)
    return {"both": "text+binary"}.get(fmt, fmt)
