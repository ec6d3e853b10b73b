"""Pose protocol: pose-free prediction on N views, pose AUC@3/5/15/30 and ATE after Sim(3).

The AUC is the official DA3 benchmark's (``auc_mode="bench"``, default;
:mod:`da3gs.metrics.pose`), comparable with published tables; ``"relative"`` gives the physical
relative-pose variant.
"""

from __future__ import annotations

from dataclasses import dataclass

from da3gs.errors import Da3gsError
from da3gs.eval.common import Hooks, infer_views, pose_errors

__all__ = ["PoseOptions", "check_pose_views", "evaluate_pose"]


@dataclass(frozen=True)
class PoseOptions:
    """Options of :func:`evaluate_pose`.

    Attributes:
        process_res: network input size (longest side, a multiple of the patch size).
        ref_view: reference-view strategy of the model (``da3gs.models`` ``STRATEGIES``).
        auc_mode: ``"bench"`` (official DA3 benchmark AUC) or ``"relative"``.
        select: how the views were chosen (``"fps"``, ``"every-nth"``); recorded only.
    """

    process_res: int = 504
    ref_view: str = "saddle_balanced"
    auc_mode: str = "bench"
    select: str = "fps"


def check_pose_views(views: list[int]) -> None:
    """Relative poses need at least 2 views (:class:`Da3gsError` otherwise)."""
    if len(views) < 2:
        raise Da3gsError("eval pose: needs at least 2 views (relative poses)")


def evaluate_pose(model, scene, views: list[int], options: PoseOptions = PoseOptions(),
                  hooks: Hooks = Hooks()) -> dict:
    """Predict the cameras of the scene views ``views`` (images only), align them to the
    scene's by Sim(3) and score them.

    Returns the task fields of ``metrics.json``: ``views``, ``view_names``, ``select``,
    ``auc_mode``, ``auc`` (``{"auc@3": ..., "auc@5", "auc@15", "auc@30"}`` in [0, 1]), ``ate``
    (after Sim(3)), ``alignment_scale`` and ``aligned_errors`` (:func:`pose_errors`)."""
    from da3gs.geometry import align_cameras
    from da3gs.metrics import ate, pose_auc

    check_pose_views(views)
    with hooks.stage("inference"):
        pred = infer_views(model, scene, views, scene.background or (1.0, 1.0, 1.0), False, False,
                           options.process_res, options.ref_view, hooks)
    pc, gc = pred.c2w.double().cpu(), scene.c2w[views]
    sim, aligned = align_cameras(pc, gc, orientation_fallback=True)
    return {"views": views, "view_names": [scene.names[i] for i in views], "select": options.select,
            "auc_mode": options.auc_mode,
            "auc": pose_auc(pc, gc, thresholds=(3, 5, 15, 30), mode=options.auc_mode),
            "ate": ate(pc, gc, "sim3"),
            "alignment_scale": float(sim.s), "aligned_errors": pose_errors(aligned, gc)}
