"""3D reconstruction metrics of the official Depth Anything 3 benchmark (point-cloud stage).

Reproduces ``depth_anything_3.bench.utils.evaluate_3d_reconstruction`` (including its optional
voxel down-sampling, :func:`voxel_down_sample`), on point clouds already in the ground-truth
frame:

* ``d_acc[m]  = min_n |pred_m - gt_n|``  (accuracy distances, predicted -> gt),
* ``d_comp[n] = min_m |gt_n - pred_m|``  (completeness distances, gt -> predicted),
* ``acc = mean(d_acc)``, ``comp = mean(d_comp)``, ``overall = (acc + comp) / 2`` (Chamfer),
* ``precision = frac(d_acc < tau)``, ``recall = frac(d_comp < tau)`` (strict ``<``),
* ``fscore = 2 P R / (P + R)``, 0 when ``P + R = 0``.

An empty cloud gives ``acc = comp = overall = inf`` and ``precision = recall = fscore = 0``, as
the official code. ``tau`` per dataset (metres) is :data:`BENCH_THRESHOLDS`; the official
evaluator first voxel-down-samples both clouds with :data:`BENCH_DOWN_SAMPLE` (open3d's
``voxel_down_sample``; here ``down_sample=``, written with torch). Not reproduced: the TSDF fusion
of predicted depth that produces the predicted cloud. Nearest neighbours are exact (chunked brute force in float64,
O(N M) time).
"""

from __future__ import annotations

import torch

from .image import MetricsError

__all__ = ["recon_metrics", "nn_distances", "voxel_down_sample", "BENCH_THRESHOLDS", "BENCH_DOWN_SAMPLE"]

#: F-score distance thresholds of the official bench (``depth_anything_3.utils.constants``), metres.
BENCH_THRESHOLDS = {"eth3d": 0.25, "7scenes": 0.05, "scannetpp": 0.05, "hiroom": 0.05}
#: Voxel sizes the official bench down-samples both clouds with before the metrics, metres.
BENCH_DOWN_SAMPLE = {"eth3d": 4.0 / 512.0 * 5, "7scenes": 4.0 / 512.0, "scannetpp": 0.02,
                     "hiroom": 4.0 / 512.0}


def _points(x, name: str) -> torch.Tensor:
    try:
        p = torch.as_tensor(x)
    except Exception:
        raise MetricsError(f"{name}: expected an (N, 3) array of points") from None
    if p.ndim != 2 or p.shape[-1] != 3 or not (p.is_floating_point() or p.numel() == 0):
        raise MetricsError(f"{name}: expected a floating-point (N, 3) array, got shape {tuple(p.shape)}")
    p = p.to(torch.float64)
    if not bool(torch.isfinite(p).all()):
        raise MetricsError(f"{name}: contains NaN or Inf values")
    return p


def nn_distances(ref, query, chunk: int = 4096) -> torch.Tensor:
    """Distance from each query point to its nearest reference point.

    Args:
        ref: (N, 3), query: (M, 3) (tensors or arrays), N >= 1.
    Returns:
        (M,) float64 Euclidean distances (exact; no matrix-product shortcut).
    """
    r, q = _points(ref, "ref"), _points(query, "query")
    if r.shape[0] == 0:
        raise MetricsError("ref: empty point cloud")
    out = torch.empty(q.shape[0], dtype=torch.float64)
    step = max(1, (chunk * chunk) // max(1, r.shape[0]))
    for s in range(0, q.shape[0], step):
        d = torch.cdist(q[s:s + step], r, compute_mode="donot_use_mm_for_euclid_dist")
        out[s:s + step] = d.min(dim=1).values
    return out


def voxel_down_sample(points, voxel_size: float) -> torch.Tensor:
    """open3d's ``PointCloud.voxel_down_sample`` on positions: one point per occupied voxel.

    With ``b = min(points, axis=0) - voxel_size / 2`` (per axis), point ``x`` falls in voxel
    ``floor((x - b) / voxel_size)`` (float64, as open3d); each occupied voxel gives the mean of
    its points. Args: points (N, 3) (tensor or array), voxel_size > 0. Returns: (K, 3) float64,
    K <= N, in voxel-index order (open3d's order is a hash map's; the metrics do not depend on
    it). Empty input gives an empty (0, 3).
    """
    if not (isinstance(voxel_size, (int, float)) and not isinstance(voxel_size, bool) and voxel_size > 0):
        raise MetricsError(f"voxel_size: expected a positive size, got {voxel_size!r}")
    p = _points(points, "points")
    if p.shape[0] == 0:
        return p
    bmin = p.min(dim=0).values - voxel_size * 0.5
    idx = torch.floor((p - bmin) / voxel_size).to(torch.int64)
    keys, inv = torch.unique(idx, dim=0, return_inverse=True)
    sums = torch.zeros(keys.shape[0], 3, dtype=torch.float64).index_add_(0, inv, p)
    cnt = torch.zeros(keys.shape[0], dtype=torch.float64).index_add_(0, inv, torch.ones_like(p[:, 0]))
    return sums / cnt[:, None]


def recon_metrics(pred_points, gt_points, threshold: float = 0.05,
                  down_sample: float | None = None) -> dict[str, float]:
    """Accuracy, completeness, Chamfer (``overall``), precision, recall, F-score.

    Args:
        pred_points: (M, 3) predicted points, in the ground truth's frame and units.
        gt_points: (N, 3) ground-truth points.
        threshold: F-score distance ``tau`` (> 0), e.g. ``BENCH_THRESHOLDS["7scenes"]``.
        down_sample: voxel size (> 0) to down-sample both clouds with first
            (:func:`voxel_down_sample`, e.g. ``BENCH_DOWN_SAMPLE["7scenes"]``); None or 0: none.
    Returns:
        ``{"acc", "comp", "overall", "precision", "recall", "fscore"}`` floats (module docstring;
        the official key names).
    """
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and threshold > 0):
        raise MetricsError(f"threshold: expected a positive distance, got {threshold!r}")
    p, g = _points(pred_points, "pred_points"), _points(gt_points, "gt_points")
    if down_sample is not None and down_sample != 0:
        p, g = voxel_down_sample(p, down_sample), voxel_down_sample(g, down_sample)
    if p.shape[0] == 0 or g.shape[0] == 0:
        inf = float("inf")
        return {"acc": inf, "comp": inf, "overall": inf, "precision": 0.0, "recall": 0.0, "fscore": 0.0}
    d_acc, d_comp = nn_distances(g, p), nn_distances(p, g)
    acc, comp = float(d_acc.mean()), float(d_comp.mean())
    prec = float((d_acc < threshold).double().mean())
    rec = float((d_comp < threshold).double().mean())
    f = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return {"acc": acc, "comp": comp, "overall": (acc + comp) / 2, "precision": prec, "recall": rec,
            "fscore": f}
