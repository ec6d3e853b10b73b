"""3D reconstruction protocol: fused predicted depth against a ground truth, as the DA3 bench's
``evaluate_3d_reconstruction``.

Predictions (:class:`ReconPrediction`) come from the model (:func:`predict_recon`) or from a
``da3gs render`` folder. For each mode:

* ``posed`` (the official ``recon_posed``): predicted depth at the images' size, scaled by the
  bench's Sim(3) (RANSAC Umeyama of predicted onto ground-truth camera centres), fused with the
  ground-truth cameras;
* ``unposed`` (``recon_unposed``): the same depth fused with the predicted cameras moved by
  that Sim(3), and the predicted intrinsics scaled to the images' size.

Where the scene has ground-truth depth maps, pixels without ground-truth depth are dropped
before fusion (as the bench's 7-Scenes / ScanNet++ readers). Fusion is TSDF
(:mod:`da3gs.metrics.tsdf`) with the parameters of :class:`~da3gs.metrics.recon.ReconParams`
(a bench dataset's voxel size, truncation and depth limit); ``samples`` points are sampled from
the mesh. The ground truth (:class:`ReconGroundTruth`) is a mesh (sampled the same way), a point
cloud (used as is), or ``depth``: the scene's ground-truth depth maps fused with its cameras the
same way (the chosen views). Accuracy, completeness, overall (Chamfer), precision, recall and
F-score follow :func:`da3gs.metrics.recon.recon_metrics` at the threshold and down-sampling of
the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from da3gs.errors import Da3gsError
from da3gs.eval.common import Hooks, infer_views
from da3gs.metrics.recon import BENCH_RECON, ReconParams

__all__ = ["ReconOptions", "ReconPrediction", "ReconGroundTruth", "predict_recon",
           "evaluate_recon"]


@dataclass(frozen=True)
class ReconOptions:
    """Options of :func:`predict_recon` and :func:`evaluate_recon`.

    Attributes:
        params: TSDF fusion and metric parameters (default: the 7-Scenes bench's).
        bench: name of the bench protocol ``params`` come from; recorded only.
        mode: ``"posed"``, ``"unposed"`` or ``"both"``.
        seed: seed of the point sampling.
        process_res: network input size (:func:`predict_recon`).
        ref_view: reference-view strategy of the model (:func:`predict_recon`).
    """

    params: ReconParams = field(default_factory=lambda: BENCH_RECON["7scenes"])
    bench: str = "7scenes"
    mode: str = "both"
    seed: int = 0
    process_res: int = 504
    ref_view: str = "saddle_balanced"


@dataclass(frozen=True)
class ReconPrediction:
    """Predicted depth and cameras of scene views.

    Attributes:
        views: scene indices of the views.
        depth: (V, h, w) depth.
        K: (V, 3, 3) intrinsics at the depth's size.
        c2w: (V, 4, 4) camera-to-world, the prediction's frame.
        source: ``"model"`` or ``"render folder"``; recorded.
    """

    views: list[int]
    depth: torch.Tensor
    K: torch.Tensor
    c2w: torch.Tensor
    source: str = "model"


@dataclass(frozen=True)
class ReconGroundTruth:
    """The reconstruction's ground truth.

    Attributes:
        kind: ``"mesh"``, ``"points"`` or ``"depth"`` (the scene's depth maps, fused).
        points: (N, 3) vertices or points (None for ``depth``).
        faces: (F, 3) triangles of a mesh, else None.
        source: where it came from (a file or ``"depth"``); recorded.
    """

    kind: str
    points: np.ndarray | None = None
    faces: np.ndarray | None = None
    source: str = "depth"


def predict_recon(model, scene, views: list[int], options: ReconOptions = ReconOptions(),
                  hooks: Hooks = Hooks()) -> ReconPrediction:
    """Run ``model`` on the scene views ``views`` (images only)."""
    with hooks.stage("inference"):
        pred = infer_views(model, scene, views, scene.background or (1.0, 1.0, 1.0), False, False,
                           options.process_res, options.ref_view, hooks)
    return ReconPrediction(views, pred.depth.float().cpu(), pred.K.double().cpu(),
                           pred.c2w.double().cpu(), "model")


def gt_valid(scene, idx):
    """Per view: the ground-truth depth and its mask (> 0 and finite) at the image size, or
    (None, None) for a scene without depth maps."""
    if scene.depth_paths is None:
        return None, None
    depths, valid = [], []
    for i in idx:
        d = scene.load_depth(i)
        if tuple(d.shape) != tuple(scene.image_hw[i]):
            raise Da3gsError(f"--scene {scene.depth_paths[i]}: depth {d.shape[1]}x{d.shape[0]} differs from "
                             f"its image {scene.image_hw[i][1]}x{scene.image_hw[i][0]}")
        depths.append(d)
        valid.append(np.isfinite(d) & (d > 0))
    return depths, valid


def evaluate_recon(scene, pred: ReconPrediction, gt: ReconGroundTruth,
                   options: ReconOptions = ReconOptions(), device="cpu",
                   hooks: Hooks = Hooks()) -> dict:
    """Fuse the predicted depth of ``pred`` and score it against ``gt`` (module docstring).

    Returns the task fields of ``metrics.json``: ``views``, ``view_names``, ``bench``,
    ``params``, ``gt`` (``kind``, ``source``, ``points``), ``predictions``, ``gt_depth_mask``,
    ``alignment`` (the Sim(3): ``scale``, ``R``, ``t``, ``method``), ``comparable_with`` and
    ``metrics``: per mode, :func:`~da3gs.metrics.recon.recon_metrics` (``acc``, ``comp``,
    ``overall``, ``precision``, ``recall``, ``fscore``) with ``mesh_vertices``,
    ``mesh_triangles``, ``points`` and ``points_after_crop``."""
    from da3gs.metrics.recon import RECON_MODES, crop_to_box, prepare_fusion, recon_metrics
    from da3gs.metrics.tsdf import fuse_depth_maps, sample_points_uniformly

    params, idx = options.params, pred.views
    if options.mode not in (*RECON_MODES, "both"):
        raise Da3gsError(f"recon mode: expected posed, unposed or both, got {options.mode!r}")
    if len(idx) < 3:
        raise Da3gsError(f"eval recon: needs at least 3 views (Sim(3) alignment of the cameras), got {len(idx)}")
    gt_c2w, gt_K = scene.c2w[idx], scene.K[idx]
    hw = [scene.image_hw[i] for i in idx]
    gen = torch.Generator().manual_seed(options.seed)
    fuse = dict(voxel_length=params.voxel_length, sdf_trunc=params.sdf_trunc,
                depth_trunc=params.max_depth, device=device)
    with hooks.stage("ground_truth"):
        gt_depths, valid = gt_valid(scene, idx)
        if gt.kind == "depth":
            v, f = fuse_depth_maps(gt_depths, gt_K, torch.linalg.inv(gt_c2w), **fuse)
            gt_cloud = sample_points_uniformly(v, f, params.samples, gen)
        elif gt.kind == "mesh":
            gt_cloud = sample_points_uniformly(gt.points, gt.faces, params.samples, gen)
        else:
            gt_cloud = torch.from_numpy(gt.points)
    if gt_cloud.shape[0] == 0:
        raise Da3gsError(f"--gt {gt.source}: the ground truth gives no surface points")
    modes = list(RECON_MODES) if options.mode == "both" else [options.mode]
    results, sim = {}, None
    for mode in modes:
        with hooks.stage(f"fuse_{mode}"):
            depths, K, w2c, sim = prepare_fusion(pred.depth, pred.K, pred.c2w, gt_c2w, gt_K, hw,
                                                 mode, valid, sim)
            v, f = fuse_depth_maps(depths, K, w2c, **fuse)
            cloud = sample_points_uniformly(v, f, params.samples, gen)
        n_fused = int(cloud.shape[0])
        if params.crop_margin is not None:
            cloud = crop_to_box(cloud, gt_cloud, params.crop_margin)
        with hooks.stage(f"metrics_{mode}"):
            r = recon_metrics(cloud, gt_cloud, params.threshold, down_sample=params.down_sample or None)
        results[mode] = {**r, "mesh_vertices": int(v.shape[0]), "mesh_triangles": int(f.shape[0]),
                         "points": n_fused, "points_after_crop": int(cloud.shape[0])}
    return {"views": idx, "view_names": [scene.names[i] for i in idx], "bench": options.bench,
            "params": params.as_dict(), "gt": {"kind": gt.kind, "source": gt.source,
                                               "points": int(gt_cloud.shape[0])},
            "predictions": pred.source,
            "gt_depth_mask": valid is not None,
            "alignment": {"scale": float(sim.s), "R": sim.R, "t": sim.t,
                          "method": "RANSAC Umeyama on camera centres (official align_poses_umeyama, seed 42)"},
            "comparable_with": "depth_anything_3.bench fuse3d + eval3d (evaluate_3d_reconstruction)",
            "metrics": results}
