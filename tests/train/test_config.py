"""Configs: presets load, overrides are typed, wrong keys name the nearest valid one."""

from __future__ import annotations

import pytest

from da3gs.errors import Da3gsError
from da3gs.train.config import ConfigError, load_config, preset_names
from da3gs.train.optim import lr_at


def test_presets_load():
    names = preset_names()
    for n in ("teacher-tiny", "stage1-tiny", "teacher-compact", "stage1-compact",
              "stage1-small", "stage1-base"):
        assert n in names
    for n in names:
        load_config(n)
    assert load_config("stage1-base").model.init == "depth-anything/DA3-BASE"
    assert load_config("teacher-compact").model.preset == "compact-mono"


def test_overrides_are_typed(tmp_path):
    cfg = load_config("stage1-tiny", ["schedule.steps=7", "optim.lr=1e-4", "data.views=[2,3]",
                                      "run.tensorboard=true", "steps=9", "model.init=null"])
    assert cfg.schedule.steps == 9 and cfg.optim.lr == 1e-4 and cfg.data.views == (2, 3)
    assert cfg.run.tensorboard is True and cfg.model.init is None
    p = tmp_path / "mine.yaml"
    p.write_text("extends: stage1-tiny\nschedule: {steps: 5}\n")
    assert load_config(str(p)).schedule.steps == 5


@pytest.mark.parametrize("override, near", [("optim.lrr=1", "optim.lr"),
                                            ("shedule.steps=3", "schedule.steps"),
                                            ("model.gradcheckpointing=true",
                                             "model.grad_checkpointing")])
def test_wrong_key_names_nearest(override, near):
    with pytest.raises(ConfigError, match=f"did you mean '{near}'") as e:
        load_config("stage1-tiny", [override])
    assert isinstance(e.value, Da3gsError) and "\n" not in str(e.value)


def test_bad_values_and_yaml_keys(tmp_path):
    with pytest.raises(ConfigError, match="expected int"):
        load_config("stage1-tiny", ["schedule.steps=many"])
    with pytest.raises(ConfigError, match="ambiguous"):
        load_config("stage1-tiny", ["seed=3"])
    p = tmp_path / "bad.yaml"
    p.write_text("optim: {lrate: 1.0}\n")
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        load_config(str(p))
    with pytest.raises(ConfigError, match="did you mean 'stage1-tiny'"):
        load_config("stage1-tinny")


def test_schedule():
    cfg = load_config("stage1-tiny", ["schedule.steps=100", "schedule.warmup_steps=10",
                                      "optim.lr=1.0", "schedule.min_lr_ratio=0.1"])
    lrs = [lr_at(s, cfg.optim, cfg.schedule) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lr_at(100, cfg.optim, cfg.schedule) == pytest.approx(0.1)
