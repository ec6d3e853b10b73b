"""nerfstudio registrations: methods ``da3gs`` and ``da3gs-fast`` (dataparser: ``dataparser_spec``).

The trainer settings follow splatfacto's (nerfstudio 1.1.5); ``da3gs-fast`` is a 3000-step
preview with densification stopping earlier.
"""

from __future__ import annotations

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanagerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from da3gs.ns_plugin.dataparser import Da3gsDataParserConfig
from da3gs.ns_plugin.model import Da3gsModelConfig


def _optimizers(max_steps: int) -> dict:
    adam = lambda lr: AdamOptimizerConfig(lr=lr, eps=1e-15)  # noqa: E731
    return {
        "means": {"optimizer": adam(1.6e-4),
                  "scheduler": ExponentialDecaySchedulerConfig(lr_final=1.6e-6, max_steps=max_steps)},
        "features_dc": {"optimizer": adam(0.0025), "scheduler": None},
        "features_rest": {"optimizer": adam(0.0025 / 20), "scheduler": None},
        "opacities": {"optimizer": adam(0.05), "scheduler": None},
        "scales": {"optimizer": adam(0.005), "scheduler": None},
        "quats": {"optimizer": adam(0.001), "scheduler": None},
        "camera_opt": {"optimizer": adam(1e-4), "scheduler": ExponentialDecaySchedulerConfig(
            lr_final=5e-7, max_steps=max_steps, warmup_steps=1000, lr_pre_warmup=0)},
        "bilateral_grid": {"optimizer": adam(2e-3), "scheduler": ExponentialDecaySchedulerConfig(
            lr_final=1e-4, max_steps=max_steps, warmup_steps=1000, lr_pre_warmup=0)},
    }


def _trainer(name: str, max_steps: int, model: Da3gsModelConfig) -> TrainerConfig:
    return TrainerConfig(
        method_name=name, steps_per_eval_image=100, steps_per_eval_batch=0, steps_per_save=2000,
        steps_per_eval_all_images=1000, max_num_iterations=max_steps, mixed_precision=False,
        pipeline=VanillaPipelineConfig(
            datamanager=FullImageDatamanagerConfig(dataparser=Da3gsDataParserConfig(),
                                                   cache_images_type="uint8"),
            model=model),
        optimizers=_optimizers(max_steps), viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer")


da3gs_method = MethodSpecification(
    config=_trainer("da3gs", 30000, Da3gsModelConfig()),
    description="Splatfacto seeded with da3gs feed-forward Gaussians and cameras (no COLMAP).")

da3gs_fast_method = MethodSpecification(
    config=_trainer("da3gs-fast", 3000, Da3gsModelConfig(
        stop_split_at=2000, reset_alpha_every=10, sh_degree_interval=500)),
    description="3000-step preview of da3gs: seeded splatfacto with shorter densification.")
