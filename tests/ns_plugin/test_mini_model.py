"""The nerfstudio dataparser and method with the bundled trained model (``model="mini"``, the
name ``load_model`` resolves to da3gs/weights/mini); skipped without nerfstudio."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("nerfstudio")

from da3gs.ns_plugin.dataparser import Da3gsDataParserConfig  # noqa: E402
from tests.ns_plugin.test_plugin import _photos, setup_method_checked  # noqa: E402


def test_dataparser_and_method_with_mini(tmp_path):
    pytest.importorskip("sklearn")
    data = _photos(tmp_path, 2)
    cfg = Da3gsDataParserConfig(data=data, model="mini", process_res=42, device="cpu",
                                prune_opacity=0.0, eval_interval=0)
    out = cfg.setup().get_dataparser_outputs("train")
    assert len(out.image_filenames) == 2
    c2w = out.cameras.camera_to_worlds
    assert c2w.shape == (2, 3, 4) and torch.isfinite(c2w).all()
    assert torch.abs(c2w[:, :3, 3]).max() <= 1.0 + 1e-5  # scaled into [-1, 1]
    assert (c2w[:, :3, 3] - c2w[:1, :3, 3]).norm(dim=-1).max() > 1e-3  # distinct predicted poses
    seed = out.metadata["da3gs_gaussians"]
    assert len(seed) > 0 and len(seed) % 2 == 0  # one per processed pixel of each view
    assert set(seed.view.tolist()) == {0, 1} and torch.isfinite(seed.means).all()
    assert len(out.metadata["points3D_xyz"]) == len(seed)
    setup_method_checked(out, 2)
