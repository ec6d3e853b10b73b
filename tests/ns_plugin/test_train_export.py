"""``ns-train da3gs`` a few steps on the CPU, then ``ns-export gaussian-splat`` on the run: the
exported PLY is read by da3gs and drawn by the viewer (skipped without nerfstudio; the viewer
part without Chromium). Both nerfstudio entry points run in-process (as their scripts call
them) to spare two ~10 s nerfstudio imports; about 50 s on 2 cores."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("nerfstudio")
pytest.importorskip("open3d")  # nerfstudio's exporter module imports it

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "toy_scene"


def _train(tmp_path: Path, steps: int) -> Path:
    from nerfstudio.scripts.train import main as ns_train

    from da3gs.ns_plugin.configs import da3gs_method

    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted(EXAMPLE.glob("*.png"))[:3]:
        shutil.copy(p, photos / p.name)
    cfg = copy.deepcopy(da3gs_method.config)
    cfg.output_dir = tmp_path / "outputs"
    cfg.max_num_iterations = steps
    cfg.vis = "tensorboard"
    cfg.machine.device_type = "cpu"
    cfg.steps_per_eval_image = cfg.steps_per_eval_all_images = 10_000
    dp = cfg.pipeline.datamanager.dataparser
    dp.data, dp.model, dp.process_res, dp.device, dp.eval_interval = (
        photos, "random:tiny-gs", 70, "cpu", 0)
    cfg.pipeline.datamanager.data = photos
    ns_train(cfg)
    (config,) = (tmp_path / "outputs").rglob("config.yml")
    return config


def test_ns_train_cpu_then_export_gaussian_splat(tmp_path):
    from nerfstudio.scripts.exporter import ExportGaussianSplat

    from da3gs.io.ply import read_ply

    config = _train(tmp_path, steps=3)
    ckpts = sorted(config.parent.glob("nerfstudio_models/step-*.ckpt"))
    assert [c.name for c in ckpts] == ["step-000000002.ckpt"]
    seed = torch.load(ckpts[0], map_location="cpu")  # weights-only load: the plugin allows it
    means = seed["pipeline"]["_model.gauss_params.means"]
    assert seed["step"] == 2 and means.shape == (3 * 56 * 70, 3)  # one per pixel, no densification

    ExportGaussianSplat(load_config=config, output_dir=tmp_path / "export").main()
    ply = tmp_path / "export" / "splat.ply"
    g = read_ply(ply)
    assert len(g) == len(means) and g.sh.shape[1:] == (16, 3)  # splatfacto's SH degree 3
    assert torch.allclose(g.means, means.float(), atol=1e-6)
    assert torch.isfinite(g.scales).all() and ((g.opacities > 0) & (g.opacities < 1)).all()

    from tests.apps.test_view import _chromium, _shoot

    if _chromium() is None:
        pytest.skip("chromium not installed: viewer part skipped")
    rep, _ = _shoot(tmp_path, ply, "")
    assert rep["splats"] == len(g) and rep["cameras"] == 0
