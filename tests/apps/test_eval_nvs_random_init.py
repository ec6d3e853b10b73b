"""``da3gs eval nvs --init random`` (per-scene optimisation baseline, no network) and the eval
tasks with the bundled trained model ``mini``, on the CPU at tiny sizes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from da3gs.cli import main
from tests.apps.test_eval_cli import ICL, _metrics, scene  # noqa: F401  (scene: fixture)


def _random(scene_dir, out, *extra) -> int:
    return main(["eval", "nvs", "--scene", str(scene_dir), "--init", "random", "--device", "cpu",
                 "--lpips", "none", "--out", str(out), *map(str, extra)])


def test_random_init_needs_refine_steps_before_any_work(tmp_path, capsys):
    # the scene does not exist: the --init check must come first
    assert _random(tmp_path / "missing", tmp_path / "o") == 2
    e = capsys.readouterr().err
    assert e.strip().count("\n") == 0 and "Traceback" not in e
    assert "--init random needs --refine-steps" in e
    for flags, msg in ((["--refine-steps", 2, "--init-points", 3], "--init-points"),
                       (["--refine-steps", 2, "--init-extent", 0], "--init-extent")):
        assert _random(tmp_path / "missing", tmp_path / "o", *flags) == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_random_init_refines_without_a_model(scene, tmp_path, capsys, monkeypatch):  # noqa: F811
    import da3gs.apps.eval_nvs as nvs

    def no_model(*a, **k):
        raise AssertionError("--init random must not load a model")

    monkeypatch.setattr(nvs, "load_job_model", no_model)
    out = tmp_path / "rand"
    assert _random(scene, out, "--refine-steps", 3, "--init-points", 100, "--init-extent", 1.5,
                   "--context", 2, "--pose-mode", "free", "--seed", 4) == 0
    cap = capsys.readouterr()
    assert "--pose-mode free is ignored" in cap.err and "random init, GT cameras" in cap.out
    m = _metrics(out)
    p = m["protocol"]
    assert m["model"] == "random-init" and m["preset"] is None and m["alignment"] is None
    assert p["init"] == "random" and p["init_points"] == 100 and p["seed"] == 4
    assert p["pose_mode"] == "gt" and len(p["context_indices"]) == 2
    assert p["box_half_size"] == pytest.approx(1.5 * p["camera_extent"])
    assert m["num_gaussians"] == 100 and "random_init" in m["timings_s"]
    assert "load_model" not in m["timings_s"] and "inference" not in m["timings_s"]
    r = m["refinement"]
    assert r["steps"] == 3 and r["num_gaussians"] == 100 and len(r["psnr_after_per_view"]) == 2
    assert r["psnr_after"] != r["psnr_before"]  # the cloud was optimised
    row = m["per_view"][0]
    assert set(row["before_refinement"]) == {"psnr", "ssim"} and 0 < row["psnr"] < 100


MINI = ["--model", "mini", "--device", "cpu", "--process-res", "56", "-q"]


def test_eval_nvs_and_pose_with_mini(scene, tmp_path):  # noqa: F811
    out = tmp_path / "nvs"
    assert main(["eval", "nvs", "--scene", str(scene), *MINI, "--pose-mode", "conditioned",
                 "--lpips", "none", "--out", str(out)]) == 0
    m = _metrics(out)
    assert m["model"] == "mini" and m["preset"] == "compact" and m["num_gaussians"] > 0
    assert m["protocol"]["init"] == "model" and "init_points" not in m["protocol"]
    assert 0 < m["mean"]["psnr"] < 100
    out = tmp_path / "pose"
    assert main(["eval", "pose", "--scene", str(scene), *MINI, "--views", "4", "--out", str(out)]) == 0
    m = _metrics(out)
    assert m["model"] == "mini" and all(0 <= v <= 1 for v in m["auc"].values())


@pytest.mark.skipif(not ICL.is_dir(), reason="shared ICL-NUIM scene not present")
def test_eval_depth_with_mini(tmp_path):
    out = tmp_path / "depth"
    assert main(["eval", "depth", "--scene", str(ICL), *MINI, "--views", "2", "--out", str(out)]) == 0
    m = json.loads((Path(out) / "metrics.json").read_text())
    assert m["model"] == "mini" and m["n_images"] == 2
    assert math.isfinite(m["mean"]["abs_rel"]) and 0 <= m["mean"]["delta1"] <= 1
