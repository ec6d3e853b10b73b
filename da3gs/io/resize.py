"""Resizing / cropping to the network resolution, as the official Depth Anything 3.

Mirrors ``depth_anything_3/utils/io/input_processor.py`` with the same kernels:
OpenCV's ``cv2.INTER_AREA`` when shrinking and ``cv2.INTER_CUBIC`` when any side
grows, on 8-bit ``(H, W, 3)`` arrays, so that image files give bit-identical
processed tensors (Pillow's kernels differ by tens of grey levels at edges).
Float images (16-bit files, float arrays, tensors) are resized in float32 with
the same kernels and clipped to ``[0, 1]``. OpenCV (``opencv-python-headless``)
is imported only when an image actually needs resizing.

Intrinsics convention
---------------------
A resize by ``(sx, sy) = (new_w / old_w, new_h / old_h)`` multiplies row 0 of
``K`` by ``sx`` and row 1 by ``sy`` (fx, skew, cx and fy, cy), the official
way. This maps a continuous pixel coordinate ``u`` to ``u' = u * sx``, which is
exact when pixel *edges* are at integers (pixel ``i`` covers ``[i, i+1)``, its
centre at ``i + 0.5``). Under the pixel-*centre* convention (centre of pixel
``i`` at ``i``) the exact map would be ``u' = (u + 0.5) * sx - 0.5``; we keep the
official behaviour. A crop at ``(left, top)`` maps ``u' = u - left`` and
``v' = v - top`` (cx, cy shifted).

Overall, processed pixel ``(u', v')`` relates to original pixel ``(u, v)`` by
``u' = u * sx - left`` and ``v' = v * sy - top`` with the per-view ``scale`` and
``crop`` of :class:`ProcessedView` (resizes always happen before crops).

Mixed sizes
-----------
The network needs one H x W per batch. Views whose processed size differs from
the batch's common size (:func:`common_size`) are resized from their original by
their own factor to just cover it and centre-cropped (:func:`cover_view`); views
already at that size are left exactly as above. The official rule (crop all to
the smallest H and W) is :func:`unify_sizes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from da3gs.errors import Da3gsError

from .errors import InputError

PATCH_SIZE = 14
METHODS = ("upper_bound_resize", "upper_bound_crop", "lower_bound_resize", "lower_bound_crop")


def check_method(method: str) -> None:
    """Raise :class:`InputError` unless ``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise InputError(f"method: unsupported value {method!r}; expected one of {', '.join(METHODS)}")


def boundary_size(w: int, h: int, process_res: int, method: str) -> tuple[int, int]:
    """Size ``(new_w, new_h)`` after the aspect-preserving boundary resize.

    ``upper_bound_*``: longest side becomes ``process_res``; ``lower_bound_*``:
    shortest side. Unchanged if that side already equals ``process_res``.
    """
    check_method(method)
    side = max(w, h) if method.startswith("upper_bound") else min(w, h)
    if side == process_res:
        return w, h
    scale = process_res / float(side)
    return max(1, int(round(w * scale))), max(1, int(round(h * scale)))


def nearest_multiple(x: int, p: int = PATCH_SIZE) -> int:
    """Nearest multiple of ``p`` to ``x``; ties go up (official rule)."""
    down = (x // p) * p
    up = down + p
    return up if abs(up - x) <= abs(x - down) else down


def divisible_size(w: int, h: int, method: str, patch: int = PATCH_SIZE) -> tuple[int, int]:
    """Size after making both sides multiples of ``patch``.

    ``*_resize`` rounds each side to the nearest multiple (a small resize);
    ``*_crop`` floors each side (a centre crop).
    """
    check_method(method)
    if method.endswith("resize"):
        return max(1, nearest_multiple(w, patch)), max(1, nearest_multiple(h, patch))
    return (w // patch) * patch, (h // patch) * patch


def output_size(w: int, h: int, process_res: int = 504, method: str = "upper_bound_resize") -> tuple[int, int]:
    """Final per-image ``(width, height)`` for an input of ``w x h`` (before batch unification)."""
    bw, bh = boundary_size(w, h, process_res, method)
    return divisible_size(bw, bh, method)


def _cv2():
    """OpenCV, imported on first use (training machines may lack it)."""
    try:
        import cv2
    except ImportError as e:
        raise Da3gsError(
            "resizing images needs OpenCV (the official Depth Anything 3 kernels): "
            f"pip install opencv-python-headless ({' '.join(str(e).split())})"
        ) from None
    return cv2


def resize_array(arr: np.ndarray, new_w: int, new_h: int, upscale: bool) -> np.ndarray:
    """Resize an image array ``(H, W, C)`` to ``(new_h, new_w, C)`` with OpenCV.

    ``upscale`` selects ``cv2.INTER_CUBIC`` (else ``cv2.INTER_AREA``), the
    official choice. ``uint8`` arrays stay ``uint8`` (bit-identical to the
    official pipeline); float arrays are resized in float32 and clipped to
    ``[0, 1]`` (bicubic can overshoot).

    Raises:
        Da3gsError: OpenCV is not installed.
    """
    h, w = arr.shape[:2]
    if (w, h) == (new_w, new_h):
        return arr
    cv2 = _cv2()
    interp = cv2.INTER_CUBIC if upscale else cv2.INTER_AREA
    if arr.dtype == np.uint8:
        out = cv2.resize(np.ascontiguousarray(arr), (new_w, new_h), interpolation=interp)
    else:
        out = cv2.resize(np.ascontiguousarray(arr, dtype=np.float32), (new_w, new_h), interpolation=interp)
        out = np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
    return out.reshape(new_h, new_w, *arr.shape[2:])  # cv2 drops a trailing channel axis of 1


def scale_intrinsics(K, sx: float, sy: float):
    """Official resize rule: row 0 of ``K (..., 3, 3)`` times ``sx``, row 1 times ``sy``.

    ``K`` is a NumPy array or a torch tensor (a copy is returned) or None.
    """
    if K is None:
        return None
    K = K.clone() if isinstance(K, torch.Tensor) else K.copy()
    K[..., 0, :] *= sx
    K[..., 1, :] *= sy
    return K


def shift_intrinsics(K: np.ndarray | None, left: int, top: int) -> np.ndarray | None:
    """Crop rule: ``cx -= left``, ``cy -= top`` on ``K (3, 3)``."""
    if K is None:
        return None
    K = K.copy()
    K[0, 2] -= left
    K[1, 2] -= top
    return K


@dataclass
class ProcessedView:
    """One processed image.

    Attributes:
        image: ``(H, W, 3)`` uint8 or float32 array at network resolution.
        K: adjusted ``(3, 3)`` float64 intrinsics, or ``None``.
        scale: ``(sx, sy)``, total resize factor (processed / original, before crops).
        crop: ``(left, top)``, total crop offset in resized pixels.
    """

    image: np.ndarray
    K: np.ndarray | None
    scale: tuple[float, float]
    crop: tuple[int, int]


def process_view(
    arr: np.ndarray, K: np.ndarray | None, process_res: int, method: str, name: str = "image"
) -> ProcessedView:
    """Boundary resize + patch divisibility of one ``(H, W, 3)`` array (official pipeline).

    Raises :class:`InputError` naming ``name`` if the result would have a side
    shorter than one patch (14 px), e.g. for extremely elongated images.
    """
    check_method(method)
    oh, ow = arr.shape[:2]
    # 1) boundary resize
    w, h = boundary_size(ow, oh, process_res, method)
    if (w, h) != (ow, oh):
        upscale = process_res / float(max(ow, oh) if method.startswith("upper") else min(ow, oh)) > 1.0
        arr = resize_array(arr, w, h, upscale)
        K = scale_intrinsics(K, w / float(ow), h / float(oh))
    # 2) divisible by the patch size
    nw, nh = divisible_size(w, h, method)
    if nw < PATCH_SIZE or nh < PATCH_SIZE:
        raise InputError(
            f"{name}: image of size {ow}x{oh} is too small or elongated for process_res={process_res} "
            f"({method} would give {nw}x{nh}; each side must be at least {PATCH_SIZE} px)"
        )
    left = top = 0
    if (nw, nh) != (w, h):
        if method.endswith("resize"):
            arr = resize_array(arr, nw, nh, upscale=(nw > w) or (nh > h))
            K = scale_intrinsics(K, nw / float(w), nh / float(h))
            w, h = nw, nh
        else:
            left, top = (w - nw) // 2, (h - nh) // 2
            arr = arr[top : top + nh, left : left + nw]
            K = shift_intrinsics(K, left, top)
    return ProcessedView(arr, K, (w / float(ow), h / float(oh)), (left, top))


MIXED_SIZES = ("cover", "crop_to_smallest")


def check_mixed_sizes(mode: str) -> None:
    """Raise :class:`InputError` unless ``mode`` is one of :data:`MIXED_SIZES`."""
    if mode not in MIXED_SIZES:
        raise InputError(f"mixed_sizes: unsupported value {mode!r}; expected one of {', '.join(MIXED_SIZES)}")


def kept_fraction(orig_hw: tuple[int, int], target_hw: tuple[int, int]) -> float:
    """Share of an ``orig_hw`` image left after scaling it to cover ``target_hw`` and centre-cropping."""
    (oh, ow), (th, tw) = orig_hw, target_hw
    a, b = ow / float(oh), tw / float(th)
    return min(a, b) / max(a, b)


def common_size(orig_sizes: list[tuple[int, int]], processed_sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The ``(H, W)`` a mixed batch is brought to: the processed size of one of its views that
    keeps the most of all images when each is scaled to cover it (:func:`kept_fraction`); ties go
    to the size most views already have, then to the earliest view."""
    cands = list(dict.fromkeys(processed_sizes))
    def score(t):
        return (round(sum(kept_fraction(o, t) for o in orig_sizes), 9),
                processed_sizes.count(t), -cands.index(t))
    return max(cands, key=score)


def cover_view(arr: np.ndarray, K: np.ndarray | None, target_hw: tuple[int, int]) -> ProcessedView:
    """Scale ``arr (H, W, C)`` by its own factor to just cover ``target_hw`` and centre-crop the
    overflow (the longer relative side only). Same kernels as :func:`process_view`; ``K`` is
    scaled by ``(sx, sy)`` and shifted by the crop, so ``scale``/``crop`` invert exactly."""
    oh, ow = arr.shape[:2]
    th, tw = target_hw
    s = max(tw / float(ow), th / float(oh))
    rw, rh = max(tw, int(round(ow * s))), max(th, int(round(oh * s)))
    if (rw, rh) != (ow, oh):
        arr = resize_array(arr, rw, rh, upscale=(rw > ow) or (rh > oh))
        K = scale_intrinsics(K, rw / float(ow), rh / float(oh))
    left, top = (rw - tw) // 2, (rh - th) // 2
    arr = arr[top : top + th, left : left + tw]
    return ProcessedView(arr, shift_intrinsics(K, left, top), (rw / float(ow), rh / float(oh)), (left, top))


def unify_sizes(views: list[ProcessedView]) -> tuple[list[ProcessedView], int]:
    """Centre-crop all views to the smallest H and smallest W of the batch (the official rule,
    ``mixed_sizes="crop_to_smallest"``; it can discard most of an image).

    Returns the new views and how many of them were cropped. ``cx, cy`` are
    shifted by the crop offsets ``((W - min_w) // 2, (H - min_h) // 2)``.
    """
    sizes = [v.image.shape[:2] for v in views]
    if len(set(sizes)) <= 1:
        return views, 0
    min_h = min(h for h, _ in sizes)
    min_w = min(w for _, w in sizes)
    out, n_cropped = [], 0
    for v, (h, w) in zip(views, sizes):
        if (h, w) == (min_h, min_w):
            out.append(v)
            continue
        n_cropped += 1
        top, left = (h - min_h) // 2, (w - min_w) // 2
        img = v.image[top : top + min_h, left : left + min_w]
        crop = (v.crop[0] + left, v.crop[1] + top)
        out.append(ProcessedView(img, shift_intrinsics(v.K, left, top), v.scale, crop))
    return out, n_cropped


def check_K(K, V: int) -> np.ndarray | None:
    """Validate intrinsics -> ``(V, 3, 3)`` float64 array, or ``None``."""
    if K is None:
        return None
    if isinstance(K, torch.Tensor):
        K = K.detach().cpu().numpy()
    try:
        arr = np.asarray(K, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"K: expected an array of shape (V, 3, 3) with V={V}, got {type(K).__name__}") from None
    if arr.shape != (V, 3, 3):
        raise InputError(f"K: expected shape (V, 3, 3) with V={V} (one per image), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError("K: contains non-finite values (NaN or inf)")
    return arr


@dataclass
class PreparedImages:
    """A batch ready for the model.

    Attributes:
        images: ``(V, 3, H, W)`` float32 in [0, 1] (NOT ImageNet-normalised).
        K: ``(V, 3, 3)`` float64 intrinsics in processed pixels, or ``None``.
        original_sizes: per view ``(H, W)`` of the input.
        paths: input paths when every input was a path, else ``None``.
        resize_scale: per view ``(sx, sy)`` = resized / original size.
        crop_offsets: per view ``(left, top)`` total crop in resized pixels.

    Processed pixel ``(u', v')`` <-> original ``(u, v)``: ``u' = u * sx - left``,
    ``v' = v * sy - top`` (pixel-edge convention, see :mod:`da3gs.io.resize`).
    """

    images: torch.Tensor
    K: torch.Tensor | None
    original_sizes: list[tuple[int, int]]
    paths: list[Path] | None
    resize_scale: list[tuple[float, float]]
    crop_offsets: list[tuple[int, int]]

    def to_original(self, uv: np.ndarray, view: int) -> np.ndarray:
        """Map processed pixel coords ``uv (..., 2)`` of ``view`` to original pixel coords."""
        (sx, sy), (left, top) = self.resize_scale[view], self.crop_offsets[view]
        uv = np.asarray(uv, dtype=np.float64)
        return np.stack([(uv[..., 0] + left) / sx, (uv[..., 1] + top) / sy], axis=-1)


def collate(views: list[ProcessedView], sizes, paths) -> PreparedImages:
    """Stack processed views (all of one size) into a :class:`PreparedImages`."""
    imgs = [v.image.astype(np.float32) / 255.0 if v.image.dtype == np.uint8 else v.image for v in views]
    imgs = torch.from_numpy(np.stack(imgs).astype(np.float32, copy=False)).permute(0, 3, 1, 2).contiguous()
    K_t = None if views[0].K is None else torch.from_numpy(np.stack([v.K for v in views]).astype(np.float64))
    return PreparedImages(imgs, K_t, list(sizes), paths, [v.scale for v in views], [v.crop for v in views])
