"""Pruning of per-pixel Gaussians before export: opacity, confidence, image border, voxel merge.

Steps run in this order, each only when its parameter enables it:

1. ``opacity``: drop ``opacity < min_opacity``.
2. ``confidence``: drop ``conf < percentile(conf, conf_percentile)``; the
   threshold is computed over the *input* cloud (all Gaussians, before step 1),
   so the parameter means "the q % least confident pixels" whatever the other
   filters do. Needs ``g.conf``.
3. ``border``: drop Gaussians whose source pixel lies within ``border`` pixels
   of the image edge (row < b, row >= H - b, col < b, col >= W - b). Needs
   ``g.pixel`` and ``image_hw`` (one (H, W), or one per view indexed by ``g.view``).
4. ``voxel``: Gaussians whose means fall in the same cell of a world grid of
   size ``voxel_size`` (cells ``floor(mean / voxel_size)``) are merged into one:

   * mean and SH: opacity-weighted means of the members;
   * opacity: the **maximum** of the members (merging usually removes duplicates
     of one surface seen from several views; ``1 - prod(1 - a)`` would make every
     multi-view surface opaque);
   * rotation, ``view`` and ``pixel``: those of the most opaque member;
   * scales: the opacity-weighted, moment-matched covariance of the members
     (``sum w (Sigma_i + d_i d_i^T) / sum w``, ``d_i`` = member mean - merged mean)
     expressed in the most opaque member's axes, off-diagonal terms dropped;
   * conf: the maximum.

   Cells holding a single Gaussian keep it bit for bit. Output order follows the
   first member of each cell in the input order.

Before step 4, ``merge``: the same merge of redundant pixel-aligned Gaussians across views, on a
grid whose cell follows each Gaussian's pixel footprint instead of one world size. A Gaussian
from view ``v`` at ``mean`` has the footprint ``f = |mean - C_v| / fx_v`` (the world size of one
pixel of its view there); its cell size is ``2^round(log2(merge_scale * f))`` and its cell is
``(level, floor(mean / size))``. Gaussians of one surface seen from several views at similar
distances share a cell and merge (as in step 4); Gaussians whose footprints differ by more than
about 1.4x stay apart, so a close-up view keeps its finer detail where a far view also sees the
surface. With ``merge_scale`` 1 a cell is 0.7-1.4 pixels wide, so about one Gaussian per view
stays in it. Needs ``g.view`` and the views' cameras (``c2w``, ``K``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from da3gs.geometry import quat_to_mat
from da3gs.types import Gaussians

from da3gs.errors import Da3gsError

__all__ = ["PruneError", "PruneStep", "PruneReport", "prune_gaussians", "voxel_merge", "merge_cells",
           "footprint_cells"]


class PruneError(Da3gsError):
    """A bad pruning parameter, or Gaussians lacking the field a step needs (conf, pixel)."""


@dataclass
class PruneStep:
    """One pruning step: its name, counts before/after and its parameters."""

    name: str
    before: int
    after: int
    params: dict = field(default_factory=dict)

    @property
    def removed(self) -> int:
        return self.before - self.after


@dataclass
class PruneReport:
    """Counts of a :func:`prune_gaussians` run (only enabled steps are listed)."""

    initial: int
    final: int
    steps: list[PruneStep] = field(default_factory=list)

    def as_dict(self) -> dict:
        """JSON-ready summary, e.g. for ``summary.json``."""
        return {
            "initial": self.initial,
            "final": self.final,
            "removed": self.initial - self.final,
            "steps": [dict(asdict(s), removed=s.removed) for s in self.steps],
        }


def _check_args(g, min_opacity, conf_percentile, border, image_hw, voxel_size):
    if not isinstance(g, Gaussians):
        raise PruneError(f"prune_gaussians: expected Gaussians, got {type(g).__name__}")
    if not 0.0 <= min_opacity <= 1.0:
        raise PruneError(f"min_opacity: expected a value in [0, 1], got {min_opacity}")
    if not 0.0 <= conf_percentile <= 100.0:
        raise PruneError(f"conf_percentile: expected a value in [0, 100], got {conf_percentile}")
    if conf_percentile > 0 and g.conf is None:
        raise PruneError("conf_percentile: the Gaussians have no conf (per-pixel confidence)")
    if int(border) != border or border < 0:
        raise PruneError(f"border: expected a non-negative integer, got {border}")
    if border > 0:
        if g.pixel is None:
            raise PruneError("border: the Gaussians have no pixel (row, col) indices")
        if image_hw is None:
            raise PruneError("border: image_hw (H, W) is required to prune the image border")
    if not voxel_size >= 0.0:
        raise PruneError(f"voxel_size: expected a value >= 0, got {voxel_size}")


def _hw_per_gaussian(g: Gaussians, image_hw) -> torch.Tensor:
    hw = torch.as_tensor(np.asarray(image_hw, dtype=np.int64), device=g.pixel.device)
    if hw.shape == (2,):
        return hw.expand(len(g), 2)
    if hw.ndim != 2 or hw.shape[1] != 2:
        raise PruneError(f"image_hw: expected (H, W) or a list of per-view (H, W), got shape {tuple(hw.shape)}")
    if g.view is None:
        raise PruneError("image_hw: per-view sizes need the Gaussians' view indices")
    if len(g) and int(g.view.max()) >= hw.shape[0]:
        raise PruneError(f"image_hw: {hw.shape[0]} sizes given but view index {int(g.view.max())} occurs")
    return hw[g.view.long()]


def _border_mask(g: Gaussians, image_hw, border: int) -> torch.Tensor:
    hw = _hw_per_gaussian(g, image_hw)
    r, c = g.pixel[:, 0].long(), g.pixel[:, 1].long()
    return (r >= border) & (r < hw[:, 0] - border) & (c >= border) & (c < hw[:, 1] - border)


def voxel_merge(g: Gaussians, voxel_size: float) -> Gaussians:
    """Merge Gaussians sharing a voxel of ``voxel_size`` (see the module docstring)."""
    if len(g) == 0:
        return g
    return merge_cells(g, torch.floor(g.means.double() / voxel_size).long())


def footprint_cells(g: Gaussians, c2w: torch.Tensor, K: torch.Tensor, merge_scale: float = 1.0) -> torch.Tensor:
    """``(N, 4)`` long cells ``(level, floor(mean / 2^level))`` of the footprint merge (module
    docstring): ``c2w (V, 4, 4)``, ``K (V, 3, 3)`` the cameras of the views ``g.view`` indexes."""
    if g.view is None:
        raise PruneError("merge: the Gaussians have no view indices")
    c2w = torch.as_tensor(c2w).to(g.means.device, torch.float64)
    K = torch.as_tensor(K).to(g.means.device, torch.float64)
    if K.ndim == 2:
        K = K.expand(c2w.shape[0], 3, 3)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or K.shape != (c2w.shape[0], 3, 3):
        raise PruneError(f"merge: expected c2w (V, 4, 4) and K (V, 3, 3), got {tuple(c2w.shape)} and {tuple(K.shape)}")
    view = g.view.long()
    if len(g) and (int(view.min()) < 0 or int(view.max()) >= c2w.shape[0]):
        raise PruneError(f"merge: view index {int(view.max())} but {c2w.shape[0]} cameras")
    means = g.means.double()
    dist = (means - c2w[view, :3, 3]).norm(dim=-1)
    size = merge_scale * dist / K[view, 0, 0]
    level = torch.round(torch.log2(size.clamp_min(1e-30))).clamp(-1000, 1000)
    cell = torch.floor(means / torch.exp2(level)[:, None])
    return torch.cat([level[:, None], cell], dim=1).long()


def _flat_keys(keys: torch.Tensor) -> torch.Tensor:
    """Rows of integer ``keys (N, k)`` as one int64 each (row-major index in the keys' bounding
    box) when the box has fewer than 2^62 cells, so that ``torch.unique`` sorts N numbers instead
    of N rows (about 50x faster on the CPU); else the rows themselves. Either way equal rows map
    to equal values and distinct rows to distinct ones, and the sort order is the rows' order."""
    lo = keys.min(dim=0).values
    span = (keys.max(dim=0).values - lo + 1).tolist()
    total = 1
    for n in span:
        total *= int(n)
    if total >= 2 ** 62:
        return keys
    flat = torch.zeros(keys.shape[0], dtype=torch.long, device=keys.device)
    for j, n in enumerate(span):
        flat = flat * int(n) + (keys[:, j] - lo[j])
    return flat


def _group_rows(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inverse, counts)`` of the distinct rows of ``keys (N, k)``, as ``torch.unique(keys,
    dim=0, return_inverse=True, return_counts=True)`` gives them, through one 1-D sort (or
    ``k`` stable 1-D sorts when the rows do not fit one int64)."""
    flat = _flat_keys(keys)
    if flat.ndim == 1:
        _, inv, counts = torch.unique(flat, return_inverse=True, return_counts=True)
        return inv, counts
    order = torch.arange(keys.shape[0], device=keys.device)
    for j in reversed(range(keys.shape[1])):  # lexicographic order by stable sorts, last column first
        order = order[torch.argsort(keys[order, j], stable=True)]
    srt = keys[order]
    new = torch.ones(keys.shape[0], dtype=torch.bool, device=keys.device)
    new[1:] = (srt[1:] != srt[:-1]).any(dim=1)
    group = torch.cumsum(new.long(), 0) - 1
    inv = torch.empty_like(group)
    inv[order] = group
    return inv, torch.bincount(group)


def merge_cells(g: Gaussians, keys: torch.Tensor) -> Gaussians:
    """Merge Gaussians with equal rows of ``keys: (N, k)`` (integer cells), as step 4 does."""
    n = len(g)
    if n == 0:
        return g
    dev = g.means.device
    inv, counts = _group_rows(keys)
    G = counts.shape[0]
    idx = torch.arange(n, device=dev)
    first = torch.full((G,), n, dtype=torch.long, device=dev).scatter_reduce(0, inv, idx, "amin")
    opa = g.opacities
    gmax = torch.full((G,), -1.0, dtype=opa.dtype, device=dev).scatter_reduce(0, inv, opa, "amax")
    is_best = opa == gmax[inv]
    best = torch.full((G,), n, dtype=torch.long, device=dev).scatter_reduce(
        0, inv[is_best], idx[is_best], "amin")
    order = torch.argsort(first)
    out = g.subset(best[order])
    multi_g = counts[order] > 1  # over output rows
    if not bool(multi_g.any()):
        return out

    # Only members of multi-Gaussian cells take part in the merge.
    rank = torch.empty(G, dtype=torch.long, device=dev)
    rank[order] = torch.arange(G, device=dev)
    member = (counts[inv] > 1).nonzero().squeeze(1)
    grp = rank[inv[member]]
    w = opa[member].double().clamp_min(1e-12)
    wsum = torch.zeros(G, dtype=torch.float64, device=dev).index_add_(0, grp, w)

    def wmean(x):
        x = x[member].double()
        acc = torch.zeros((G,) + x.shape[1:], dtype=torch.float64, device=dev)
        acc.index_add_(0, grp, x * w.view(-1, *([1] * (x.ndim - 1))))
        return acc / wsum.view(-1, *([1] * (x.ndim - 1))).clamp_min(1e-300)

    mu = wmean(g.means)
    sh = wmean(g.sh)
    R = quat_to_mat(g.quats[member].double())
    cov = R @ torch.diag_embed(g.scales[member].double() ** 2) @ R.transpose(-1, -2)
    d = g.means[member].double() - mu[grp]
    acc = torch.zeros(G, 3, 3, dtype=torch.float64, device=dev).index_add_(
        0, grp, (cov + d[:, :, None] * d[:, None, :]) * w.view(-1, 1, 1))
    cov = acc / wsum.view(-1, 1, 1).clamp_min(1e-300)
    Rb = quat_to_mat(out.quats.double())
    scales = torch.diagonal(Rb.transpose(-1, -2) @ cov @ Rb, dim1=-2, dim2=-1).clamp_min(0).sqrt()

    m2, m3 = multi_g.view(-1, 1), multi_g.view(-1, 1, 1)
    out.means = torch.where(m2, mu.to(g.means.dtype), out.means)
    out.sh = torch.where(m3, sh.to(g.sh.dtype), out.sh)
    out.scales = torch.where(m2, scales.to(g.scales.dtype), out.scales)
    if g.conf is not None:
        cmax = torch.full((G,), -float("inf"), dtype=g.conf.dtype, device=dev).scatter_reduce(
            0, rank[inv], g.conf, "amax")
        out.conf = cmax
    return out


def prune_gaussians(g: Gaussians, min_opacity: float = 0.0, conf_percentile: float = 0.0, border: int = 0,
                    image_hw=None, voxel_size: float = 0.0, merge_scale: float = 0.0, c2w=None,
                    K=None) -> tuple[Gaussians, PruneReport]:
    """Prune/merge ``g`` (see the module docstring for the steps). Returns ``(pruned, report)``.

    ``min_opacity``/``conf_percentile``/``border``/``merge_scale``/``voxel_size`` of 0 disable
    their step. ``image_hw``: (H, W) or a list of per-view (H, W). ``c2w``/``K``: the views'
    cameras, for ``merge_scale``.
    """
    _check_args(g, min_opacity, conf_percentile, border, image_hw, voxel_size)
    if not merge_scale >= 0.0:
        raise PruneError(f"merge_scale: expected a value >= 0, got {merge_scale}")
    if merge_scale > 0 and (c2w is None or K is None):
        raise PruneError("merge_scale: the views' cameras (c2w, K) are required")
    report = PruneReport(initial=len(g), final=len(g))
    conf_thr = None
    if conf_percentile > 0 and len(g):
        conf_thr = float(np.percentile(g.conf.detach().double().cpu().numpy(), conf_percentile))

    def step(name, mask, **params):
        nonlocal g
        before = len(g)
        g = g.subset(mask)
        report.steps.append(PruneStep(name, before, len(g), params))

    if min_opacity > 0:
        step("opacity", g.opacities >= min_opacity, min_opacity=float(min_opacity))
    if conf_percentile > 0:
        mask = g.conf >= conf_thr if conf_thr is not None else torch.ones(len(g), dtype=torch.bool)
        step("confidence", mask, conf_percentile=float(conf_percentile), threshold=conf_thr)
    if border > 0:
        step("border", _border_mask(g, image_hw, int(border)), border=int(border))
    if merge_scale > 0:
        before = len(g)
        if before:
            g = merge_cells(g, footprint_cells(g, c2w, K, float(merge_scale)))
        report.steps.append(PruneStep("merge", before, len(g), {"merge_scale": float(merge_scale)}))
    if voxel_size > 0:
        before = len(g)
        g = voxel_merge(g, float(voxel_size))
        report.steps.append(PruneStep("voxel", before, len(g), {"voxel_size": float(voxel_size)}))
    report.final = len(g)
    return g, report
