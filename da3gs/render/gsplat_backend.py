"""gsplat backend: a thin wrapper of ``gsplat.rasterization`` (CUDA only).

gsplat is imported lazily, inside functions, and the import (or its failure) is the only
thing cached. Works with gsplat 1.4.x and 1.5.x; the differences that matter here:

  * ``meta["radii"]`` is (nnz,) / (C, N) int32 in 1.4 (one isotropic radius) and
    (nnz, 2) / (C, N, 2) in 1.5 (per-axis radii); :func:`rasterize_gsplat` always returns
    dense (C, N, 2) int32.
  * 1.4's tile box is a circle of ``ceil(3 sqrt(lambda_max))`` pixels, which can clip the
    alpha >= 1/255 tail of Gaussians with opacity > ~0.35 at tile borders; 1.5 (and the
    torch backend) use opacity-aware per-axis boxes that contain the whole tail, so 1.4
    images can differ slightly from the torch backend's near such Gaussians' edges.
  * 1.5 also accepts leading batch dimensions (``means (B, N, 3)``, ``viewmats (B, C, 4, 4)``,
    ...; packed ``meta`` then carries ``batch_ids``): :func:`rasterize_gsplat_batch` renders
    B samples in one call with them, and with 1.4 loops over the samples.
  * 1.5.3 with ``packed=True`` rejects ``backgrounds`` (its shape check expects the packed
    image dims), so the background is composited here, ``color + (1 - alpha) * bg``, which is
    what gsplat's kernel computes (``T * bg``).
  * Both JIT-compile their CUDA code at the first call (minutes) unless a prebuilt wheel
    was installed; set ``TORCH_EXTENSIONS_DIR`` to keep the build.
"""

from __future__ import annotations

import math
import re

import torch

from da3gs.errors import Da3gsError
from da3gs.geometry.sh import sh_degree_from_bases

__all__ = ["gsplat_available", "import_gsplat", "rasterize_gsplat", "rasterize_gsplat_batch",
           "supports_batch_dims"]

_IMPORT: list = []  # [module] or [exception], filled at the first import attempt


def import_gsplat():
    """The gsplat module, or raise Da3gsError (the import is tried once per process)."""
    if not _IMPORT:
        try:
            import gsplat  # noqa: PLC0415
            _IMPORT.append(gsplat)
        except Exception as exc:  # ImportError, or a broken install
            _IMPORT.append(exc)
    mod = _IMPORT[0]
    if isinstance(mod, Exception):
        raise Da3gsError(
            "backend='gsplat' needs the gsplat package (pip install 'gsplat>=1.4,<1.6'): "
            f"{type(mod).__name__}: {mod}")
    return mod


def gsplat_available() -> bool:
    """Whether ``import gsplat`` succeeds (does not compile or touch CUDA)."""
    try:
        import_gsplat()
        return True
    except Da3gsError:
        return False


def supports_batch_dims(gsplat) -> bool:
    """Whether this gsplat's ``rasterization`` takes leading batch dims (1.5 on)."""
    major, minor = (int(x) for x in re.findall(r"\d+", gsplat.__version__)[:2])
    return (major, minor) >= (1, 5)


def _dense_radii(meta: dict, lead: tuple[int, ...], C: int, N: int, device) -> torch.Tensor:
    """meta['radii'] of any gsplat version / packing -> (*lead, C, N, 2) int32."""
    radii = meta["radii"]
    packed = meta.get("gaussian_ids") is not None
    if radii.dim() == (1 if packed else len(lead) + 2):              # 1.4: one radius
        radii = torch.stack([radii, radii], dim=-1)
    radii = radii.to(torch.int32)
    if not packed:
        return radii.reshape(*lead, C, N, 2)
    out = torch.zeros((math.prod(lead), C, N, 2), dtype=torch.int32, device=device)
    idx = (meta["camera_ids"].long(), meta["gaussian_ids"].long())
    if lead:  # 1.5: flat index over the batch dims
        idx = (meta["batch_ids"].long(),) + idx
    else:
        out = out[0]
    out[idx] = radii
    return out.reshape(*lead, C, N, 2)


def _check_cuda(means: torch.Tensor) -> None:
    if means.device.type != "cuda":
        raise Da3gsError(f"backend='gsplat' needs CUDA tensors, got device '{means.device}' "
                         "(use backend='torch')")


def _rasterize(gsplat, means, quats, scales, opacities, sh, w2c, K, width, height, sh_degree,
               background, near, far, eps2d, tile_size, packed, radii, meta=None):
    """One ``gsplat.rasterization`` call over the leading dims ``lead`` of ``means (*lead, N,
    3)`` (none with 1.4); background composited here (module docstring)."""
    if sh_degree is None:
        sh_degree = sh_degree_from_bases(sh.shape[-2])
    f32 = torch.float32
    lead, C, N = tuple(means.shape[:-2]), w2c.shape[-3], means.shape[-2]
    render, alpha, gmeta = gsplat.rasterization(
        means.to(f32), quats.to(f32), scales.to(f32), opacities.to(f32), sh.to(f32),
        w2c.to(f32), K.to(f32), int(width), int(height),
        near_plane=float(near), far_plane=float(far), eps2d=float(eps2d),
        sh_degree=int(sh_degree), packed=packed, tile_size=int(tile_size),
        render_mode="RGB+ED")
    color = render[..., :3]
    if background is not None:
        color = color + (1.0 - alpha) * background.to(f32).expand(*lead, C, 3)[..., None, None, :]
    rad = _dense_radii(gmeta, lead, C, N, means.device) if radii else None
    if meta is not None:
        meta.update(gmeta)
    return color, alpha, render[..., 3:4], rad


def rasterize_gsplat(means, quats, scales, opacities, sh, w2c, K, width: int, height: int,
                     sh_degree: int | None = None, background=None, near: float = 0.01,
                     far: float = 1e10, eps2d: float = 0.3, tile_size: int = 16,
                     packed: bool = True, meta: dict | None = None):
    """Render with ``gsplat.rasterization(..., render_mode="RGB+ED")``.

    ``meta``: optional dict, updated with gsplat's own meta (``means2d`` (C, N, 2), or (nnz, 2)
    when packed, with ``gaussian_ids``; ``radii`` in the installed version's shape; ``width``,
    ``height``, ``n_cameras``, ...), the ``info`` gsplat's densification strategies read.

    Args:
      means (N, 3), quats (N, 4) wxyz, scales (N, 3), opacities (N,), sh (N, K, 3), all
      CUDA; w2c (C, 4, 4), K (C, 3, 3); background None or (C, 3).
    Returns:
      color (C, H, W, 3), alpha (C, H, W, 1), depth (C, H, W, 1) expected z (0 where
      alpha == 0), radii (C, N, 2) int32; float32 (gsplat's kernels are float32).
    Raises:
      Da3gsError: gsplat cannot be imported or the tensors are not on CUDA.
    """
    _check_cuda(means)
    return _rasterize(import_gsplat(), means, quats, scales, opacities, sh, w2c, K, width,
                      height, sh_degree, background, near, far, eps2d, tile_size, packed, True,
                      meta)


def rasterize_gsplat_batch(means, quats, scales, opacities, sh, w2c, K, width: int, height: int,
                           sh_degree: int | None = None, background=None, near: float = 0.01,
                           far: float = 1e10, eps2d: float = 0.3, tile_size: int = 16,
                           packed: bool = True, radii: bool = True):
    """:func:`rasterize_gsplat` for B samples: ``means (B, N, 3)``, ``quats (B, N, 4)``,
    ``scales (B, N, 3)``, ``opacities (B, N)``, ``sh (B, N, K, 3)``, ``w2c (B, C, 4, 4)``,
    ``K (B, C, 3, 3)``, background None or ``(B, C, 3)``. One gsplat call for all B x C images
    with gsplat >= 1.5 (leading batch dims), one per sample with 1.4.

    Returns color (B, C, H, W, 3), alpha and depth (B, C, H, W, 1), radii (B, C, N, 2) int32
    (None unless ``radii``)."""
    _check_cuda(means)
    gsplat = import_gsplat()
    args = (means, quats, scales, opacities, sh, w2c, K)
    if supports_batch_dims(gsplat):
        return _rasterize(gsplat, *args, width, height, sh_degree, background, near, far,
                          eps2d, tile_size, packed, radii)
    outs = [_rasterize(gsplat, *(a[b] for a in args), width, height, sh_degree,
                       None if background is None else background[b], near, far, eps2d,
                       tile_size, packed, radii) for b in range(means.shape[0])]
    color, alpha, depth, rad = zip(*outs)
    return (torch.stack(color), torch.stack(alpha), torch.stack(depth),
            torch.stack(rad) if radii else None)
