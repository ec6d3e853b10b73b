"""Multi-view data over the shared real scenes (skipped when ../shared/data is absent), and the
procedural stream with the real generator (tiny, CPU)."""

from __future__ import annotations

import pytest
import torch

from da3gs.data.config import DataConfig, EvalDataConfig
from da3gs.data.multiview import MultiViewDataset, SampleKey
from da3gs.data.sources import make_eval_sets, make_train_source
from da3gs.geometry.rays import unproject_depth

from . import SHARED, needs_shared
from .mv_helpers import one_thread  # noqa: F401

ENTRIES = [str(SHARED / "lego_400"), {"path": str(SHARED / "llff_fern"), "factor": 8},
           str(SHARED / "icl_nuim_livingroom_rgbd5"), str(SHARED / "gsplat_garden")]


@needs_shared
def test_real_scenes_read_and_unreadable_skipped():
    ds = MultiViewDataset(ENTRIES, DataConfig(source=[], base_resolution=140, views=(2, 6), samples_per_scene=1))
    assert ds.names == ["lego_400", "llff_fern", "icl_nuim_livingroom_rgbd5"] and ds.skipped == 1  # garden: no cameras file
    for i in range(3):
        key = ds.key(i)
        b = ds[key]
        assert b.shape == (1, key.num_views, key.height, key.width)
        assert bool(b.valid.any()) == (i == 2)  # only the RGB-D scene has depth


@needs_shared
def test_lego_views_overlap():
    ds = MultiViewDataset([str(SHARED / "lego_400")], DataConfig(source=[], base_resolution=56))
    for seed in range(5):
        b = ds[SampleKey(0, 8, 56, 56, seed)]
        fwd = b.c2w[0, :, :3, 2]
        assert bool((fwd @ fwd[0] > -0.2).all())  # no view looks back at the reference view


@needs_shared
def test_icl_depth_reprojects_across_cropped_views():
    """Depth of view 0 lifted with its cropped K and pose lands on view j's depth (exact K, poses)."""
    ds = MultiViewDataset([str(SHARED / "icl_nuim_livingroom_rgbd5")], DataConfig(source=[], base_resolution=252))
    for seed in range(2):
        b = ds[SampleKey(0, 4, 252, 336, seed)]
        d, c2w, K, valid = b.depth[0].double(), b.c2w[0].double(), b.K[0].double(), b.valid[0]
        P = unproject_depth(d[0], c2w[0], K[0])[valid[0]]
        H, W = d.shape[1:]
        for j in range(1, 4):
            Xc = (P - c2w[j, :3, 3]) @ c2w[j, :3, :3]
            uvw = Xc @ K[j].T
            u, v = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
            ins = (u >= 0) & (v >= 0) & (u < W) & (v < H) & (Xc[:, 2] > 0)
            assert float(ins.double().mean()) > 0.5
            dj = d[j][v[ins].long(), u[ins].long()]
            ok = dj > 0
            rel = (Xc[ins, 2][ok] - dj[ok]).abs() / dj[ok]
            assert float(rel.median()) < 0.01 and float((rel < 0.02).double().mean()) > 0.9


@needs_shared
def test_real_eval_sets():
    sets = make_eval_sets(EvalDataConfig(scenes=0, real=ENTRIES, real_views=4, real_res=140))
    assert sorted(sets) == ["real/icl_nuim_livingroom_rgbd5", "real/lego_400", "real/llff_fern"]
    assert sets["real/llff_fern"][0].shape == (1, 4, 112, 140)  # 504x378 -> 140 x 105 -> 112 (x14)
    assert bool(sets["real/icl_nuim_livingroom_rgbd5"][0].valid.any())


def test_procedural_stream_with_the_generator():
    pytest.importorskip("da3gs.data.procedural")
    cfg = DataConfig(views=(2, 3), base_resolution=28, batch_size=1, resolutions=((504, 504),), seed=1)
    src = make_train_source(cfg)
    b = next(src)
    B, V, H, W = b.shape
    assert (H, W) == (28, 28) and 2 <= V <= 3 and B == cfg.samples_for(V, (H, W))
    assert b.normals is not None and b.sky is not None and b.pose_conditioned.shape == (B,)
    assert torch.allclose(b.c2w[:, 0], torch.eye(4).expand(B, 4, 4), atol=1e-5)
    again = make_train_source(cfg)
    assert torch.equal(next(again).images, b.images)
