"""DTU as packaged by IDR / NeuS: ``cameras.npz`` / ``cameras_sphere.npz`` + ``image/`` (or ``images/``).

Each view ``i`` has ``world_mat_i`` = ``K [R | t]`` (3x4, or 4x4 with a last row
``(0, 0, 0, 1)``), a projection from world to pixels, and optionally
``scale_mat_i``, a similarity mapping the *normalised* frame to the world frame
(``x_world = scale_mat @ x_norm``; the object lies in the unit sphere of the
normalised frame).

With ``normalize=True`` (default) the scene is put in the normalised frame as
IDR / NeuS do: ``P = world_mat @ scale_mat`` (NeuS additionally uses
``scale_mat`` for its bounding sphere). ``P[:, :3]`` is split by an RQ
decomposition into ``K`` (upper triangular, positive diagonal, ``K[2, 2] = 1``)
and a rotation ``R`` (``det = +1``, the overall sign of ``P`` is free); the
camera centre is ``C = -P[:, :3]^-1 P[:, 3]``, so ``c2w = [R^T | C]`` (OpenCV
axes). Skew in ``K`` is kept. With ``normalize=False`` the raw world frame
(millimetres for DTU) is used.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from da3gs.io.images import IMAGE_EXTS

from .scene import Scene, SceneError, image_hw, resolve_dir

__all__ = ["read_dtu", "decompose_projection"]


def decompose_projection(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``P (3, 4) = s K [R | t]`` -> ``(K (3, 3), c2w (4, 4))`` float64, OpenCV axes.

    RQ decomposition of ``P[:, :3]`` (via QR of the row-reversed transpose);
    ``K`` has a positive diagonal and ``K[2, 2] = 1``; ``R`` is a proper rotation.
    """
    P = np.asarray(P, dtype=np.float64)[:3, :4]
    M = P[:, :3]
    if not np.all(np.isfinite(P)) or abs(np.linalg.det(M)) <= 1e-12 * np.abs(M).max() ** 3:
        raise ValueError("projection matrix is singular or non-finite")
    flip = np.eye(3)[::-1]
    Q, U = np.linalg.qr((flip @ M).T)
    K = flip @ U.T @ flip
    R = flip @ Q.T
    D = np.diag(np.sign(np.diag(K)))
    K, R = K @ D, D @ R  # positive diagonal of K (D = D^-1)
    if np.linalg.det(R) < 0:  # P is defined up to sign: M = K R = -(K)(-R)
        R = -R
    C = -np.linalg.solve(M, P[:, 3])
    c2w = np.eye(4)
    c2w[:3, :3] = R.T
    c2w[:3, 3] = C
    return K / K[2, 2], c2w


def _camera_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in ("cameras_sphere.npz", "cameras.npz"):
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("cameras*.npz"))
    if not found:
        raise SceneError(f"{path}: no cameras*.npz found")
    return found[0]


def read_dtu(path: Path, *, normalize: bool = True, images_dir=None) -> Scene:
    """Read a DTU (IDR/NeuS) scene.

    Args:
        path: scene folder or its ``cameras*.npz`` (``cameras_sphere.npz`` is
            preferred over ``cameras.npz`` in a folder).
        normalize: apply ``scale_mat_i`` (IDR normalisation; see module doc).
        images_dir: image folder (default ``image/``, else ``images/``); one
            image per ``world_mat_i`` in sorted order.
    """
    cam_path = _camera_file(Path(path))
    root = cam_path.parent
    try:
        with np.load(cam_path, allow_pickle=False) as z:
            data = {k: np.asarray(z[k], dtype=np.float64) for k in z.files}
    except (OSError, ValueError, TypeError) as e:
        raise SceneError(f"{cam_path}: cannot read ({' '.join(str(e).split())})") from None
    ids = sorted(int(m.group(1)) for k in data if (m := re.fullmatch(r"world_mat_(\d+)", k)))
    if not ids:
        raise SceneError(f"{cam_path}: no world_mat_<i> arrays")
    if images_dir is not None:
        img_dir = resolve_dir(root, images_dir)
    else:
        img_dir = next((root / d for d in ("image", "images") if (root / d).is_dir()), root / "image")
    if not img_dir.is_dir():
        raise SceneError(f"{root}: no image/ or images/ folder beside {cam_path.name}; pass images=FOLDER")
    files = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                   and not p.name.startswith("."))
    if len(files) != len(ids):
        raise SceneError(f"{cam_path}: {len(ids)} cameras but {len(files)} images in {img_dir}")
    Ks, c2ws = [], []
    for i in ids:
        P = data[f"world_mat_{i}"]
        if P.shape not in ((3, 4), (4, 4)):
            raise SceneError(f"{cam_path}: world_mat_{i} has shape {P.shape}, expected 3x4 or 4x4")
        if normalize and f"scale_mat_{i}" in data:
            S = data[f"scale_mat_{i}"]
            if S.shape != (4, 4):
                raise SceneError(f"{cam_path}: scale_mat_{i} has shape {S.shape}, expected 4x4")
            P = P[:3, :4] @ S
        try:
            K, c2w = decompose_projection(P)
        except ValueError as e:
            raise SceneError(f"{cam_path}: world_mat_{i}: {e}") from None
        Ks.append(K)
        c2ws.append(c2w)
    return Scene(image_paths=files, c2w=torch.from_numpy(np.stack(c2ws)), K=torch.from_numpy(np.stack(Ks)),
                 image_hw=[image_hw(p) for p in files], names=[p.name for p in files], format="dtu")
