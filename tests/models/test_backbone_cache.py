"""Backbone per-size caches (position embedding, RoPE tables): bit-identical outputs, invalidation."""

from __future__ import annotations

import pytest
import torch

from da3gs.models.net import build_net
from da3gs.nn.rope import RoPE2D, constant_positions, patch_positions


def _net(seed=0):
    torch.manual_seed(seed)
    net = build_net("tiny-gs").eval()
    with torch.no_grad():
        for p in net.parameters():  # pos_embed starts at zero: make every weight matter
            p.add_(torch.randn_like(p) * 0.05)
    return net


def _feats(bb, x):
    out = bb(x)
    return torch.cat([f.flatten() for f in out.feats] + [c.flatten() for c in out.cam_tokens])


def _reference(bb, x):
    bb.use_cache = False
    try:
        return _feats(bb, x)
    finally:
        bb.use_cache = True


@pytest.mark.parametrize("views", [1, 2, 4])
def test_cached_outputs_bit_identical(views):
    net = _net()
    bb = net.backbone
    x = torch.randn(2, views, 3, 56, 84)
    with torch.no_grad():
        ref = _reference(bb, x)
        first = _feats(bb, x)  # fills the caches
        second = _feats(bb, x)  # from the caches
    assert torch.equal(first, ref) and torch.equal(second, ref)
    assert any(k[0] == "pos_embed" for k in bb._cache) and any(k[0] == "rope" for k in bb._cache)
    with torch.inference_mode():
        assert torch.equal(_feats(bb, x), ref)
    # the whole network, heads included
    with torch.no_grad():
        a = net(x, infer_gs=True)
        bb.use_cache = False
        b = net(x, infer_gs=True)
        bb.use_cache = True
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k


def test_rope_table_equals_per_call_rope():
    rope = RoPE2D(100.0)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        q = torch.randn(3, 2, 1 + 4 * 5, 16, dtype=dtype)
        pos = patch_positions(3, 4, 5, 1, "cpu")
        assert torch.equal(rope(q, rope.table(pos[:1])), rope(q, pos))
        # cross-view: 3 groups of 21 tokens at the same constant positions
        qv = torch.randn(2, 2, 3 * 21, 16, dtype=dtype)
        gpos = constant_positions(2 * 3, 21, 1, "cpu").reshape(2, 3 * 21, 2)
        assert torch.equal(rope(qv, rope.table(constant_positions(1, 21, 1, "cpu"))), rope(qv, gpos))
    with pytest.raises(ValueError, match="groups"):
        rope(torch.randn(1, 2, 22, 16), rope.table(constant_positions(1, 21, 1, "cpu")))


def test_caches_follow_weight_changes():
    net = _net()
    bb = net.backbone
    x = torch.randn(1, 3, 3, 42, 70)
    with torch.no_grad():
        base = _feats(bb, x)
        bb.pos_embed.mul_(1.5)  # in place, as an optimizer step: version counter moves
        edited = _feats(bb, x)
        assert not torch.equal(edited, base) and torch.equal(edited, _reference(bb, x))
    # load_state_dict copies into the same storage
    other = _net(seed=1)
    net.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert torch.equal(_feats(bb, x), _feats(other.backbone, x))
        assert torch.equal(_feats(bb, x), _reference(bb, x))
    # dtype move: recomputed in float64
    net.double()
    with torch.no_grad():
        assert torch.equal(_feats(bb, x.double()), _reference(bb, x.double()))


def test_no_cache_while_pos_embed_trains():
    net = _net().train()
    bb = net.backbone
    x = torch.randn(1, 2, 3, 42, 70)
    _feats(bb, x).square().sum().backward()
    assert bb.pos_embed.grad is not None and bb.pos_embed.grad.abs().sum() > 0
    assert not any(k[0] == "pos_embed" for k in bb._cache)
    g1 = bb.pos_embed.grad.clone()
    bb.pos_embed.grad = None
    _feats(bb, x).square().sum().backward()  # a second step gets the same gradient (no stale graph)
    assert torch.equal(bb.pos_embed.grad, g1)
