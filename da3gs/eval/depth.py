"""Depth protocol: predicted depth resized to the ground truth's size, AbsRel / delta1 ... after
per-image alignment.

``resize``: ``"bilinear"`` (default) or ``"nearest"`` (no blending across depth edges).
``align`` (:data:`da3gs.metrics.depth.ALIGN_MODES`): ``median`` scale (default; the multi-view
convention), ``lstsq`` scale and shift (the monocular, affine-invariant convention),
``lstsq_scale`` (least-squares scale only) or ``none`` (metric depth); the result names the
alignment and states its formula (:data:`~da3gs.metrics.depth.ALIGN_FORMULAS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from da3gs.errors import Da3gsError
from da3gs.eval.common import EvalSceneError, Hooks, infer_views

__all__ = ["DepthOptions", "check_depth_scene", "evaluate_depth"]


@dataclass(frozen=True)
class DepthOptions:
    """Options of :func:`evaluate_depth`.

    Attributes:
        process_res: network input size (longest side).
        ref_view: reference-view strategy of the model.
        pose_mode: ``"free"`` (images only) or ``"conditioned"`` (the scene's cameras condition
            the network).
        align: per-image alignment before the metrics (:data:`da3gs.metrics.depth.ALIGN_MODES`).
        resize: ``"bilinear"`` or ``"nearest"``: how the prediction is resized to the ground truth.
        select: how the views were chosen; recorded only.
    """

    process_res: int = 504
    ref_view: str = "saddle_balanced"
    pose_mode: str = "free"
    align: str = "median"
    resize: str = "bilinear"
    select: str = "fps"


def check_depth_scene(scene) -> None:
    """The scene has ground-truth depth maps (:class:`EvalSceneError` otherwise)."""
    if scene.depth_paths is None:
        raise EvalSceneError(f"the {scene.format} scene has no depth maps (use an RGB-D scene: TUM "
                             "groundtruth.txt, ICL/Open3D trajectory.log, or nerfstudio depth_file_path)")


def evaluate_depth(model, scene, views: list[int], options: DepthOptions = DepthOptions(),
                   hooks: Hooks = Hooks()) -> dict:
    """Predict depth for the scene views ``views`` and score it against the scene's depth maps.

    Returns the task fields of ``metrics.json``: ``views``, ``select``, ``pose_mode``, ``align``,
    ``align_formula``, ``resize``, ``per_view`` (``index``, ``name`` and the
    :func:`~da3gs.metrics.depth_metrics` of each view), ``mean`` (over the views with valid
    ground truth) and ``n_images`` (their number). Raises :class:`EvalSceneError` when the scene
    has no depth maps or no valid ground-truth depth in ``views``."""
    import torch.nn.functional as F

    from da3gs.metrics import depth_metrics
    from da3gs.metrics.depth import ALIGN_FORMULAS, ALIGN_MODES

    if options.align not in ALIGN_MODES:
        raise Da3gsError(f"depth alignment: expected one of {', '.join(ALIGN_MODES)}, got {options.align!r}")
    check_depth_scene(scene)
    with hooks.stage("inference"):
        pred = infer_views(model, scene, views, scene.background or (1.0, 1.0, 1.0),
                           options.pose_mode == "conditioned", False, options.process_res,
                           options.ref_view, hooks)
    per_view = []
    kw = {"mode": "nearest"} if options.resize == "nearest" else {"mode": "bilinear", "align_corners": False}
    with hooks.stage("metrics"):
        for j, i in enumerate(views):
            gt = torch.from_numpy(scene.load_depth(i))
            p = F.interpolate(pred.depth[j][None, None].float().cpu(), size=tuple(gt.shape), **kw)[0, 0]
            r = depth_metrics(p, gt, align=options.align, reduction="none")
            per_view.append({"index": i, "name": scene.names[i],
                             **{k: float(v[0]) for k, v in r.items()}})
    keys = [k for k in per_view[0] if k not in ("index", "name")]
    valid = [v for v in per_view if not math.isnan(v["abs_rel"])]
    if not valid:
        raise EvalSceneError("no valid ground-truth depth in the chosen views")
    mean = {k: float(np.mean([v[k] for v in valid])) for k in keys}
    return {"views": views, "select": options.select, "pose_mode": options.pose_mode,
            "align": options.align, "align_formula": ALIGN_FORMULAS[options.align],
            "resize": options.resize, "per_view": per_view, "mean": mean, "n_images": len(valid)}
