"""Optimisation of Gaussians: test-time refinement (:mod:`da3gs.train.refine`)."""

from da3gs.train.refine import RefineReport, refine_gaussians

__all__ = ["RefineReport", "refine_gaussians"]
