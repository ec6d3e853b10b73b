"""Training streams (procedural and scene folders) and the held-out evaluation sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from da3gs.data.augment import AugConfig
from da3gs.data.config import EVAL_SEED_BASE, DataConfig, EvalDataConfig
from da3gs.data.crop import num_tokens
from da3gs.data.sources import (
    ProceduralSource,
    SceneSource,
    make_eval_sets,
    make_train_source,
)

from .mv_helpers import FakeGenerator, make_scene, one_thread, ring_c2w, write_blender  # noqa: F401


def _cfg(**kw):
    base = {"views": (2, 8), "base_resolution": 56, "batch_size": 2, "seed": 3}
    base.update(kw)
    return DataConfig(**base)


def test_procedural_stream_shapes_tokens_and_flags():
    cfg = _cfg()
    gen = FakeGenerator()
    src = make_train_source(cfg, rank=0, world_size=1, generator=gen)
    assert isinstance(src, ProceduralSource)
    budget = cfg.tokens_per_step()
    shapes, pose = set(), []
    for _ in range(150):
        b = next(src)
        B, V, H, W = b.shape
        assert 2 <= V <= 8 and (H, W) in cfg.hw_set() and B == cfg.samples_for(V, (H, W))
        toks = B * V * num_tokens((H, W))
        assert toks <= budget or B == 1
        assert toks > budget / 2 or B == cfg.max_batch_size or toks > budget  # about constant
        assert torch.allclose(b.c2w[:, 0], torch.eye(4).expand(B, 4, 4), atol=1e-6)
        assert b.pose_conditioned.shape == (B,) and b.pose_conditioned.dtype == torch.bool
        assert len(b.scene_ids) == B and 0 <= gen.calls[-1][4] < EVAL_SEED_BASE
        shapes.add((V, H, W))
        pose += b.pose_conditioned.tolist()
    assert len(shapes) > 10
    assert 0.16 < np.mean(pose) < 0.24 and len(pose) > 500


def test_procedural_stream_deterministic_ranks_and_resume():
    cfg = _cfg(aug=AugConfig(noise_prob=1.0))
    run = lambda rank, n=5: [next(s) for s in [ProceduralSource(cfg, rank, 2, generator=FakeGenerator())] for _ in range(n)]
    a, a2, r1 = run(0), run(0), run(1)
    for x, y, z in zip(a, a2, r1):
        assert torch.equal(x.images, y.images) and torch.equal(x.pose_conditioned, y.pose_conditioned)
        assert x.shape == z.shape  # same shape on every rank (same tokens per step)
        assert not torch.equal(x.images, z.images)  # a different stream per rank
    src = ProceduralSource(cfg, 0, 2, generator=FakeGenerator())
    for _ in range(3):
        next(src)
    state = src.state_dict()
    resumed = ProceduralSource(cfg, 0, 2, generator=FakeGenerator())
    resumed.load_state_dict(state)
    assert torch.equal(next(resumed).images, a[3].images)


def test_scene_stream_epochs_and_resume(tmp_path):
    scenes = [str(write_blender(tmp_path / "s1", n=5)), str(write_blender(tmp_path / "s2", n=4)),
              str(tmp_path / "missing")]
    cfg = _cfg(source=scenes, base_resolution=28, views=(2, 4), samples_per_scene=3, batch_size=1)
    src = make_train_source(cfg, rank=0, world_size=1, device="cpu")
    assert isinstance(src, SceneSource) and src.dataset.skipped == 1
    n_epoch = len(src.sampler)
    batches = [next(src) for _ in range(n_epoch + 2)]  # runs into the second epoch
    assert src.epoch == 1 and src.batch == 2
    assert sum(b.shape[0] for b in batches[:n_epoch]) == 6
    for b in batches:
        assert not bool(b.valid.any()) and b.images.shape[2] == 3
    again = make_train_source(cfg)
    again.load_state_dict({"epoch": 0, "batch": n_epoch - 1})
    for want in batches[n_epoch - 1:]:
        got = next(again)
        assert torch.equal(got.images, want.images) and got.scene_ids == want.scene_ids
    # two ranks: disjoint halves of the epoch, equal number of steps
    r0, r1 = (SceneSource(cfg, rank=r, world_size=2) for r in (0, 1))
    assert len(r0.sampler) == len(r1.sampler)


def test_eval_sets(tmp_path):
    rgbd = make_scene(tmp_path / "rgbd", ring_c2w(np.linspace(0, 30, 5)), hw=(30, 40), depth=True)
    real = [str(write_blender(tmp_path / "blend", n=6, size=20)), rgbd, str(tmp_path / "nope")]
    cfg = EvalDataConfig(scenes=5, views=3, height=28, width=42, batch_size=2, real=real, real_views=4,
                         real_res=56)
    gen = FakeGenerator()
    sets = make_eval_sets(cfg, generator=gen)
    assert sorted(sets) == ["procedural", "real/blend", "real/rgbd"]
    proc = sets["procedural"]
    assert [b.shape for b in proc] == [(2, 3, 28, 42), (2, 3, 28, 42), (1, 3, 28, 42)]
    assert [c[4] for c in gen.calls] == [EVAL_SEED_BASE + i for i in range(5)]  # disjoint from training
    assert not bool(torch.cat([b.pose_conditioned for b in proc]).any())
    blend = sets["real/blend"][0]
    assert blend.shape == (1, 4, 56, 56) and not bool(blend.valid.any())
    d = sets["real/rgbd"][0]
    assert d.shape == (1, 4, 42, 56) and bool(d.valid.any())
    assert torch.allclose(d.c2w[0, 0], torch.eye(4), atol=1e-6)
    again = make_eval_sets(cfg, generator=FakeGenerator())
    assert torch.equal(again["real/rgbd"][0].images, d.images)  # fixed
    assert torch.equal(again["procedural"][0].images, proc[0].images)


@pytest.mark.parametrize("even", [False, True])
def test_eval_even_selection(tmp_path, even):
    s = make_scene(tmp_path / "s", ring_c2w(np.linspace(0, 90, 9)), hw=(28, 28))
    cfg = EvalDataConfig(scenes=0, real=[s], real_views=3, real_res=28, real_selection="even" if even else "overlap")
    out = make_eval_sets(cfg)
    assert list(out) == ["real/s"] and out["real/s"][0].shape == (1, 3, 28, 28)
