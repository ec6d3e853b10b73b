"""Prefetcher: the same batches in the same order, the consumer's stream position, errors handed
over, a bounded lead, and a clean stop and restart."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from da3gs.data.augment import AugConfig
from da3gs.data.config import DataConfig
from da3gs.data.prefetch import Prefetcher
from da3gs.data.sources import ProceduralSource, make_train_source

from .mv_helpers import FakeGenerator


def _cfg(**kw):
    base = {"views": (2, 8), "base_resolution": 56, "batch_size": 2, "seed": 3,
            "aug": AugConfig(noise_prob=1.0)}
    base.update(kw)
    return DataConfig(**base)


def _src():
    return ProceduralSource(_cfg(), 0, 1, generator=FakeGenerator())


class Counting:
    """A source of integer tensors 0, 1, 2, ... that may fail at ``fail_at`` or end at ``stop``."""

    def __init__(self, fail_at=None, stop=None):
        self.step, self.fail_at, self.stop = 0, fail_at, stop
        self.thread = None

    def __next__(self):
        self.thread = threading.current_thread()
        if self.step == self.fail_at:
            raise ValueError(f"bad batch {self.step}")
        if self.step == self.stop:
            raise StopIteration
        self.step += 1
        return {"x": torch.tensor([self.step - 1])}

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, s):
        self.step = s["step"]


def test_same_batches_in_the_same_order():
    want = [next(s) for s in [_src()] for _ in range(6)]
    p = Prefetcher(_src(), depth=3)
    got = [next(p) for _ in range(6)]
    p.close()
    for a, b in zip(want, got):
        assert a.shape == b.shape and torch.equal(a.images, b.images)
        assert torch.equal(a.pose_conditioned, b.pose_conditioned)
        assert a.scene_ids == b.scene_ids


def test_batches_are_made_on_another_thread():
    src = Counting()
    p = Prefetcher(src, depth=2)
    next(p)
    assert src.thread is not None and src.thread is not threading.current_thread()
    p.close()


def test_lead_is_bounded_by_depth():
    src = Counting()
    p = Prefetcher(src, depth=2)
    assert int(next(p)["x"]) == 0
    time.sleep(0.3)  # let the producer run as far as it may
    # consumed 1; at most `depth` batches queued plus one made and waiting to be queued
    assert 2 <= src.step <= 1 + 2 + 1
    p.close()


def test_state_is_the_consumers_position_and_resume_continues_the_stream():
    want = [next(s) for s in [_src()] for _ in range(7)]
    p = Prefetcher(_src(), depth=3)
    assert p.state_dict() == {"step": 0}
    for _ in range(3):
        next(p)
    time.sleep(0.2)
    assert p.source.step > 3  # the producer is ahead ...
    state = p.state_dict()
    assert state == {"step": 3}  # ... but the saved position is what the step consumed
    p.close()
    q = Prefetcher(_src(), depth=2)
    q.load_state_dict(state)
    for k in range(3, 7):
        assert torch.equal(next(q).images, want[k].images)
    q.close()


def test_close_then_next_restarts_in_order():
    src = Counting()
    p = Prefetcher(src, depth=3)
    assert [int(next(p)["x"]) for _ in range(2)] == [0, 1]
    time.sleep(0.2)
    p.close()
    assert src.step == 2  # the dropped batches are made again ...
    assert [int(next(p)["x"]) for _ in range(3)] == [2, 3, 4]  # ... in order
    p.close()


def test_load_state_dict_while_running():
    p = Prefetcher(Counting(), depth=2)
    next(p), next(p)
    p.load_state_dict({"step": 10})
    assert int(next(p)["x"]) == 10 and p.state_dict() == {"step": 11}
    p.close()


def test_source_errors_reach_the_consumer_after_the_batches_before_them():
    p = Prefetcher(Counting(fail_at=3), depth=2)
    assert [int(next(p)["x"]) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad batch 3"):
        next(p)
    p = Prefetcher(Counting(stop=2), depth=4)
    assert list(int(b["x"]) for b in p) == [0, 1]


def test_bad_depth():
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(Counting(), depth=0)


def test_train_source_prefetches_only_on_cuda():
    assert isinstance(make_train_source(_cfg(), generator=FakeGenerator()), ProceduralSource)
    assert isinstance(make_train_source(_cfg(prefetch=0), generator=FakeGenerator()),
                      ProceduralSource)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_side_stream_gives_the_same_batches():
    cfg = _cfg()
    src = make_train_source(cfg, device="cuda")
    assert isinstance(src, Prefetcher)
    ref = ProceduralSource(cfg, 0, 1, device="cuda")
    for _ in range(4):
        a, b = next(src), next(ref)
        torch.cuda.current_stream().synchronize()
        assert torch.equal(a.images, b.images) and torch.equal(a.depth, b.depth)
    src.close()
