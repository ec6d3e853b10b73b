"""MultiViewDataset and GroupedBatchSampler on tiny synthetic scenes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from da3gs.data.augment import AugConfig
from da3gs.data.batch import ViewBatch
from da3gs.data.config import DataConfig
from da3gs.data.multiview import GroupedBatchSampler, MultiViewDataset, SampleKey
from da3gs.data.scene import SceneError

from .mv_helpers import make_scene, one_thread, ring_c2w, write_blender  # noqa: F401


def _cfg(**kw):
    base = {"source": [], "views": (2, 4), "base_resolution": 28, "resolutions": ((504, 504), (504, 336), (336, 504)),
                "samples_per_scene": 4, "zoom": (1.0, 1.2), "seed": 0}
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture
def scenes(tmp_path):
    a = make_scene(tmp_path / "a", ring_c2w(np.linspace(0, 60, 6)), hw=(30, 40))
    b = make_scene(tmp_path / "b", ring_c2w(np.linspace(0, 40, 4)), hw=(24, 32), depth=True, seed=1)
    return [a, b]


def test_item_shapes_cameras_and_depth(scenes):
    ds = MultiViewDataset(scenes, _cfg())
    assert len(ds) == 8 and ds.skipped == 0
    for i in range(len(ds)):
        key = ds.key(i)
        b = ds[key]
        V, H, W = key.num_views, key.height, key.width
        assert b.shape == (1, V, H, W) and b.images.dtype == torch.float32
        assert b.depth.shape == b.valid.shape == (1, V, H, W) and b.valid.dtype == torch.bool
        assert b.c2w.shape == (1, V, 4, 4) and b.K.shape == (1, V, 3, 3)
        assert torch.allclose(b.c2w[0, 0], torch.eye(4), atol=1e-6)  # world frame: the reference view
        assert b.pose_conditioned.shape == (1,) and b.pose_conditioned.dtype == torch.bool
        assert float(b.images.min()) >= 0 and float(b.images.max()) <= 1
        if i % 2 == 0:  # scene a: no depth -> nothing valid
            assert b.scene_ids == ["a"] and not bool(b.valid.any()) and not bool(b.depth.any())
        else:  # scene b: uint16 millimetres, copied by nearest neighbour
            assert bool(b.valid.any()) and not bool(b.valid.all())
            mm = b.depth[b.valid] * 1000
            assert torch.allclose(mm, mm.round(), atol=1e-3) and float(mm.min()) >= 500
            assert bool((b.depth[~b.valid] == 0).all())


def test_relative_poses_preserved(scenes):
    """world_frame='first' only changes the frame: relative poses equal the scene's."""
    key = SampleKey(0, 4, 28, 28, 5)
    rel = MultiViewDataset(scenes, _cfg(world_frame="first"))[key].c2w[0].double()
    raw = MultiViewDataset(scenes, _cfg(world_frame="scene"))[key].c2w[0].double()
    assert torch.allclose(torch.linalg.inv(rel[0]) @ rel[2], torch.linalg.inv(raw[0]) @ raw[2], atol=1e-5)


def test_deterministic_with_seed(scenes):
    ds = MultiViewDataset(scenes, _cfg())
    key = SampleKey(1, 3, 28, 42, 123)
    a, b = ds[key], ds[key]
    for f in ("images", "depth", "valid", "c2w", "K", "pose_conditioned"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    c = ds[key._replace(seed=124)]
    assert not torch.equal(a.images, c.images)
    assert torch.equal(ds[3].images, ds[3].images)  # int indices draw from (seed, index)


def test_unreadable_scenes_skipped_and_counted(tmp_path, scenes, caplog):
    good = write_blender(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    bad_json = tmp_path / "badjson"
    bad_json.mkdir()
    (bad_json / "transforms.json").write_text("{not json")
    entries = [str(tmp_path / "missing"), tmp_path / "empty", str(bad_json), str(good),
               {"path": str(good), "no_such_option": 1}, scenes[0]]
    with caplog.at_level(logging.WARNING, logger="da3gs.data.multiview"):
        ds = MultiViewDataset(entries, _cfg())
    assert ds.skipped == 4 and len(ds.scenes) == 2 and ds.names[0] == "good"
    assert len([r for r in caplog.records if "skipped 4 of 6" in r.getMessage()]) == 1  # logged once
    b = ds[ds.key(0)]
    assert b.scene_ids == ["good"] and not bool(b.valid.any())
    # a scene whose images vanish later is dropped then, the item drawn from the next scene
    for p in scenes[0].image_paths:
        p.unlink()
    key = SampleKey(1, 3, 28, 28, 0)
    for _ in range(2):
        assert ds[key].scene_ids == ["good"]
    assert ds.skipped == 5
    with pytest.raises(SceneError, match="none of 2"):
        MultiViewDataset([str(tmp_path / "missing"), str(tmp_path / "empty")], _cfg())


def test_sampler_groups_shapes_and_collates(scenes):
    cfg = _cfg(batch_size=2)
    ds = MultiViewDataset(scenes, cfg)
    sampler = GroupedBatchSampler(len(ds), cfg, shuffle=True)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=ViewBatch.collate)
    keys = list(sampler)
    n = 0
    for batch_keys, batch in zip(keys, loader):
        V, H, W = batch_keys[0].num_views, batch_keys[0].height, batch_keys[0].width
        assert all((k.num_views, k.height, k.width) == (V, H, W) for k in batch_keys)
        assert len(batch_keys) == cfg.samples_for(V, (H, W))
        B = len(batch_keys)
        assert batch.images.shape == (B, V, 3, H, W) and batch.depth.shape == (B, V, H, W)
        assert batch.K.shape == (B, V, 3, 3) and batch.pose_conditioned.shape == (B,) and len(batch.scene_ids) == B
        n += B
    assert n == len(ds) and len(sampler) == len(keys)


def test_token_budget():
    cfg = _cfg(views=(2, 18), base_resolution=504, resolutions=((504, 504), (896, 504)), batch_size=2)
    assert cfg.tokens_per_step() == 2 * 18 * 36 * 36
    assert cfg.samples_for(18, (504, 504)) == 2 and cfg.samples_for(2, (504, 504)) == 18
    assert cfg.samples_for(18, (504, 896)) == 1  # never below one sample
    assert _cfg(constant_tokens=False, batch_size=3).samples_for(2, (28, 28)) == 3


def test_distributed_sampler_disjoint_covering_deterministic():
    cfg = _cfg(views=(2, 6), batch_size=3)
    for n, world in [(24, 3), (23, 3), (10, 4), (7, 1)]:
        per_rank = []
        for rank in range(world):
            s = GroupedBatchSampler(n, cfg, num_replicas=world, rank=rank, seed=7)
            s.set_epoch(2)
            per_rank.append(list(s))
        shapes = [[(b[0].num_views, b[0].height, b[0].width, len(b)) for b in r] for r in per_rank]
        assert all(sh == shapes[0] for sh in shapes)  # same steps and shapes on every rank
        idx = [[k.index for b in r for k in b] for r in per_rank]
        assert all(len(i) == -(-n // world) for i in idx)
        flat = [i for r in idx for i in r]
        assert set(flat) == set(range(n))  # covering
        if n % world == 0:
            assert len(flat) == n  # and disjoint
        seeds = [k.seed for r in per_rank for b in r for k in b]
        assert len(set(seeds)) == len(seeds)
        again = GroupedBatchSampler(n, cfg, num_replicas=world, rank=world - 1, seed=7)
        again.set_epoch(2)
        assert list(again) == per_rank[-1]
    s = GroupedBatchSampler(24, cfg, seed=7)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0  # a new epoch reshuffles
    s.set_epoch(0)
    s.skip = 2
    assert list(s) == e0[2:]  # resume mid-epoch
    assert list(GroupedBatchSampler(24, cfg, seed=7, drop_last=True))[-1] == e0[-1] or \
        len(e0[-1]) < cfg.samples_for(e0[-1][0].num_views, (e0[-1][0].height, e0[-1][0].width))
    with pytest.raises(ValueError):
        GroupedBatchSampler(4, cfg, num_replicas=2, rank=2)


def test_pose_conditioned_rate(tmp_path):
    scene = make_scene(tmp_path / "s", ring_c2w([0, 10]), hw=(14, 14))
    ds = MultiViewDataset([scene], _cfg(views=(2, 2), base_resolution=14, resolutions=((504, 504),),
                                        samples_per_scene=400, aug=AugConfig(enabled=False)))
    rate = np.mean([bool(ds[i].pose_conditioned) for i in range(len(ds))])
    assert 0.15 < rate < 0.25
