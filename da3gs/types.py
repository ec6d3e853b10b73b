"""Typed results returned by the public API."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from da3gs.errors import Da3gsError


@dataclass
class Prediction:
    """What ``model.infer`` returns for V views processed at H x W.

    Fields:
      images: (V, 3, H, W) float in [0, 1], the processed input images.
      depth: (V, H, W) z-depth in the frame of ``c2w`` (metres for metric/nested models).
      depth_conf: (V, H, W) confidence (>= 1; higher is better); None for mono models.
      c2w, w2c: (V, 4, 4) OpenCV camera-to-world / world-to-camera; None for mono models.
      K: (V, 3, 3) intrinsics in pixels of the processed images.
      rays: (V, h, w, 6) predicted ray map (0:3 unnormalised direction, 3:6 origin) in the
        network's own frame (before alignment to input poses); None for mono models.
      ray_conf: (V, h, w) ray confidence.
      sky: (V, H, W) sky score (>= 0.3 is sky) for mono/metric/nested models, else None.
      is_metric: depth and translations are in metres.
      scale_factor: metric scale applied by the nested model, or the scale taking the
        network's frame to the input poses' frame when poses were given.
      ref_view: index of the reference view chosen by the backbone (pose-free, >= 3 views).
      pose_conditioned: whether input poses conditioned the network.
      original_sizes: (H, W) of each input before processing.
      paths: input file paths when images were given as paths.
      gaussians: per-pixel Gaussians when the model has a GS head and they were requested.
      resize_scale, crop_offsets: per view (sx, sy) and (left, top) of the preprocessing:
        processed pixel u' = u * sx - left (see ``K_original``).
    """

    images: torch.Tensor
    depth: torch.Tensor
    depth_conf: torch.Tensor | None = None
    c2w: torch.Tensor | None = None
    w2c: torch.Tensor | None = None
    K: torch.Tensor | None = None
    rays: torch.Tensor | None = None
    ray_conf: torch.Tensor | None = None
    sky: torch.Tensor | None = None
    is_metric: bool = False
    scale_factor: float | None = None
    ref_view: int | None = None
    pose_conditioned: bool = False
    original_sizes: list[tuple[int, int]] = field(default_factory=list)
    paths: list[Path] | None = None
    gaussians: object | None = None
    resize_scale: list[tuple[float, float]] = field(default_factory=list)
    crop_offsets: list[tuple[int, int]] = field(default_factory=list)

    def K_original(self) -> torch.Tensor:
        """(V, 3, 3) intrinsics in pixels of the original input images (undoing resize/crop)."""
        if self.K is None:
            raise Da3gsError("this prediction has no intrinsics")
        K = self.K.clone().double()
        for i, ((sx, sy), (left, top)) in enumerate(zip(self.resize_scale, self.crop_offsets)):
            K[i, 0, 2] += left
            K[i, 1, 2] += top
            K[i, 0] /= sx
            K[i, 1] /= sy
        return K

    @property
    def num_views(self) -> int:
        return int(self.depth.shape[0])

    def to(self, device) -> "Prediction":
        """Copy with every tensor moved to ``device``."""
        kw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
              for k, v in self.__dict__.items()}
        return Prediction(**kw)


@dataclass
class Gaussians:
    """A cloud of N 3D Gaussians in a world frame (OpenCV cameras).

    Fields:
      means: (N, 3) float centres.
      quats: (N, 4) float rotations, wxyz, unit norm.
      scales: (N, 3) float standard deviations along the local axes (linear, not log).
      opacities: (N,) float in [0, 1].
      sh: (N, K, 3) float spherical-harmonic coefficients, K = (degree + 1) ** 2, DC first
        (colour = 0.5 + C0 * sh[:, 0] for degree 0, C0 = 0.28209479177387814).
      conf: (N,) optional per-Gaussian confidence (depth confidence of its pixel).
      view: (N,) optional long index of the view each Gaussian came from.
      pixel: (N, 2) optional long (row, col) of the pixel it came from in that view.
    """

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    sh: torch.Tensor
    conf: torch.Tensor | None = None
    view: torch.Tensor | None = None
    pixel: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        from da3gs.geometry.sh import sh_degree_from_bases

        return sh_degree_from_bases(self.sh.shape[1])

    def subset(self, index: torch.Tensor) -> "Gaussians":
        """Gaussians selected by a boolean mask or an index tensor over N."""
        return Gaussians(**{k: (v[index] if isinstance(v, torch.Tensor) else v)
                            for k, v in self.__dict__.items()})

    def to(self, device) -> "Gaussians":
        return Gaussians(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                            for k, v in self.__dict__.items()})

    def detach(self) -> "Gaussians":
        return Gaussians(**{k: (v.detach() if isinstance(v, torch.Tensor) else v)
                            for k, v in self.__dict__.items()})

    @staticmethod
    def cat(parts: list["Gaussians"]) -> "Gaussians":
        """Concatenate clouds (optional fields kept only if every part has them)."""
        out = {}
        for k in parts[0].__dict__:
            vals = [getattr(p, k) for p in parts]
            out[k] = None if any(v is None for v in vals) else torch.cat(vals)
        return Gaussians(**out)
