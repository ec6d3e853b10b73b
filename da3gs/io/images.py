"""Image reading, folder listing and batch preparation (official Depth Anything 3 semantics).

See :mod:`da3gs.io.resize` for the resize/crop rules and the intrinsics convention.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError
from .resize import (
    PATCH_SIZE,
    PreparedImages,
    check_K,
    check_method,
    check_mixed_sizes,
    collate,
    common_size,
    cover_view,
    process_view,
    unify_sizes,
)

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
HEIF_EXTS = (".heic", ".heif")  # read when pillow-heif is installed (extra ``heif``)
HEIF_HINT = "HEIC/HEIF photos need pillow-heif: pip install 'da3gs[heif]' (or pip install pillow-heif)"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RANGE_TOL = 1e-3
_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

ImageLike = Union[str, Path, np.ndarray, Image.Image]


_HEIF_STATE: dict[str, bool] = {}


def heif_available() -> bool:
    """Whether HEIC/HEIF files can be read; on first call registers pillow-heif's opener with
    Pillow (only when a .heic/.heif file is met, so Pillow is untouched otherwise)."""
    if "ok" not in _HEIF_STATE:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
            _HEIF_STATE["ok"] = True
        except Exception:  # not installed, or a broken libheif build
            _HEIF_STATE["ok"] = False
    return _HEIF_STATE["ok"]


def is_heif(path: str | Path) -> bool:
    return Path(path).suffix.lower() in HEIF_EXTS


def skipped_note(skipped: list[Path], folder: str | Path, limit: int = 5) -> str:
    """One line naming the files :func:`list_images` skipped (with the HEIF hint when some are
    HEIC/HEIF photos that could not be read)."""
    more = f" (+{len(skipped) - limit} more)" if len(skipped) > limit else ""
    note = (f"skipped {len(skipped)} non-image file(s) in {folder}: "
            f"{', '.join(p.name for p in skipped[:limit])}{more}")
    if any(is_heif(p) for p in skipped):
        note += f"; {HEIF_HINT}"
    return note


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _check_background(background) -> np.ndarray | None:
    """``None`` (alpha dropped) or a ``(3,)`` float32 colour in [0, 1]."""
    if background is None:
        return None
    bg = np.asarray(background, dtype=np.float32).reshape(-1)
    if bg.shape != (3,) or not np.all(np.isfinite(bg)) or bg.min() < 0 or bg.max() > 1:
        raise InputError(f"background: expected 3 values in [0, 1], got {background!r}")
    return bg


def _composite(rgb: np.ndarray, alpha: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """``rgb (H, W, 3)`` float over ``bg (3,)`` with ``alpha (H, W)`` in [0, 1]."""
    a = alpha[..., None]
    return (rgb * a + bg * (1.0 - a)).astype(np.float32)


_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _decode(img: Image.Image, bg: np.ndarray | None, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Decoded PIL image -> ``(rgb (H, W, 3), alpha (H, W) float32 or None)``.

    ``rgb`` is ``uint8`` for 8-bit images (kept exact for resizing), float32 in
    [0, 1] for 16-bit, float and alpha-composited images. With ``bg=None`` the
    alpha channel is dropped as the official reader does (``convert("RGB")``:
    the stored colours of transparent pixels are kept).
    """
    mode = img.mode
    if bg is None and (mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info)):
        alpha = np.asarray(img.convert("RGBA"))[..., 3].astype(np.float32) / 255.0
        return np.asarray(img.convert("RGB")), alpha
    if mode in ("P", "PA"):
        img = img.convert("RGBA" if (mode == "PA" or "transparency" in img.info) else "RGB")
    elif mode == "1":
        img = img.convert("L")
    elif mode in ("RGBa", "La"):
        img = img.convert("RGBA" if mode == "RGBa" else "LA")
    elif mode not in ("L", "LA", "RGB", "RGBA", "F") + _16BIT_MODES:
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    mode = img.mode
    if mode in _16BIT_MODES:
        g = np.clip(np.asarray(img).astype(np.float32) / 65535.0, 0.0, 1.0)
        return np.repeat(g[..., None], 3, axis=-1), None
    if mode == "F":
        g = np.asarray(img, dtype=np.float32)
        if not np.all(np.isfinite(g)) or g.min() < -_RANGE_TOL or g.max() > 1 + _RANGE_TOL:
            raise InputError(f"{name}: floating-point image has values outside [0, 1] or non-finite values")
        g = np.clip(g, 0.0, 1.0)
        return np.repeat(g[..., None], 3, axis=-1), None
    arr = np.asarray(img)
    if mode == "L":
        return np.repeat(arr[..., None], 3, axis=-1), None
    if mode == "RGB":
        return arr, None
    if mode == "LA":
        rgb, alpha = np.repeat(arr[..., :1], 3, axis=-1), arr[..., 1]
    else:  # RGBA
        rgb, alpha = arr[..., :3], arr[..., 3]
    alpha = alpha.astype(np.float32) / 255.0
    return _composite(rgb.astype(np.float32) / 255.0, alpha, bg), alpha


def _to_float(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32, copy=False)


def _open(path, bg: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected an image file")
    if is_heif(p) and not heif_available():
        raise InputError(f"{p}: {HEIF_HINT}")
    try:
        with Image.open(p) as img:
            img.load()  # full decode: truncated/corrupt files fail here
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # malformed EXIF: keep the pixels as stored
                pass
            return _decode(img, bg, str(p))
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{p}: not a recognised image file (supported: {' '.join(IMAGE_EXTS)})") from None
    except PermissionError:
        raise InputError(f"{p}: permission denied") from None
    except Image.DecompressionBombError as e:
        raise InputError(f"{p}: image too large ({_one_line(e)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        raise InputError(f"{p}: truncated or corrupt image ({_one_line(e)})") from None


def read_image(path: str | Path, background=(1.0, 1.0, 1.0), return_alpha: bool = False):
    """Read an image file as ``(H, W, 3)`` float32 RGB in [0, 1].

    JPEG/PNG/WebP/BMP/TIFF via Pillow, with EXIF orientation applied. Grayscale
    is repeated to 3 channels; 16-bit grayscale (``I;16``/``I``) is divided by
    65535 without 8-bit truncation; CMYK etc. are converted to RGB. Images with
    alpha (RGBA, LA, palette with transparency) are composited over
    ``background`` (3 floats in [0, 1], default white); ``background=None``
    drops alpha instead (the stored colours, as the official reader and
    :func:`prepare_images` by default).

    Note: Pillow decodes 16-bit-per-channel *colour* PNG/TIFF to 8 bits.

    Returns:
        ``rgb`` or, if ``return_alpha``, ``(rgb, alpha)`` with ``alpha (H, W)``
        float32 in [0, 1], or ``None`` for images without alpha.

    Raises:
        InputError: ``"<path>: <problem>"`` for a missing file, a directory,
        a non-image or a truncated/corrupt file.
    """
    rgb, alpha = _open(path, _check_background(background))
    rgb = _to_float(rgb)
    return (rgb, alpha) if return_alpha else rgb


def _natural_key(p: Path):
    parts = re.split(r"(\d+)", p.name.lower())
    return [int(t) if t.isdigit() else t for t in parts], p.name


CAMERA_FILES = frozenset({"transforms.json", "cameras.json", "poses_bounds.npy", "cameras.txt",
                          "cameras.bin", "images.txt", "images.bin", "points3d.txt",
                          "points3d.bin", "project.ini", "database.db"})
"""Camera files that often sit among the images (nerfstudio / NeRF, da3gs, LLFF, COLMAP):
neither images nor "skipped" (lower-case names; ``transforms_*.json`` splits too)."""


def is_camera_file(p: Path) -> bool:
    """True for a recognised camera file (:data:`CAMERA_FILES`, ``transforms_train.json`` ...)."""
    name = p.name.lower()
    return name in CAMERA_FILES or (name.startswith("transforms_") and name.endswith(".json"))


def list_images(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """Image files of ``folder`` in natural order (``img2`` before ``img10``).

    Extensions (case-insensitive): ``.jpg .jpeg .png .webp .bmp .tif .tiff``, and
    ``.heic .heif`` when pillow-heif is installed (extra ``heif``; else they are
    skipped, see :func:`skipped_note`). Hidden files and sub-folders are ignored.

    Returns:
        ``(images, skipped)``: image paths and the other (non-image) files, less recognised
        camera files (:func:`is_camera_file`: ``transforms.json``, COLMAP files ...), which
        belong there and are not reported.

    Raises:
        InputError: the folder is missing, not a folder, or holds no images.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    images, skipped = [], []
    for p in folder.iterdir():
        if p.name.startswith(".") or not p.is_file():
            continue
        ok = p.suffix.lower() in IMAGE_EXTS or (is_heif(p) and heif_available())
        if ok:
            images.append(p)
        elif not is_camera_file(p):
            skipped.append(p)
    if not images:
        hint = f"; {HEIF_HINT}" if any(is_heif(p) for p in skipped) else ""
        raise InputError(f"{folder}: no images found (supported: {' '.join(IMAGE_EXTS)}){hint}")
    return sorted(images, key=_natural_key), sorted(skipped, key=_natural_key)


def _from_array(a: np.ndarray, bg: np.ndarray | None, name: str) -> np.ndarray:
    """User array ``(H, W)``, ``(H, W, 1|3|4)`` uint8/uint16/float -> ``(H, W, 3)`` uint8 or float32.

    A 4th (alpha) channel is composited over ``bg``, or dropped if ``bg`` is None.
    """
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"{name}: expected an array of shape (H, W, 3), got {a.shape}")
    if a.shape[2] == 4 and bg is None:
        a = a[..., :3]
    if a.dtype == np.uint8:
        f = None if a.shape[2] != 4 else a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16:
        f = a.astype(np.float32) / 65535.0
    elif np.issubdtype(a.dtype, np.floating):
        f = a.astype(np.float32)
        if not np.all(np.isfinite(f)) or f.min() < -_RANGE_TOL or f.max() > 1 + _RANGE_TOL:
            raise InputError(f"{name}: float image values must be finite and in [0, 1]")
        f = np.clip(f, 0.0, 1.0)
    else:
        raise InputError(f"{name}: unsupported array dtype {a.dtype} (use uint8, uint16 or float in [0, 1])")
    if f is None:
        return np.repeat(a, 3, axis=-1) if a.shape[2] == 1 else a
    if f.shape[2] == 4:
        return _composite(f[..., :3], f[..., 3], bg)
    return np.repeat(f, 3, axis=-1) if f.shape[2] == 1 else f


def _load_item(item, bg: np.ndarray | None, name: str) -> np.ndarray:
    if isinstance(item, (str, Path)):
        return _open(item, bg)[0]
    if isinstance(item, Image.Image):
        try:
            item.load()
            return _decode(item, bg, name)[0]
        except (OSError, ValueError) as e:
            if isinstance(e, InputError):
                raise
            raise InputError(f"{name}: cannot decode PIL image ({_one_line(e)})") from None
    if isinstance(item, np.ndarray):
        return _from_array(item, bg, name)
    raise InputError(f"{name}: unsupported type {type(item).__name__} (use a path, numpy array or PIL image)")


def _check_tensor(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputError(f"images: expected a tensor of shape (V, 3, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError("no images given")
    if not x.is_floating_point():
        raise InputError(f"images: expected a float tensor in [0, 1], got dtype {x.dtype}")
    if x.numel() == 0:
        raise InputError(f"images: empty image size {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()) or x.min() < -_RANGE_TOL or x.max() > 1 + _RANGE_TOL:
        raise InputError("images: tensor values must be finite and in [0, 1]")


def prepare_images(
    images: Sequence[ImageLike] | torch.Tensor,
    K=None,
    process_res: int = 504,
    method: str = "upper_bound_resize",
    background=None,
    mixed_sizes: str = "cover",
) -> PreparedImages:
    """Load, resize and crop a batch of views as the official Depth Anything 3 does.

    Args:
        images: list of paths (str/Path), numpy arrays ``(H, W, 3)`` (uint8 or
            float in [0, 1]) or PIL images; or a tensor ``(V, 3, H, W)`` float in
            [0, 1]. A tensor whose sides are multiples of 14 with longest side
            ``<= process_res`` is passed through unresized.
        K: optional ``(V, 3, 3)`` intrinsics in input pixels (array/tensor/list).
        process_res: target boundary size (default 504).
        method: ``upper_bound_resize`` (default), ``upper_bound_crop``,
            ``lower_bound_resize`` or ``lower_bound_crop``.
        background: ``None`` (default): alpha is dropped and the stored colours
            are used, as the official pipeline does; or RGB in [0, 1] to
            composite RGBA / LA / transparent-palette images on.
        mixed_sizes: what to do when the views' processed sizes differ (the
            network needs one H x W per batch). ``"cover"`` (default): the
            common size is the processed size of one view (the one that keeps
            most of all images, :func:`~da3gs.io.resize.common_size`); every
            other view is resized *from its original* by its own factor to
            just cover it and centre-cropped on its longer relative side
            only (same aspect: nothing is cropped). ``"crop_to_smallest"``:
            the official rule, every view centre-cropped to the smallest H
            and smallest W of the batch (can discard most of an image).
            Either way one log line (logger ``da3gs.io.images``, WARNING)
            says what was done, and ``resize_scale``/``crop_offsets``/``K``
            describe each view exactly.

    8-bit images are resized as 8-bit with OpenCV's kernels (``INTER_AREA``
    when shrinking, ``INTER_CUBIC`` when enlarging), so files give exactly the
    official processed tensors. Files get EXIF orientation applied (the
    official reader does not; see :func:`read_image`); PIL images and arrays
    are used as given. 16-bit grayscale keeps its precision (float32 resize).

    Raises:
        InputError: a bad image, argument or size; Da3gsError if an image needs
        resizing and OpenCV (``opencv-python-headless``) is missing.
    """
    check_method(method)
    check_mixed_sizes(mixed_sizes)
    if isinstance(process_res, bool) or not isinstance(process_res, (int, np.integer)) or process_res < PATCH_SIZE:
        raise InputError(f"process_res: expected an integer >= {PATCH_SIZE}, got {process_res!r}")
    bg = _check_background(background)
    if isinstance(images, (str, Path, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)):
        images = [images]
    if isinstance(images, torch.Tensor):
        _check_tensor(images)
        V, _, H, W = images.shape
        Ks = check_K(K, V)
        sizes, paths = [(int(H), int(W))] * V, None
        if H % PATCH_SIZE == 0 and W % PATCH_SIZE == 0 and max(H, W) <= process_res:
            imgs = images.detach().to(torch.float32).clamp(0.0, 1.0)
            K_t = None if Ks is None else torch.from_numpy(Ks.copy())
            return PreparedImages(imgs, K_t, sizes, paths, [(1.0, 1.0)] * V, [(0, 0)] * V)
        arrs = images.detach().to("cpu", torch.float32).clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()
        views = [
            process_view(arrs[i], None if Ks is None else Ks[i], process_res, method, f"images[{i}]")
            for i in range(V)
        ]
    else:
        try:
            items = list(images)
        except TypeError:
            raise InputError(f"images: expected a list of images or a (V, 3, H, W) tensor, got {type(images).__name__}") from None
        if not items:
            raise InputError("no images given")
        V = len(items)
        Ks = check_K(K, V)
        paths = [Path(p) for p in items] if all(isinstance(p, (str, Path)) for p in items) else None
        views, sizes = [], []
        names = [str(item) if isinstance(item, (str, Path)) else f"images[{i}]" for i, item in enumerate(items)]
        for i, item in enumerate(items):
            arr = _load_item(item, bg, names[i])
            sizes.append((int(arr.shape[0]), int(arr.shape[1])))
            views.append(process_view(arr, None if Ks is None else Ks[i], process_res, method, names[i]))
            del arr  # only the processed views are kept; a view to re-fit is read again
        views = _unify(views, sizes, mixed_sizes, lambda i: _load_item(items[i], bg, names[i]), Ks)
    return collate(views, sizes, paths)


def _unify(views, orig_sizes, mode: str, reload, Ks) -> list:
    """One processed size for the batch (see ``mixed_sizes`` of :func:`prepare_images`)."""
    processed = [tuple(v.image.shape[:2]) for v in views]
    if len(set(processed)) <= 1:
        return views
    V = len(views)
    if mode == "crop_to_smallest":
        views, n = unify_sizes(views)
        h, w = views[0].image.shape[:2]
        log.warning("mixed image sizes: centre-cropped %d of %d views to the smallest common size "
                    "%dx%d (W x H)", n, V, w, h)
        return views
    th, tw = common_size(orig_sizes, processed)
    out, changed = list(views), []
    for i, hw in enumerate(processed):
        if hw != (th, tw):
            out[i] = cover_view(reload(i), None if Ks is None else Ks[i], (th, tw))
            changed.append(i)
    kept = min(th * tw / (round(orig_sizes[i][0] * out[i].scale[1]) * round(orig_sizes[i][1] * out[i].scale[0]))
               for i in changed)
    how = ("resized, nothing cropped" if kept == 1.0 else
           f"resized by each view's own factor and centre-cropped, at least {math.floor(kept * 100)}% "
           "of every image kept")
    log.warning("mixed image sizes: %d of %d views brought to the common size %dx%d (W x H); %s",
                len(changed), V, tw, th, how)
    return out


def _mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim < 3 or x.shape[-3] != 3:
        raise InputError(f"x: expected a tensor of shape (..., 3, H, W), got {tuple(x.shape)}")
    # filled on the device element by element, not copied from the host: the training step runs
    # inside a CUDA-graph capture, which refuses host-to-device copies from pageable memory
    mean, std = (torch.empty(3, 1, 1, dtype=x.dtype, device=x.device) for _ in range(2))
    for i in range(3):
        mean[i] = IMAGENET_MEAN[i]
        std[i] = IMAGENET_STD[i]
    return mean, std


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` in [0, 1] -> ImageNet-normalised ``(x - mean) / std``."""
    mean, std = _mean_std(x)
    return (x - mean) / std


def imagenet_denormalize(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`imagenet_normalize`: ``x * std + mean`` on ``(..., 3, H, W)``."""
    mean, std = _mean_std(x)
    return x * std + mean
