"""RGB-D sequences: TUM RGB-D and Open3D / ICL-NUIM ``trajectory.log``.

TUM (``groundtruth.txt``, ``rgb.txt``, optional ``depth.txt``): each colour
frame is matched to the nearest ground-truth pose and the nearest depth frame
by timestamp; frames without a match within ``max_dt`` seconds are dropped (as
TUM's ``associate.py``, but nearest rather than greedy-unique). Ground truth is
``timestamp tx ty tz qx qy qz qw``: the colour camera's optical frame (OpenCV
axes) to world, i.e. c2w. Depth PNGs are uint16, 5000 per metre.

``trajectory.log`` (Open3D / Redwood / ICL-NUIM): per frame a line
``frame_id frame_id n`` then a 4x4 c2w in OpenCV axes. ``frame_id`` indexes the
pairs of ``rgbd.match`` (``depth/x.png color/x.jpg`` lines) when present, else
the sorted files of ``color/`` (or ``rgb/``, ``image/``, ``images/``) and
``depth/``. Depth PNGs default to millimetres (1000 per metre).

Intrinsics are options. Defaults: ``fx = fy = 525, cx = 319.5, cy = 239.5``,
the TUM "ROS default" (for fr1 the calibrated values are 517.3, 516.5, 318.6,
255.3) and the ICL-NUIM / Open3D PrimeSense camera. For ``trajectory.log`` an
Open3D ``PinholeCameraIntrinsic`` JSON (``intrinsic_matrix``, column-major)
beside it is used when present. The values are used verbatim: these datasets
give ``cx = 319.5`` for a centred 640-wide camera (OpenCV's integer pixel
centres), half a pixel from the project's (0.5, 0.5) top-left pixel centre.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from da3gs.geometry import quat_to_mat, xyzw_to_wxyz
from da3gs.io.images import IMAGE_EXTS

from .scene import Scene, SceneError, image_hw, make_K, missing_error, resolve_dir

__all__ = ["read_tum", "read_trajectory_log"]

DEFAULT_INTRINSICS = (525.0, 525.0, 319.5, 239.5)


def _read_text(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SceneError(f"{path}: cannot read ({' '.join(str(e).split())})") from None


def _intrinsics(root: Path, intrinsics, fx, fy, cx, cy, auto_json: bool) -> torch.Tensor:
    base = list(DEFAULT_INTRINSICS)
    src = intrinsics
    if src is None and auto_json:
        for p in sorted(root.glob("*.json")):
            try:
                if "intrinsic_matrix" in json.loads(p.read_text(encoding="utf-8")):
                    src = p
                    break
            except (OSError, ValueError):
                continue
    if isinstance(src, (str, Path)):
        p = resolve_dir(root, src)
        try:
            m = np.asarray(json.loads(Path(p).read_text(encoding="utf-8"))["intrinsic_matrix"], np.float64)
            base = [m[0], m[4], m[6], m[7]]  # column-major 3x3
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            raise SceneError(f"{p}: not an Open3D intrinsic JSON ({' '.join(str(e).split())})") from None
    elif src is not None:
        m = np.asarray(src, np.float64)
        if m.shape != (3, 3):
            raise SceneError(f"intrinsics: expected a 3x3 matrix or an Open3D JSON path, got shape {m.shape}")
        base = [m[0, 0], m[1, 1], m[0, 2], m[1, 2]]
    vals = [float(o) if o is not None else float(b) for o, b in zip((fx, fy, cx, cy), base)]
    if not all(np.isfinite(vals)) or vals[0] <= 0 or vals[1] <= 0:
        raise SceneError(f"intrinsics: invalid fx, fy, cx, cy = {vals}")
    return make_K(*vals)


def _stamped(path: Path, ncols: int) -> tuple[np.ndarray, list[list[str]]]:
    ts, rows = [], []
    for ln, line in enumerate(_read_text(path), 1):
        t = line.split()
        if not t or t[0].startswith("#"):
            continue
        if len(t) < ncols + 1:
            raise SceneError(f"{path} line {ln}: expected a timestamp and {ncols} values")
        try:
            ts.append(float(t[0]))
        except ValueError:
            raise SceneError(f"{path} line {ln}: bad timestamp {t[0]!r}") from None
        rows.append(t[1:ncols + 1])
    return np.asarray(ts, np.float64), rows


def _nearest(ts: np.ndarray, query: float, max_dt: float) -> int | None:
    if ts.size == 0:
        return None
    j = int(np.searchsorted(ts, query))
    cands = [k for k in (j - 1, j) if 0 <= k < ts.size]
    k = min(cands, key=lambda k: abs(ts[k] - query))
    return k if abs(ts[k] - query) <= max_dt else None


def read_tum(path: Path, *, fx=None, fy=None, cx=None, cy=None, intrinsics=None,
             depth_scale: float = 5000.0, max_dt: float = 0.02) -> Scene:
    """Read a TUM RGB-D sequence (folder or its ``groundtruth.txt``); see the module doc."""
    path = Path(path)
    root = path.parent if path.is_file() else path
    gt_path = root / "groundtruth.txt"
    for p in (gt_path, root / "rgb.txt"):
        if not p.is_file():
            raise SceneError(f"{root}: {p.name} not found (TUM RGB-D needs groundtruth.txt and rgb.txt)")
    gt_ts, gt_rows = _stamped(gt_path, 7)
    order = np.argsort(gt_ts, kind="stable")
    gt_ts, gt_rows = gt_ts[order], [gt_rows[i] for i in order]
    rgb_ts, rgb_rows = _stamped(root / "rgb.txt", 1)
    has_depth = (root / "depth.txt").is_file()
    d_ts, d_rows = _stamped(root / "depth.txt", 1) if has_depth else (np.zeros(0), [])
    d_order = np.argsort(d_ts, kind="stable")
    d_ts, d_rows = d_ts[d_order], [d_rows[i] for i in d_order]
    frames = []
    for ts, row in zip(rgb_ts, rgb_rows):
        g = _nearest(gt_ts, ts, max_dt)
        d = _nearest(d_ts, ts, max_dt) if has_depth else None
        if g is None or (has_depth and d is None):
            continue
        frames.append((row[0], gt_rows[g], d_rows[d][0] if has_depth else None))
    if not frames:
        raise SceneError(f"{root}: no colour frame has a ground-truth pose{' and depth' if has_depth else ''} "
                         f"within max_dt={max_dt} s")
    missing = [f[0] for f in frames if not (root / f[0]).is_file()]
    missing += [f[2] for f in frames if f[2] is not None and not (root / f[2]).is_file()]
    if missing:
        raise missing_error("images", missing, len(frames), root)
    try:
        vals = torch.tensor([[float(v) for v in f[1]] for f in frames], dtype=torch.float64)
    except ValueError:
        raise SceneError(f"{gt_path}: non-numeric pose values") from None
    c2w = torch.eye(4, dtype=torch.float64).repeat(len(frames), 1, 1)
    c2w[:, :3, :3] = quat_to_mat(xyzw_to_wxyz(vals[:, 3:7]))
    c2w[:, :3, 3] = vals[:, :3]
    K = _intrinsics(root, intrinsics, fx, fy, cx, cy, auto_json=False)
    paths = [root / f[0] for f in frames]
    return Scene(image_paths=paths, c2w=c2w, K=K.expand(len(frames), 3, 3).clone(),
                 image_hw=[image_hw(p) for p in paths], names=[f[0] for f in frames], format="tum",
                 depth_paths=[root / f[2] for f in frames] if has_depth else None,
                 depth_scale=float(depth_scale) if has_depth else None)


def _parse_log(path: Path) -> tuple[list[int], torch.Tensor]:
    lines = [(ln, line.split()) for ln, line in enumerate(_read_text(path), 1) if line.strip()]
    if not lines or len(lines) % 5:
        raise SceneError(f"{path}: expected blocks of 5 lines (a 'id id n' header and a 4x4 matrix)")
    ids, mats = [], []
    for b in range(0, len(lines), 5):
        try:
            ids.append(int(lines[b][1][0]))
            m = [[float(v) for v in lines[b + r][1]] for r in range(1, 5)]
            if any(len(row) != 4 for row in m):
                raise ValueError
        except (ValueError, IndexError):
            raise SceneError(f"{path} line {lines[b][0]}: malformed trajectory block") from None
        mats.append(m)
    return ids, torch.tensor(mats, dtype=torch.float64)


def _files(d: Path) -> list[Path]:
    return sorted((p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS), key=lambda p: p.name)


def read_trajectory_log(path: Path, *, fx=None, fy=None, cx=None, cy=None, intrinsics=None,
                        depth_scale: float = 1000.0, images_dir=None, depth_dir=None) -> Scene:
    """Read an Open3D / ICL-NUIM RGB-D sequence (folder or its ``.log``); see the module doc."""
    path = Path(path)
    log = path if path.is_file() else path / "trajectory.log"
    root = log.parent
    ids, c2w = _parse_log(log)
    match = root / "rgbd.match"
    if match.is_file() and images_dir is None and depth_dir is None:
        pairs = [ln.split() for ln in _read_text(match) if ln.strip()]
        if any(len(p) < 2 for p in pairs):
            raise SceneError(f"{match}: expected 'depth_path color_path' lines")
        colors, depths = [root / p[1] for p in pairs], [root / p[0] for p in pairs]
    else:
        if images_dir is not None:
            cdir = resolve_dir(root, images_dir)
        else:
            cdir = next((root / d for d in ("color", "rgb", "image", "images") if (root / d).is_dir()), None)
        if cdir is None or not cdir.is_dir():
            raise SceneError(f"{root}: no color/, rgb/, image/ or images/ folder beside {log.name}; "
                             "pass images=FOLDER")
        colors = _files(cdir)
        ddir = resolve_dir(root, depth_dir) if depth_dir is not None else root / "depth"
        depths = _files(ddir) if ddir.is_dir() else None
        if depth_dir is not None and depths is None:
            raise SceneError(f"depth_dir: {ddir} is not a folder")
    missing = [str(i) for i in ids if not 0 <= i < len(colors) or not colors[i].is_file()]
    if depths is not None:
        missing += [f"depth {i}" for i in ids if not 0 <= i < len(depths) or not depths[i].is_file()]
    if missing:
        raise missing_error("images for frame ids", missing, len(ids), log)
    if not bool(torch.isfinite(c2w).all()):
        raise SceneError(f"{log}: non-finite pose values")
    K = _intrinsics(root, intrinsics, fx, fy, cx, cy, auto_json=True)
    paths = [colors[i] for i in ids]
    return Scene(image_paths=paths, c2w=c2w, K=K.expand(len(ids), 3, 3).clone(),
                 image_hw=[image_hw(p) for p in paths],
                 names=[p.relative_to(root).as_posix() if p.is_relative_to(root) else p.name for p in paths],
                 format="open3d_log", depth_paths=None if depths is None else [depths[i] for i in ids],
                 depth_scale=None if depths is None else float(depth_scale))
