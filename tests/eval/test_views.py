"""View selection of the protocols (:mod:`da3gs.eval.views`) on a synthetic scene."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from da3gs.errors import Da3gsError
from da3gs.eval import views as ev


class _Scene:
    def __init__(self, n=10, split=None):
        self.c2w = torch.eye(4).repeat(n, 1, 1)
        self.c2w[:, 0, 3] = torch.arange(n, dtype=torch.float32)
        self.split, self.format, self.n = split, "test", n

    def __len__(self):
        return self.n

    def llff_holdout(self, every):
        return ([i for i in range(self.n) if i % every],
                [i for i in range(self.n) if i % every == 0])


def test_parse_targets_protocols():
    s = _Scene(10, split={"train": [0, 1, 2, 3, 4], "test": [7, 5]})
    assert ev.parse_targets("every8", s) == [0, 8]
    assert ev.parse_targets("split:test", s) == [5, 7]
    assert ev.parse_targets("list:3,-1", s) == [3, 9]
    assert ev.context_candidates(s, [5, 7], "split:test") == [0, 1, 2, 3, 4]
    assert ev.context_candidates(s, [0, 8], "every8") == [1, 2, 3, 4, 5, 6, 7, 9]
    for bad in ("every1", "split:val", "list:", "list:1,1", "list:10", "nope"):
        with pytest.raises(Da3gsError):
            ev.parse_targets(bad, s)


def test_farthest_point_sampling_is_deterministic():
    pts = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0]], dtype=float)
    assert ev.farthest_point_sampling(pts, 1) == [2]
    assert ev.farthest_point_sampling(pts, 3) == [0, 2, 4]
    with pytest.raises(Da3gsError):
        ev.farthest_point_sampling(pts, 6)


def test_select_context_and_pick_views():
    s = _Scene(10)
    ctx, overlap, notes = ev.select_context(s, [1, 2, 3, 4, 5], [0, 8], 3, "every-nth", None)
    assert ctx == [1, 3, 5] and not overlap and not notes
    ctx, overlap, notes = ev.select_context(s, [], [0, 8], None, "fps", "0,3")
    assert ctx == [0, 3] and overlap and "also targets" in notes[0]
    many = _Scene(40)
    ctx, _, notes = ev.select_context(many, list(range(1, 40)), [0], None, "fps", None)
    assert len(ctx) == ev.DEFAULT_MAX_CONTEXT and "pass --context N" in notes[0]
    assert ev.pick_views(s, list(range(10)), 2, "every-nth") == [0, 9]
    with pytest.raises(Da3gsError):
        ev.select_context(s, [1, 2], [0], 3, "fps", None)


def test_view_file_names_and_panel():
    used: set[str] = set()
    assert [ev.view_file_name(n, used) for n in ("test/r_0.png", "test_r_0", "a b.jpg")] == \
        ["test_r_0", "test_r_0_2", "a_b"]
    p, t = np.zeros((4, 5, 3)), np.ones((4, 5, 3))
    panel = ev.comparison_panel(p, t)
    assert panel.shape == (4, 15, 3) and panel.dtype == np.uint8
    assert (panel[:, 10:] == 255).all()  # error 1 > ERROR_SCALE: the top of the heat map (white)
