"""Teacher labels: teacher depth aligned to the ground truth replaces it from a given step."""

from __future__ import annotations

import torch

from da3gs.models.net import build_net
from da3gs.train.step import apply_teacher
from tests.train.fakes import synth_batch


def test_apply_teacher_aligns_to_gt():
    torch.manual_seed(0)
    teacher = build_net("tiny-mono").eval()
    batch = synth_batch(1, 2, gen=torch.Generator().manual_seed(3))
    batch.valid[:, :, :, :4] = False  # GT missing on a strip: the teacher fills it
    out = apply_teacher(teacher, batch, "fp32")
    assert out.depth.shape == batch.depth.shape and torch.isfinite(out.depth).all()
    assert not torch.equal(out.depth, batch.depth)
    assert out.valid[:, :, :, :4].any()  # filled where GT was missing
    # aligned: the same median scale as the ground truth on the GT-valid pixels
    m = batch.valid
    ratio = (out.depth[m] / batch.depth[m]).median()
    assert 0.7 < float(ratio) < 1.4
