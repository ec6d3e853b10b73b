"""LLFF poses_bounds.npy and DTU (IDR/NeuS) cameras npz readers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from da3gs.data import SceneError, decompose_projection, load_scene
from da3gs.geometry import c2w_to_w2c, opencv_to_llff

from . import assert_rigid, random_c2w, rotation, write_image


def _llff(root, n=10, H=60, W=80, f=70.0):
    c2w = random_c2w(n, seed=3)
    K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], dtype=torch.float64).repeat(n, 1, 1)
    bounds = torch.rand(n, 2, dtype=torch.float64) + torch.tensor([1.0, 5.0], dtype=torch.float64)
    np.save(root / "poses_bounds.npy", opencv_to_llff(c2w, K, (H, W), bounds))
    for i in range(n):
        write_image(root / "images" / f"IMG_{i:03d}.JPG", W, H)
        write_image(root / "images_4" / f"IMG_{i:03d}.png", W // 4, H // 4)
    return c2w, bounds


def test_llff_full_and_factor(tmp_path):
    c2w, bounds = _llff(tmp_path)
    s = load_scene(tmp_path)
    assert s.format == "llff" and len(s) == 10 and s.image_hw[0] == (60, 80)
    assert torch.allclose(s.c2w, c2w, atol=1e-12)
    assert s.K[0].tolist() == [[70.0, 0, 40.0], [0, 70.0, 30.0], [0, 0, 1]]
    assert torch.allclose(s.near_far, bounds) and s.split == {"train": [1, 2, 3, 4, 5, 6, 7, 9], "test": [0, 8]}
    s4 = load_scene(tmp_path / "poses_bounds.npy", factor=4, holdout=0)
    assert s4.split is None and s4.image_hw[0] == (15, 20) and s4.names[0] == "IMG_000.png"
    assert s4.K[0].tolist() == [[17.5, 0, 10.0], [0, 17.5, 7.5], [0, 0, 1]]
    assert torch.allclose(s4.c2w, c2w, atol=1e-12)


def test_llff_errors(tmp_path):
    _llff(tmp_path)
    with pytest.raises(SceneError, match=r"no images_8/ folder \(found: images, images_4\)"):
        load_scene(tmp_path, factor=8)
    (tmp_path / "images_4" / "IMG_003.png").unlink()
    with pytest.raises(SceneError, match="10 poses but 9 images"):
        load_scene(tmp_path, images_dir="images_4")
    with pytest.raises(SceneError, match="options: bogus not understood by the llff reader"):
        load_scene(tmp_path, bogus=1)
    np.save(tmp_path / "poses_bounds.npy", np.zeros((3, 15)))
    with pytest.raises(SceneError, match=r"poses_bounds\.npy: expected an \(N, 17\) array"):
        load_scene(tmp_path)


def _P(K, c2w):
    return K @ c2w_to_w2c(c2w)[:3].numpy()


def test_decompose_projection_recovers_K_R_t():
    K = np.array([[1500.0, 2.0, 800.0], [0.0, 1490.0, 600.0], [0.0, 0.0, 1.0]])
    for i, c2w in enumerate(random_c2w(6, seed=9)):
        P = _P(K, c2w) * (-3.7 if i % 2 else 0.02)  # arbitrary scale and sign
        K2, c2w2 = decompose_projection(P)
        assert np.allclose(K2, K, atol=1e-6) and np.allclose(c2w2, c2w.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="singular"):
        decompose_projection(np.zeros((3, 4)))


def test_dtu_with_scale_mat(tmp_path):
    K = np.array([[300.0, 0.0, 32.0], [0.0, 310.0, 24.0], [0.0, 0.0, 1.0]])
    c2w_norm = random_c2w(4, seed=1)
    c2w_norm[:, :3, 3] = c2w_norm[:, :3, 3] / c2w_norm[:, :3, 3].norm(dim=1, keepdim=True) * 3.0
    S = np.eye(4)
    S[:3, :3] *= 200.0
    S[:3, 3] = [10.0, -20.0, 500.0]  # normalised -> world (mm)
    data = {}
    for i, c in enumerate(c2w_norm):
        world = c.numpy().copy()
        world[:3, 3] = S[:3, :3] @ world[:3, 3] + S[:3, 3]
        P = np.eye(4)
        P[:3] = _P(K, torch.from_numpy(world)) * 5.0
        data[f"world_mat_{i}"], data[f"scale_mat_{i}"] = P, S
        write_image(tmp_path / "image" / f"{i:06d}.png", 64, 48)
    np.savez(tmp_path / "cameras_sphere.npz", **data)
    s = load_scene(tmp_path)
    assert s.format == "dtu" and len(s) == 4 and s.image_hw[0] == (48, 64)
    assert torch.allclose(s.K, torch.from_numpy(K).expand(4, 3, 3), atol=1e-6)
    assert torch.allclose(s.c2w, c2w_norm, atol=1e-6)
    assert_rigid(s.c2w, 1e-9)
    raw = load_scene(tmp_path / "cameras_sphere.npz", normalize=False)
    assert torch.allclose(raw.c2w[:, :3, :3], c2w_norm[:, :3, :3], atol=1e-6)
    assert torch.allclose(raw.c2w[:, :3, 3], c2w_norm[:, :3, 3] * 200 + torch.tensor([10.0, -20.0, 500.0],
                                                                                      dtype=torch.float64), atol=1e-5)
    (tmp_path / "image" / "000002.png").unlink()
    with pytest.raises(SceneError, match="4 cameras but 3 images"):
        load_scene(tmp_path)


def test_dtu_rotation_only_scene(tmp_path):
    K = np.array([[100.0, 0.0, 10.0], [0.0, 100.0, 8.0], [0.0, 0.0, 1.0]])
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = rotation([0, 1, 0], 0.3)
    np.savez(tmp_path / "cameras.npz", world_mat_0=_P(K, c2w))
    write_image(tmp_path / "images" / "0.png", 20, 16)
    s = load_scene(tmp_path, format="dtu")
    assert torch.allclose(s.c2w[0], c2w, atol=1e-9)
