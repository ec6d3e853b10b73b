"""The static (sync-free, fixed-shape) path of the procedural generator and its CUDA-graph sampler.

CPU only, tiny sizes. The sync detector runs ``sample`` under a ``TorchDispatchMode`` that
records every dispatched op: on CPU tensors the ops listed in ``_SYNC_OPS`` are harmless, but
on CUDA each one reads a device value on the host (a sync, and an error under CUDA-graph
capture), so their absence shows the path is capture-safe.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from da3gs.data.procedural import SCENE_KINDS, ProceduralConfig, ProceduralGenerator
from da3gs.data.procedural.static import Budget, LazySceneIds

B, V, H, W = 2, 2, 32, 32
_FIELDS = ("images", "depth", "valid", "c2w", "K", "normals", "sky")
_SYNC_OPS = {"_local_scalar_dense", "nonzero", "is_nonzero", "item", "equal", "masked_select", "unique",
             "_unique", "_unique2", "unique_dim", "unique_consecutive", "repeat_interleave"}


class _Recorder(TorchDispatchMode):
    """Records (op name, overload, output shapes) of every dispatched op and the syncing ones."""

    def __init__(self):
        super().__init__()
        self.ops, self.syncs = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._schema.name.split("::")[-1]
        shapes = tuple(tuple(t.shape) for t in (out if isinstance(out, (tuple, list)) else [out])
                       if isinstance(t, torch.Tensor))
        self.ops.append((name, func._overloadname, shapes))
        bool_index = name in ("index", "index_put", "index_put_", "_index_put_impl_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()) or ())
        if name in _SYNC_OPS or bool_index:
            self.syncs.append(name)
        return out


def _record(gen, seed):
    calls = []
    orig = torch.Tensor.tolist

    def tolist(self):
        calls.append("tolist")
        return orig(self)

    torch.Tensor.tolist = tolist
    try:
        with _Recorder() as rec:
            batch = gen.sample(B, V, H, W, seed=seed)
    finally:
        torch.Tensor.tolist = orig
    return batch, rec, calls


@pytest.fixture(scope="module")
def static_gen():
    return ProceduralGenerator(ProceduralConfig(static=True), device="cpu")


def test_static_deterministic_per_seed(static_gen):
    a = static_gen.sample(B, V, H, W, seed=4)
    b = static_gen.sample(B, V, H, W, seed=4)
    c = static_gen.sample(B, V, H, W, seed=5)
    for k in _FIELDS:
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert not torch.equal(a.images, c.images)
    assert list(a.scene_ids) == list(b.scene_ids)


_ALL_FX = dict(defocus_prob=1.0, motion_blur_prob=1.0, jpeg_prob=1.0, vignetting_prob=1.0, distortion_prob=1.0)


@pytest.mark.parametrize("cfg_kw,shape,seed", [
    ({}, (B, V, H, W), 4), ({"seed": 3}, (2, 3, 32, 48), 11),
    ({"camera_tries": 2, "overlap_res": 16}, (32, 2, 12, 16), 1),
    # the added kinds (tabletop, furnished_room, facade) only, and each with every effect on
    ({"scene_kinds": (0.0, 0.0, 0.0, 1.0, 1.0, 1.0)}, (6, 2, 24, 32), 6),
    ({"scene_kinds": (0.0, 0.0, 0.0, 1.0, 0.0, 0.0), **_ALL_FX}, (2, 3, 24, 32), 2),
    ({"scene_kinds": (0.0, 0.0, 0.0, 0.0, 1.0, 0.0), **_ALL_FX}, (2, 2, 24, 32), 3),
    ({"scene_kinds": (0.0, 0.0, 0.0, 0.0, 0.0, 1.0), **_ALL_FX}, (2, 2, 24, 32), 5)])
def test_static_matches_default_path(cfg_kw, shape, seed):
    """Same tensors as the default (dynamic) path while no capacity overflows: geometry, masks,
    normals and cameras bit-identical; images to 1e-6 (CPU SIMD vs scalar tails of a few
    transcendental ops on differently sized tensors: measured at most 6e-8, on < 1e-4 of values;
    the photographic effects are the same function of identical inputs on both paths)."""
    ref = ProceduralGenerator(ProceduralConfig(**cfg_kw), device="cpu").sample(*shape, seed=seed)
    gen = ProceduralGenerator(ProceduralConfig(static=True, **cfg_kw), device="cpu")
    out = gen.sample(*shape, seed=seed)
    assert int(gen.overflow) == 0
    kinds = {SCENE_KINDS.index(i.split("/")[1]) for i in ref.scene_ids}
    w = gen.config.scene_kinds
    assert kinds == {k for k in range(len(w)) if w[k] > 0} or len(ref.scene_ids) < 6  # every allowed kind drawn
    for k in ("depth", "valid", "sky", "c2w", "K", "normals"):
        assert torch.equal(getattr(ref, k), getattr(out, k)), k
    assert torch.allclose(ref.images, out.images, atol=1e-6, rtol=0)
    assert list(out.scene_ids) == ref.scene_ids


def test_static_path_has_no_sync_and_a_fixed_op_sequence(static_gen):
    """No op that reads a device value on the host (sync detector), no tolist; the dispatched op
    sequence (names, overloads, output shapes) does not depend on the seed."""
    static_gen.sample(B, V, H, W, seed=0)  # warm-up: per-device constants
    b1, r1, t1 = _record(static_gen, 1)
    _, r2, _ = _record(static_gen, 2)
    assert r1.syncs == [] and t1 == [], (r1.syncs, t1)
    assert len(r1.ops) > 1000 and r1.ops == r2.ops
    # the ids are read lazily, outside the call
    assert isinstance(b1.scene_ids, LazySceneIds) and len(b1.scene_ids) == B
    assert b1.scene_ids[0].startswith("procedural/") and b1.scene_ids[1].endswith("seed1-1")


def test_default_path_is_detected():
    """The detector sees the default path's syncs (so its silence above means something)."""
    gen = ProceduralGenerator(ProceduralConfig(), device="cpu")
    _, rec, calls = _record(gen, 1)
    assert "nonzero" in rec.syncs and calls


def test_overflow_is_counted_and_outputs_stay_sane():
    """Capacities far too small: items are dropped and counted, shapes and geometry masks stay
    valid (depth >= 0, finite images in [0, 1], unit or zero normals)."""
    gen = ProceduralGenerator(ProceduralConfig(static=True, static_capacity=0.01, static_min_capacity=0), device="cpu")
    out = gen.sample(B, V, H, W, seed=4)
    assert int(gen.overflow) > 0
    assert out.images.shape == (B, V, 3, H, W) and torch.isfinite(out.images).all()
    assert out.images.min() >= 0 and out.images.max() <= 1 and (out.depth >= 0).all()
    n = out.normals.norm(dim=2)
    assert ((n - 1).abs() < 1e-4).logical_or(n == 0).all()


def test_budget_select_and_groups():
    bud = Budget(1.0, 0, "cpu")
    mask = torch.tensor([False, True, True, False, True, True])
    sel = bud.select(mask, "x", per=3)  # unknown name: 1 per ray -> capacity 3 of 4
    assert sel.idx.tolist() == [1, 2, 4] and sel.valid.all() and int(bud.overflow) == 1
    key = torch.tensor([1, 0, 2, 1, 0, 1])  # 2 = in no group
    g0, g1 = bud.groups(key, ["a", "b"], per=2)
    assert g0.idx.tolist() == [1, 4] and g0.valid.tolist() == [True, True]
    assert g1.idx[:2].tolist() == [0, 3] and int(bud.overflow) == 2  # g1 has 3 items, capacity 2
    out = torch.zeros(7)
    g0.put(out, torch.tensor([5.0, 6.0]))
    assert out.tolist() == [0, 5, 0, 0, 6, 0, 0]
    # padding writes to the sink row only
    small = Budget(1.0, 0, "cpu").select(torch.tensor([True, False, False, False]), "x", per=2)
    assert small.valid.tolist() == [True, False] and small.dest.tolist() == [0, 4]


def test_graphs_fall_back_to_static_on_cpu():
    kw = dict(static_min_capacity=512, max_march_steps=12)
    a = ProceduralGenerator(ProceduralConfig(graphs=True, **kw), device="cpu").sample(1, 2, 16, 16, seed=3)
    b = ProceduralGenerator(ProceduralConfig(static=True, **kw), device="cpu").sample(1, 2, 16, 16, seed=3)
    for k in _FIELDS:
        assert torch.equal(getattr(a, k), getattr(b, k)), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graphed_equals_static_on_cuda():
    kw = dict(max_march_steps=12, camera_tries=2)
    g = ProceduralGenerator(ProceduralConfig(graphs=True, **kw), device="cuda")
    s = ProceduralGenerator(ProceduralConfig(static=True, **kw), device="cuda")
    for seed in (1, 2):
        a, b = g.sample(B, V, H, W, seed=seed), s.sample(B, V, H, W, seed=seed)
        for k in _FIELDS:
            assert torch.equal(getattr(a, k), getattr(b, k)), (seed, k)
        assert list(a.scene_ids) == list(b.scene_ids)
    assert len(g._graphed.graphs) == 1
