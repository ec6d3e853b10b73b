"""Public API: load_model sources and errors, infer with and without poses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from da3gs import Da3gsError, load_model
from da3gs.models.loading import infer_preset_name, save_model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model("random:tiny")


def _imgs(V=3, H=28, W=42, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(V, 3, H, W, generator=g)


def _cams(V=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4).repeat(V, 1, 1)
    for i in range(V):
        a = torch.randn(3, generator=g) * 0.3
        Kx = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
        c2w[i, :3, :3] = torch.linalg.matrix_exp(Kx)
        c2w[i, :3, 3] = torch.randn(3, generator=g)
    K = torch.tensor([[40.0, 0, 21], [0, 40.0, 14], [0, 0, 1]]).repeat(V, 1, 1)
    return c2w, K


def test_infer_pose_free_shapes(tiny):
    p = tiny.infer(_imgs())
    assert p.depth.shape == (3, 28, 42) and p.depth_conf.shape == (3, 28, 42)
    assert p.c2w.shape == (3, 4, 4) and p.K.shape == (3, 3, 3)
    assert torch.allclose(p.c2w @ p.w2c, torch.eye(4).expand(3, 4, 4), atol=1e-4)
    assert p.rays.shape == (3, 16, 24, 6) and p.ref_view in (0, 1, 2)
    assert torch.isfinite(p.depth).all() and not p.pose_conditioned


def test_infer_single_view(tiny):
    p = tiny.infer(_imgs(1))
    assert p.depth.shape == (1, 28, 42) and p.ref_view is None


def test_infer_paths_resize(tiny, tmp_path):
    paths = []
    for i in range(2):
        arr = (np.random.default_rng(i).random((60, 80, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"v{i}.png")
        paths.append(tmp_path / f"v{i}.png")
    p = tiny.infer(paths, process_res=56)
    assert p.depth.shape == (2, 42, 56) and p.original_sizes == [(60, 80)] * 2
    assert p.paths == paths


def test_pose_conditioning_is_frame_and_scale_equivariant(tiny):
    """Input poses are re-based on view 0 and scale-normalised: a global rigid motion leaves
    depth unchanged and a global scale of 10 scales depth by exactly 10."""
    c2w, K = _cams()
    x = _imgs()
    p1 = tiny.infer(x, c2w, K)
    T = torch.eye(4)
    T[:3, :3] = torch.linalg.matrix_exp(torch.tensor([[0, -0.4, 0.2], [0.4, 0, -0.1], [-0.2, 0.1, 0]]))
    T[:3, 3] = torch.tensor([3.0, -1.0, 2.0])
    p2 = tiny.infer(x, T @ c2w, K)
    c2w10 = c2w.clone()
    c2w10[:, :3, 3] *= 10
    p3 = tiny.infer(x, c2w10, K)
    assert p1.pose_conditioned and torch.allclose(p1.c2w, c2w, atol=1e-6)
    assert torch.allclose(p2.depth, p1.depth, rtol=1e-4)
    assert torch.allclose(p3.depth, 10 * p1.depth, rtol=1e-4)
    assert torch.allclose(p1.K, K)


def test_pose_conditioning_changes_output(tiny):
    c2w, K = _cams()
    x = _imgs()
    assert not torch.allclose(tiny.infer(x, c2w, K).depth, tiny.infer(x).depth)


@pytest.mark.parametrize("bad, msg", [
    (lambda c, k: (c[:2], k), "2 poses for 3 images"),
    (lambda c, k: (c[:, :3, :3], k), "expected shape"),
    (lambda c, k: (torch.where(torch.arange(16).reshape(4, 4) == 3, float("nan"), c), k), "NaN"),
    (lambda c, k: (c * 2, k), "rotation"),
    (lambda c, k: (c, None), "together"),
    (lambda c, k: (c, k[:2]), "K"),
])
def test_bad_poses(tiny, bad, msg):
    c2w, K = bad(*_cams())
    with pytest.raises(Da3gsError, match=msg):
        tiny.infer(_imgs(), c2w, K)


def test_no_images(tiny):
    with pytest.raises(Da3gsError, match="no images"):
        tiny.infer([])


def test_save_load_roundtrip(tiny, tmp_path):
    save_model(tiny, tmp_path / "m")
    again = load_model(tmp_path / "m")
    x = _imgs()
    assert torch.equal(again.infer(x).depth, tiny.infer(x).depth)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["preset"] == "tiny"
    assert load_model(tmp_path / "m" / "model.safetensors").preset.name == "tiny"
    with pytest.raises(Da3gsError, match="already exists"):
        save_model(tiny, tmp_path / "m")


def test_wrong_preset_checkpoint(tiny, tmp_path):
    save_model(tiny, tmp_path / "m")
    with pytest.raises(Da3gsError, match="does not fit preset tiny-gs.*missing"):
        load_model(tmp_path / "m", preset="tiny-gs")
    cfg = tmp_path / "m" / "config.json"
    cfg.write_text(json.dumps({"model_name": "da3-small"}))
    with pytest.raises(Da3gsError, match="does not fit preset small"):
        load_model(tmp_path / "m")


def test_infer_preset_without_config(tiny, tmp_path):
    save_model(tiny, tmp_path / "m")
    (tmp_path / "m" / "config.json").unlink()
    assert load_model(tmp_path / "m").preset.name == "tiny"
    assert infer_preset_name(tiny.net.state_dict()) == "tiny"


@pytest.mark.parametrize("src, msg", [
    ("no/such/dir/here", "no such file"),
    ("depth-anything/DA3-DOES-NOT-EXIST", "huggingface-cli download"),
])
def test_bad_sources(src, msg, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Da3gsError, match=msg):
        load_model(src)


def test_bad_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Da3gsError, match="no model.safetensors"):
        load_model(tmp_path / "empty")
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(Da3gsError, match="not a readable safetensors"):
        load_model(bad)
    with pytest.raises(Da3gsError, match="expected a .safetensors"):
        (tmp_path / "w.pt").write_bytes(b"x")
        load_model(tmp_path / "w.pt")


def test_mono_and_nested():
    torch.manual_seed(0)
    mono = load_model("random:tiny-mono")
    p = mono.infer(_imgs(2))
    assert p.c2w is None and p.sky.shape == (2, 28, 42)
    with pytest.raises(Da3gsError, match="no camera encoder"):
        mono.infer(_imgs(), *_cams())
    nested = load_model("random:tiny-nested")
    # make the sky head say "no sky" so metric alignment has pixels to use
    torch.nn.init.constant_(nested.net.metric.depth_head.sky_out2[2].bias, -10.0)
    p = nested.infer(_imgs(3))
    assert p.is_metric and p.scale_factor is not None and p.scale_factor > 0
    assert torch.isfinite(p.depth).all()


def test_grad_checkpointing_same_gradients():
    torch.manual_seed(0)
    m = load_model("random:tiny").train()
    x = _imgs()[None]

    def grads(flag):
        m.zero_grad()
        m.set_grad_checkpointing(flag)
        m.net(x)["depth"].mean().backward()
        return [p.grad.clone() for p in m.net.backbone.parameters() if p.grad is not None]

    for a, b in zip(grads(False), grads(True)):
        assert torch.allclose(a, b, atol=1e-6)


def test_bf16_close_to_fp32(tiny):
    x = _imgs()
    a, b = tiny.infer(x, precision="fp32"), tiny.infer(x, precision="bf16")
    assert (a.depth - b.depth).abs().max() / a.depth.abs().max() < 0.05
    with pytest.raises(Da3gsError, match="precision"):
        tiny.infer(x, precision="int8")


def test_K_original_undoes_preprocessing(tiny, tmp_path):
    """Intrinsics given at the original size come back there after resize + crop."""
    arr = (np.random.default_rng(0).random((75, 100, 3)) * 255).astype(np.uint8)
    paths = []
    for i in range(2):
        Image.fromarray(arr).save(tmp_path / f"v{i}.png")
        paths.append(tmp_path / f"v{i}.png")
    c2w, _ = _cams(2)
    K = torch.tensor([[90.0, 0, 50.0], [0, 88.0, 37.5], [0, 0, 1]]).repeat(2, 1, 1)
    for method in ("upper_bound_resize", "upper_bound_crop"):
        p = tiny.infer(paths, c2w, K, process_res=56, process_method=method)
        assert torch.allclose(p.K_original(), K.double(), atol=1e-4)
