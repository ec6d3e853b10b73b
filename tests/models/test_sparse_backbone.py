"""Sparse cross-view attention in the backbone and the model: None and covering patterns are
bit-identical to full attention; the pattern follows the reference-view reordering (the window
counts in the input order); DA3Model.set_cross_view_attention reaches every backbone."""

from __future__ import annotations

import pytest
import torch

from da3gs.errors import Da3gsError
from da3gs.models import backbone as backbone_mod
from da3gs.models.backbone import Backbone
from da3gs.models.model import DA3Model
from da3gs.models.net import build_net
from da3gs.models.reference_view import reference_first_order
from da3gs.nn.sparse_attention import CrossViewPattern, dense_reference, view_mask


def _net_and_input(V=6, seed=0):
    torch.manual_seed(seed)
    net = build_net("tiny").eval()
    x = torch.randn(1, V, 3, 28, 42)
    return net, x


def _backbones(net) -> list[Backbone]:
    return [m for m in net.modules() if isinstance(m, Backbone)]


def _run(net, x, pattern, strategy="middle"):
    for b in _backbones(net):
        b.cross_view_attention = pattern
    with torch.no_grad():
        return net(x, ref_view_strategy=strategy)


def _tensors(out: dict) -> dict:
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("V", [2, 5])
def test_none_and_covering_patterns_are_bit_identical_to_full(V):
    net, x = _net_and_input(V)
    full = _run(net, x, None)
    for pattern in (CrossViewPattern(keyframe_every=0, window=V - 1),
                    CrossViewPattern(keyframe_every=1, window=0, impl="flex"),
                    CrossViewPattern(num_keyframes=V, window=0, impl="chunked")):
        out = _run(net, x, pattern)
        for k, v in _tensors(full).items():
            assert torch.equal(v, out[k]), (pattern, k)
    sparse = _run(net, x, CrossViewPattern(keyframe_every=0, window=0, impl="chunked"))
    if V > 2:  # with 2 views the reference view (a keyframe) and itself cover every pair
        assert not torch.allclose(sparse["depth"], full["depth"])


@pytest.mark.parametrize("strategy,ref", [("first", 0), ("middle", 3)])
def test_pattern_follows_the_reference_view_order(monkeypatch, strategy, ref):
    """The backbone hands the attention its reference-first permutation; the sparse network
    equals one whose cross-view blocks run dense masked attention with the mask written out for
    that permutation."""
    V = 7
    net, x = _net_and_input(V)
    spec = CrossViewPattern(keyframe_every=3, window=1, impl="chunked", chunk_views=2)
    seen = []
    real = backbone_mod.cross_view_attention_fn

    def spy(spec_, V_, N_, heads, device, view_time=None, order_key=None, need_grad=False):
        seen.append(view_time)
        return real(spec_, V_, N_, heads, device, view_time=view_time, order_key=order_key,
                    need_grad=need_grad)

    monkeypatch.setattr(backbone_mod, "cross_view_attention_fn", spy)
    sparse = _run(net, x, spec, strategy)
    assert int(sparse["ref_view"][0]) == ref
    order = reference_first_order(torch.tensor([ref]), V)
    assert len(seen) == 1 and torch.equal(seen[0], order)  # built once per forward

    allowed = view_mask(spec, V, order)
    # by hand: position i holds input view order[i]; keyframes 0, 3, 6, the reference view
    t = order[0].tolist()
    for i in range(V):
        for j in range(V):
            assert bool(allowed[0, i, j]) == (abs(t[i] - t[j]) <= 1 or t[j] % 3 == 0 or j == 0)

    def dense(spec_, V_, N_, heads, device, view_time=None, order_key=None, need_grad=False):
        m = view_mask(spec_, V_, view_time)
        return lambda q, k, v: dense_reference(q, k, v, m).to(q.dtype)

    monkeypatch.setattr(backbone_mod, "cross_view_attention_fn", dense)
    ref_out = _run(net, x, spec, strategy)
    for k, v in _tensors(ref_out).items():
        if v.is_floating_point():
            torch.testing.assert_close(sparse[k], v, rtol=1e-4, atol=1e-4)


def test_pose_conditioned_input_keeps_the_input_order(monkeypatch):
    V = 5
    net, x = _net_and_input(V)
    seen = []
    real = backbone_mod.cross_view_attention_fn

    def spy(*a, **k):
        seen.append(k.get("view_time"))
        return real(*a, **k)

    monkeypatch.setattr(backbone_mod, "cross_view_attention_fn", spy)
    w2c = torch.eye(4).repeat(1, V, 1, 1)
    w2c[..., 0, 3] = torch.arange(V, dtype=torch.float32)
    K = torch.tensor([[30.0, 0, 21], [0, 30, 14], [0, 0, 1]]).repeat(1, V, 1, 1)
    for b in _backbones(net):
        b.cross_view_attention = CrossViewPattern(keyframe_every=0, window=1, impl="chunked")
    with torch.no_grad():
        net(x, w2c, K)
    assert seen == [None]


def test_sparse_backward_and_checkpointing():
    net, x = _net_and_input(6)
    net.train()
    for b in _backbones(net):
        b.cross_view_attention = CrossViewPattern(keyframe_every=4, window=1, impl="chunked")
        b.grad_checkpointing = True
    out = net(x)
    out["depth"].mean().backward()
    g = _backbones(net)[0].blocks[-1].attn.qkv.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_model_set_cross_view_attention():
    model = DA3Model("tiny-nested")
    spec = CrossViewPattern(keyframe_every=0, window=1)
    model.set_cross_view_attention(spec)
    bbs = [m for m in model.modules() if isinstance(m, Backbone)]
    assert len(bbs) == 2 and all(b.cross_view_attention is spec for b in bbs)
    model.set_cross_view_attention(None)
    assert all(b.cross_view_attention is None for b in bbs)
    with pytest.raises(Da3gsError):
        model.set_cross_view_attention({"window": 1})


def test_model_infer_sparse():
    torch.manual_seed(0)
    model = DA3Model("tiny")
    imgs = torch.rand(6, 3, 28, 42)
    full = model.infer(imgs, process_res=42)
    model.set_cross_view_attention(CrossViewPattern(keyframe_every=0, window=5))  # covers 6 views
    same = model.infer(imgs, process_res=42)
    assert torch.equal(full.depth, same.depth) and torch.equal(full.c2w, same.c2w)
    model.set_cross_view_attention(CrossViewPattern(keyframe_every=0, window=1))
    sparse = model.infer(imgs, process_res=42)
    assert sparse.depth.shape == full.depth.shape and torch.isfinite(sparse.depth).all()
    assert not torch.equal(full.depth, sparse.depth)
