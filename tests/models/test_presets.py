"""Presets are data: the table in da3gs/models/presets.py and configs/models/*.yaml agree."""

from pathlib import Path

import pytest

from da3gs.models.presets import NESTED, PRESETS, get_preset

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "models"


@pytest.mark.parametrize("name", sorted([*PRESETS, *NESTED]))
def test_yaml_matches_table(name):
    assert get_preset(str(CONFIGS / f"{name}.yaml")) == get_preset(name)


def test_official_names_and_errors(tmp_path):
    assert get_preset("da3-giant").name == "giant" and get_preset("da3-giant").gs_head
    assert get_preset("da3nested-giant-large").metric == "metric-large"
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
    (tmp_path / "bad.yaml").write_text("name: x\n")
    with pytest.raises(ValueError, match="not a preset YAML"):
        get_preset(str(tmp_path / "bad.yaml"))


def test_random_model_from_yaml():
    from da3gs import load_model

    m = load_model(f"random:{CONFIGS / 'tiny.yaml'}")
    assert m.preset == get_preset("tiny")
