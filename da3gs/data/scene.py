"""The typed :class:`Scene` and the :func:`load_scene` dispatcher (format detection).

A ``Scene`` holds posed views of one capture in the project conventions:
OpenCV cameras (x right, y down, z forward), ``c2w`` float64 ``(N, 4, 4)``,
``K`` float64 ``(N, 3, 3)`` in pixels of the image files *as stored on disk*
(pixel-centre convention of the source format, see each reader). Poses are kept
in the source's world frame and units: no recentring or rescaling, except the
IDR normalisation of DTU (see :mod:`da3gs.data.dtu`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from da3gs.errors import Da3gsError
from da3gs.io.images import IMAGE_EXTS, read_image

__all__ = ["Scene", "SceneError", "load_scene", "detect_format", "FORMATS", "colmap_model_dir"]


class SceneError(Da3gsError):
    """A scene folder or file cannot be read (bad layout, missing images, corrupt camera file)."""


@dataclass
class Scene:
    """Posed views of one capture.

    Fields:
      image_paths: N image files.
      c2w: (N, 4, 4) float64 OpenCV camera-to-world.
      K: (N, 3, 3) float64 intrinsics in pixels of the images as stored on disk.
      image_hw: N ``(H, W)`` of the stored images.
      names: N view names (path relative to the scene root, or the source's name).
      format: reader that produced it (``blender``, ``nerfstudio``, ``colmap``,
        ``llff``, ``dtu``, ``tum``, ``open3d_log``).
      depth_paths: N depth PNGs, or None.
      depth_scale: divide a depth PNG value by it to get metres (5000 TUM, 1000 mm).
      distortion: None (pinhole), one dict for every view, or a list of N
        ``dict | None``. A dict is ``{"model": "OPENCV", "k1": .., "k2": .., "p1": .., ...}``
        with the source's model name and coefficient names. Use :meth:`frame_distortion`.
      split: named index lists (``train``/``val``/``test``), or None.
      near_far: (N, 2) float64 depth bounds (LLFF), or None.
      background: RGB in [0, 1] used to composite RGBA images, or None (white).
      points: (M, 3) float64 sparse points (COLMAP ``points3D``), or None.
      point_colors: (M, 3) uint8 colours of ``points``, or None.
    """

    image_paths: list[Path]
    c2w: torch.Tensor
    K: torch.Tensor
    image_hw: list[tuple[int, int]]
    names: list[str]
    format: str
    depth_paths: list[Path] | None = None
    depth_scale: float | None = None
    distortion: dict | list | None = None
    split: dict[str, list[int]] | None = None
    near_far: torch.Tensor | None = None
    background: tuple[float, float, float] | None = None
    points: torch.Tensor | None = None
    point_colors: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.image_paths)
        self.image_paths = [Path(p) for p in self.image_paths]
        self.c2w = torch.as_tensor(self.c2w, dtype=torch.float64)
        self.K = torch.as_tensor(self.K, dtype=torch.float64)
        self.image_hw = [(int(h), int(w)) for h, w in self.image_hw]
        if self.c2w.shape != (n, 4, 4) or self.K.shape != (n, 3, 3):
            raise SceneError(f"scene: expected c2w (N, 4, 4) and K (N, 3, 3) for N = {n} images, "
                             f"got {tuple(self.c2w.shape)} and {tuple(self.K.shape)}")
        if len(self.image_hw) != n or len(self.names) != n:
            raise SceneError(f"scene: image_hw/names must have {n} entries")
        if self.depth_paths is not None:
            self.depth_paths = [Path(p) for p in self.depth_paths]
            if len(self.depth_paths) != n:
                raise SceneError(f"scene: depth_paths must have {n} entries")
        if isinstance(self.distortion, (list, tuple)):
            if len(self.distortion) != n:
                raise SceneError(f"scene: per-view distortion must have {n} entries")
            self.distortion = _collapse(list(self.distortion))
        if self.near_far is not None:
            self.near_far = torch.as_tensor(self.near_far, dtype=torch.float64).reshape(n, 2)
        if self.background is not None:
            self.background = tuple(float(v) for v in np.asarray(self.background, dtype=np.float64).reshape(3))
        if self.points is not None:
            self.points = torch.as_tensor(self.points, dtype=torch.float64).reshape(-1, 3)
        if self.point_colors is not None:
            self.point_colors = torch.as_tensor(np.asarray(self.point_colors, dtype=np.uint8)).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self.image_paths)

    def frame_distortion(self, i: int) -> dict | None:
        """Distortion dict of view ``i`` (None for a pinhole view)."""
        if isinstance(self.distortion, list):
            return self.distortion[i]
        return self.distortion

    def subset(self, indices: Sequence[int]) -> "Scene":
        """Scene with the views ``indices`` (in that order); ``split`` is remapped, points kept."""
        idx = [int(i) for i in (indices.tolist() if hasattr(indices, "tolist") else indices)]
        n = len(self)
        bad = [i for i in idx if not -n <= i < n]
        if bad:
            raise SceneError(f"indices: {bad[:5]} out of range for a scene of {n} views")
        idx = [i % n for i in idx]
        t = torch.tensor(idx, dtype=torch.long)
        split = None
        if self.split is not None:
            pos = {}
            for new, old in enumerate(idx):
                pos.setdefault(old, []).append(new)
            split = {k: sorted(p for i in v for p in pos.get(i, [])) for k, v in self.split.items()}
        dist = [self.distortion[i] for i in idx] if isinstance(self.distortion, list) else self.distortion
        return replace(
            self,
            image_paths=[self.image_paths[i] for i in idx],
            c2w=self.c2w[t].clone(),
            K=self.K[t].clone(),
            image_hw=[self.image_hw[i] for i in idx],
            names=[self.names[i] for i in idx],
            depth_paths=None if self.depth_paths is None else [self.depth_paths[i] for i in idx],
            distortion=dist,
            split=split,
            near_far=None if self.near_far is None else self.near_far[t].clone(),
        )

    def load_images(self, background=None) -> list[np.ndarray]:
        """Images as ``(H, W, 3)`` float32 RGB in [0, 1]; RGBA composited on ``background``
        (default: the scene's ``background``, else white)."""
        bg = background if background is not None else (self.background or (1.0, 1.0, 1.0))
        return [read_image(p, background=bg) for p in self.image_paths]

    def load_depth(self, i: int) -> np.ndarray | None:
        """Depth of view ``i`` as ``(H, W)`` float32 metres (0 = no measurement), or None."""
        if self.depth_paths is None:
            return None
        p = self.depth_paths[i]
        if not p.is_file():
            raise SceneError(f"{p}: depth file not found")
        try:
            with Image.open(p) as img:
                arr = np.asarray(img)
        except (OSError, ValueError) as e:
            raise SceneError(f"{p}: cannot read depth image ({' '.join(str(e).split())})") from None
        if arr.ndim != 2:
            raise SceneError(f"{p}: expected a single-channel depth image, got shape {arr.shape}")
        return arr.astype(np.float32) / np.float32(self.depth_scale or 1.0)

    def llff_holdout(self, every: int = 8) -> tuple[list[int], list[int]]:
        """LLFF protocol: views ``0, every, 2 * every, ...`` are test, the rest train."""
        if int(every) < 1:
            raise SceneError(f"every: expected an integer >= 1, got {every!r}")
        test = list(range(0, len(self), int(every)))
        return [i for i in range(len(self)) if i % int(every)], test


def _collapse(dist: list):
    """Per-view distortion list -> None if all pinhole, one dict if all equal."""
    if all(d is None for d in dist):
        return None
    if all(d == dist[0] for d in dist):
        return dict(dist[0])
    return dist


# ----------------------------------------------------------------------------- reader helpers
def make_K(fx, fy, cx, cy, skew=0.0) -> torch.Tensor:
    """(3, 3) float64 pinhole intrinsics."""
    return torch.tensor([[fx, skew, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)


def image_hw(path: Path) -> tuple[int, int]:
    """``(H, W)`` of a stored image from its header (EXIF orientation not applied)."""
    try:
        with Image.open(path) as img:
            return int(img.size[1]), int(img.size[0])
    except (OSError, ValueError) as e:
        raise SceneError(f"{path}: cannot read image header ({' '.join(str(e).split())})") from None


def find_image(path: Path) -> Path | None:
    """``path`` if it is a file, else ``path`` + an image extension (Blender ``./train/r_0``)."""
    if path.is_file():
        return path
    for ext in IMAGE_EXTS + tuple(e.upper() for e in IMAGE_EXTS):
        cand = path.with_name(path.name + ext)
        if cand.is_file():
            return cand
    return None


def missing_error(what: str, missing: Sequence[str], total: int, where) -> SceneError:
    """``SceneError`` naming the first few missing images and their count."""
    head = ", ".join(str(m) for m in missing[:5])
    more = f", ... ({len(missing)} of {total} missing)" if len(missing) > 5 else f" ({len(missing)} of {total} missing)"
    return SceneError(f"{where}: {what} not found: {head}{more}")


def resolve_dir(root: Path, d) -> Path:
    """Folder option: absolute, else relative to the scene root if it exists there, else as given."""
    d = Path(d)
    if d.is_absolute() or not (root / d).exists():
        return d
    return root / d


# ----------------------------------------------------------------------------- dispatcher
FORMATS = ("blender", "nerfstudio", "colmap", "llff", "dtu", "tum", "open3d_log")
_ALIASES = {"nerf": "nerf", "instant-ngp": "nerf", "ngp": "nerf", "blender": "nerf", "nerfstudio": "nerf",
            "colmap": "colmap", "llff": "llff", "dtu": "dtu", "idr": "dtu", "neus": "dtu",
            "tum": "tum", "open3d_log": "log", "log": "log", "icl": "log", "trajectory_log": "log", "rgbd": "rgbd"}
_LOOKED_FOR = ("transforms*.json (Blender/nerfstudio/instant-ngp), sparse/0/, sparse/ or cameras.{txt,bin} "
               "(COLMAP), poses_bounds.npy (LLFF), cameras*.npz (DTU/IDR), trajectory.log (Open3D/ICL-NUIM) "
               "or groundtruth.txt (TUM RGB-D)")


def colmap_model_dir(p: Path) -> Path | None:
    """The COLMAP model folder of a scene root: ``sparse/0``, ``sparse`` or the root itself
    (the first holding ``cameras.bin`` or ``cameras.txt``), or None."""
    for d in (p / "sparse" / "0", p / "sparse", p):
        if (d / "cameras.bin").is_file() or (d / "cameras.txt").is_file():
            return d
    return None


def detect_format(path) -> str:
    """Reader family for ``path``: ``nerf``, ``colmap``, ``llff``, ``dtu``, ``tum`` or ``log``."""
    p = Path(path)
    if not p.exists():
        raise SceneError(f"{p}: no such file or folder")
    if p.is_file():
        name = p.name
        if name.startswith("transforms") and name.endswith(".json"):
            return "nerf"
        if name in ("cameras.txt", "cameras.bin", "images.txt", "images.bin", "points3D.txt", "points3D.bin"):
            return "colmap"
        if name == "poses_bounds.npy":
            return "llff"
        if name.startswith("cameras") and name.endswith(".npz"):
            return "dtu"
        if name == "groundtruth.txt":
            return "tum"
        if name.endswith(".log"):
            return "log"
        raise SceneError(f"{p}: unknown scene file; expected one of {_LOOKED_FOR}")
    if any(p.glob("transforms*.json")):
        return "nerf"
    if colmap_model_dir(p) is not None:
        return "colmap"
    if (p / "poses_bounds.npy").is_file():
        return "llff"
    if any(p.glob("cameras*.npz")):
        return "dtu"
    if (p / "trajectory.log").is_file():
        return "log"
    if (p / "groundtruth.txt").is_file():
        return "tum"
    raise SceneError(f"{p}: no known scene format found; looked for {_LOOKED_FOR}")


def load_scene(path, format: str = "auto", **opts) -> Scene:
    """Load a posed scene from a folder or camera file.

    Args:
        path: scene folder, or its camera file (``transforms_train.json``,
            ``poses_bounds.npy``, ``cameras.npz``, ``trajectory.log``, ...).
        format: ``auto`` (detect) or one of ``blender``, ``nerfstudio`` (also
            ``nerf``, ``instant-ngp``), ``colmap``, ``llff``, ``dtu``, ``tum``,
            ``open3d_log`` (also ``icl``, ``log``), ``rgbd`` (TUM or log).
        **opts: reader options (``images`` is an alias of ``images_dir``):
            see :func:`~da3gs.data.nerf.read_nerf`, :func:`~da3gs.data.colmap.read_colmap`,
            :func:`~da3gs.data.llff.read_llff`, :func:`~da3gs.data.dtu.read_dtu`,
            :func:`~da3gs.data.rgbd.read_tum`, :func:`~da3gs.data.rgbd.read_trajectory_log`.
    """
    from . import colmap, dtu, llff, nerf, rgbd

    fmt = str(format).lower()
    if fmt == "auto":
        family = detect_format(path)
    elif fmt in _ALIASES:
        family = _ALIASES[fmt]
        if not Path(path).exists():
            raise SceneError(f"{path}: no such file or folder")
        if family == "rgbd":
            family = detect_format(path)
            if family not in ("tum", "log"):
                raise SceneError(f"{path}: no trajectory.log or groundtruth.txt found for format 'rgbd'")
    else:
        raise SceneError(f"format: unknown {format!r}; expected 'auto' or one of {', '.join(sorted(_ALIASES))}")
    reader = {"nerf": nerf.read_nerf, "colmap": colmap.read_colmap, "llff": llff.read_llff,
              "dtu": dtu.read_dtu, "tum": rgbd.read_tum, "log": rgbd.read_trajectory_log}[family]
    if fmt in ("blender", "nerfstudio"):
        opts.setdefault("flavour", fmt)
    if "images" in opts:
        if "images_dir" in opts:
            raise SceneError("options: give either 'images' or 'images_dir', not both")
        opts["images_dir"] = opts.pop("images")
    accepted = [k for k in inspect.signature(reader).parameters if k != "path"]
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise SceneError(f"options: {', '.join(unknown)} not understood by the {family} reader "
                         f"(accepted: {', '.join(accepted) or 'none'})")
    return reader(Path(path), **opts)

