"""COLMAP sparse models, text (``cameras.txt``, ``images.txt``, ``points3D.txt``) and binary (``.bin``).

Binary layout (little endian), as documented by COLMAP (``src/colmap/scene/reconstruction_io.cc``):

* ``cameras.bin``: ``uint64 n``; per camera ``int32 camera_id, int32 model_id,
  uint64 width, uint64 height, float64 params[num_params(model)]``.
* ``images.bin``: ``uint64 n``; per image ``uint32 image_id, float64 qw qx qy qz,
  float64 tx ty tz, uint32 camera_id, char name[] (NUL-terminated), uint64 n2d,
  n2d x (float64 x, float64 y, int64 point3D_id)``.
* ``points3D.bin``: ``uint64 n``; per point ``uint64 id, float64 x y z, uint8 r g b,
  float64 error, uint64 track_length, track_length x (int32 image_id, int32 point2D_idx)``.

Poses are world-to-camera ``qvec`` (wxyz) + ``tvec`` in OpenCV axes, converted with
:func:`da3gs.geometry.colmap_to_c2w`. COLMAP's pixel convention (centre of the
top-left pixel at (0.5, 0.5)) is the project's. Views are sorted by image name.
K is rescaled when the image files on disk are smaller/larger than the camera's
``width x height`` (e.g. Mip-NeRF 360 ``images_4`` beside a full-resolution model).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from da3gs.geometry import colmap_to_c2w

from .scene import Scene, SceneError, colmap_model_dir, image_hw, make_K, missing_error, resolve_dir

__all__ = ["CAMERA_MODELS", "read_colmap", "read_model"]

# model id: (name, number of params, distortion coefficient names after the focal/centre params)
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3, ()),
    1: ("PINHOLE", 4, ()),
    2: ("SIMPLE_RADIAL", 4, ("k1",)),
    3: ("RADIAL", 5, ("k1", "k2")),
    4: ("OPENCV", 8, ("k1", "k2", "p1", "p2")),
    5: ("OPENCV_FISHEYE", 8, ("k1", "k2", "k3", "k4")),
    6: ("FULL_OPENCV", 12, ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")),
    7: ("FOV", 5, ("omega",)),
    8: ("SIMPLE_RADIAL_FISHEYE", 4, ("k1",)),
    9: ("RADIAL_FISHEYE", 5, ("k1", "k2")),
    10: ("THIN_PRISM_FISHEYE", 12, ("k1", "k2", "p1", "p2", "k3", "k4", "sx1", "sy1")),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16, ("k0", "k1", "k2", "k3", "k4", "k5", "p0", "p1", "s0", "s1", "s2", "s3")),
}
_BY_NAME = {v[0]: (k, v[1], v[2]) for k, v in CAMERA_MODELS.items()}
_SINGLE_F = ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE")


# ----------------------------------------------------------------------------- text
def _text_lines(path: Path):
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SceneError(f"{path}: cannot read ({' '.join(str(e).split())})") from None
    return lines


def _read_cameras_text(path: Path) -> dict:
    cams = {}
    for ln, line in enumerate(_text_lines(path), 1):
        t = line.split()
        if not t or t[0].startswith("#"):
            continue
        try:
            model = t[1]
            if model not in _BY_NAME:
                raise SceneError(f"{path} line {ln}: unknown camera model {model} "
                                 f"(known: {', '.join(_BY_NAME)})")
            params = [float(v) for v in t[4:]]
            if len(params) != _BY_NAME[model][1]:
                raise ValueError(f"{model} expects {_BY_NAME[model][1]} params, got {len(params)}")
            cams[int(t[0])] = (model, int(t[2]), int(t[3]), params)
        except (ValueError, IndexError) as e:
            raise SceneError(f"{path} line {ln}: malformed camera ({e})") from None
    return cams


def _read_images_text(path: Path) -> list:
    lines, out, i = _text_lines(path), [], 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        t = line.split()
        try:
            q, tv = [float(v) for v in t[1:5]], [float(v) for v in t[5:8]]
            out.append((" ".join(t[9:]) or t[9], q, tv, int(t[8])))
        except (ValueError, IndexError):
            raise SceneError(f"{path} line {i}: malformed image line "
                             "(expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME)") from None
        i += 1  # the POINTS2D line, possibly empty
    return out


def _read_points_text(path: Path) -> tuple[np.ndarray, np.ndarray]:
    xyz, rgb = [], []
    for ln, line in enumerate(_text_lines(path), 1):
        t = line.split()
        if not t or t[0].startswith("#"):
            continue
        try:
            xyz.append([float(v) for v in t[1:4]])
            rgb.append([int(v) for v in t[4:7]])
        except (ValueError, IndexError):
            raise SceneError(f"{path} line {ln}: malformed point (expected POINT3D_ID X Y Z R G B ...)") from None
    return np.asarray(xyz, np.float64).reshape(-1, 3), np.asarray(rgb, np.uint8).reshape(-1, 3)


# ----------------------------------------------------------------------------- binary
class _Reader:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.buf = path.read_bytes()
        except OSError as e:
            raise SceneError(f"{path}: cannot read ({' '.join(str(e).split())})") from None
        self.off = 0

    def read(self, fmt: str):
        try:
            vals = struct.unpack_from("<" + fmt, self.buf, self.off)
        except struct.error:
            raise SceneError(f"{self.path}: truncated or corrupt COLMAP binary file") from None
        self.off += struct.calcsize("<" + fmt)
        return vals

    def skip(self, n: int):
        if self.off + n > len(self.buf):
            raise SceneError(f"{self.path}: truncated or corrupt COLMAP binary file")
        self.off += n

    def cstring(self) -> str:
        end = self.buf.find(b"\x00", self.off)
        if end < 0:
            raise SceneError(f"{self.path}: truncated or corrupt COLMAP binary file")
        s = self.buf[self.off:end].decode("utf-8", errors="replace")
        self.off = end + 1
        return s


def _read_cameras_bin(path: Path) -> dict:
    r, cams = _Reader(path), {}
    for _ in range(r.read("Q")[0]):
        cam_id, model_id, w, h = r.read("iiQQ")
        if model_id not in CAMERA_MODELS:
            raise SceneError(f"{path}: unknown camera model id {model_id} for camera {cam_id}")
        name, n, _ = CAMERA_MODELS[model_id]
        cams[cam_id] = (name, int(w), int(h), list(r.read(f"{n}d")))
    return cams


def _read_images_bin(path: Path) -> list:
    r, out = _Reader(path), []
    for _ in range(r.read("Q")[0]):
        vals = r.read("I7dI")
        name = r.cstring()
        r.skip(24 * r.read("Q")[0])
        out.append((name, list(vals[1:5]), list(vals[5:8]), vals[8]))
    return out


def _read_points_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    r = _Reader(path)
    n = r.read("Q")[0]
    xyz, rgb = np.empty((n, 3), np.float64), np.empty((n, 3), np.uint8)
    for i in range(n):
        vals = r.read("Q3d3BdQ")
        xyz[i], rgb[i] = vals[1:4], vals[4:7]
        r.skip(8 * vals[8])
    return xyz, rgb


# ----------------------------------------------------------------------------- model
def read_model(model_dir: Path, load_points: bool = True):
    """Parse a COLMAP model folder (binary preferred when both exist).

    Returns:
        cameras: ``{camera_id: (model_name, width, height, params)}``.
        images: ``[(name, qvec wxyz, tvec, camera_id)]`` in file order.
        points: ``(xyz (M, 3) float64, rgb (M, 3) uint8)`` or None (absent or not requested).
    """
    d = Path(model_dir)
    for ext, readers in ((".bin", (_read_cameras_bin, _read_images_bin, _read_points_bin)),
                         (".txt", (_read_cameras_text, _read_images_text, _read_points_text))):
        if (d / f"cameras{ext}").is_file() and (d / f"images{ext}").is_file():
            cams = readers[0](d / f"cameras{ext}")
            images = readers[1](d / f"images{ext}")
            pts = d / f"points3D{ext}"
            points = readers[2](pts) if load_points and pts.is_file() else None
            return cams, images, points
    raise SceneError(f"{d}: no COLMAP model (expected cameras.bin + images.bin or cameras.txt + images.txt)")


def _K_and_distortion(cam, hw, where: str):
    model, w, h, p = cam
    if model in _SINGLE_F:
        fx = fy = p[0]
        cx, cy, rest = p[1], p[2], p[3:]
    else:
        fx, fy, cx, cy, rest = p[0], p[1], p[2], p[3], p[4:]
    if not fx > 0 or not fy > 0:
        raise SceneError(f"{where}: non-positive focal length in camera {model} {p}")
    sx, sy = hw[1] / w, hw[0] / h
    names = _BY_NAME[model][2]
    dist = None
    if "FISHEYE" in model or any(v != 0.0 for v in rest):
        dist = {"model": model, **{k: float(v) for k, v in zip(names, rest)}}
    return make_K(fx * sx, fy * sy, cx * sx, cy * sy), dist


def _images_root(model_dir: Path, root: Path, images_dir) -> Path:
    if images_dir is not None:
        d = resolve_dir(root, images_dir)
        if not d.is_dir():
            raise SceneError(f"images_dir: {d} is not a folder")
        return d
    looked = []
    for base in (model_dir, model_dir.parent, model_dir.parent.parent):
        looked.append(str(base / "images"))
        if (base / "images").is_dir():
            return base / "images"
    raise SceneError(f"{model_dir}: no images folder beside the COLMAP model (looked in {', '.join(looked)}); "
                     "give the images folder (da3gs render: --views or --images; da3gs eval: "
                     "--scene-opt images=FOLDER)")


def read_colmap(path: Path, *, images_dir=None, load_points: bool = True,
                skip_missing: bool = False) -> Scene:
    """Read a COLMAP scene.

    Args:
        path: scene root (with ``sparse/0``, ``sparse`` or the model files in it),
            the model folder, or one of its files.
        images_dir: image folder (default ``images/`` beside the model, searched
            in the model folder and up to two parents); relative paths are taken
            from the scene root when they exist there.
        load_points: read ``points3D`` into ``Scene.points``/``point_colors``.
        skip_missing: drop images absent from the images folder instead of raising.
    """
    path = Path(path)
    root = path.parent if path.is_file() else path
    model_dir = colmap_model_dir(root)
    if model_dir is None:
        raise SceneError(f"{path}: no COLMAP model (looked for sparse/0, sparse and cameras.{{txt,bin}})")
    cams, images, points = read_model(model_dir, load_points)
    if not images:
        raise SceneError(f"{model_dir}: the COLMAP model has no registered images")
    img_root = _images_root(model_dir, root, images_dir)
    images = sorted(images, key=lambda im: im[0])
    missing = [im[0] for im in images if not (img_root / im[0]).is_file()]
    if missing and skip_missing and len(missing) < len(images):
        images, missing = [im for im in images if (img_root / im[0]).is_file()], []
    if missing:
        raise missing_error(f"images in {img_root}", missing, len(images), model_dir)
    Ks, hws, dists = [], [], []
    for name, _, _, cam_id in images:
        if cam_id not in cams:
            raise SceneError(f"{model_dir}: image {name} refers to unknown camera {cam_id}")
        hw = image_hw(img_root / name)
        K, dist = _K_and_distortion(cams[cam_id], hw, f"{model_dir} camera {cam_id}")
        Ks.append(K)
        hws.append(hw)
        dists.append(dist)
    q = torch.tensor([im[1] for im in images], dtype=torch.float64)
    t = torch.tensor([im[2] for im in images], dtype=torch.float64)
    return Scene(
        image_paths=[img_root / im[0] for im in images], c2w=colmap_to_c2w(q, t), K=torch.stack(Ks),
        image_hw=hws, names=[im[0] for im in images], format="colmap", distortion=dists,
        points=None if points is None else points[0], point_colors=None if points is None else points[1],
    )
