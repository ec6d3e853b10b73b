"""The multi-view training sample shared by the datasets, the procedural generator, the losses
and the trainer.

Every source of training data (scene readers, the procedural generator) produces
:class:`ViewBatch`; every loss consumes it. Shapes carry a leading batch dimension ``B``
(samples) and a view dimension ``V``; all views of one batch share ``H x W``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class ViewBatch:
    """B samples of V views each, with ground truth.

    Fields:
      images: (B, V, 3, H, W) float in [0, 1] (not ImageNet-normalised).
      depth: (B, V, H, W) float z-depth along the camera's +z axis (OpenCV), 0 where invalid.
      valid: (B, V, H, W) bool, pixels whose depth is valid (not sky, not missing).
      c2w: (B, V, 4, 4) float camera-to-world, OpenCV (x right, y down, z forward).
      K: (B, V, 3, 3) float intrinsics in pixels of these H x W images.
      normals: (B, V, 3, H, W) float unit normals in the camera frame, or None.
      sky: (B, V, H, W) bool sky / background-at-infinity mask, or None.
      pose_conditioned: (B,) bool, samples whose network input includes the GT poses (the
        training sources keep it on the CPU: the trainer splits the batch by it on the host).
      scene_ids: list of B strings naming the scene each sample came from (for logs).
    """

    images: torch.Tensor
    depth: torch.Tensor
    valid: torch.Tensor
    c2w: torch.Tensor
    K: torch.Tensor
    normals: torch.Tensor | None = None
    sky: torch.Tensor | None = None
    pose_conditioned: torch.Tensor | None = None
    scene_ids: list[str] | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, V, H, W)."""
        B, V, _, H, W = self.images.shape
        return B, V, H, W

    def to(self, device, non_blocking: bool = False, keep_flags: bool = False) -> "ViewBatch":
        """Copy with every tensor moved to ``device``; with ``keep_flags`` the per-sample
        control flag ``pose_conditioned`` stays where it is (the trainer keeps it on the CPU
        and reads it there without a device sync)."""
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if keep_flags and f.name == "pose_conditioned":
                kw[f.name] = v
                continue
            kw[f.name] = v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        return ViewBatch(**kw)

    @staticmethod
    def collate(items: list["ViewBatch"]) -> "ViewBatch":
        """Concatenate batches of equal V, H, W along the batch dimension."""
        kw = {}
        for f in fields(ViewBatch):
            vals = [getattr(b, f.name) for b in items]
            if all(v is None for v in vals):
                kw[f.name] = None
            elif f.name == "scene_ids":
                kw[f.name] = [s for b, v in zip(items, vals)
                              for s in (v or [""] * b.images.shape[0])]
            else:
                kw[f.name] = torch.cat(vals, 0)
        return ViewBatch(**kw)
