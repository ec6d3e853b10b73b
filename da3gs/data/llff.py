"""LLFF ``poses_bounds.npy`` scenes (NeRF's real forward-facing captures).

Rows are parsed by :func:`da3gs.geometry.llff_to_opencv` (LLFF axes -> OpenCV).
The images are the files of ``images`` (default) or ``images_{factor}``, in
sorted order, one per row. The focal length is divided by the actual
downscale (full-resolution width stored in the rows / width on disk, e.g. 8
for ``images_8``); the principal point is the image centre. ``near_far`` holds
the rows' bounds. Unlike the NeRF loader, poses are neither recentred nor
rescaled by the bounds (``bd_factor``): the world is COLMAP's.

``Scene.split`` is the LLFF protocol: every ``holdout``-th view (0, 8, 16, ...)
is ``test``, the rest ``train``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from da3gs.geometry import GeometryError, llff_to_opencv
from da3gs.io.images import IMAGE_EXTS

from .scene import Scene, SceneError, image_hw, resolve_dir

__all__ = ["read_llff"]


def _image_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("images"))


def read_llff(path: Path, *, factor: int | None = None, images_dir=None, holdout: int = 8) -> Scene:
    """Read an LLFF scene.

    Args:
        path: scene folder or its ``poses_bounds.npy``.
        factor: pick ``images_{factor}`` (e.g. 4, 8); None or 1: ``images``.
        images_dir: explicit image folder (overrides ``factor``).
        holdout: fill ``Scene.split`` with every ``holdout``-th view as test; 0: no split.
    """
    path = Path(path)
    pb_path = path if path.is_file() else path / "poses_bounds.npy"
    root = pb_path.parent
    try:
        pb = np.load(pb_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SceneError(f"{pb_path}: cannot read ({' '.join(str(e).split())})") from None
    if pb.ndim != 2 or pb.shape[1] != 17 or pb.shape[0] == 0:
        raise SceneError(f"{pb_path}: expected an (N, 17) array, got shape {pb.shape}")
    pb = pb.astype(np.float64)
    if images_dir is not None:
        img_dir = resolve_dir(root, images_dir)
        if not img_dir.is_dir():
            raise SceneError(f"images_dir: {img_dir} is not a folder")
    else:
        if factor is not None and (isinstance(factor, bool) or int(factor) != factor or factor < 1):
            raise SceneError(f"factor: expected a positive integer, got {factor!r}")
        name = "images" if factor in (None, 1) else f"images_{int(factor)}"
        img_dir = root / name
        if not img_dir.is_dir():
            found = _image_folders(root)
            factors = [f[len("images_"):] for f in found if f[len("images_"):].isdigit()]
            pick = f"factor={factors[-1]}" if factors else "factor=N"
            raise SceneError(f"{root}: no {name}/ folder (found: {', '.join(found) or 'no image folders'}); "
                             f"pick one with {pick} or images_dir=NAME")
    files = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                   and not p.name.startswith("."))
    n = pb.shape[0]
    if len(files) != n:
        raise SceneError(f"{pb_path}: {n} poses but {len(files)} images in {img_dir}")
    hws = [image_hw(p) for p in files]
    if len(set(hws)) != 1:
        raise SceneError(f"{img_dir}: images have different sizes {sorted(set(hws))[:3]}")
    H, W = hws[0]
    H_full, W_full = float(pb[0, 4]), float(pb[0, 9])
    if not W_full > 0 or not H_full > 0:
        raise SceneError(f"{pb_path}: invalid stored image size {H_full} x {W_full}")
    downscale = W_full / W
    if abs(H_full / downscale - H) > 1.0:
        raise SceneError(f"{img_dir}: images are {W}x{H}, not a downscale of the {W_full:g}x{H_full:g} "
                         f"stored in {pb_path.name}")
    try:
        c2w, K, _, bounds = llff_to_opencv(pb, downscale=downscale)
    except GeometryError as e:
        raise SceneError(f"{pb_path}: {e}") from None
    K[:, 0, 2] = W / 2.0
    K[:, 1, 2] = H / 2.0
    scene = Scene(image_paths=files, c2w=c2w, K=K, image_hw=hws, names=[p.name for p in files],
                  format="llff", near_far=bounds)
    if holdout:
        train, test = scene.llff_holdout(holdout)
        scene.split = {"train": train, "test": test}
    return scene
