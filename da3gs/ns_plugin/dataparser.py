"""Dataparser ``da3gs-data``: a folder of photos (no poses needed) -> nerfstudio dataset.

Cameras come from the da3gs model (pose-free), or, when the folder holds poses (a
``transforms.json`` or a COLMAP model, read by :func:`da3gs.data.load_scene`), from the dataset
with the model conditioned on them (``cameras="dataset"``) or predicted anyway
(``cameras="predicted"``). The model runs once on all images; the Gaussians of the training
views seed the ``da3gs`` method (``metadata["da3gs_gaussians"]``) and a coloured point cloud is
provided as ``points3D_xyz``/``points3D_rgb`` for any splatfacto-like method.
Poses are oriented and centred as nerfstudio's own dataparser does (``auto_orient_and_center_poses``,
then scaled into [-1, 1]); the Gaussians follow the same similarity transform.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Type

import torch
from nerfstudio.cameras import camera_utils
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import (DataParser, DataParserConfig,
                                                         DataparserOutputs)
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.utils.rich_utils import CONSOLE

from da3gs.errors import Da3gsError
from da3gs.geometry import Sim3, c2w_opencv_to_opengl
from da3gs.geometry.gaussians import transform_gaussians
from da3gs.render.sh import sh0_to_rgb

MIN_IMAGES = 2
DEFAULT_MODEL = "depth-anything/DA3-GIANT-1.1"  # as the CLI (da3gs.apps.common.DEFAULT_MODEL)


@dataclass
class Da3gsDataParserConfig(DataParserConfig):
    """Photos (and optionally poses) -> cameras and seed Gaussians from a da3gs model."""

    _target: Type = field(default_factory=lambda: Da3gsDataParser)
    data: Path = Path()
    """Folder of images (or a scene folder with transforms.json / COLMAP model and images)."""
    model: str = DEFAULT_MODEL
    """da3gs model: hub repo id, local folder, checkpoint or random:PRESET (default: DA3-GIANT;
    offline and not cached: the bundled 'mini', with one note, as the da3gs CLI does)."""
    cameras: Literal["auto", "dataset", "predicted"] = "auto"
    """auto: dataset poses when the folder has them, else predicted."""
    process_res: int = 504
    """Longest image side fed to the network."""
    device: str = "auto"
    """Device for the da3gs forward pass."""
    eval_interval: int = 8
    """Every n-th image (0, n, 2n, ...) is held out for evaluation; 0 trains on all."""
    prune_opacity: float = 0.005
    """Drop seed Gaussians with opacity below this."""
    prune_conf: float = 0.0
    """Drop seed Gaussians below this percentile of depth confidence (0-100)."""
    voxel: float = 0.0
    """Merge seed Gaussians falling in one voxel of this size (dataset units; 0: off)."""
    max_seed_points: int = 2_000_000
    """Cap on seed Gaussians (uniform subsampling beyond)."""
    orientation_method: Literal["pca", "up", "vertical", "none"] = "up"
    center_method: Literal["poses", "focus", "none"] = "poses"
    auto_scale_poses: bool = True
    scale_factor: float = 1.0


class Da3gsDataParser(DataParser):
    config: Da3gsDataParserConfig

    def __init__(self, config: Da3gsDataParserConfig):
        super().__init__(config)
        self._cache: Optional[dict] = None

    def _run(self) -> dict:
        if self._cache is None:
            self._cache = run_da3gs(self.config)
        return self._cache

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        r = self._run()
        idx = r["train"] if split == "train" else r["eval"]
        K, hw = r["K"][idx], [r["hw"][i] for i in idx]
        cameras = Cameras(
            camera_to_worlds=r["c2w_gl"][idx, :3, :4].float(),
            fx=K[:, 0, 0:1].float(), fy=K[:, 1, 1:2].float(),
            cx=K[:, 0, 2:3].float(), cy=K[:, 1, 2:3].float(),
            height=torch.tensor([[h] for h, _ in hw]), width=torch.tensor([[w] for _, w in hw]),
            camera_type=CameraType.PERSPECTIVE)
        metadata = {"points3D_xyz": r["points"], "points3D_rgb": r["colors"]}
        if r["gaussians"] is not None:
            metadata["da3gs_gaussians"] = r["gaussians"]
        b = 1.0
        return DataparserOutputs(
            image_filenames=[r["paths"][i] for i in idx], cameras=cameras,
            scene_box=SceneBox(aabb=torch.tensor([[-b, -b, -b], [b, b, b]], dtype=torch.float32)),
            metadata=metadata, dataparser_scale=r["scale"], dataparser_transform=r["transform"])


def _images_and_poses(cfg: Da3gsDataParserConfig):
    from da3gs.data import load_scene
    from da3gs.io.images import list_images

    data = Path(cfg.data)
    scene = None
    if cfg.cameras in ("auto", "dataset"):
        try:
            scene = load_scene(data)
        except Da3gsError as e:
            if cfg.cameras == "dataset":
                raise
            CONSOLE.log(f"da3gs-data: no poses in {data} ({e}); predicting cameras")
    if scene is not None:
        return list(scene.image_paths), scene
    folder = data / "images" if (data / "images").is_dir() else data
    images, _ = list_images(folder)
    return images, None


def run_da3gs(cfg: Da3gsDataParserConfig) -> dict:
    """Run the da3gs model once on every image; returns cameras (nerfstudio frame), splits and
    the seed Gaussians of the training views."""
    from da3gs.models.loading import load_model
    from da3gs.gaussians import prune_gaussians
    from da3gs.models.loading import FALLBACK, load_model_or_bundled

    paths, scene = _images_and_poses(cfg)
    if len(paths) < MIN_IMAGES:
        raise Da3gsError(f"{cfg.data}: {len(paths)} image(s); da3gs-data needs at least {MIN_IMAGES}")
    n = len(paths)
    eval_idx = [i for i in range(n) if cfg.eval_interval and i % cfg.eval_interval == 0]
    if len(eval_idx) == n:
        eval_idx = []
    train_idx = [i for i in range(n) if i not in eval_idx]
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.model == DEFAULT_MODEL:  # the default: offline, fall back to the bundled model
        model, source = load_model_or_bundled(
            cfg.model, device, note=f"ns-train da3gs da3gs-data --model {FALLBACK} selects it "
            "explicitly", loader=load_model)
        if source != cfg.model:
            CONSOLE.log(f"da3gs-data: {cfg.model} unavailable offline; using the bundled model "
                        f"{source!r}")
    else:
        model = load_model(cfg.model, device=device)
    if not model.has_cameras:
        raise Da3gsError(f"model {cfg.model}: preset {model.preset.name} predicts no cameras")
    c2w_in = K_in = None
    if scene is not None and cfg.cameras != "predicted":
        c2w_in, K_in = scene.c2w, scene.K
    CONSOLE.log(f"da3gs-data: running {model.preset.name} on {n} images "
                f"({'pose-conditioned' if c2w_in is not None else 'pose-free'})")
    pred = model.infer(paths, c2w_in, K_in, process_res=cfg.process_res,
                       infer_gs=model.has_gs_head)
    c2w = pred.c2w.double().cpu()
    K = (K_in.double() if K_in is not None else pred.K_original()).cpu()
    hw = [tuple(s) for s in pred.original_sizes] if scene is None else list(scene.image_hw)
    poses_gl = c2w_opencv_to_opengl(c2w).float()
    _, transform = camera_utils.auto_orient_and_center_poses(
        poses_gl, method=cfg.orientation_method, center_method=cfg.center_method)
    oriented = transform @ poses_gl
    scale = 1.0
    if cfg.auto_scale_poses:
        scale /= float(torch.max(torch.abs(oriented[:, :3, 3])).clamp_min(1e-8))
    scale *= cfg.scale_factor
    oriented[:, :3, 3] *= scale
    c2w_gl = torch.eye(4).repeat(n, 1, 1)
    c2w_gl[:, :3, :4] = oriented
    sim3 = Sim3(transform[:, :3].double(), transform[:, 3].double() * scale,
                torch.tensor(scale, dtype=torch.float64))
    gaussians = None
    if pred.gaussians is not None:
        g = pred.gaussians.to("cpu")
        g = g.subset(torch.isin(g.view, torch.tensor(train_idx)))
        g, report = prune_gaussians(g, min_opacity=cfg.prune_opacity, conf_percentile=cfg.prune_conf,
                                    voxel_size=cfg.voxel)
        if len(g) > cfg.max_seed_points:
            g = g.subset(torch.linspace(0, len(g) - 1, cfg.max_seed_points).long())
        gaussians = transform_gaussians(g, sim3)
        points = gaussians.means.float()
        colors = (sh0_to_rgb(gaussians.sh[:, 0]).clamp(0, 1) * 255).round().byte()
        CONSOLE.log(f"da3gs-data: {len(gaussians)} seed Gaussians from {len(train_idx)} views")
    else:
        points, colors = _depth_points(pred, train_idx, sim3, cfg.max_seed_points)
        CONSOLE.log(f"da3gs-data: {model.preset.name} has no Gaussian head; seeding from "
                    f"{len(points)} coloured depth points instead")
    return {"paths": [Path(p) for p in paths], "c2w_gl": c2w_gl, "K": K, "hw": hw,
            "train": train_idx, "eval": eval_idx or train_idx, "gaussians": gaussians,
            "points": points, "colors": colors, "scale": scale, "transform": transform}


def _depth_points(pred, train_idx, sim3: Sim3, cap: int):
    from da3gs.geometry import unproject_depth

    pts = unproject_depth(pred.depth, pred.c2w, pred.K)[train_idx].reshape(-1, 3).double().cpu()
    cols = pred.images.permute(0, 2, 3, 1)[train_idx].reshape(-1, 3).cpu()
    if len(pts) > cap:
        keep = torch.linspace(0, len(pts) - 1, cap).long()
        pts, cols = pts[keep], cols[keep]
    pts = sim3.apply(pts)
    return pts.float(), (cols.clamp(0, 1) * 255).round().byte()


