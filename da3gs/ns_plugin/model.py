"""Method model: splatfacto whose Gaussians start from the da3gs feed-forward prediction.

The dataparser (``da3gs-data``) puts the training views' Gaussians in
``metadata["da3gs_gaussians"]``; they become the initial means, scales, rotations, opacities and
SH (degree-2 prediction, higher bands zero) of splatfacto, which then optimises and densifies as
usual. Without them (another dataparser, or a model with no Gaussian head) it falls back to
splatfacto's own initialisation from ``points3D_xyz`` seed points.
Evaluation LPIPS uses da3gs' offline AlexNet LPIPS when its weights are present (no download);
otherwise torchmetrics' as in splatfacto.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Type

import torch
from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig
from nerfstudio.utils.rich_utils import CONSOLE

from da3gs.ns_plugin.seed import to_splatfacto


@dataclass
class Da3gsModelConfig(SplatfactoModelConfig):
    """Splatfacto seeded with da3gs Gaussians."""

    _target: Type = field(default_factory=lambda: Da3gsModel)


class _OfflineLPIPS(torch.nn.Module):
    """Callable like torchmetrics' LPIPS(normalize=True): mean LPIPS of [0, 1] image batches."""

    def __init__(self):
        super().__init__()
        from da3gs.metrics.lpips import load_lpips

        self.net = load_lpips("alex")

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.net.to(a.device)
        return self.net(a, b).mean()


class Da3gsModel(SplatfactoModel):
    config: Da3gsModelConfig

    def populate_modules(self):
        metadata = self.kwargs.get("metadata") or {}
        seed = metadata.get("da3gs_gaussians")
        if seed is None:
            CONSOLE.log("da3gs: no da3gs Gaussians in the dataset metadata; splatfacto init")
            super().populate_modules()
            return
        # Let splatfacto build every module from a tiny random cloud (its random-init path runs
        # on the CPU), then put the predicted Gaussians in place of its parameters.
        random_init, num_random = self.config.random_init, self.config.num_random
        self.config.random_init, self.config.num_random = True, 8
        lpips_cls = _patch_lpips()
        try:
            super().populate_modules()
        finally:
            self.config.random_init, self.config.num_random = random_init, num_random
            _unpatch_lpips(lpips_cls)
        params = to_splatfacto(seed, self.config.sh_degree)
        self.gauss_params = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(v) for k, v in params.items()})
        CONSOLE.log(f"da3gs: seeded {params['means'].shape[0]} Gaussians from the prediction")


def _patch_lpips():
    """Use da3gs' offline LPIPS inside splatfacto when its weights are available."""
    import torchmetrics.image.lpip as tm

    original = tm.LearnedPerceptualImagePatchSimilarity
    try:
        _OfflineLPIPS()
    except Exception:
        return None
    tm.LearnedPerceptualImagePatchSimilarity = lambda **kw: _OfflineLPIPS()
    return original


def _unpatch_lpips(original) -> None:
    if original is not None:
        import torchmetrics.image.lpip as tm

        tm.LearnedPerceptualImagePatchSimilarity = original
