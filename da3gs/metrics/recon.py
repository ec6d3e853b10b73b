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
``voxel_down_sample``; here ``down_sample=``, written with torch). Nearest neighbours are exact:
scipy's ``cKDTree`` for large clouds when scipy imports (as the official ``nn_correspondance``), else chunked
brute force in float64 (O(N M) time).

The stages before the metrics (the datasets' ``fuse3d`` in ``depth_anything_3.bench.datasets``):

* :func:`bench_sim3`: the official ``align_poses_umeyama(gt_ext, pred_ext, ransac=True,
  random_state=42)``: Umeyama Sim(3) of predicted camera centres onto the ground truth's, a
  10-iteration RANSAC on subsets of ``max(3, ceil(N / 2))`` views drawn with numpy's
  ``default_rng(42).choice`` (inliers within the median nearest-centre distance after a plain
  pre-alignment), refit on the best inliers.
* :func:`prepare_fusion`: each predicted depth resized to the ground-truth image size (OpenCV
  nearest), masked (ground-truth valid depth when given, else non-finite / non-positive
  predictions), multiplied by the Sim(3) scale; ``posed`` (``recon_posed``) fuses with the
  ground-truth cameras, ``unposed`` (``recon_unposed``) with the Sim(3)-aligned predicted
  cameras and the predicted intrinsics scaled to the image size.
* TSDF fusion and mesh sampling: :mod:`da3gs.metrics.tsdf`; per-dataset parameters
  :data:`BENCH_RECON` (``depth_anything_3.utils.constants``). ScanNet++ also crops the
  prediction to the ground truth's bounding box grown by 0.1 m (:func:`crop_to_box`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .image import MetricsError

__all__ = ["recon_metrics", "nn_distances", "voxel_down_sample", "BENCH_THRESHOLDS", "BENCH_DOWN_SAMPLE",
           "ReconParams", "BENCH_RECON", "bench_sim3", "prepare_fusion", "crop_to_box", "RECON_MODES"]

#: F-score distance thresholds of the official bench (``depth_anything_3.utils.constants``), metres.
BENCH_THRESHOLDS = {"eth3d": 0.25, "7scenes": 0.05, "scannetpp": 0.05, "hiroom": 0.05}
#: Voxel sizes the official bench down-samples both clouds with before the metrics, metres.
BENCH_DOWN_SAMPLE = {"eth3d": 4.0 / 512.0 * 5, "7scenes": 4.0 / 512.0, "scannetpp": 0.02,
                     "hiroom": 4.0 / 512.0}
#: ``posed`` = the official ``recon_posed``, ``unposed`` = ``recon_unposed``.
RECON_MODES = ("posed", "unposed")


@dataclass(frozen=True)
class ReconParams:
    """Parameters of one bench dataset's reconstruction protocol (metres).

    voxel_length, sdf_trunc: TSDF volume; max_depth: ``depth_trunc`` of the fusion; samples:
    points sampled from each mesh; threshold: F-score ``tau``; down_sample: voxel size of the
    metrics' down-sampling (0: none); crop_margin: crop the prediction to the ground truth's
    bounding box grown by this much (None: no crop; ScanNet++ only).
    """

    voxel_length: float
    sdf_trunc: float
    max_depth: float
    samples: int
    threshold: float
    down_sample: float
    crop_margin: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


#: Each dataset's constants in ``depth_anything_3.utils.constants`` (the DA3 bench).
BENCH_RECON = {
    "eth3d": ReconParams(4.0 / 512.0 * 5, 0.04 * 5, 100000.0, 1_000_000, 0.05 * 5, 4.0 / 512.0 * 5),
    "7scenes": ReconParams(4.0 / 512.0, 0.04, 1000000.0, 1_000_000, 0.05, 4.0 / 512.0),
    "scannetpp": ReconParams(0.02, 0.15, 5.0, 1_000_000, 0.05, 0.02, 0.1),
    "hiroom": ReconParams(4.0 / 512.0, 0.04, 10000.0, 1_000_000, 0.05, 4.0 / 512.0),
}


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
    try:
        from scipy.spatial import cKDTree
    except Exception:
        cKDTree = None
    if cKDTree is not None and q.shape[0] * r.shape[0] > 1 << 22:
        d, _ = cKDTree(r.numpy()).query(q.numpy())
        return torch.from_numpy(np.asarray(d, dtype=np.float64).reshape(-1))
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


def crop_to_box(points, ref, margin: float) -> torch.Tensor:
    """Points of ``points`` (M, 3) inside the axis-aligned box of ``ref`` (N, 3) grown by
    ``margin`` on every side (bounds included; the official ScanNet++ ``eval3d``)."""
    p, r = _points(points, "points"), _points(ref, "ref")
    if r.shape[0] == 0:
        return p[:0]
    lo, hi = r.min(0).values - margin, r.max(0).values + margin
    return p[((p >= lo) & (p <= hi)).all(-1)]


def _umeyama_np(src: np.ndarray, dst: np.ndarray):
    from da3gs.geometry import umeyama

    sim = umeyama(torch.from_numpy(src), torch.from_numpy(dst))
    return sim.R.numpy(), sim.t.numpy(), float(sim.s)


def bench_sim3(pred_c2w, gt_c2w, seed: int = 42, iters: int = 10):
    """The official depth-scale / camera alignment (``align_poses_umeyama`` with ``ransac=True,
    random_state=seed``; module docstring).

    Args:
        pred_c2w, gt_c2w: (N, 4, 4) predicted and ground-truth camera-to-world, N >= 3.
    Returns:
        :class:`da3gs.geometry.Sim3` (float64) mapping predicted world points into the
        ground truth's frame; ``s`` is the depth scale.
    Raises:
        MetricsError: fewer than 3 cameras, or centres too degenerate for Umeyama.
    """
    from da3gs.geometry import GeometryError, Sim3

    pc = torch.as_tensor(pred_c2w, dtype=torch.float64)
    gc = torch.as_tensor(gt_c2w, dtype=torch.float64)
    if pc.ndim != 3 or pc.shape[1:] != (4, 4) or pc.shape != gc.shape:
        raise MetricsError(f"pred_c2w/gt_c2w: expected equal (N, 4, 4) shapes, got {tuple(pc.shape)} and {tuple(gc.shape)}")
    n = pc.shape[0]
    if n < 3:
        raise MetricsError(f"bench alignment: needs at least 3 cameras, got {n}")
    if not (bool(torch.isfinite(pc).all()) and bool(torch.isfinite(gc).all())):
        raise MetricsError("pred_c2w/gt_c2w: contain NaN or Inf values")
    src, dst = pc[:, :3, 3].numpy(), gc[:, :3, 3].numpy()
    try:
        r0, t0, s0 = _umeyama_np(src, dst)
    except GeometryError as e:
        raise MetricsError(f"bench alignment: camera centres are degenerate ({e})") from None
    al = s0 * src @ r0.T + t0
    thresh = float(np.median(np.linalg.norm(dst[None] - al[:, None], axis=-1).min(1)))
    rng = np.random.default_rng(seed)
    sub_n = max(3, (n + 1) // 2)
    best, best_inl, best_key = (r0, t0, s0), None, (-1, np.inf)
    for _ in range(iters):
        idx = rng.choice(np.arange(n), size=sub_n, replace=False)
        try:
            r, t, s = _umeyama_np(src[idx], dst[idx])
        except GeometryError:
            continue
        err = np.linalg.norm(s * src @ r.T + t - dst, axis=1)
        inl = err <= thresh
        k = int(inl.sum())
        mean_err = float(err[inl].mean()) if k > 0 else np.inf
        if k > best_key[0] or (k == best_key[0] and mean_err < best_key[1]):
            best, best_inl, best_key = (r, t, s), inl, (k, mean_err)
    if best_inl is not None and best_inl.sum() >= 3:
        try:
            best = _umeyama_np(src[best_inl], dst[best_inl])
        except GeometryError:
            pass
    r, t, s = best
    return Sim3(torch.from_numpy(np.asarray(r, np.float64)), torch.from_numpy(np.asarray(t, np.float64)),
                torch.tensor(float(s), dtype=torch.float64))


def prepare_fusion(depth, pred_K, pred_c2w, gt_c2w, gt_K, image_hw, mode: str = "posed",
                   valid=None, sim3=None):
    """Depth maps and cameras to fuse, as the official ``_prep_posed`` / ``_prep_unposed``.

    Args:
        depth: (V, h, w) predicted depth (tensor or array) at the network's resolution.
        pred_K: (V, 3, 3) predicted intrinsics in pixels of ``depth``.
        pred_c2w: (V, 4, 4) predicted camera-to-world; gt_c2w: (V, 4, 4) ground truth.
        gt_K: (V, 3, 3) ground-truth intrinsics in pixels of the ground-truth images.
        image_hw: V ground-truth image sizes ``(H, W)``.
        mode: ``posed`` (ground-truth cameras) or ``unposed`` (aligned predicted cameras).
        valid: None or V boolean ``(H, W)`` masks (ground-truth depth > 0 and finite); None:
            only invalid predictions are dropped.
        sim3: the alignment to use (default :func:`bench_sim3` of the cameras).
    Returns:
        ``(depths, K, w2c, sim3)``: a list of V float32 numpy ``(H, W)`` depths (0 or NaN =
        none), (V, 3, 3) and (V, 4, 4) float64 tensors, and the alignment.
    """
    import cv2

    from da3gs.geometry import apply_sim3_to_c2w

    if mode not in RECON_MODES:
        raise MetricsError(f"mode: expected one of {', '.join(RECON_MODES)}, got {mode!r}")
    d = torch.as_tensor(depth).detach().cpu().to(torch.float32).numpy()
    V = d.shape[0]
    if d.ndim != 3 or len(image_hw) != V or (valid is not None and len(valid) != V):
        raise MetricsError(f"depth/image_hw/valid: expected (V, h, w) depth and V sizes/masks, got "
                           f"{d.shape}, {len(image_hw)} sizes")
    pc, gc = torch.as_tensor(pred_c2w).double().cpu(), torch.as_tensor(gt_c2w).double().cpu()
    sim = bench_sim3(pc, gc) if sim3 is None else sim3
    scale = np.float32(float(sim.s))
    h, w = d.shape[1:]
    out = []
    for i in range(V):
        H, W = (int(x) for x in image_hw[i])
        di = cv2.resize(d[i], (W, H), interpolation=cv2.INTER_NEAREST)
        if valid is not None:
            m = np.asarray(valid[i], dtype=bool)
            if m.shape != (H, W):
                raise MetricsError(f"valid[{i}]: expected an ({H}, {W}) mask, got {m.shape}")
            with np.errstate(invalid="ignore"):  # inf * 0 -> NaN, as the bench (not fused)
                di = di * (m & np.isfinite(di)).astype(np.float32)
        else:
            di = np.where(np.isfinite(di) & (di > 0), di, np.float32(0))
        out.append((di * scale).astype(np.float32))
    if mode == "posed":
        K = torch.as_tensor(gt_K).double().cpu().clone()
        w2c = torch.linalg.inv(gc)
    else:
        K = torch.as_tensor(pred_K).double().cpu().clone()
        for i in range(V):
            H, W = image_hw[i]
            K[i, 0, :] *= W / w
            K[i, 1, :] *= H / h
        w2c = torch.linalg.inv(apply_sim3_to_c2w(sim, pc))
    return out, K, w2c, sim
