"""``da3gs eval nvs | pose | depth`` end to end on the CPU with the tiny random-weight model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from da3gs.cli import main
from da3gs.metrics.depth import ALIGN_FORMULAS

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
TOY = ROOT / "examples" / "toy_scene"
MODEL = ["--model", "random:tiny-gs", "--device", "cpu"]


def _lpips_available() -> bool:
    from da3gs.metrics import LPIPSWeightsError, load_lpips

    try:
        load_lpips("vgg"), load_lpips("alex")
    except LPIPSWeightsError:
        return False
    return True


LPIPS = "vgg,alex" if _lpips_available() else "none"


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """The toy scene (8 views, nerfstudio transforms.json) downscaled to 64 x 46."""
    dst = tmp_path_factory.mktemp("scene") / "toy"
    dst.mkdir()
    meta = json.loads((TOY / "transforms.json").read_text())
    for fr in meta["frames"]:
        with Image.open(TOY / fr["file_path"]) as im:
            im.convert("RGB").resize((64, 46), Image.BOX).save(dst / fr["file_path"])
    (dst / "transforms.json").write_text(json.dumps(meta))  # K rescaled by the reader (w, h differ)
    return dst


def _eval(task, *args, res=56) -> int:
    return main(["eval", task, *MODEL, "--process-res", str(res), *map(str, args)])


def _metrics(out: Path) -> dict:
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers
    return json.loads((out / "metrics.json").read_text())


def _check_scores(rows, nets):
    for r in rows:
        assert 0 < r["psnr"] < 100 and -1 <= r["ssim"] <= 1
        for n in nets:
            assert 0 <= r[f"lpips_{n}"] < 2


def test_nvs_pose_free_centres_alignment(scene, tmp_path):
    out = tmp_path / "nvs"
    assert _eval("nvs", "--scene", scene, "--out", out, "--lpips", "none", "--align", "centres") == 0
    m = _metrics(out)
    assert m["alignment"]["method"] == "umeyama_sim3_camera_centres"
    assert m["protocol"]["alignment"] == "Sim(3) of the context cameras (centres)"


def test_nvs_pose_free(scene, tmp_path, capsys):
    out = tmp_path / "nvs"
    assert _eval("nvs", "--scene", scene, "--out", out, "--lpips", LPIPS) == 0
    m = _metrics(out)
    p = m["protocol"]
    assert p["target_indices"] == [0] and p["context_indices"] == [1, 2, 3, 4, 5, 6, 7]
    assert p["pose_mode"] == "free" and p["overlap"] is False and p["context_select"] == "fps"
    assert p["ssim_mode"] == "gaussian" and p["background"] == [0.0, 0.0, 0.0]
    a = m["alignment"]
    assert a["method"] == "sim3_orientations_then_centres" and a["scale"] > 0
    assert len(a["context_pose_errors"]["rotation_error_deg"]) == 7
    nets = [] if LPIPS == "none" else ["vgg", "alex"]
    assert p["lpips_nets"] == nets
    _check_scores(m["per_view"], nets)
    assert m["mean"]["psnr"] == pytest.approx(m["per_view"][0]["psnr"])
    assert m["refinement"] is None and "mean_before_refinement" not in m
    assert m["num_gaussians"] > 0 and "inference" in m["timings_s"] and "torch" in m["versions"]
    panel = np.asarray(Image.open(out / "views" / "view_00.png"))
    assert panel.shape == (46, 3 * 64, 3)
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and "PSNR" in line and "SSIM" in line


def test_nvs_conditioned_with_refinement(scene, tmp_path, capsys):
    out = tmp_path / "nvs"
    assert _eval("nvs", "--scene", scene, "--out", out, "--pose-mode", "conditioned",
                 "--targets", "list:0,5", "--context", 3, "--select", "every-nth",
                 "--refine-steps", 4, "--refine-cameras", "--lpips", "none",
                 "--ssim-mode", "skimage", "-q", res=42) == 0
    m = _metrics(out)
    p = m["protocol"]
    assert p["target_indices"] == [0, 5] and p["context_indices"] == [1, 3, 7]
    assert p["pose_mode"] == "conditioned" and m["alignment"] is None and m["scale_factor"] > 0
    r = m["refinement"]
    assert r["steps"] == 4 and len(r["loss_curve"]) == 4 and r["refine_cameras"]
    assert r["camera_rotation_deg"][0] == 0.0 and len(r["psnr_after_per_view"]) == 3
    for row in m["per_view"]:
        assert set(row["before_refinement"]) == {"psnr", "ssim"}
    assert set(m["mean_before_refinement"]) == {"psnr", "ssim"}
    assert {f.name for f in (out / "views").iterdir()} == {"view_00.png", "view_05.png"}
    assert "refine" in m["timings_s"] and capsys.readouterr().out == ""


def test_nvs_context_list_overlap(scene, tmp_path, capsys):
    out = tmp_path / "nvs"
    assert _eval("nvs", "--scene", scene, "--out", out, "--context-list", "4,0,2",
                 "--lpips", "none") == 0
    m = _metrics(out)
    assert m["protocol"]["context_indices"] == [0, 2, 4] and m["protocol"]["overlap"] is True
    assert m["protocol"]["context_select"] == "list"
    cap = capsys.readouterr()
    assert "warning" in cap.err and "[0]" in cap.err
    assert "->" in cap.out


def test_nvs_errors(scene, tmp_path, capsys, monkeypatch):
    def err(*args) -> str:
        assert _eval("nvs", *args) == 2
        e = capsys.readouterr().err
        assert e.startswith("da3gs eval: error:") and "Traceback" not in e
        return e

    e = err("--scene", scene, "--format", "foo", "--out", tmp_path / "a")
    assert "foo" in e and "blender" in e and "colmap" in e
    (tmp_path / "empty").mkdir()
    assert "no known scene format" in err("--scene", tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(scene, broken)
    (broken / "view_03.png").unlink()
    assert "view_03.png" in err("--scene", broken, "--out", tmp_path / "b")
    assert "only 7 non-target views" in err("--scene", scene, "--context", 10, "--out", tmp_path / "c")
    (tmp_path / "exists").mkdir()
    assert "already exists" in err("--scene", scene, "--out", tmp_path / "exists")
    assert "is the --scene input" in err("--scene", scene, "--out", scene, "--overwrite")
    assert "no named splits" in err("--scene", scene, "--targets", "split:test", "--out", tmp_path / "d")
    assert "everyN" in err("--scene", scene, "--targets", "sometimes", "--out", tmp_path / "e")
    assert "drop --select" in err("--scene", scene, "--context-list", "1,2", "--select", "fps",
                                  "--out", tmp_path / "f")
    assert main(["eval", "nvs", "--scene", str(scene), "--model", "random:tiny", "--device", "cpu",
                 "--lpips", "none", "--out", str(tmp_path / "g")]) == 2
    assert "Gaussian head" in capsys.readouterr().err
    monkeypatch.setenv("DA3GS_LPIPS_DIR", str(tmp_path / "nolpips"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "nolpips"))
    e = err("--scene", scene, "--lpips", "vgg", "--out", tmp_path / "h")
    assert "da3gs fetch lpips" in e and "--lpips none" in e
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_eval_pose(scene, tmp_path):
    out = tmp_path / "pose"
    assert _eval("pose", "--scene", scene, "--out", out, "--views", 5, "--select", "every-nth", "-q") == 0
    m = _metrics(out)
    assert m["views"] == [0, 2, 4, 5, 7] and m["task"] == "pose"
    assert set(m["auc"]) == {"auc@3", "auc@5", "auc@15", "auc@30"} and m["auc_mode"] == "bench"
    assert all(0 <= v <= 1 for v in m["auc"].values())
    assert m["auc"]["auc@3"] <= m["auc"]["auc@30"]
    assert m["ate"] >= 0 and m["alignment_scale"] > 0
    assert len(m["aligned_errors"]["rotation_error_deg"]) == 5


def test_eval_depth_needs_depth(scene, tmp_path, capsys):
    assert _eval("depth", "--scene", scene, "--out", tmp_path / "d") == 2
    assert "no depth maps" in capsys.readouterr().err


ICL = DATA / "icl_nuim_livingroom_rgbd5"


@pytest.mark.skipif(not ICL.is_dir(), reason="shared ICL-NUIM scene not present")
@pytest.mark.parametrize("align", ["median", "lstsq", "lstsq_scale"])
def test_eval_depth_icl(tmp_path, align):
    out = tmp_path / "depth"
    assert _eval("depth", "--scene", ICL, "--out", out, "--views", 3, "--align", align, "-q") == 0
    m = _metrics(out)
    assert len(m["per_view"]) == 3 and m["n_images"] == 3 and m["align"] == align
    assert m["align_formula"] == ALIGN_FORMULAS[align]
    mean = m["mean"]
    assert math.isfinite(mean["abs_rel"]) and mean["abs_rel"] >= 0
    assert 0 <= mean["delta1"] <= mean["delta2"] <= mean["delta3"] <= 1


FERN = DATA / "llff_fern"


@pytest.mark.skipif(not (FERN / "images_8").is_dir(), reason="shared LLFF fern scene not present")
def test_nvs_fern_protocol(tmp_path, capsys):
    out = tmp_path / "fern"
    assert _eval("nvs", "--scene", FERN, "--scene-opt", "factor=8", "--out", out,
                 "--lpips", "none", res=70) == 0
    m = _metrics(out)
    p = m["protocol"]
    assert p["target_indices"] == [0, 8, 16] and len(p["context_indices"]) == 16
    assert not set(p["context_indices"]) & {0, 8, 16}
    assert "using 16 of 17" in capsys.readouterr().err
    assert np.asarray(Image.open(out / "views" / "image000.png")).shape == (378, 3 * 504, 3)
    _check_scores(m["per_view"], [])


LEGO = DATA / "lego_400"


@pytest.mark.skipif(not (LEGO / "transforms_test.json").is_file(), reason="shared lego scene not present")
def test_nvs_lego_protocol(tmp_path):
    out = tmp_path / "lego"
    assert _eval("nvs", "--scene", LEGO, "--targets", "split:test", "--context", 4,
                 "--max-targets", 3, "--lpips", "none", "--out", out, "-q", res=70) == 0
    m = _metrics(out)
    p = m["protocol"]
    assert p["targets_available"] == 100 and len(p["target_indices"]) == 3
    assert all(n.startswith("test/") for n in p["target_names"])
    assert len(p["context_names"]) == 4 and all(n.startswith("train/") for n in p["context_names"])
    assert p["background"] == [1.0, 1.0, 1.0]
    assert {f.name for f in (out / "views").iterdir()} == {f"{n[:-4].replace('/', '_')}.png"
                                                           for n in p["target_names"]}


def test_render_refine_steps(scene, tmp_path):
    views = tmp_path / "v"
    views.mkdir()
    for f in sorted(scene.glob("*.png"))[:3]:
        shutil.copy(f, views / f.name)
    out = tmp_path / "r"
    assert main(["render", "--views", str(views), *MODEL, "--process-res", "42", "--no-video",
                 "--no-colmap", "--refine-steps", "3", "--out", str(out), "-q"]) == 0
    s = json.loads((out / "summary.json").read_text())
    r = s["refinement"]
    assert r["steps"] == 3 and len(r["psnr_after_per_view"]) == 3
    assert r["num_gaussians"] == s["gaussians"]["final"]


def test_eval_llff_without_factor_names_the_scene_opt(tmp_path, capsys):
    """An LLFF folder with only images_4/ and images_8/: the error says which --scene-opt picks one."""
    import numpy as np

    from da3gs.cli import main

    scene = tmp_path / "fern"
    (scene / "images_4").mkdir(parents=True)
    (scene / "images_8").mkdir()
    np.save(scene / "poses_bounds.npy", np.zeros((3, 17)))
    assert main(["eval", "nvs", "--scene", str(scene), "--model", "random:tiny-gs", "--device",
                 "cpu", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--scene-opt factor=8" in err and "Traceback" not in err
