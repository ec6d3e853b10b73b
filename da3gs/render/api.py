"""Public rendering entry point: :func:`render` -> :class:`RenderOutput`.

Two backends with the same maths (gsplat's EWA splatting, "classic" mode, eps2d = 0.3):
  * ``"gsplat"``: ``gsplat.rasterization`` (CUDA only, fast);
  * ``"torch"``: :mod:`da3gs.render.torch_rasterizer` (any device, pure autograd, tiled).
``"auto"`` picks gsplat when the Gaussians are on CUDA and gsplat imports, else torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from da3gs.errors import Da3gsError
from da3gs.geometry.conventions import as_homogeneous
from da3gs.geometry.sh import is_sh_count, num_sh_bases, sh_degree_from_bases
from da3gs.types import Gaussians

__all__ = ["RenderOutput", "render", "resolve_backend"]

_BACKENDS = ("auto", "gsplat", "torch")


@dataclass
class RenderOutput:
    """Images rendered for C cameras at H x W.

    Fields:
      color: (C, H, W, 3) float, composited over ``background`` (black when None); not
        clamped to [0, 1] (SH colours are only clamped below at 0, as in gsplat).
      alpha: (C, H, W, 1) accumulated opacity ``1 - T`` in [0, 1).
      depth: (C, H, W, 1) expected camera z, ``sum_i w_i z_i / alpha`` where alpha > 0 and
        0 elsewhere (gsplat's "ED" mode; not composited with the background).
      radii: (C, N, 2) int32 per-axis pixel radii of each Gaussian in each camera; 0 means
        culled (behind the near plane, beyond far, outside the image or opacity < 1/255).
      backend: "gsplat" or "torch", the backend that produced the images.
    """

    color: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    radii: torch.Tensor
    backend: str

    @property
    def visible(self) -> torch.Tensor:
        """(C, N) bool: Gaussian rendered in camera (radii > 0)."""
        return (self.radii > 0).all(dim=-1)

    @property
    def num_visible(self) -> torch.Tensor:
        """(C,) long: number of Gaussians rendered per camera."""
        return self.visible.sum(dim=-1)


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map "auto" to "gsplat" (CUDA device and gsplat importable) or "torch"; check names.

    Raises Da3gsError for an unknown name or "gsplat" on a non-CUDA device / without gsplat.
    """
    from da3gs.render.gsplat_backend import import_gsplat, gsplat_available

    if backend not in _BACKENDS:
        raise Da3gsError(f"render backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "gsplat" if device.type == "cuda" and gsplat_available() else "torch"
    if backend == "gsplat":
        if device.type != "cuda":
            raise Da3gsError(f"backend='gsplat' needs CUDA tensors, got device '{device}' "
                             "(use backend='torch' or 'auto')")
        import_gsplat()
    return backend


def _cameras(w2c, K, device, dtype):
    """Validate and batch cameras: (4, 4)|(3, 4)|(C, 4, 4)|(C, 3, 4), (3, 3)|(C, 3, 3)."""
    if not isinstance(w2c, torch.Tensor) or not isinstance(K, torch.Tensor):
        raise Da3gsError("render: w2c and K must be torch tensors")
    if w2c.dim() == 2:
        w2c = w2c[None]
    if K.dim() == 2:
        K = K[None]
    if w2c.dim() != 3 or w2c.shape[-1] != 4 or w2c.shape[-2] not in (3, 4):
        raise Da3gsError(f"render: w2c must be (C, 4, 4) or (4, 4), got {tuple(w2c.shape)}")
    if K.dim() != 3 or K.shape[-2:] != (3, 3):
        raise Da3gsError(f"render: K must be (C, 3, 3) or (3, 3), got {tuple(K.shape)}")
    w2c = w2c.to(device=device, dtype=dtype)
    w2c = as_homogeneous(w2c)
    K = K.to(device=device, dtype=dtype)
    if K.shape[0] != w2c.shape[0]:
        if K.shape[0] == 1:
            K = K.expand(w2c.shape[0], 3, 3)
        elif w2c.shape[0] == 1:
            w2c = w2c.expand(K.shape[0], 4, 4)
        else:
            raise Da3gsError(f"render: {w2c.shape[0]} w2c but {K.shape[0]} K matrices")
    return w2c.contiguous(), K.contiguous()


def render(gaussians: Gaussians, w2c: torch.Tensor, K: torch.Tensor, width: int, height: int,
           backend: str = "auto", background=None, sh_degree: int | None = None,
           near: float = 0.01, far: float = 1e10, tile_size: int = 16) -> RenderOutput:
    """Render Gaussians into C pinhole cameras (OpenCV axes, pixel centres at u + 0.5).

    Args:
      gaussians: N Gaussians (means, quats wxyz, linear scales, opacities in [0, 1], sh).
      w2c: (C, 4, 4) or (4, 4) world-to-camera ((3, 4) rows accepted); K: (C, 3, 3) or
        (3, 3) intrinsics in pixels. A single camera gives C = 1.
      width, height: image size in pixels.
      backend: "auto" | "gsplat" | "torch" (see module docstring).
      background: None (black) or a (3,) / (C, 3) colour composited under the alpha:
        ``color = sum_i w_i c_i + (1 - alpha) * background``.
      sh_degree: SH degree to evaluate (default: all coefficients in ``gaussians.sh``).
      near, far: camera-z clipping of Gaussian centres.
      tile_size: gsplat's tile size in pixels. The torch backend's images do not depend on
        the tiling (every Gaussian's box holds its whole alpha >= 1/255 support), so it
        chooses its own per camera (4 or 8 px, from the splats' sizes).
    Returns:
      RenderOutput with (C, H, W, ·) color / alpha / depth and (C, N, 2) radii.
      Differentiable w.r.t. every Gaussian parameter, w2c and background (first order; K
      only with the torch backend).
    Raises:
      Da3gsError: bad shapes or sizes, sh_degree too high, or an unusable backend.
    """
    g = gaussians
    means = g.means
    N = means.shape[0] if means.dim() == 2 else -1
    if means.dim() != 2 or means.shape[1] != 3:
        raise Da3gsError(f"render: gaussians.means must be (N, 3), got {tuple(means.shape)}")
    shapes = {"quats": (N, 4), "scales": (N, 3), "opacities": (N,)}
    for name, shp in shapes.items():
        if tuple(getattr(g, name).shape) != shp:
            raise Da3gsError(f"render: gaussians.{name} must be {shp}, "
                             f"got {tuple(getattr(g, name).shape)}")
    if g.sh.dim() != 3 or g.sh.shape[0] != N or g.sh.shape[2] != 3:
        raise Da3gsError(f"render: gaussians.sh must be (N, K, 3), got {tuple(g.sh.shape)}")
    k = g.sh.shape[1]
    if not is_sh_count(k) or k > num_sh_bases(3):
        raise Da3gsError(f"render: gaussians.sh needs K in (1, 4, 9, 16), got {k}")
    deg_max = sh_degree_from_bases(k)
    deg = deg_max if sh_degree is None else int(sh_degree)
    if not 0 <= deg <= deg_max:
        raise Da3gsError(f"render: sh_degree {sh_degree} needs K >= {num_sh_bases(deg)}, "
                         f"gaussians.sh has K = {k}")
    width, height = int(width), int(height)
    if width <= 0 or height <= 0 or int(tile_size) <= 0:
        raise Da3gsError(f"render: width, height and tile_size must be positive, got "
                         f"{width}, {height}, {tile_size}")
    device, dtype = means.device, means.dtype
    w2c, K = _cameras(w2c, K, device, dtype)
    C = w2c.shape[0]
    bg = None
    if background is not None:
        bg = torch.as_tensor(background, dtype=dtype, device=device)
        if bg.shape not in ((3,), (C, 3)):
            raise Da3gsError(f"render: background must be (3,) or (C, 3), got {tuple(bg.shape)}")
        bg = bg.expand(C, 3)
    name = resolve_backend(backend, device)
    args = (g.means, g.quats, g.scales, g.opacities, g.sh, w2c, K, width, height)
    kw = dict(sh_degree=deg, background=bg, near=near, far=far)
    if name == "gsplat":
        from da3gs.render.gsplat_backend import rasterize_gsplat
        color, alpha, depth, radii = rasterize_gsplat(*args, tile_size=tile_size, **kw)
    else:
        from da3gs.render.torch_rasterizer import rasterize
        color, alpha, depth, radii = rasterize(*args, **kw)
    return RenderOutput(color=color, alpha=alpha, depth=depth, radii=radii, backend=name)
