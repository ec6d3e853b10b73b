"""Error type and cheap argument validation shared by ``da3gs.geometry``.

Every public geometry function raises :class:`GeometryError` (a ``ValueError``)
with a one-line message naming the offending argument, e.g.
``c2w: expected shape (..., 4, 4), got (3, 3)``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from da3gs.errors import Da3gsError

__all__ = ["GeometryError"]


class GeometryError(Da3gsError):
    """Invalid or degenerate geometric input (bad shape, non-finite values, rank deficiency)."""


def _fmt_tail(tail: Sequence[int | None]) -> str:
    return "(..., " + ", ".join("?" if t is None else str(t) for t in tail) + ")"


def check_tensor(x, name: str) -> torch.Tensor:
    """Raise unless ``x`` is a floating-point torch tensor."""
    if not isinstance(x, torch.Tensor):
        raise GeometryError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise GeometryError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    return x


def check_shape(x, name: str, tail: Sequence[int | None], min_batch: int = 0) -> torch.Tensor:
    """Raise unless ``x`` is a float tensor of shape ``(..., *tail)`` (``None`` = any size)."""
    check_tensor(x, name)
    if x.ndim < len(tail) + min_batch:
        raise GeometryError(
            f"{name}: expected shape {_fmt_tail(tail)}, got {tuple(x.shape)}"
        )
    got = x.shape[x.ndim - len(tail):]
    for g, t in zip(got, tail):
        if t is not None and g != t:
            raise GeometryError(
                f"{name}: expected shape {_fmt_tail(tail)}, got {tuple(x.shape)}"
            )
    return x


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise if ``x`` contains NaN or Inf (one device sync; use on small tensors)."""
    if not bool(torch.isfinite(x).all()):
        raise GeometryError(f"{name}: contains NaN or Inf values")
    return x


def check_hw(image_hw, name: str = "image_hw") -> tuple[int, int]:
    """Validate an ``(H, W)`` pair of positive numbers; returns it as a tuple."""
    try:
        h, w = image_hw
    except (TypeError, ValueError):
        raise GeometryError(f"{name}: expected a pair (H, W), got {image_hw!r}") from None
    if isinstance(h, torch.Tensor):
        h = h.item()
    if isinstance(w, torch.Tensor):
        w = w.item()
    if not (h > 0 and w > 0):
        raise GeometryError(f"{name}: expected positive (H, W), got ({h}, {w})")
    return h, w


def check_broadcast(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor, tail_a: int, tail_b: int):
    """Raise unless the batch dims of ``a`` and ``b`` (excluding their tails) broadcast."""
    try:
        return torch.broadcast_shapes(a.shape[: a.ndim - tail_a], b.shape[: b.ndim - tail_b])
    except RuntimeError:
        raise GeometryError(
            f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)}: batch dimensions do not broadcast"
        ) from None


def check_pose_matrix(x, name: str) -> torch.Tensor:
    """Raise unless ``x`` is a float tensor of shape (..., 4, 4) or (..., 3, 4)."""
    check_tensor(x, name)
    if x.ndim < 2 or x.shape[-1] != 4 or x.shape[-2] not in (3, 4):
        raise GeometryError(f"{name}: expected shape (..., 4, 4) or (..., 3, 4), got {tuple(x.shape)}")
    return x
