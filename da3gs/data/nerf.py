"""Blender/NeRF-synthetic ``transforms_{train,val,test}.json`` and nerfstudio / instant-ngp ``transforms.json``.

Both store per-frame ``transform_matrix`` = camera-to-world in OpenGL axes
(x right, y up, z backward); they are converted with
:func:`da3gs.geometry.c2w_opengl_to_opencv`. Paths in ``file_path`` are relative
to the JSON's folder; a missing extension (Blender ``./train/r_0``) is resolved
to the image file on disk.

Intrinsics, per frame, frame keys overriding the file's top-level keys:
``fl_x``/``fl_y``/``cx``/``cy`` in pixels of ``w`` x ``h``; else
``camera_angle_x`` (horizontal FOV; ``fx = 0.5 W / tan(angle / 2)``), optional
``camera_angle_y``, ``fy = fx`` otherwise, principal point at the image centre
(``W / 2``, ``H / 2``). K is then rescaled to the size of the image file on disk
when ``w``/``h`` differ from it (e.g. downscaled copies).

Distortion (``camera_model`` ``OPENCV`` (default) / ``OPENCV_FISHEYE`` / ...,
coefficients ``k1 k2 k3 k4 p1 p2 ...``) is kept in ``Scene.distortion``; it is
None only when the model is not a fisheye one and every coefficient is 0.

Not applied: nerfstudio's ``applied_transform`` (it records the transform that
*was already applied* to the frames, from the original COLMAP world), and
instant-ngp's ``scale``/``offset``/``aabb_scale`` (render-time settings). Poses
stay in the file's world frame. nerfstudio files' frames are sorted by
``file_path`` (as nerfstudio does); Blender files keep their order.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from da3gs.geometry import as_homogeneous, c2w_opengl_to_opencv

from .scene import Scene, SceneError, find_image, image_hw, make_K, missing_error

__all__ = ["read_nerf"]

SPLITS = ("train", "val", "test")
_INTR_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y", "camera_model")
_COEF = re.compile(r"^(k|p|s)\d+$")
_NON_PINHOLE = ("EQUIRECTANGULAR",)


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise SceneError(f"{path}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SceneError(f"{path}: cannot read ({' '.join(str(e).split())})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise SceneError(f"{path}: expected a JSON object with a 'frames' list")
    return meta


def _is_nerfstudio(meta: dict) -> bool:
    keys = set(_INTR_KEYS) - {"camera_angle_x", "camera_angle_y"}
    if keys & set(meta) or any(_COEF.match(k) for k in meta):
        return True
    return any(isinstance(fr, dict) and (set(_INTR_KEYS) & set(fr)) for fr in meta["frames"])


def _clean(p: str) -> str:
    p = p.replace("\\", "/")  # paths written on Windows
    return p[2:] if p.startswith("./") else p


def _intrinsics(m: dict, hw: tuple[int, int], where: str) -> torch.Tensor:
    H, W = hw
    w0 = float(m["w"]) if "w" in m else float(W)
    h0 = float(m["h"]) if "h" in m else float(H)
    if "fl_x" in m:
        fx = float(m["fl_x"])
    elif "camera_angle_x" in m:
        fx = 0.5 * w0 / math.tan(0.5 * float(m["camera_angle_x"]))
    else:
        raise SceneError(f"{where}: no focal length (expected 'fl_x' or 'camera_angle_x')")
    if "fl_y" in m:
        fy = float(m["fl_y"])
    elif "camera_angle_y" in m and "fl_x" not in m:
        fy = 0.5 * h0 / math.tan(0.5 * float(m["camera_angle_y"]))
    else:
        fy = fx
    cx = float(m.get("cx", w0 / 2.0))
    cy = float(m.get("cy", h0 / 2.0))
    sx, sy = W / w0, H / h0
    K = make_K(fx * sx, fy * sy, cx * sx, cy * sy)
    if not bool(torch.isfinite(K).all()) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise SceneError(f"{where}: invalid intrinsics (fx={fx}, fy={fy}, cx={cx}, cy={cy})")
    return K


def _distortion(m: dict, where: str) -> dict | None:
    model = str(m.get("camera_model", "OPENCV")).upper()
    if model in _NON_PINHOLE:
        raise SceneError(f"{where}: camera_model {model} is not a perspective camera (not supported)")
    coefs = {k: float(v) for k, v in sorted(m.items()) if _COEF.match(k)}
    if "FISHEYE" not in model and not any(coefs.values()):
        return None
    return {"model": model, **coefs}


def _matrix(fr: dict, where: str) -> torch.Tensor:
    try:
        T = torch.tensor(fr["transform_matrix"], dtype=torch.float64)
    except (KeyError, TypeError, ValueError):
        raise SceneError(f"{where}: missing or malformed 'transform_matrix'") from None
    if T.shape not in ((4, 4), (3, 4)) or not bool(torch.isfinite(T).all()):
        raise SceneError(f"{where}: 'transform_matrix' must be a finite 4x4 or 3x4 matrix, got shape {tuple(T.shape)}")
    return c2w_opengl_to_opencv(as_homogeneous(T))


def _files(path: Path, split: str | None) -> tuple[list[tuple[str | None, Path]], str | None]:
    """``[(split name or None, json path)]`` and the split mode."""
    if path.is_file():
        m = re.fullmatch(r"transforms_(\w+)\.json", path.name)
        return [(m.group(1) if m else None, path)], (None if m else split)
    per_split = {s: path / f"transforms_{s}.json" for s in SPLITS if (path / f"transforms_{s}.json").is_file()}
    if not per_split:
        if (path / "transforms.json").is_file():
            return [(None, path / "transforms.json")], split
        raise SceneError(f"{path}: no transforms.json or transforms_{{train,val,test}}.json found")
    split = split or "train"
    if split == "all":
        return [(s, p) for s, p in per_split.items()], None
    if split not in per_split:
        raise SceneError(f"split: {split!r} not available in {path} (found: {', '.join(per_split)}, all)")
    return [(split, per_split[split])], None


def read_nerf(path: Path, *, split: str | None = None, background=None, flavour: str | None = None,
              depth_scale: float = 1000.0, skip_missing: bool = False) -> Scene:
    """Read a Blender (``transforms_{split}.json``) or nerfstudio/instant-ngp (``transforms.json``) scene.

    Args:
        path: scene folder or one transforms JSON file.
        split: Blender folders: ``train`` (default), ``val``, ``test`` or ``all``
            (every split file, ``Scene.split`` filled). nerfstudio files: None or
            ``all`` (every frame, ``Scene.split`` from ``{train,val,test}_filenames``
            when present) or one of those names (that subset).
        background: RGB in [0, 1] for RGBA images; Blender default white.
        flavour: force the ``Scene.format`` label (``blender``/``nerfstudio``).
        depth_scale: for nerfstudio ``depth_file_path`` PNGs, value per metre (1000: mm).
        skip_missing: drop frames whose image file is absent instead of raising (a subset of
            the images was copied); at least one frame must remain.
    """
    if split is not None and split not in SPLITS + ("all",):
        raise SceneError(f"split: expected one of {', '.join(SPLITS)}, all; got {split!r}")
    files, ns_split = _files(Path(path), split)
    root = files[0][1].parent
    metas = [(s, p, _load_json(p)) for s, p in files]
    fmt = flavour or ("nerfstudio" if any(_is_nerfstudio(m) for _, _, m in metas) else "blender")
    paths, c2w, Ks, hws, names, dists, depths, missing = [], [], [], [], [], [], [], []
    splits: dict[str, list[int]] = {}
    for s, jpath, meta in metas:
        top = {k: v for k, v in meta.items() if k in _INTR_KEYS or _COEF.match(k)}
        frames = meta["frames"]
        if fmt == "nerfstudio":
            frames = sorted(frames, key=lambda fr: str(fr.get("file_path", "")) if isinstance(fr, dict) else "")
        for j, fr in enumerate(frames):
            where = f"{jpath} frame {j}"
            if not isinstance(fr, dict) or not isinstance(fr.get("file_path"), str):
                raise SceneError(f"{where}: missing 'file_path'")
            img = find_image(root / _clean(fr["file_path"]))
            if img is None:
                missing.append(_clean(fr["file_path"]))
                continue
            m = {**top, **{k: v for k, v in fr.items() if k in _INTR_KEYS or _COEF.match(k)}}
            hw = image_hw(img)
            if s is not None:
                splits.setdefault(s, []).append(len(paths))
            paths.append(img)
            c2w.append(_matrix(fr, where))
            Ks.append(_intrinsics(m, hw, where))
            hws.append(hw)
            names.append(img.relative_to(root).as_posix() if img.is_relative_to(root) else img.name)
            dists.append(_distortion(m, where))
            d = fr.get("depth_file_path")
            depths.append(None if d is None else root / d)
    total = len(paths) + len(missing)
    if missing and not (skip_missing and paths):
        raise missing_error("images", missing, total, files[0][1] if len(files) == 1 else root)
    if not paths:
        raise SceneError(f"{files[0][1]}: no frames")
    depth_paths = None
    if any(d is not None for d in depths):
        if any(d is None for d in depths):
            raise SceneError(f"{root}: 'depth_file_path' is given for some frames only")
        depth_paths = depths
    if fmt == "nerfstudio" and len(metas) == 1:
        meta = metas[0][2]
        by_name = {n: i for i, n in enumerate(names)}
        for s in SPLITS:
            listed = meta.get(f"{s}_filenames")
            if isinstance(listed, list):
                splits[s] = sorted(by_name[_clean(str(f))] for f in listed if _clean(str(f)) in by_name)
    scene = Scene(
        image_paths=paths, c2w=torch.stack(c2w), K=torch.stack(Ks), image_hw=hws, names=names, format=fmt,
        depth_paths=depth_paths, depth_scale=float(depth_scale) if depth_paths else None, distortion=dists,
        split=splits or None,
        background=background if background is not None else ((1.0, 1.0, 1.0) if fmt == "blender" else None),
    )
    if ns_split not in (None, "all"):
        if scene.split is None or ns_split not in scene.split:
            raise SceneError(f"split: {files[0][1]} has no '{ns_split}_filenames' list")
        scene = scene.subset(scene.split[ns_split])
    return scene
