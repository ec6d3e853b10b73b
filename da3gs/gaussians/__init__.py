"""Post-processing of Gaussian clouds: pruning (opacity, confidence, image border) and voxel merge;
random initialisation as per-scene 3DGS does without SfM points (:mod:`da3gs.gaussians.init`).

Works on :class:`~da3gs.types.Gaussians` only (imports ``da3gs.geometry`` and ``da3gs.types``), so
every layer above (render, models, apps, the nerfstudio plug-in) may use it.
"""

from da3gs.gaussians.init import knn_mean_sq_distance, random_gaussians
from da3gs.gaussians.prune import (PruneError, PruneReport, PruneStep, footprint_cells, merge_cells,
                                  prune_gaussians, voxel_merge)

__all__ = ["PruneError", "PruneReport", "PruneStep", "prune_gaussians", "voxel_merge", "merge_cells",
           "footprint_cells", "random_gaussians", "knn_mean_sq_distance"]
