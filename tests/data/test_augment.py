"""Photometric augmentation: images only, deterministic, shared or per-view parameters."""

from __future__ import annotations

import pytest
import torch

from da3gs.data.augment import AugConfig, augment_batch, photometric
from da3gs.data.batch import ViewBatch

from .mv_helpers import one_thread  # noqa: F401

ALL_ON = {"jitter_prob": 1.0, "gamma_prob": 1.0, "blur_prob": 1.0, "noise_prob": 1.0}


def _batch(B=2, V=3, H=14, W=21):
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(B, V, H, W, generator=g) + 0.5
    return ViewBatch(images=torch.rand(B, V, 3, H, W, generator=g), depth=depth, valid=depth > 0.7,
                     c2w=torch.eye(4).repeat(B, V, 1, 1), K=torch.eye(3).repeat(B, V, 1, 1),
                     normals=torch.rand(B, V, 3, H, W, generator=g), sky=depth < 0.6,
                     pose_conditioned=torch.zeros(B, dtype=torch.bool), scene_ids=["a", "b"])


def test_augment_touches_images_only():
    b = _batch()
    before = {k: getattr(b, k).clone() for k in ("depth", "valid", "c2w", "K", "normals", "sky")}
    out = augment_batch(b, AugConfig(**ALL_ON), seed=3)
    for k, v in before.items():
        assert getattr(out, k) is getattr(b, k) and torch.equal(getattr(out, k), v), k
    assert out.images.shape == b.images.shape and not torch.equal(out.images, b.images)
    assert float(out.images.min()) >= 0 and float(out.images.max()) <= 1
    assert out.scene_ids == b.scene_ids


def test_deterministic_and_disabled():
    x = _batch().images
    cfg = AugConfig(**ALL_ON)
    assert torch.equal(photometric(x, cfg, seed=1), photometric(x, cfg, seed=1))
    assert not torch.equal(photometric(x, cfg, seed=1), photometric(x, cfg, seed=2))
    assert photometric(x, AugConfig(enabled=False), seed=1) is x
    assert photometric(x[0], cfg, seed=1).shape == x[0].shape  # (V, 3, H, W) accepted


@pytest.mark.parametrize("per_view", [False, True])
def test_shared_or_per_view(per_view):
    x = torch.rand(1, 1, 3, 14, 14).repeat(2, 4, 1, 1, 1)  # every view the same image
    cfg = AugConfig(per_view=per_view, noise_prob=0.0, **{k: v for k, v in ALL_ON.items() if k != "noise_prob"})
    y = photometric(x, cfg, seed=0)
    same_views = all(torch.allclose(y[b, 0], y[b, v], atol=1e-6) for b in range(2) for v in range(4))
    assert same_views != per_view
    assert not torch.allclose(y[0, 0], y[1, 0])  # samples always differ


def test_each_op_moves_pixels_and_blur_keeps_mean():
    x = _batch().images
    for op in ("jitter_prob", "gamma_prob", "blur_prob", "noise_prob"):
        cfg = AugConfig(**{k: (1.0 if k == op else 0.0) for k in ALL_ON})
        y = photometric(x, cfg, seed=0)
        assert (y - x).abs().max() > 1e-3, op
    y = photometric(x, AugConfig(**{k: (1.0 if k == "blur_prob" else 0.0) for k in ALL_ON}), seed=0)
    assert torch.allclose(y.mean((-1, -2)), x.mean((-1, -2)), atol=0.03) and y.std() < x.std()
    with pytest.raises(ValueError):
        AugConfig(blur_prob=2.0)
