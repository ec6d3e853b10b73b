"""User mistakes give one line and exit 2, never a traceback; flag errors name the flag."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import da3gs
from da3gs.models import loading
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

    monkeypatch.setattr(loading, "load_model", boom)


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


# ----------------------------------------------------------------- inputs that should simply work


def _run(*args) -> int:
    return main(["render", "--device", "cpu", "-q", "--process-res", "42", "--no-video",
                 "--model", "random:tiny-gs", *map(str, args)])


def test_names_with_spaces_write_a_binary_colmap_model(tmp_path):
    from da3gs.data.colmap import read_colmap

    v = tmp_path / "my photos"
    v.mkdir()
    rng = np.random.default_rng(1)
    for n in ("front door.png", "back yard.png", "side.png"):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(v / n)
    out = tmp_path / "out"
    assert _run("--views", v, "--out", out) == 0
    assert (out / "colmap" / "images.bin").is_file()
    scene = read_colmap(out / "colmap", images_dir=out / "images")
    assert sorted(scene.names) == ["back yard.png", "front door.png", "side.png"]
    import json
    s = json.loads((out / "summary.json").read_text())
    assert s["colmap_format"] == "binary"


def _tf(path: Path, names, size=(40, 30), sep="/"):
    import json
    frames = []
    for i, n in enumerate(names):
        c2w = np.eye(4)
        c2w[0, 3] = 0.2 * i
        frames.append({"file_path": f".{sep}{n}", "transform_matrix": c2w.tolist()})
    path.write_text(json.dumps({"fl_x": 40.0, "fl_y": 40.0, "cx": size[0] / 2, "cy": size[1] / 2,
                                "w": size[0], "h": size[1], "frames": frames}))
    return path


def test_poses_listing_more_frames_than_views(tmp_path, capsys):
    import json
    v = _views(tmp_path / "v", 2)
    poses = _tf(v / "transforms.json", ["i0.png", "i1.png", "i2.png", "i3.png"])
    out = tmp_path / "out"
    assert _run("--views", v, "--poses", poses, "--out", out) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["views"] == 2 and s["pose_conditioned"]
    # a present image without a pose stays an error
    _tf(poses, ["i0.png", "i2.png"])
    assert _run("--views", v, "--poses", poses, "--out", tmp_path / "o2") == 2
    assert "no camera for i1.png" in capsys.readouterr().err


def test_windows_paths_in_transforms_json(tmp_path):
    from da3gs.data import load_scene

    v = tmp_path / "scene"
    (v / "images").mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(v / "images" / f"i{i}.png")
    _tf(v / "transforms.json", ["images\\i0.png", "images\\i1.png"], sep="\\")
    scene = load_scene(v / "transforms.json")
    assert scene.names == ["images/i0.png", "images/i1.png"]


def test_tiny_images_are_refused(tmp_path, capsys, no_model):
    v = _views(tmp_path / "v", 2)
    Image.new("RGB", (1, 1)).save(v / "dot.png")
    assert _run("--views", v, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "dot.png: image is 1x1 pixels" in err and "Traceback" not in err


def test_skipped_files_reported_on_console(tmp_path, capsys, monkeypatch):
    import da3gs.io.images as images

    monkeypatch.setitem(images._HEIF_STATE, "ok", False)  # as without pillow-heif
    v = _views(tmp_path / "v", 2)
    (v / "Thumbs.db").write_bytes(b"x")
    (v / "IMG_1.HEIC").write_bytes(b"x")
    assert main(["render", "--device", "cpu", "--process-res", "42", "--no-video", "--model",
                 "random:tiny-gs", "--views", str(v), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 non-image file(s)" in err and "Thumbs.db" in err
    assert "pip install 'da3gs[heif]'" in err


def test_colmap_without_images_folder_names_render_flags(tmp_path, capsys, no_model):
    from da3gs.io.cameras import write_colmap_text

    model = tmp_path / "sparse" / "0"
    write_colmap_text(model, torch.eye(4)[None].double(), torch.eye(3)[None].double() * 40,
                      (30, 40), ["i0.png"])
    assert main(["render", "--poses", str(model), "--model", "random:tiny-gs",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--views" in err and "Traceback" not in err


def test_images_flag_is_views(tmp_path, capsys):
    v = _views(tmp_path / "v", 2)
    assert _run("--images", v, "--out", tmp_path / "o") == 0
    assert _run("--images", v, "--views", tmp_path, "--out", tmp_path / "o2") == 2
    assert "--views and --images" in capsys.readouterr().err
