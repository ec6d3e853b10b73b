"""Evaluation metrics: images (PSNR, SSIM, LPIPS), camera poses (AUC, ATE) and depth.

Image metrics return one value per image, shape (B,); the dataset figure is the mean over
images ("per image, then mean"). See each module for the exact conventions.
"""

from .depth import depth_metrics
from .image import MetricsError, psnr, ssim
from .lpips import (LPIPS, LPIPSWeightsError, load_lpips, lpips, lpips_cache_dir,
                    lpips_models, parse_lpips_nets)
from .pose import ate, auc_from_errors, pose_auc, relative_pose_errors

__all__ = [
    "MetricsError",
    "psnr",
    "ssim",
    "LPIPS",
    "LPIPSWeightsError",
    "load_lpips",
    "lpips",
    "lpips_cache_dir",
    "lpips_models",
    "parse_lpips_nets",
    "relative_pose_errors",
    "pose_auc",
    "auc_from_errors",
    "ate",
    "depth_metrics",
]
