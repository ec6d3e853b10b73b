"""The inference fast path (issue 10): bf16 heads, compiled blocks and heads, row-chunked blocks
for thousands of views, outputs offloaded to the host. CPU, tiny presets."""

from __future__ import annotations

import argparse

import pytest
import torch

from da3gs.errors import Da3gsError
from da3gs.models.model import DA3Model
from da3gs.nn.dpt_blocks import chunked_views, output_conv2
from da3gs.nn.rope import RoPE2D, constant_positions, patch_positions
from da3gs.nn.transformer import Block


@pytest.fixture(scope="module")
def tiny_gs():
    torch.manual_seed(0)
    return DA3Model("tiny-gs")


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 56, 84, generator=torch.Generator().manual_seed(1))


def _net_out(model, x, fast, autocast):
    ctx = torch.autocast("cpu", torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        return model.net(x, infer_gs=True, fast=fast)


def test_fast_without_autocast_is_the_fp32_path(tiny_gs):
    x = torch.randn(1, 2, 3, 56, 84)
    a, b = _net_out(tiny_gs, x, False, False), _net_out(tiny_gs, x, True, False)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_fast_heads_run_in_bf16_and_stay_close(tiny_gs):
    """Under bf16 autocast, fast feeds the heads bf16 features; outputs stay fp32 (the last 1x1
    convolutions run in fp32) and close to the exact path's (bf16-level differences)."""
    x = torch.randn(1, 2, 3, 56, 84, generator=torch.Generator().manual_seed(2))
    seen = []
    hook = tiny_gs.net.depth_head.reassemble.register_forward_pre_hook(
        lambda m, args: seen.append(args[0][0].dtype))
    try:
        exact, fast = _net_out(tiny_gs, x, False, True), _net_out(tiny_gs, x, True, True)
    finally:
        hook.remove()
    assert seen == [torch.float32, torch.bfloat16]
    for k in ("depth", "depth_conf", "ray", "raw_gs", "raw_gs_conf"):
        assert fast[k].dtype == torch.float32, k
        rel = (fast[k] - exact[k]).abs().max() / exact[k].abs().max()
        assert 0 < rel < 5e-2, (k, float(rel))  # different numerics, not different results


def test_output_conv_last_layer_in_fp32():
    torch.manual_seed(0)
    head = output_conv2(8, 2, layer_norm=True)
    x = torch.randn(2, 8, 5, 7)
    with torch.autocast("cpu", torch.bfloat16):
        out = head(x)
        hidden = head[2](head[1](head[0](x)))  # conv (bf16) -> LayerNorm -> ReLU
    assert out.dtype == torch.float32
    ref = torch.nn.functional.conv2d(hidden.float(), head[3].weight, head[3].bias)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert torch.equal(head(x), torch.nn.Sequential(*head)(x))  # fp32: the plain sequence


def test_precision_names(tiny_gs, images):
    # fast and exact are bf16 modes of CUDA; on the CPU both run in fp32 like auto
    ref = tiny_gs.infer(images, precision="fp32", process_res=84)
    for p in ("auto", "fast", "exact"):
        assert torch.equal(tiny_gs.infer(images, precision=p, process_res=84).depth, ref.depth), p
    with pytest.raises(Da3gsError, match="precision: expected one of"):
        tiny_gs.infer(images, precision="int8")
    assert tiny_gs._precision("bf16")[1] is False and tiny_gs._precision("auto")[1] is False


def test_auto_precision_on_cuda_follows_the_model_setting(tiny_gs, monkeypatch):
    monkeypatch.setattr(DA3Model, "device", property(lambda self: torch.device("cuda")))
    assert tiny_gs._precision("auto")[1] is True  # fast by default
    monkeypatch.setattr(tiny_gs, "auto_precision", "exact")
    ctx, fast = tiny_gs._precision("auto")
    assert fast is False and isinstance(ctx, torch.autocast)


def test_enable_compile_keeps_outputs_and_state_dict(images):
    torch.manual_seed(0)
    model = DA3Model("tiny-gs")
    keys = list(model.state_dict())
    ref = model.infer(images, precision="fp32", infer_gs=True, process_res=84)
    assert model.enable_compile(backend="eager") is model
    assert model.enable_compile(backend="eager") is model  # twice: heads not wrapped twice
    out = model.infer(images, precision="fp32", infer_gs=True, process_res=84)
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(out.depth, ref.depth, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.gaussians.means, ref.gaussians.means, rtol=1e-5, atol=1e-6)


@pytest.fixture
def block():
    torch.manual_seed(0)
    blk = Block(64, 4, qk_norm=True, rope=RoPE2D(100.0)).eval()
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(0, 0.2)
    return blk


@pytest.mark.parametrize("rows", [1, 7, 13, 20, 40])
def test_chunked_block_equals_the_whole_block(block, rows, monkeypatch):
    """Within-view shape (views x tokens) with a RoPE table or per-token positions, and the
    cross-view shape (views' tokens in one sequence, cut at view boundaries)."""
    rope = block.attn.rope
    x = torch.randn(6, 13, 64)
    xg = torch.randn(2, 5 * 13, 64)
    cases = [(x, rope.table(patch_positions(1, 3, 4, 1, "cpu"))), (x, patch_positions(6, 3, 4, 1, "cpu")),
             (x, None), (xg, rope.table(constant_positions(1, 13, 1, "cpu")))]
    with torch.no_grad():
        refs = [block(t, p) for t, p in cases]
        monkeypatch.setattr(Block, "chunk_rows", rows)
        for (t, p), ref in zip(cases, refs):
            out = block(t, p)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_chunked_block_dtypes_under_autocast(block, monkeypatch):
    xg = torch.randn(2, 5 * 13, 64)
    table = block.attn.rope.table(constant_positions(1, 13, 1, "cpu"))
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        ref = block(xg, table)
        monkeypatch.setattr(Block, "chunk_rows", 26)
        out = block(xg, table)
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_chunked_block_leaves_its_input_alone_and_is_inference_only(block, monkeypatch):
    x = torch.randn(6, 13, 64)
    before = x.clone()
    monkeypatch.setattr(Block, "chunk_rows", 13)
    with torch.no_grad():
        block(x)
    assert torch.equal(x, before)  # the backbone keeps aliases of block inputs
    called = []
    monkeypatch.setattr(Block, "_forward_chunked", lambda *a: called.append(1))
    block(x.requires_grad_())  # with autograd: the whole block, always
    assert not called


def test_chunked_backbone_in_the_network(tiny_gs, images, monkeypatch):
    ref = tiny_gs.infer(images, precision="fp32", infer_gs=True, process_res=84)
    monkeypatch.setattr(Block, "chunk_rows", 30)  # < one view's tokens: every block in pieces
    out = tiny_gs.infer(images, precision="fp32", infer_gs=True, process_res=84)
    torch.testing.assert_close(out.depth, ref.depth, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.c2w, ref.c2w, rtol=1e-5, atol=1e-6)


def test_chunked_views_out_device():
    feats = [torch.randn(1, 5, 4, 3)]
    seen = []

    def fn(f):
        seen.append(f[0].shape[0])
        return {"y": f[0].sum(-1)}

    out = chunked_views(fn, feats, 2, out_device=torch.device("meta"))
    assert seen == [2, 2, 1] and out["y"].device.type == "meta" and out["y"].shape == (1, 5, 4)


def test_offload_gives_the_same_prediction(tiny_gs, images):
    ref = tiny_gs.infer(images, precision="fp32", infer_gs=True, process_res=84)
    out = tiny_gs.infer(images, precision="fp32", infer_gs=True, process_res=84, offload=True)
    assert torch.equal(out.depth, ref.depth) and torch.equal(out.gaussians.means, ref.gaussians.means)
    assert tiny_gs.net.output_device is None and tiny_gs.net.depth_head.output_device is None


def test_cli_flags_set_the_model(monkeypatch):
    from da3gs.apps import common

    p = argparse.ArgumentParser()
    common.add_model_flags(p)
    common.add_run_flags(p, "out")
    args = p.parse_args(["--model", "random:tiny", "--exact", "--compile"])
    compiled = []
    monkeypatch.setattr(DA3Model, "enable_compile", lambda self, backend="inductor": compiled.append(1) or self)
    model, _ = common.load_job_model(args, torch.device("cpu"))
    assert model.auto_precision == "exact" and compiled == [1]
    model, _ = common.load_job_model(p.parse_args(["--model", "random:tiny"]), torch.device("cpu"))
    assert model.auto_precision == "fast" and compiled == [1]
