"""nerfstudio plugin (skipped when nerfstudio is not installed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("nerfstudio")

from da3gs.ns_plugin.dataparser import Da3gsDataParserConfig  # noqa: E402
from da3gs.ns_plugin.seed import from_splatfacto, to_splatfacto  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "toy_scene"


def _ns_train() -> str:
    exe = Path(sys.executable).parent / "ns-train"
    if not exe.exists():
        pytest.skip("ns-train not on this interpreter's bin folder")
    return str(exe)


@pytest.mark.parametrize("method", ["da3gs", "da3gs-fast"])
def test_ns_train_help(method):
    r = subprocess.run([_ns_train(), method, "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "da3gs-data" in r.stdout


def _photos(tmp_path, n=4) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    for p in sorted(EXAMPLE.glob("*.png"))[:n]:
        shutil.copy(p, d / p.name)
    return d


def setup_method_checked(out, num_train_data: int):
    """The da3gs nerfstudio method built on dataparser outputs ``out`` (CPU), after checking
    that its initial Gaussians are exactly the dataparser's; skips when splatfacto would need
    to download LPIPS weights."""
    from nerfstudio.data.scene_box import SceneBox

    from da3gs.ns_plugin.model import Da3gsModelConfig

    try:
        model = Da3gsModelConfig().setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])),
                                         num_train_data=num_train_data, metadata=out.metadata,
                                         device="cpu")
    except Exception as e:  # splatfacto builds torchmetrics LPIPS when ours has no weights
        if "download" in str(e).lower() or "urlopen" in str(e).lower():
            pytest.skip(f"LPIPS weights unavailable offline: {e}")
        raise
    expect = to_splatfacto(out.metadata["da3gs_gaussians"], model.config.sh_degree)
    for k, v in expect.items():
        assert torch.equal(model.gauss_params[k].data, v), k
    return model



def _parser(data: Path, **kw):
    cfg = Da3gsDataParserConfig(data=data, model="random:tiny-gs", process_res=70, device="cpu",
                                prune_opacity=0.0, **kw)
    return cfg.setup()


def test_dataparser_pose_free(tmp_path):
    data = _photos(tmp_path, 8)
    dp = _parser(data, eval_interval=4)
    train = dp.get_dataparser_outputs("train")
    val = dp.get_dataparser_outputs("val")
    assert len(train.image_filenames) == 6 and len(val.image_filenames) == 2  # 0 and 4 held out
    assert [p.name for p in val.image_filenames] == ["view_00.png", "view_04.png"]
    assert train.cameras.width[0, 0] == 252 and train.cameras.height[0, 0] == 182
    g = train.metadata["da3gs_gaussians"]
    assert len(g) == 6 * 56 * 70  # one per pixel of the processed training views
    assert torch.abs(train.cameras.camera_to_worlds[:, :3, 3]).max() <= 1.0 + 1e-5


def test_dataparser_with_dataset_poses(tmp_path):
    data = _photos(tmp_path, 8)
    shutil.copy(EXAMPLE / "transforms.json", data / "transforms.json")
    dp = _parser(data, eval_interval=0)
    out = dp.get_dataparser_outputs("train")
    assert len(out.image_filenames) == 8
    assert torch.allclose(out.cameras.fx[:, 0], torch.full((8,), 200.0))


def test_too_few_images(tmp_path):
    from da3gs.errors import Da3gsError

    data = _photos(tmp_path, 1)
    with pytest.raises(Da3gsError, match="at least 2"):
        _parser(data).get_dataparser_outputs("train")


def test_seeded_model_equals_prediction(tmp_path):
    """The method's initial Gaussians are exactly the dataparser's (prediction) Gaussians."""
    pytest.importorskip("sklearn")
    data = _photos(tmp_path, 3)
    out = _parser(data, eval_interval=0).get_dataparser_outputs("train")
    seed = out.metadata["da3gs_gaussians"]
    model = setup_method_checked(out, 3)
    back = from_splatfacto({k: p.data for k, p in model.gauss_params.items()})
    assert torch.allclose(back.means, seed.means.float())
    assert torch.allclose(back.opacities, seed.opacities.float().clamp(1e-6, 1 - 1e-6), atol=1e-6)
    assert torch.allclose(back.sh[:, :9], seed.sh.float())


def test_dataparser_default_model_offline_falls_back_to_mini(tmp_path, monkeypatch, caplog):
    """README's `ns-train da3gs --data photos/` offline: the default model is neither cached nor
    fetchable, so the bundled mini is used with one note (as the da3gs CLI does), not a crash."""
    import da3gs.models.loading
    from da3gs.errors import ModelUnavailableError

    DEFAULT_MODEL = "depth-anything/DA3-GIANT-1.1"
    real = da3gs.models.loading.load_model

    def offline(source, *a, **k):
        if str(source) == DEFAULT_MODEL:
            raise ModelUnavailableError(f"{source}: offline")
        return real(source, *a, **k)

    monkeypatch.setattr(da3gs.models.loading, "load_model", offline)
    data = _photos(tmp_path, 3)
    cfg = Da3gsDataParserConfig(data=data, process_res=70, device="cpu", eval_interval=0)
    assert cfg.model == DEFAULT_MODEL
    with caplog.at_level("WARNING", logger="da3gs"):
        out = cfg.setup().get_dataparser_outputs("train")
    assert len(out.image_filenames) == 3
    notes = [r.getMessage() for r in caplog.records if "bundled model 'mini'" in r.getMessage()]
    assert len(notes) == 1
