"""Choosing views of a scene that see the same content, scored from the cameras (and depth).

:func:`overlap_scores` scores every view against a reference view:

- **frustum overlap**: 3D points in the reference view's frustum are projected into each
  view; the score is the fraction that lands inside its image in front of it. The points are
  the reference view's own depth (a subsampled grid of valid pixels: depth-based
  covisibility, without an occlusion test) when given, else a pixel grid lifted to several
  depths: the scene's ``near_far`` bounds when known (LLFF), else around a focus distance
  estimated where the reference optical axis passes closest to the others' axes (the object
  of an orbit), else a multiple of the median camera spacing;
- **viewing direction**: times ``((1 + cos angle) / 2) ** 2`` between the optical axes (0.25 at
  90 degrees: a frustum test without occlusion cannot tell that opposite views of an object
  see different sides of it);
- **distance**: times ``sqrt(min / max)`` of the two cameras' distances to the reference
  view's focus point (similar scale of content).

:func:`select_views` then takes a random reference view and samples the others without
replacement with probability proportional to the score among views scoring at least
``min_overlap`` (Gumbel top-k), filling up with the next best views of positive score and
finally with repeats when the scene has too few overlapping views (a repeated view is a valid sample: its crop and
augmentation are drawn anew).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["overlap_scores", "select_views"]


def _focus_depth(C: np.ndarray, f: np.ndarray, r: int) -> float:
    """Depth along view ``r``'s axis of the points closest to the other optical axes."""
    d = C - C[r]
    fr = f[r]
    c = f @ fr
    den = 1.0 - c ** 2
    dr, df = d @ fr, (d * f).sum(1)
    s = (dr - c * df) / np.maximum(den, 1e-9)
    t = (c * dr - df) / np.maximum(den, 1e-9)  # along the other axis
    ok = (den > 0.01) & (s > 0) & (t > 0)
    ok[r] = False
    if ok.any():
        return float(np.median(s[ok]))
    base = np.linalg.norm(d, axis=1)
    base = base[base > 0]
    return float(3.0 * np.median(base)) if len(base) else 1.0


def _project_frac(P: np.ndarray, c2w: np.ndarray, K: np.ndarray, hw: np.ndarray) -> np.ndarray:
    """Fraction of world points ``P (M, 3)`` inside each of N views ``(N,)``."""
    R, t = c2w[:, :3, :3], c2w[:, :3, 3]
    Xc = np.matmul(P[None] - t[:, None], R)  # (N, M, 3) = R^T (P - t)
    uvw = np.matmul(Xc, K.transpose(0, 2, 1))
    z = Xc[..., 2]
    zs = np.maximum(uvw[..., 2], 1e-9)
    u, v = uvw[..., 0] / zs, uvw[..., 1] / zs
    inside = (z > 1e-9) & (u >= 0) & (v >= 0) & (u < hw[:, 1:2]) & (v < hw[:, 0:1])
    return inside.mean(1)


def _np(x) -> np.ndarray | None:
    if x is None:
        return None
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def overlap_scores(c2w, K, image_hw, ref: int, depth_ref=None, near_far=None, grid: int = 8) -> torch.Tensor:
    """Overlap score in [0, 1] of every view with view ``ref`` (``scores[ref] = 1``).

    Args:
        c2w: (N, 4, 4) OpenCV camera-to-world; K: (N, 3, 3) in pixels of ``image_hw``
            (tensors or arrays).
        image_hw: N ``(H, W)``.
        ref: the reference view.
        depth_ref: (Hd, Wd) z-depth of view ``ref`` (0 = invalid), or None. If its size is
            not the image's, K is scaled to it.
        near_far: (N, 2) depth bounds, or None.
        grid: pixels per side of the sampled grid.
    Returns:
        scores: (N,) float64 tensor.
    """
    c2w, K, near_far, d = _np(c2w), _np(K), _np(near_far), _np(depth_ref)
    hw = np.array([tuple(x) for x in image_hw], dtype=np.float64)
    C, f = c2w[:, :3, 3], c2w[:, :3, 2]
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    H, W = hw[ref]
    P = None
    if d is not None:
        Hd, Wd = d.shape
        gy = np.round(np.linspace(0, Hd - 1, min(4 * grid, Hd))).astype(int)
        gx = np.round(np.linspace(0, Wd - 1, min(4 * grid, Wd))).astype(int)
        z = d[np.ix_(gy, gx)]
        vv, uu = np.meshgrid(gy + 0.5, gx + 0.5, indexing="ij")
        ok = np.isfinite(z) & (z > 0)
        if ok.sum() >= 4:
            Kd = K[ref].copy()
            Kd[0] *= Wd / W
            Kd[1] *= Hd / H
            pix = np.stack([uu[ok], vv[ok], np.ones(int(ok.sum()))], 1)
            Xc = (pix @ np.linalg.inv(Kd).T) * z[ok][:, None]
            P = Xc @ c2w[ref, :3, :3].T + C[ref]
    depth_focus = None
    if P is None:
        if near_far is not None and 0 < near_far[ref, 0] < near_far[ref, 1]:
            depths = np.geomspace(near_far[ref, 0], near_far[ref, 1], 5)
        else:
            depth_focus = _focus_depth(C, f, ref)
            depths = depth_focus * np.array([0.5, 0.75, 1.0, 1.5, 2.0])
        g = (np.arange(grid) + 0.5) / grid
        vv, uu = np.meshgrid(g * H, g * W, indexing="ij")
        pix = np.stack([uu.ravel(), vv.ravel(), np.ones(grid * grid)], 1)
        rays = pix @ np.linalg.inv(K[ref]).T  # z = 1
        Xc = (rays[None] * depths[:, None, None]).reshape(-1, 3)
        P = Xc @ c2w[ref, :3, :3].T + C[ref]
    score = _project_frac(P, c2w, K, hw)
    score = score * (np.maximum(1.0 + f @ f[ref], 0) / 2) ** 2
    dist_ref = depth_focus if depth_focus is not None else float(np.median(np.linalg.norm(P - C[ref], axis=1)))
    dist = np.linalg.norm(C - (C[ref] + f[ref] * dist_ref), axis=1)
    ratio = np.minimum(dist, dist[ref]) / np.maximum(np.maximum(dist, dist[ref]), 1e-12)
    score = score * np.sqrt(np.clip(ratio, 0, 1))
    score[ref] = 1.0
    return torch.from_numpy(np.clip(score, 0, 1))


def select_views(c2w: torch.Tensor, K: torch.Tensor, image_hw, num_views: int, rng: np.random.Generator,
                 depth_fn=None, near_far: torch.Tensor | None = None, min_overlap: float = 0.1,
                 ref_tries: int = 3) -> list[int]:
    """``num_views`` view indices of a scene, the reference view first.

    Args:
        c2w, K, image_hw, near_far: the scene's cameras (see :func:`overlap_scores`).
        num_views: views to return (repeats only when the scene has too few).
        rng: numpy generator (all randomness comes from it).
        depth_fn: ``i -> (H, W) depth tensor or None``, for depth-based covisibility.
        min_overlap: views scoring below it are only used to fill up.
        ref_tries: reference views tried (the one with most views above ``min_overlap`` wins).
    Returns:
        list of ``num_views`` ints into the scene.
    """
    N = len(c2w)
    if N == 0 or num_views < 1:
        raise ValueError(f"select_views: need a non-empty scene and num_views >= 1 (N={N}, num_views={num_views})")
    best = None
    refs = rng.permutation(N)[:max(1, ref_tries)]
    for r in refs:
        r = int(r)
        s = overlap_scores(c2w, K, image_hw, r, depth_fn(r) if depth_fn else None, near_far).numpy()
        n_ok = int((s >= min_overlap).sum()) - 1
        if best is None or n_ok > best[0]:
            best = (n_ok, r, s)
        if n_ok >= num_views - 1:
            break
    _, r, s = best
    others = np.array([j for j in range(N) if j != r], dtype=np.int64)
    so = s[others]
    good = others[so >= min_overlap]
    k = min(num_views - 1, len(good))
    keys = np.log(np.maximum(s[good], 1e-12)) + rng.gumbel(size=len(good))
    chosen = list(good[np.argsort(-keys)[:k]])
    if len(chosen) < num_views - 1:  # fill with the next best views that overlap at all
        taken = set(chosen)
        rest = [j for j in others[np.argsort(-so, kind="stable")] if j not in taken and s[j] > 0]
        chosen += rest[: num_views - 1 - len(chosen)]
    rng.shuffle(chosen)
    out = [r] + [int(j) for j in chosen]
    while len(out) < num_views:  # too few views in the scene: repeat
        out.append(int(out[rng.integers(len(out))]))
    return out
