"""Random initialisation of a Gaussian cloud, as per-scene 3DGS starts without SfM points.

:func:`random_gaussians` follows gsplat's ``simple_trainer`` (``init_type="random"``) and the
original 3DGS (``readNerfSyntheticInfo`` without a point cloud, then ``create_from_pcd``):

* ``N`` centres uniform in an axis-aligned cube, ``centre + half_size * U(-1, 1)^3``; gsplat
  uses ``init_extent * scene_scale`` for ``half_size`` (``init_extent`` 3, ``scene_scale`` 1.1 x
  the largest camera distance from the cameras' mean, in a frame centred on the cameras) and
  ``init_num_pts`` = 100,000; the original 3DGS uses a fixed 1.3 cube for Blender scenes;
* colours uniform in [0, 1], stored as the SH DC term (``(rgb - 0.5) / C0``, gsplat's
  ``rgb_to_sh``), higher SH bands zero;
* isotropic scales: the root of the mean squared distance to the 3 nearest other centres
  (gsplat's ``knn(points, 4)[:, 1:]``, 3DGS's ``distCUDA2``, squared distance clamped at 1e-7
  as 3DGS does), times ``init_scale``;
* opacity 0.1 (both); identity rotations (the original 3DGS; gsplat draws random quaternions).

The caller chooses the box (the eval app centres it on the context cameras' mean with
``init_extent`` times :func:`da3gs.train.refine.scene_extent`); this module depends only on
:mod:`da3gs.types` and :mod:`da3gs.geometry`.

Nearest neighbours: scipy's ``cKDTree`` when scipy imports (O(N log N): about 0.1 s for 100k
points on one core), else exact chunked ``torch.cdist`` + ``topk`` (O(N^2): fine for tests and
small N, tens of seconds at 100k on a CPU). scipy is not a dependency of da3gs, hence the
fallback; both give the same distances (up to float rounding).
"""

from __future__ import annotations

import math

import torch

from da3gs.errors import Da3gsError
from da3gs.geometry.sh import C0, num_sh_bases

__all__ = ["knn_mean_sq_distance", "random_gaussians"]


def knn_mean_sq_distance(points: torch.Tensor, k: int = 3, chunk: int = 2048) -> torch.Tensor:
    """Mean squared distance from each point to its ``k`` nearest other points.

    Args:
      points: (N, 3) float tensor, N > k.
      k: neighbours (the point itself is excluded).
      chunk: query rows per ``torch.cdist`` block in the fallback (memory ``chunk * N``).
    Returns:
      (N,) float64 on the CPU.
    """
    p = points.detach().to("cpu", torch.float64)
    n = p.shape[0]
    if p.dim() != 2 or p.shape[1] != 3:
        raise Da3gsError(f"knn: expected points of shape (N, 3), got {tuple(points.shape)}")
    if n <= k:
        raise Da3gsError(f"knn: needs more than {k} points, got {n}")
    try:
        from scipy.spatial import cKDTree
    except Exception:
        cKDTree = None
    if cKDTree is not None:
        d, _ = cKDTree(p.numpy()).query(p.numpy(), k=k + 1)
        return torch.from_numpy(d[:, 1:] ** 2).mean(dim=1)
    out = torch.empty(n, dtype=torch.float64)
    for s in range(0, n, chunk):
        d = torch.cdist(p[s:s + chunk], p, compute_mode="donot_use_mm_for_euclid_dist")
        d[torch.arange(d.shape[0]), torch.arange(s, s + d.shape[0])] = math.inf  # drop self
        out[s:s + chunk] = d.topk(k, dim=1, largest=False).values.square().mean(dim=1)
    return out


def random_gaussians(num_points: int, centre, half_size: float, sh_degree: int = 3,
                     opacity: float = 0.1, init_scale: float = 1.0, seed: int = 0,
                     device="cpu"):
    """``num_points`` randomly initialised Gaussians in a cube (module docstring).

    Args:
      num_points: N >= 4 (the scale needs 3 neighbours).
      centre: (3,) cube centre (tensor or sequence), world frame.
      half_size: half the cube's side (> 0), world units.
      sh_degree: SH degree of the cloud (0-3 here; bands above DC start at zero).
      opacity: initial opacity in (0, 1).
      init_scale: factor on the neighbour-distance scale (gsplat's ``init_scale``).
      seed: seed of a CPU ``torch.Generator`` (same cloud on every device).
      device: where the returned tensors live.
    Returns:
      :class:`~da3gs.types.Gaussians` with means (N, 3), quats (N, 4) identity wxyz, scales
      (N, 3), opacities (N,), sh (N, (sh_degree + 1) ** 2, 3), all float32; no conf/view/pixel.
    """
    from da3gs.types import Gaussians

    if not isinstance(num_points, int) or isinstance(num_points, bool) or num_points < 4:
        raise Da3gsError(f"random init: expected at least 4 points, got {num_points!r}")
    if not (math.isfinite(float(half_size)) and float(half_size) > 0):
        raise Da3gsError(f"random init: expected a positive cube half-size, got {half_size!r}")
    if not 0 < opacity < 1:
        raise Da3gsError(f"random init: opacity must be in (0, 1), got {opacity!r}")
    if sh_degree not in (0, 1, 2, 3):
        raise Da3gsError(f"random init: sh_degree must be 0-3, got {sh_degree!r}")
    c = torch.as_tensor(centre, dtype=torch.float64).reshape(-1)
    if c.shape != (3,) or not torch.isfinite(c).all():
        raise Da3gsError(f"random init: centre must be 3 finite numbers, got {centre!r}")
    gen = torch.Generator().manual_seed(int(seed))
    means = c + float(half_size) * (torch.rand(num_points, 3, generator=gen, dtype=torch.float64) * 2 - 1)
    rgb = torch.rand(num_points, 3, generator=gen)
    d2 = knn_mean_sq_distance(means, 3).clamp_min(1e-7)
    scales = (d2.sqrt() * float(init_scale)).float()[:, None].expand(-1, 3).contiguous()
    sh = torch.zeros(num_points, num_sh_bases(sh_degree), 3)
    sh[:, 0] = (rgb - 0.5) / C0
    quats = torch.zeros(num_points, 4)
    quats[:, 0] = 1.0
    g = Gaussians(means=means.float(), quats=quats, scales=scales,
                  opacities=torch.full((num_points,), float(opacity)), sh=sh)
    return g.to(device)
