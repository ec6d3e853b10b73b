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
  * 1.5 also accepts leading batch dimensions; only the unbatched form is used here.
  * 1.5.3 with ``packed=True`` rejects ``backgrounds`` (its shape check expects the packed
    image dims), so the background is composited here, ``color + (1 - alpha) * bg``, which is
    what gsplat's kernel computes (``T * bg``).
  * Both JIT-compile their CUDA code at the first call (minutes) unless a prebuilt wheel
    was installed; set ``TORCH_EXTENSIONS_DIR`` to keep the build.
"""

from __future__ import annotations

import torch

from da3gs.errors import Da3gsError
from da3gs.geometry.sh import sh_degree_from_bases

__all__ = ["gsplat_available", "import_gsplat", "rasterize_gsplat"]

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


def _dense_radii(meta: dict, C: int, N: int, device) -> torch.Tensor:
    """meta['radii'] of any gsplat version / packing -> (C, N, 2) int32."""
    radii = meta["radii"]
    packed = meta.get("gaussian_ids") is not None
    if radii.dim() == (1 if packed else 2):                          # 1.4: one radius
        radii = torch.stack([radii, radii], dim=-1)
    radii = radii.to(torch.int32)
    if not packed:
        return radii.reshape(C, N, 2)
    out = torch.zeros((C, N, 2), dtype=torch.int32, device=device)
    out[meta["camera_ids"].long(), meta["gaussian_ids"].long()] = radii
    return out


def rasterize_gsplat(means, quats, scales, opacities, sh, w2c, K, width: int, height: int,
                     sh_degree: int | None = None, background=None, near: float = 0.01,
                     far: float = 1e10, eps2d: float = 0.3, tile_size: int = 16,
                     packed: bool = True):
    """Render with ``gsplat.rasterization(..., render_mode="RGB+ED")``.

    Args:
      means (N, 3), quats (N, 4) wxyz, scales (N, 3), opacities (N,), sh (N, K, 3), all
      CUDA; w2c (C, 4, 4), K (C, 3, 3); background None or (C, 3).
    Returns:
      color (C, H, W, 3), alpha (C, H, W, 1), depth (C, H, W, 1) expected z (0 where
      alpha == 0), radii (C, N, 2) int32; float32 (gsplat's kernels are float32).
    Raises:
      Da3gsError: gsplat cannot be imported or the tensors are not on CUDA.
    """
    if means.device.type != "cuda":
        raise Da3gsError(f"backend='gsplat' needs CUDA tensors, got device '{means.device}' "
                         "(use backend='torch')")
    gsplat = import_gsplat()
    if sh_degree is None:
        sh_degree = sh_degree_from_bases(sh.shape[1])
    f32 = torch.float32
    C, N = w2c.shape[0], means.shape[0]
    render, alpha, meta = gsplat.rasterization(
        means.to(f32), quats.to(f32), scales.to(f32), opacities.to(f32), sh.to(f32),
        w2c.to(f32), K.to(f32), int(width), int(height),
        near_plane=float(near), far_plane=float(far), eps2d=float(eps2d),
        sh_degree=int(sh_degree), packed=packed, tile_size=int(tile_size),
        render_mode="RGB+ED")
    color = render[..., :3]
    if background is not None:
        color = color + (1.0 - alpha) * background.to(f32).expand(C, 3)[:, None, None, :]
    return color, alpha, render[..., 3:4], _dense_radii(meta, C, N, means.device)
