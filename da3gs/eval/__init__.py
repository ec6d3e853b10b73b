"""Evaluation protocols: novel views (:mod:`~da3gs.eval.nvs`), camera poses
(:mod:`~da3gs.eval.pose`), depth (:mod:`~da3gs.eval.depth`) and 3D reconstruction
(:mod:`~da3gs.eval.recon`) on posed scenes (:func:`da3gs.data.load_scene`).

Each protocol takes a model (:func:`da3gs.models.loading.load_model`), a scene and frozen
options, and returns its metrics; ``da3gs eval`` (:mod:`da3gs.apps.eval`) adds the command
line, the output folder (``metrics.json``) and the printing::

    from da3gs.data import load_scene
    from da3gs.eval import PoseOptions, evaluate_pose
    from da3gs.models.loading import load_model

    scene = load_scene("scene/")
    m = evaluate_pose(load_model("mini"), scene, [0, 1, 2, 3], PoseOptions(process_res=252))
    print(m["auc"], m["ate"])
"""

from da3gs.eval.common import EvalSceneError, Hooks, infer_views, pose_errors
from da3gs.eval.depth import DepthOptions, evaluate_depth
from da3gs.eval.nvs import NVSOptions, NVSPlan, NVSResult, evaluate_nvs, plan_nvs, score_views
from da3gs.eval.pose import PoseOptions, evaluate_pose
from da3gs.eval.recon import (ReconGroundTruth, ReconOptions, ReconPrediction, evaluate_recon,
                              predict_recon)

__all__ = ["Hooks", "EvalSceneError", "infer_views", "pose_errors",
           "PoseOptions", "evaluate_pose", "DepthOptions", "evaluate_depth",
           "NVSOptions", "NVSPlan", "NVSResult", "plan_nvs", "evaluate_nvs", "score_views",
           "ReconOptions", "ReconPrediction", "ReconGroundTruth", "predict_recon", "evaluate_recon"]
