"""Sparse cross-view attention: the view pattern, the chunked path against a dense float64
reference, the flex block mask against flex attention's own builder, and flex against chunked."""

from __future__ import annotations

import pytest
import torch

from da3gs.errors import ConfigError
from da3gs.nn.sparse_attention import (CrossViewPattern, chunked_attention, covers_all,
                                       cross_view_attention_fn, dense_reference, flex_block_mask,
                                       flex_sparse_attention, keyframe_flags, view_mask)


def _ref_first(V: int, ref: int) -> torch.Tensor:
    """The backbone's reference-first order: view ``ref`` first, the others in input order."""
    return torch.tensor([[ref] + [i for i in range(V) if i != ref]])


def _expected_mask(spec: CrossViewPattern, V: int, order: torch.Tensor) -> torch.Tensor:
    """The pattern written out pair by pair, over positions of ``order`` (input index per position)."""
    kf = keyframe_flags(spec, V)
    t = order[0].tolist()
    m = torch.zeros(1, V, V, dtype=torch.bool)
    for i in range(V):
        for j in range(V):
            m[0, i, j] = abs(t[i] - t[j]) <= spec.window or bool(kf[t[j]]) or j == 0
    return m


def _qkv(V, N, H=2, D=8, B=1, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, V * N, D, generator=g, dtype=dtype) for _ in range(3)]


def test_pattern_validation():
    for bad in (dict(keyframe_every=-1), dict(window=-2), dict(num_keyframes=0),
                dict(chunk_views=0), dict(impl="cuda"), dict(window=1.5)):
        with pytest.raises(ConfigError):
            CrossViewPattern(**bad)


def test_keyframes():
    assert keyframe_flags(CrossViewPattern(keyframe_every=3), 8).nonzero().flatten().tolist() == [0, 3, 6]
    assert not keyframe_flags(CrossViewPattern(keyframe_every=0), 5).any()
    assert keyframe_flags(CrossViewPattern(num_keyframes=3), 9).nonzero().flatten().tolist() == [0, 4, 8]


@pytest.mark.parametrize("V,spec", [(7, CrossViewPattern(keyframe_every=3, window=1)),
                                    (9, CrossViewPattern(keyframe_every=0, window=2)),
                                    (10, CrossViewPattern(num_keyframes=3, window=0))])
@pytest.mark.parametrize("ref", [0, 4])
def test_view_mask_follows_the_reference_reordering(V, spec, ref):
    order = _ref_first(V, ref)
    assert torch.equal(view_mask(spec, V, order), _expected_mask(spec, V, order))
    # the same pattern as the identity order's with the reference view made a keyframe, permuted
    t = torch.arange(V)
    ident = ((t[:, None] - t[None]).abs() <= spec.window) | keyframe_flags(spec, V)[None]
    ident[:, ref] = True  # the input-order pattern, the reference view a keyframe
    ident = ident[None]
    o = order[0]
    assert torch.equal(view_mask(spec, V, order)[0], ident[0][o][:, o])


@pytest.mark.parametrize("V,N,spec", [
    (6, 5, CrossViewPattern(keyframe_every=4, window=1)),
    (9, 7, CrossViewPattern(keyframe_every=0, window=1)),
    (12, 3, CrossViewPattern(keyframe_every=5, window=2)),
    (11, 4, CrossViewPattern(num_keyframes=3, window=0)),
    (8, 1, CrossViewPattern(keyframe_every=3, window=0)),
])
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
@pytest.mark.parametrize("ref", [0, 3])
def test_chunked_equals_dense_reference(V, N, spec, chunk, ref):
    order = _ref_first(V, ref)
    allowed = view_mask(spec, V, order)
    assert not allowed.all()
    q, k, v = _qkv(V, N, dtype=torch.float64, seed=V * 10 + chunk)
    out = chunked_attention(q, k, v, allowed, chunk)
    assert out.shape == q.shape
    torch.testing.assert_close(out, dense_reference(q, k, v, allowed), rtol=1e-10, atol=1e-10)
    q, k, v = (x.float() for x in (q, k, v))
    torch.testing.assert_close(chunked_attention(q, k, v, allowed, chunk).double(),
                               dense_reference(q, k, v, allowed), rtol=1e-5, atol=1e-5)


def test_chunked_batch_items_with_their_own_orders():
    V, N, spec = 8, 3, CrossViewPattern(keyframe_every=4, window=1, chunk_views=3, impl="chunked")
    order = torch.cat([_ref_first(V, 0), _ref_first(V, 5)])
    q, k, v = _qkv(V, N, B=2, dtype=torch.float64)
    fn = cross_view_attention_fn(spec, V, N, heads=2, device="cpu", view_time=order)
    out = fn(q, k, v)
    for b in range(2):
        torch.testing.assert_close(out[b:b + 1], dense_reference(q[b:b + 1], k[b:b + 1], v[b:b + 1],
                                                                 view_mask(spec, V, order[b:b + 1])))


def test_auto_chunk_size_is_bounded():
    from da3gs.nn import sparse_attention as sa

    spec = CrossViewPattern(keyframe_every=0, window=1)
    c = sa._chunk_size(spec, heads=16, V=4096, N=865, n_key=1)
    assert 1 <= c < 4096 and 16 * c * 865 * min(4096, c + 3) * 865 <= max(sa.CHUNK_SCORE_BUDGET, 16 * 865 * 4 * 865)


def test_covering_patterns_are_full_attention():
    assert covers_all(CrossViewPattern(keyframe_every=0, window=4), 5)
    assert covers_all(CrossViewPattern(keyframe_every=1, window=0), 9)
    assert covers_all(CrossViewPattern(num_keyframes=6, window=0), 6)
    assert covers_all(CrossViewPattern(keyframe_every=2, window=1), 3)  # 0-1, 1-2 near; 0, 2 keyframes
    assert not covers_all(CrossViewPattern(keyframe_every=0, window=1), 4)
    assert cross_view_attention_fn(CrossViewPattern(keyframe_every=0, window=7), 8, 5, 2, "cpu") is None
    assert cross_view_attention_fn(CrossViewPattern(keyframe_every=0, window=1), 8, 5, 2, "cpu") is not None


def _flex_or_skip():
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError:
        pytest.skip("torch.nn.attention.flex_attention is not in this torch build")
    return create_block_mask


@pytest.mark.parametrize("V,N,spec,ref", [
    (8, 7, CrossViewPattern(keyframe_every=4, window=1), 2),  # N << block: one block
    (9, 30, CrossViewPattern(keyframe_every=3, window=0), 4),
    (10, 200, CrossViewPattern(num_keyframes=3, window=1), 6),  # N > block: full and partial blocks
    (6, 128, CrossViewPattern(keyframe_every=0, window=1), 0),  # views aligned with blocks
])
def test_flex_block_mask_equals_create_block_mask(V, N, spec, ref):
    create_block_mask = _flex_or_skip()
    order = _ref_first(V, ref)
    allowed = view_mask(spec, V, order)
    key = keyframe_flags(spec, V)[order]
    key[:, 0] = True
    bm = flex_block_mask(allowed, order, key, N, spec.window, compute_q_blocks=True, q_chunk=3)
    t = order

    def mask_mod(b, h, qi, ki):
        return key[b, ki // N] | ((t[b, qi // N] - t[b, ki // N]).abs() <= spec.window)

    ref_bm = create_block_mask(mask_mod, 1, None, V * N, V * N, device="cpu")
    assert torch.equal(bm.to_dense(), ref_bm.to_dense())
    assert torch.equal(bm.full_kv_num_blocks, ref_bm.full_kv_num_blocks)
    assert torch.equal(bm.kv_num_blocks, ref_bm.kv_num_blocks)


def test_flex_equals_chunked_on_cpu():
    """Compiled flex attention (the CUDA path) against the chunked path, where flex attention
    compiles on this CPU."""
    _flex_or_skip()
    V, N, spec = 10, 40, CrossViewPattern(keyframe_every=4, window=1)
    order = _ref_first(V, 3)
    allowed = view_mask(spec, V, order)
    key = keyframe_flags(spec, V)[order]
    key[:, 0] = True
    bm = flex_block_mask(allowed, order, key, N, spec.window)
    q, k, v = _qkv(V, N, H=2, D=16)
    try:
        out = flex_sparse_attention(q, k, v, bm)
    except Exception as e:  # no C++ compiler / inductor CPU backend in this environment
        pytest.skip(f"compiled flex attention does not run on this CPU: {type(e).__name__}: {e}"[:200])
    torch.testing.assert_close(out, chunked_attention(q, k, v, allowed, 3), rtol=2e-5, atol=2e-5)
