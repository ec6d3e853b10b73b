"""Method model: splatfacto whose Gaussians start from the da3gs feed-forward prediction.

The dataparser (``da3gs-data``) puts the training views' Gaussians in
``metadata["da3gs_gaussians"]``; they become the initial means, scales, rotations, opacities and
SH (degree-2 prediction, higher bands zero) of splatfacto, which then optimises and densifies as
usual. Without them (another dataparser, or a model with no Gaussian head) it falls back to
splatfacto's own initialisation from ``points3D_xyz`` seed points.
Evaluation LPIPS uses da3gs' offline AlexNet LPIPS when its weights are present (no download);
otherwise torchmetrics' as in splatfacto.

Without CUDA (splatfacto's gsplat rasterization is CUDA-only) the model renders with da3gs' pure
torch rasterizer (:func:`da3gs.render.render`, backend ``"torch"``, the same EWA maths), so
``ns-train da3gs --machine.device-type cpu`` and ``ns-export gaussian-splat`` run on a CPU
machine; there the Gaussians are optimised but not densified (gsplat's densification strategy
needs the 2D-mean gradients of its CUDA rasterizer). Slow: for checks and small scenes.
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
    _cpu_noted = False

    def get_outputs(self, camera):
        if self.means.is_cuda:
            return super().get_outputs(camera)
        return self._get_outputs_torch(camera)

    def step_post_backward(self, step):
        if self.means.is_cuda:
            return super().step_post_backward(step)
        # CPU: no densification (the strategy's state needs gsplat's rasterization info)

    def _get_outputs_torch(self, camera):
        """Splatfacto's ``get_outputs`` (same inputs, outputs and conventions) on da3gs' torch
        rasterizer: any device, no densification statistics."""
        from nerfstudio.cameras.cameras import Cameras
        from nerfstudio.models.splatfacto import get_viewmat

        from da3gs.render import C0, render
        from da3gs.types import Gaussians

        if not isinstance(camera, Cameras):
            raise TypeError(f"get_outputs needs a nerfstudio Cameras, got {type(camera).__name__}")
        if not self._cpu_noted:
            CONSOLE.log("da3gs: no CUDA; rendering with da3gs' torch rasterizer (slow), "
                        "Gaussians optimised without densification")
            Da3gsModel._cpu_noted = True
        if self.training:
            assert camera.shape[0] == 1, "Only one camera at a time"
            c2w = self.camera_optimizer.apply_to_camera(camera)
        else:
            c2w = camera.camera_to_worlds
        crop = None
        if self.crop_box is not None and not self.training:
            crop = self.crop_box.within(self.means).squeeze()
            if crop.sum() == 0:
                return self.get_empty_outputs(int(camera.width.item()), int(camera.height.item()),
                                              self.background_color)
        pick = (lambda t: t[crop]) if crop is not None else (lambda t: t)
        scale_fac = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / scale_fac)
        K = camera.get_intrinsics_matrices().to(self.means.device)
        W, H = int(camera.width.item()), int(camera.height.item())
        self.last_size = (H, W)
        camera.rescale_output_resolution(scale_fac)
        sh = torch.cat((self.features_dc[:, None, :], self.features_rest), dim=1)
        if self.config.sh_degree > 0:
            degree = min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
        else:  # splatfacto's degree-0 colours are sigmoid(features); as SH DC coefficients:
            sh, degree = (torch.sigmoid(sh[:, :1]) - 0.5) / C0, 0
        g = Gaussians(means=pick(self.means), quats=torch.nn.functional.normalize(pick(self.quats), dim=-1),
                      scales=torch.exp(pick(self.scales)),
                      opacities=torch.sigmoid(pick(self.opacities)).squeeze(-1), sh=pick(sh))
        out = render(g, get_viewmat(c2w), K, W, H, backend="torch", sh_degree=degree)
        alpha = out.alpha
        background = self._get_background_color()
        rgb = torch.clamp(out.color + (1 - alpha) * background, 0.0, 1.0)
        depth = None
        if self.config.output_depth_during_training or not self.training:
            depth = torch.where(alpha > 0, out.depth, out.depth.detach().max()).squeeze(0)
        if background.shape[0] == 3 and not self.training:
            background = background.expand(H, W, 3)
        return {"rgb": rgb.squeeze(0), "depth": depth, "accumulation": alpha.squeeze(0),
                "background": background}

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
