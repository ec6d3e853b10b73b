"""--sparse-attention / --keyframe-every / --num-keyframes / --window: checked before anything
loads (one line naming the flag, exit 2) and applied where the model is loaded."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from da3gs.models import loading
from da3gs.apps.common import add_model_flags, load_job_model, sparse_attention_pattern
from da3gs.cli import main
from da3gs.models.backbone import Backbone
from da3gs.nn.sparse_attention import CrossViewPattern


@pytest.fixture
def no_model(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("model loaded before the flags were checked")

    monkeypatch.setattr(loading, "load_model", boom)


def _views(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(folder / f"i{i}.png")
    return folder


BAD = [(["--window", "2"], "--window: only applies with --sparse-attention"),
       (["--keyframe-every", "4"], "--keyframe-every: only applies with --sparse-attention"),
       (["--sparse-attention", "--window", "-1"], "--window: expected"),
       (["--sparse-attention", "--keyframe-every", "-3"], "--keyframe-every: expected"),
       (["--sparse-attention", "--num-keyframes", "0"], "--num-keyframes: expected"),
       (["--sparse-attention", "--keyframe-every", "4", "--num-keyframes", "3"],
        "--num-keyframes: give either")]


@pytest.mark.parametrize("flags,msg", BAD)
def test_render_flag_errors(tmp_path, capsys, no_model, flags, msg):
    v = _views(tmp_path / "v")
    assert main(["render", "--views", str(v), "--model", "random:tiny-gs", "--device", "cpu",
                 "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"da3gs render: error: {msg}") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("task", ["pose", "depth"])
@pytest.mark.parametrize("flags,msg", BAD[::2])
def test_eval_flag_errors(tmp_path, capsys, no_model, task, flags, msg):
    assert main(["eval", task, "--scene", str(tmp_path / "nowhere"), "--model", "random:tiny",
                 "--device", "cpu", *flags]) == 2
    err = capsys.readouterr().err
    assert f"error: {msg}" in err and len(err.strip().splitlines()) == 1


def _args(argv):
    p = argparse.ArgumentParser()
    add_model_flags(p)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def test_pattern_from_flags():
    assert sparse_attention_pattern(_args([])) is None
    d = CrossViewPattern()
    assert sparse_attention_pattern(_args(["--sparse-attention"])) == CrossViewPattern(
        keyframe_every=d.keyframe_every, window=d.window)
    assert sparse_attention_pattern(_args(["--sparse-attention", "--keyframe-every", "0",
                                           "--window", "5"])) == CrossViewPattern(0, 5)
    assert sparse_attention_pattern(_args(["--sparse-attention", "--num-keyframes", "16"])) == \
        CrossViewPattern(num_keyframes=16, window=d.window)


def test_load_job_model_applies_the_pattern():
    model, _ = load_job_model(_args(["--model", "random:tiny", "--sparse-attention",
                                     "--keyframe-every", "4", "--window", "1"]), "cpu")
    bbs = [m for m in model.modules() if isinstance(m, Backbone)]
    assert bbs and all(b.cross_view_attention == CrossViewPattern(4, 1) for b in bbs)
    model, _ = load_job_model(_args(["--model", "random:tiny"]), "cpu")
    assert all(m.cross_view_attention is None for m in model.modules() if isinstance(m, Backbone))
