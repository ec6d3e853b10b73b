"""The fast path on CUDA (run with ``-m gpu``): bf16 heads against the exact path, compiled blocks
and heads against uncompiled, many views with row-chunked blocks and host offload."""

from __future__ import annotations

import pytest
import torch

from da3gs.models.model import DA3Model
from da3gs.nn.transformer import Block

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DA3Model("tiny-gs").cuda()


@pytest.fixture(scope="module")
def images():
    return torch.rand(4, 3, 112, 168, generator=torch.Generator().manual_seed(1))


def test_fast_is_the_cuda_default_and_close_to_exact(model, images):
    exact = model.infer(images, precision="exact", infer_gs=True, process_res=168)
    auto = model.infer(images, infer_gs=True, process_res=168)
    fast = model.infer(images, precision="fast", infer_gs=True, process_res=168)
    assert torch.equal(auto.depth, fast.depth)
    rel = (fast.depth - exact.depth).abs().max() / exact.depth.abs().max()
    assert 0 < rel < 5e-2
    assert fast.depth.dtype == torch.float32 and fast.gaussians.means.dtype == torch.float32


def test_compiled_matches_uncompiled(images):
    torch.manual_seed(0)
    m = DA3Model("tiny-gs").cuda()
    ref = m.infer(images, precision="fast", infer_gs=True, process_res=168)
    m.enable_compile()
    out = m.infer(images, precision="fast", infer_gs=True, process_res=168)
    rel = (out.depth - ref.depth).abs().max() / ref.depth.abs().max()
    assert rel < 2e-2  # bf16: fused kernels round differently


def test_chunked_blocks_and_offload(model, images, monkeypatch):
    ref = model.infer(images, precision="fp32", infer_gs=True, process_res=168)
    monkeypatch.setattr(Block, "chunk_rows", 64)
    monkeypatch.setattr(DA3Model, "OFFLOAD_VIEWS", 2)
    out = model.infer(images, precision="fp32", infer_gs=True, process_res=168)
    assert out.depth.device.type == "cpu" and out.gaussians.means.device.type == "cpu"
    torch.testing.assert_close(out.depth, ref.depth.cpu(), rtol=1e-4, atol=1e-5)
