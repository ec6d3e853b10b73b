"""Public rendering entry points: :func:`render` (one set of Gaussians) and
:func:`render_batch` (B independent scenes, each into its own cameras) -> :class:`RenderOutput`.

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

__all__ = ["RenderOutput", "render", "render_batch", "resolve_backend"]

_BACKENDS = ("auto", "gsplat", "torch")


@dataclass
class RenderOutput:
    """Images rendered for C cameras at H x W (:func:`render_batch`: every field with a
    leading batch dim B, ``color (B, C, H, W, 3)``, ...).

    Fields:
      color: (C, H, W, 3) float, composited over ``background`` (black when None); not
        clamped to [0, 1] (SH colours are only clamped below at 0, as in gsplat).
      alpha: (C, H, W, 1) accumulated opacity ``1 - T`` in [0, 1).
      depth: (C, H, W, 1) expected camera z, ``sum_i w_i z_i / alpha`` where alpha > 0 and
        0 elsewhere (gsplat's "ED" mode; not composited with the background).
      radii: (C, N, 2) int32 per-axis pixel radii of each Gaussian in each camera; 0 means
        culled (behind the near plane, beyond far, outside the image or opacity < 1/255).
        None when not asked for (``render_batch(..., radii=False)``).
      backend: "gsplat" or "torch", the backend that produced the images.
    """

    color: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    radii: torch.Tensor | None
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


def _cameras(w2c, K, device, dtype, batch: tuple[int, ...] = ()):
    """Validate and batch cameras: (4, 4)|(3, 4)|(C, 4, 4)|(C, 3, 4), (3, 3)|(C, 3, 3), each
    after the leading ``batch`` dims (:func:`render_batch`: ``(B, C, 4, 4)``, ``(B, C, 3, 3)``)."""
    if not isinstance(w2c, torch.Tensor) or not isinstance(K, torch.Tensor):
        raise Da3gsError("render: w2c and K must be torch tensors")
    nb = len(batch)
    if nb:
        for name, t in (("w2c", w2c), ("K", K)):
            if t.dim() != nb + 3 or tuple(t.shape[:nb]) != batch:
                raise Da3gsError(f"render_batch: {name} must be (B, C, ...) with B = {batch[0]}, "
                                 f"got {tuple(t.shape)}")
    if w2c.dim() == 2:
        w2c = w2c[None]
    if K.dim() == 2:
        K = K[None]
    if w2c.dim() != nb + 3 or w2c.shape[-1] != 4 or w2c.shape[-2] not in (3, 4):
        raise Da3gsError(f"render: w2c must be (C, 4, 4) or (4, 4), got {tuple(w2c.shape)}")
    if K.dim() != nb + 3 or K.shape[-2:] != (3, 3):
        raise Da3gsError(f"render: K must be (C, 3, 3) or (3, 3), got {tuple(K.shape)}")
    w2c = as_homogeneous(w2c.to(device=device, dtype=dtype))
    K = K.to(device=device, dtype=dtype)
    cw, ck = w2c.shape[-3], K.shape[-3]
    if cw != ck:
        if ck == 1:
            K = K.expand(*batch, cw, 3, 3)
        elif cw == 1:
            w2c = w2c.expand(*batch, ck, 4, 4)
        else:
            raise Da3gsError(f"render: {cw} w2c but {ck} K matrices")
    return w2c.contiguous(), K.contiguous()


def _check_gaussians(g: Gaussians, batch: tuple[int, ...], sh_degree: int | None) -> int:
    """Validate the Gaussians' shapes (after ``batch`` leading dims); returns the SH degree."""
    means = g.means
    nb = len(batch)
    ok = means.dim() == nb + 2 and means.shape[-1] == 3 and tuple(means.shape[:nb]) == batch
    lead = "(B, N, 3)" if nb else "(N, 3)"
    if not ok:
        raise Da3gsError(f"render: gaussians.means must be {lead}, got {tuple(means.shape)}")
    N = means.shape[-2]
    shapes = {"quats": (N, 4), "scales": (N, 3), "opacities": (N,)}
    for name, shp in shapes.items():
        if tuple(getattr(g, name).shape) != batch + shp:
            raise Da3gsError(f"render: gaussians.{name} must be {batch + shp}, "
                             f"got {tuple(getattr(g, name).shape)}")
    sh = g.sh
    if sh.dim() != nb + 3 or tuple(sh.shape[:nb + 1]) != batch + (N,) or sh.shape[-1] != 3:
        raise Da3gsError(f"render: gaussians.sh must be {'(B, N, K, 3)' if nb else '(N, K, 3)'}, "
                         f"got {tuple(sh.shape)}")
    k = sh.shape[-2]
    if not is_sh_count(k) or k > num_sh_bases(3):
        raise Da3gsError(f"render: gaussians.sh needs K in (1, 4, 9, 16), got {k}")
    deg_max = sh_degree_from_bases(k)
    deg = deg_max if sh_degree is None else int(sh_degree)
    if not 0 <= deg <= deg_max:
        raise Da3gsError(f"render: sh_degree {sh_degree} needs K >= {num_sh_bases(deg)}, "
                         f"gaussians.sh has K = {k}")
    return deg


def _prepare(g: Gaussians, w2c, K, width, height, backend, background, sh_degree, tile_size,
             batch: tuple[int, ...]):
    """Shared checks of :func:`render` and :func:`render_batch`: ``(w2c, K, background
    (*batch, C, 3) or None, sh degree, backend name, width, height)``."""
    deg = _check_gaussians(g, batch, sh_degree)
    width, height = int(width), int(height)
    if width <= 0 or height <= 0 or int(tile_size) <= 0:
        raise Da3gsError(f"render: width, height and tile_size must be positive, got "
                         f"{width}, {height}, {tile_size}")
    device, dtype = g.means.device, g.means.dtype
    w2c, K = _cameras(w2c, K, device, dtype, batch)
    C = w2c.shape[-3]
    bg = None
    if background is not None:
        bg = torch.as_tensor(background, dtype=dtype, device=device)
        if bg.shape not in ((3,), (C, 3), batch + (C, 3)):
            want = "(3,) or (C, 3)" + (" or (B, C, 3)" if batch else "")
            raise Da3gsError(f"render: background must be {want}, got {tuple(bg.shape)}")
        bg = bg.expand(*batch, C, 3)
    return w2c, K, bg, deg, resolve_backend(backend, device), width, height


def render(gaussians: Gaussians, w2c: torch.Tensor, K: torch.Tensor, width: int, height: int,
           backend: str = "auto", background=None, sh_degree: int | None = None,
           near: float = 0.01, far: float = 1e10, tile_size: int = 16,
           info: dict | None = None) -> RenderOutput:
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
      info: optional dict filled with the rasteriser's per-Gaussian screen-space data, the
        ``info`` of gsplat's densification strategies: ``means2d`` (projected centres in the
        autograd graph: (C, N, 2) with the torch backend, gsplat's packed (nnz, 2) with
        ``gaussian_ids`` (nnz,) otherwise), ``radii`` (the backend's own shape: (C, N, 2)
        torch, gsplat's version-dependent (nnz,) / (nnz, 2)), ``width``, ``height``,
        ``n_cameras``, ``gaussian_ids`` (None when not packed).
    Returns:
      RenderOutput with (C, H, W, ·) color / alpha / depth and (C, N, 2) radii.
      Differentiable w.r.t. every Gaussian parameter, w2c and background (first order; K
      only with the torch backend).
    Raises:
      Da3gsError: bad shapes or sizes, sh_degree too high, or an unusable backend.
    """
    g = gaussians
    w2c, K, bg, deg, name, width, height = _prepare(g, w2c, K, width, height, backend,
                                                    background, sh_degree, tile_size, ())
    args = (g.means, g.quats, g.scales, g.opacities, g.sh, w2c, K, width, height)
    kw = dict(sh_degree=deg, background=bg, near=near, far=far)
    if name == "gsplat":
        from da3gs.render.gsplat_backend import rasterize_gsplat
        color, alpha, depth, radii = rasterize_gsplat(*args, tile_size=tile_size, meta=info, **kw)
    else:
        from da3gs.render.torch_rasterizer import rasterize
        color, alpha, depth, radii = rasterize(*args, meta=info, **kw)
    return RenderOutput(color=color, alpha=alpha, depth=depth, radii=radii, backend=name)


def render_batch(gaussians: Gaussians, w2c: torch.Tensor, K: torch.Tensor, width: int,
                 height: int, backend: str = "auto", background=None,
                 sh_degree: int | None = None, near: float = 0.01, far: float = 1e10,
                 tile_size: int = 16, radii: bool = True) -> RenderOutput:
    """Render B independent sets of Gaussians, sample b's into sample b's C cameras: the
    batched form of :func:`render` (same conventions and maths; sample b of the output equals
    ``render`` of sample b).

    Args:
      gaussians: fields with a leading batch dim: ``means (B, N, 3)``, ``quats (B, N, 4)``,
        ``scales (B, N, 3)``, ``opacities (B, N)``, ``sh (B, N, K, 3)`` (e.g.
        :func:`~da3gs.models.gaussian_adapter.build_gaussians_batched`).
      w2c: (B, C, 4, 4) (or (B, C, 3, 4)); K: (B, C, 3, 3).
      background: None, (3,), (C, 3) or (B, C, 3).
      radii: also return the dense ``(B, C, N, 2)`` radii (an extra scatter with gsplat's
        packed mode); False leaves ``radii`` None.
      Other arguments as :func:`render`.
    Returns:
      RenderOutput with ``color (B, C, H, W, 3)``, ``alpha`` and ``depth (B, C, H, W, 1)``.
    Backends: gsplat renders all B x C images in one call where it accepts leading batch
    dims (gsplat >= 1.5), else one call per sample; the torch backend loops over the samples.
    Raises:
      Da3gsError: as :func:`render`.
    """
    g = gaussians
    if not isinstance(g.means, torch.Tensor) or g.means.dim() != 3:
        raise Da3gsError(f"render_batch: gaussians.means must be (B, N, 3), got "
                         f"{tuple(getattr(g.means, 'shape', ()))}")
    batch = (g.means.shape[0],)
    w2c, K, bg, deg, name, width, height = _prepare(g, w2c, K, width, height, backend,
                                                    background, sh_degree, tile_size, batch)
    fields = (g.means, g.quats, g.scales, g.opacities, g.sh)
    kw = dict(sh_degree=deg, near=near, far=far)
    if name == "gsplat":
        from da3gs.render.gsplat_backend import rasterize_gsplat_batch
        color, alpha, depth, rad = rasterize_gsplat_batch(
            *fields, w2c, K, width, height, background=bg, tile_size=tile_size, radii=radii, **kw)
    else:
        from da3gs.render.torch_rasterizer import rasterize
        outs = [rasterize(*(f[b] for f in fields), w2c[b], K[b], width, height,
                          background=None if bg is None else bg[b], **kw)
                for b in range(batch[0])]
        color, alpha, depth, rad = (torch.stack(t) for t in zip(*outs))
        rad = rad if radii else None
    return RenderOutput(color=color, alpha=alpha, depth=depth, radii=rad, backend=name)
