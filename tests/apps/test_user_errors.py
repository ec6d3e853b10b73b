"""User mistakes give one line and exit 2, never a traceback; flag errors name the flag."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import da3gs
from da3gs.cli import main
from da3gs.errors import Da3gsError


def _views(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / f"i{i}.png")
    return folder


@pytest.fixture
def no_model(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("model loaded before the flags were checked")

    monkeypatch.setattr(da3gs, "load_model", boom)


@pytest.mark.parametrize("flag,value", [("--frames", 0), ("--fps", 0), ("--prune-opacity", 2),
                                        ("--prune-conf", 101), ("--prune-border", -1),
                                        ("--voxel", -0.1), ("--refine-steps", -3),
                                        ("--process-res", 5), ("--max-views", 0)])
def test_render_flag_errors_name_the_flag(tmp_path, capsys, no_model, flag, value):
    v = _views(tmp_path / "v")
    assert main(["render", "--views", str(v), "--model", "random:tiny-gs", "--device", "cpu",
                 "--out", str(tmp_path / "o"), flag, str(value)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"da3gs render: error: {flag}: expected") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "_" not in err.split(":")[2]
    assert not (tmp_path / "o").exists()


def test_unknown_preset_is_one_line(tmp_path, capsys):
    v = _views(tmp_path / "v")
    assert main(["render", "--views", str(v), "--model", "random:nope", "--device", "cpu",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'nope'" in err and "Traceback" not in err


def test_library_errors_derive_from_da3gs_error(tmp_path):
    from da3gs.geometry.sh import eval_sh_bases
    from da3gs.models.metric import metric_scale
    from da3gs.models.presets import get_preset, preset_from_yaml
    from da3gs.models.reference_view import select_reference_view
    from da3gs.render.sh import eval_sh, sh_degree_from_bases
    from da3gs.types import Prediction

    bad_yaml = tmp_path / "p.yaml"
    bad_yaml.write_text("vit: 3\n")
    calls = [
        lambda: get_preset("nope"),
        lambda: preset_from_yaml(bad_yaml),
        lambda: eval_sh_bases(5, torch.ones(2, 3)),
        lambda: sh_degree_from_bases(5),
        lambda: eval_sh(3, torch.ones(2, 3), torch.ones(2, 4, 3)),
        lambda: metric_scale(torch.ones(1, 4, 4), torch.ones(1, 4, 4), torch.ones(1, 4, 4),
                             torch.ones(1, 4, 4), torch.eye(3)[None]),
        lambda: select_reference_view(torch.ones(1, 2, 4), "nope"),
        lambda: Prediction(images=torch.zeros(1, 3, 2, 2), depth=torch.ones(1, 2, 2)).K_original(),
    ]
    for f in calls:
        with pytest.raises(Da3gsError):
            f()


def test_gs_preset_with_sh_degree_0():
    model = da3gs.load_model("random:tiny-gs")
    model.preset = dataclasses.replace(model.preset, sh_degree=0)
    assert model.preset_sh_degree == 0


def test_cli_default_model_is_load_model_giant():
    from da3gs.apps.common import DEFAULT_MODEL
    from da3gs.models.loading import OFFICIAL_REPOS

    assert OFFICIAL_REPOS["giant"] == DEFAULT_MODEL
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"`{DEFAULT_MODEL}`" in readme
