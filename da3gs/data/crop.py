"""Training resolutions and the resize + crop of one view with its intrinsics updated exactly.

Resolutions are written ``(W, H)`` as in the paper's list (504x378 is 504 wide, 378 high);
:func:`resolution_set` turns them into ``(H, W)`` pairs scaled to a base resolution, every
side a multiple of the patch size 14.

Pixel convention (the project's, :mod:`da3gs.io.resize`): pixel ``i`` covers ``[i, i + 1)``,
its centre at ``i + 0.5``. A resize by ``(sx, sy)`` then maps a continuous image point
``u -> u * sx`` exactly, and a crop at ``(left, top)`` maps ``u -> u - left``; so the new
intrinsics are ``K' = [[sx, 0, -left], [0, sy, -top], [0, 0, 1]] @ K``, and a 3D point
projects through ``K'`` to the same image content it projected to through ``K``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["PAPER_RESOLUTIONS", "PATCH", "closest_resolution", "num_tokens", "resize_crop", "resolution_set"]

PATCH = 14
# Stage-1 resolutions of the paper, (W, H) at base 504.
PAPER_RESOLUTIONS: tuple[tuple[int, int], ...] = (
    (504, 504), (504, 378), (504, 336), (504, 280), (336, 504), (896, 504), (756, 504), (672, 504))


def _mult(x: float, patch: int) -> int:
    return max(patch, math.floor(x / patch + 0.5) * patch)


def resolution_set(base: int = 504, resolutions=PAPER_RESOLUTIONS, patch: int = PATCH) -> list[tuple[int, int]]:
    """``(H, W)`` pairs: each ``(W, H)`` of ``resolutions`` (given at base 504) scaled by
    ``base / 504`` and rounded to the nearest multiple of ``patch`` (at least ``patch``);
    duplicates dropped, order kept."""
    if int(base) < patch:
        raise ValueError(f"base_resolution: expected at least {patch}, got {base}")
    out: list[tuple[int, int]] = []
    for wh in resolutions:
        w, h = (int(v) for v in wh)
        hw = (_mult(h * base / 504, patch), _mult(w * base / 504, patch))
        if hw not in out:
            out.append(hw)
    if not out:
        raise ValueError("resolutions: expected at least one (W, H) pair")
    return out


def num_tokens(hw: tuple[int, int], patch: int = PATCH) -> int:
    """Patch tokens of one ``(H, W)`` view."""
    return (int(hw[0]) // patch) * (int(hw[1]) // patch)


def closest_resolution(src_hw: tuple[int, int], choices: list[tuple[int, int]]) -> tuple[int, int]:
    """The ``(H, W)`` of ``choices`` whose aspect ratio is closest (in log) to ``src_hw``'s;
    ties go to the one with fewer pixels."""
    a = math.log(src_hw[1] / src_hw[0])
    return min(choices, key=lambda hw: (round(abs(math.log(hw[1] / hw[0]) - a), 9), hw[0] * hw[1]))


def resize_crop(image: torch.Tensor, K: torch.Tensor, out_hw: tuple[int, int], depth: torch.Tensor | None = None,
                zoom: float = 1.0, crop_at: tuple[float, float] = (0.5, 0.5)):
    """Resize ``image`` to cover ``out_hw`` (times ``zoom``) and crop ``out_hw`` out of it.

    Args:
        image: (3, H0, W0) float in [0, 1].
        K: (3, 3) intrinsics in pixels of ``image``.
        out_hw: output ``(H, W)``.
        depth: (Hd, Wd) z-depth or None; resized with nearest neighbour (never interpolated
            across edges; values are copied, so z-depth stays exact). A depth map of another
            size than the image is first brought to the image's size the same way.
        zoom: >= 1; scale beyond the smallest one that covers ``out_hw`` (a random zoom).
        crop_at: ``(x, y)`` in [0, 1]: where the crop window sits in the resized image
            (0 = left/top edge, 0.5 = centred, 1 = right/bottom).
    Returns:
        image (3, H, W), K (3, 3) (same dtype as ``K``) and depth (H, W) or None.
    """
    _, H0, W0 = (int(v) for v in image.shape)
    crop_at = (float(crop_at[0]), float(crop_at[1]))
    H, W = int(out_hw[0]), int(out_hw[1])
    if zoom < 1.0:
        raise ValueError(f"zoom: expected >= 1, got {zoom}")
    s = max(H / H0, W / W0) * float(zoom)
    nw, nh = max(W, round(W0 * s)), max(H, round(H0 * s))
    sx, sy = nw / W0, nh / H0
    left = round(min(max(crop_at[0], 0.0), 1.0) * (nw - W))
    top = round(min(max(crop_at[1], 0.0), 1.0) * (nh - H))
    if (nh, nw) != (H0, W0):
        image = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=nh < H0 or nw < W0)[0].clamp(0.0, 1.0)
    image = image[:, top:top + H, left:left + W].contiguous()
    A = torch.tensor([[sx, 0.0, -left], [0.0, sy, -top], [0.0, 0.0, 1.0]], dtype=torch.float64)
    K2 = (A @ K.to(torch.float64)).to(K.dtype)
    if depth is not None:
        depth = F.interpolate(depth[None, None].float(), size=(nh, nw), mode="nearest-exact")[0, 0]
        depth = depth[top:top + H, left:left + W].contiguous()
    return image, K2, depth
