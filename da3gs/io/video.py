"""Videos of rendered frames: H.264 MP4 through imageio + imageio-ffmpeg, or a GIF fallback.

MP4s use libx264, yuv420p and imageio's ``quality`` (0-10, default 8). yuv420p
needs even sizes, so odd heights/widths are padded by one replicated row/column
(bottom/right). Frames are streamed (a generator is fine) into a temporary file
renamed on success (:mod:`da3gs.io.atomic`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image

from da3gs.errors import Da3gsError

from .atomic import atomic_path
from .depth import colorize_depth

__all__ = ["VideoError", "write_video", "side_by_side", "ffmpeg_available", "to_uint8_rgb"]


class VideoError(Da3gsError):
    """A video cannot be written (no ffmpeg, bad frames)."""


def ffmpeg_available() -> bool:
    """Whether imageio-ffmpeg and its ffmpeg binary can be found."""
    try:
        import imageio_ffmpeg

        return bool(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception:
        return False


def to_uint8_rgb(frame, name: str = "frame") -> np.ndarray:
    """(H, W), (H, W, 1|3|4) or (3, H, W) tensor; uint8 or float in [0, 1] -> (H, W, 3) uint8.

    Floats are clipped to [0, 1] and rounded; alpha is dropped; grey is repeated.
    """
    a = frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
    if isinstance(frame, torch.Tensor) and a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise VideoError(f"{name}: expected an (H, W, 3) image, got shape {a.shape}")
    a = a[..., :3] if a.shape[-1] == 4 else np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if np.issubdtype(a.dtype, np.floating) or a.dtype == np.bool_:
        return np.round(np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0) * 255.0).astype(np.uint8)
    raise VideoError(f"{name}: expected uint8 or float values, got dtype {a.dtype}")


def _pad_even(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return a
    return np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _frames(frames: Iterable, path: Path):
    shape = None
    for i, f in enumerate(frames):
        a = to_uint8_rgb(f, f"{path}: frame {i}")
        if shape is None:
            shape = a.shape
        elif a.shape != shape:
            raise VideoError(f"{path}: frame {i} has shape {a.shape}, frame 0 has {shape}")
        yield a
    if shape is None:
        raise VideoError(f"{path}: no frames to write")


def _write_gif(path: Path, frames: Iterable, fps: float) -> Path:
    images = [Image.fromarray(a) for a in _frames(frames, path)]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=max(int(round(1000.0 / fps)), 20), loop=0)
    return path


def write_video(path, frames: Iterable, fps: float = 30, quality: float = 8, fallback_gif: bool = False) -> Path:
    """Write ``frames`` ((H, W, 3) uint8 or float in [0, 1]) as a video; returns the path written.

    ``.gif`` paths are written as GIFs. Otherwise an MP4 (H.264) needs ffmpeg
    (imageio-ffmpeg); without it a :class:`VideoError` is raised, unless
    ``fallback_gif`` is set, in which case ``path`` with suffix ``.gif`` is
    written instead (check the returned path).
    """
    path = Path(path)
    if not fps > 0:
        raise VideoError(f"fps: expected > 0, got {fps}")
    if path.suffix.lower() == ".gif":
        return _write_gif(path, frames, fps)
    if not ffmpeg_available():
        if fallback_gif:
            return _write_gif(path.with_suffix(".gif"), frames, fps)
        raise VideoError(f"{path}: cannot write video, ffmpeg not found (pip install imageio-ffmpeg, "
                         "or use fallback_gif=True / a .gif path)")
    import imageio.v2 as iio

    it = _frames(frames, path)
    with atomic_path(path) as tmp:
        writer = None
        try:
            for a in it:
                a = _pad_even(a)
                if writer is None:
                    writer = iio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                            quality=quality, pixelformat="yuv420p", macro_block_size=1,
                                            ffmpeg_log_level="error")
                writer.append_data(a)
        except Da3gsError:
            raise
        except Exception as e:
            raise VideoError(f"{path}: ffmpeg failed ({' '.join(str(e).split())[:300]})") from None
        finally:
            if writer is not None:
                writer.close()
    return path


def side_by_side(rgb, depth_vis) -> np.ndarray:
    """(H, W, 3) image next to a depth preview -> (H, W + W', 3) uint8.

    ``depth_vis``: an (H', W', 3) image, or an (H', W') float depth map that is
    colourised with :func:`da3gs.io.depth.colorize_depth`. It is resized
    (nearest) to the height of ``rgb`` when the heights differ.
    """
    left = to_uint8_rgb(rgb, "rgb")
    d = depth_vis.detach().cpu().numpy() if isinstance(depth_vis, torch.Tensor) else np.asarray(depth_vis)
    right = colorize_depth(d) if d.ndim == 2 and np.issubdtype(d.dtype, np.floating) else to_uint8_rgb(d, "depth_vis")
    h = left.shape[0]
    if right.shape[0] != h:
        w = max(1, int(round(right.shape[1] * h / right.shape[0])))
        right = np.asarray(Image.fromarray(right).resize((w, h), Image.NEAREST))
    return np.concatenate([left, right], axis=1)
