"""The protocols of :mod:`da3gs.eval` called directly (model, scene, options in; metrics out), and
the same numbers as ``da3gs eval`` (the command only adds flags, the output folder, printing)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from da3gs.cli import main
from da3gs.eval import (DepthOptions, EvalSceneError, Hooks, NVSOptions, PoseOptions, evaluate_depth,
                        evaluate_nvs, evaluate_pose, plan_nvs)

TOY = Path(__file__).resolve().parents[2] / "examples" / "toy_scene"


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    """The toy scene (8 views) downscaled to 64 x 46."""
    dst = tmp_path_factory.mktemp("scene") / "toy"
    dst.mkdir()
    meta = json.loads((TOY / "transforms.json").read_text())
    for fr in meta["frames"]:
        with Image.open(TOY / fr["file_path"]) as im:
            im.convert("RGB").resize((64, 46), Image.BOX).save(dst / fr["file_path"])
    (dst / "transforms.json").write_text(json.dumps(meta))
    return dst


@pytest.fixture(scope="module")
def scene(scene_dir):
    from da3gs.data import load_scene

    return load_scene(scene_dir)


class _Timer:
    def __init__(self):
        self.stages: list[str] = []

    def __call__(self, name):
        from contextlib import nullcontext

        self.stages.append(name)
        return nullcontext()


def test_pose_protocol_matches_the_command(scene, scene_dir, tmp_path):
    from da3gs.models.loading import load_model

    torch.manual_seed(0)  # as --seed 0
    model = load_model("random:tiny-gs", device="cpu")
    calls, timer = [], _Timer()

    def infer(m, *a, **kw):
        calls.append(kw)
        return m.infer(*a, **kw)

    r = evaluate_pose(model, scene, [0, 2, 5, 7], PoseOptions(process_res=56, select="every-nth"),
                      Hooks(timer=timer, infer=infer))
    assert timer.stages == ["inference"] and calls[0]["process_res"] == 56
    assert r["views"] == [0, 2, 5, 7] and set(r["auc"]) == {"auc@3", "auc@5", "auc@15", "auc@30"}
    out = tmp_path / "pose"
    assert main(["eval", "pose", "--scene", str(scene_dir), "--model", "random:tiny-gs",
                 "--device", "cpu", "--process-res", "56", "--views", "4", "--select", "every-nth",
                 "-q", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["views"] == r["views"] and m["auc"] == pytest.approx(r["auc"])
    assert m["ate"] == pytest.approx(r["ate"])


def test_nvs_random_init_without_a_model(scene, scene_dir, tmp_path):
    opts = NVSOptions(context=2, init="random", init_points=100, init_extent=1.5, refine_steps=2,
                      lpips=(), seed=4)
    plan = plan_nvs(scene, opts)
    assert plan.targets == [0] and len(plan.context) == 2 and plan.select == "fps"
    timer = _Timer()
    r = evaluate_nvs(None, scene, opts, hooks=Hooks(timer=timer))
    assert timer.stages == ["random_init", "render_score", "refine", "render_score_refined"]
    m = r.metrics
    assert m["protocol"]["init"] == "random" and m["num_gaussians"] == 100 and m["preset"] is None
    assert len(r.panels) == 1 and next(iter(r.panels)).startswith("views/")
    assert next(iter(r.panels.values())).shape == (46, 192, 3)
    out = tmp_path / "nvs"
    assert main(["eval", "nvs", "--scene", str(scene_dir), "--init", "random", "--device", "cpu",
                 "--lpips", "none", "--context", "2", "--init-points", "100", "--init-extent", "1.5",
                 "--refine-steps", "2", "--seed", "4", "-q", "--out", str(out)]) == 0
    cli = json.loads((out / "metrics.json").read_text())
    assert cli["protocol"] == m["protocol"]
    assert cli["mean"] == pytest.approx(m["mean"]) and cli["per_view"][0]["psnr"] == pytest.approx(
        m["per_view"][0]["psnr"])


def test_nvs_options_are_checked(scene):
    from da3gs.errors import Da3gsError

    for opts, msg in ((NVSOptions(init="random"), "--init random needs --refine-steps"),
                      (NVSOptions(refine_steps=-1), "--refine-steps"),
                      (NVSOptions(refine_cameras=True), "--refine-cameras")):
        with pytest.raises(Da3gsError, match=msg):
            evaluate_nvs(None, scene, opts)


def test_depth_protocol_needs_depth_maps(scene):
    with pytest.raises(EvalSceneError, match="has no depth maps"):
        evaluate_depth(None, scene, [0, 1], DepthOptions())


def test_options_are_frozen():
    with pytest.raises(Exception):
        PoseOptions().auc_mode = "relative"  # type: ignore[misc]
    assert np.isclose(NVSOptions().init_extent, 3.0)
