"""``da3gs render`` end to end on the CPU with tiny random-weight models."""

from __future__ import annotations

import json
from pathlib import Path

import imageio
import numpy as np
import pytest
from PIL import Image

from da3gs.cli import main
from da3gs.io.ply import read_ply

FERN = Path(__file__).resolve().parents[2].parent / "shared/data/llff_fern"


def _make_views(folder: Path, n: int = 3, size=(64, 48)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        x = np.linspace(0, 1, size[0])[None, :, None]
        y = np.linspace(0, 1, size[1])[:, None, None]
        arr = np.concatenate([x + 0 * y, y + 0 * x, 0.5 + 0 * x * y], -1)
        arr = (np.clip(arr + rng.normal(0, 0.05, arr.shape), 0, 1) * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
        paths.append(folder / f"img{i}.png")
    return paths


def _run(*args) -> int:
    return main(["render", "--device", "cpu", "-q", "--process-res", "70", *map(str, args)])


def _check_outputs(out: Path, names: list[str], frames: int | None, splats: bool = True):
    s = json.loads((out / "summary.json").read_text())
    assert s["views"] == len(names)
    H, W = s["processed_size"]
    for n in names:
        assert (out / "images" / f"{n}.png").is_file()
        d = np.load(out / "depth" / f"{n}.npy")
        assert d.shape == (H, W) and np.isfinite(d).all() and (d > 0).all()
        assert (out / "depth" / f"{n}.png").is_file() and (out / "depth" / f"{n}_vis.png").is_file()
    cams = json.loads((out / "cameras.json").read_text())
    assert [c["name"] for c in cams] == [f"{n}.png" for n in names]
    tf = json.loads((out / "transforms.json").read_text())
    assert len(tf["frames"]) == len(names) and (out / tf["ply_file_path"]).is_file()
    for f in ("cameras.bin", "images.bin", "points3D.bin"):  # --colmap-format binary by default
        assert (out / "colmap" / f).is_file()
    assert s["colmap_format"] == "binary"
    if splats:
        g = read_ply(out / "gaussians.ply")
        assert len(g) == s["gaussians"]["final"] > 0 and g.sh_degree == 2
        assert s["splat_files"] == {f: (out / f).stat().st_size for f in ("gaussians.ply", "gaussians.spz")}
    else:
        assert not (out / "gaussians.ply").exists() and s["points"] > 0
    if frames:
        with imageio.get_reader(out / "video.mp4") as r:
            assert sum(1 for _ in r) == frames
    for k in ("load_model", "inference", "total"):
        assert k in s["timings_s"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers
    return s


def test_render_pose_free(tmp_path):
    _make_views(tmp_path / "v")
    (tmp_path / "v" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert _run("--views", tmp_path / "v", "--model", "random:tiny-gs", "--out", out,
                "--frames", 4, "--video-depth") == 0
    s = _check_outputs(out, ["img0", "img1", "img2"], frames=4)
    assert s["skipped_files"] == ["notes.txt"] and not s["pose_conditioned"]


def test_render_with_poses_and_trajectories(tmp_path):
    _make_views(tmp_path / "v", 4)
    frames = []
    for i in range(4):
        c2w = np.eye(4)
        c2w[0, 3] = 0.3 * i
        frames.append({"file_path": f"img{i}.png",
                       "transform_matrix": (c2w @ np.diag([1, -1, -1, 1])).tolist()})
    (tmp_path / "v" / "transforms.json").write_text(json.dumps(
        {"fl_x": 60.0, "fl_y": 60.0, "cx": 32.0, "cy": 24.0, "w": 64, "h": 48, "frames": frames}))
    for traj in ("orbit", "extend"):
        out = tmp_path / f"out_{traj}"
        assert _run("--views", tmp_path / "v", "--poses", tmp_path / "v" / "transforms.json",
                    "--model", "random:tiny-gs", "--out", out, "--frames", 3,
                    "--trajectory", traj) == 0
        s = _check_outputs(out, [f"img{i}" for i in range(4)], frames=3)
        assert s["pose_conditioned"]
        cams = json.loads((out / "cameras.json").read_text())
        assert np.allclose(np.array(cams[2]["c2w"])[0, 3], 0.6, atol=1e-6)


def test_render_without_gs_head(tmp_path, capsys):
    _make_views(tmp_path / "v")
    out = tmp_path / "out"
    assert main(["render", "--device", "cpu", "--views", str(tmp_path / "v"), "--model",
                 "random:tiny", "--out", str(out), "--no-video"]) == 0
    _check_outputs(out, ["img0", "img1", "img2"], frames=None, splats=False)
    assert "no Gaussian head" in capsys.readouterr().out


def test_render_errors(tmp_path, capsys):
    _make_views(tmp_path / "v")
    out = tmp_path / "out"
    out.mkdir()
    assert _run("--views", tmp_path / "v", "--model", "random:tiny-gs", "--out", out) == 2
    assert "already exists" in capsys.readouterr().err
    assert _run("--views", tmp_path / "nope", "--model", "random:tiny-gs") == 2
    (tmp_path / "empty").mkdir()
    assert _run("--views", tmp_path / "empty", "--model", "random:tiny-gs") == 2
    err = capsys.readouterr().err
    assert "nope" in err and "empty" in err and "Traceback" not in err
    bad = tmp_path / "bad"
    _make_views(bad)
    data = (bad / "img1.png").read_bytes()
    (bad / "img1.png").write_bytes(data[: len(data) // 2])
    assert _run("--views", bad, "--model", "random:tiny-gs", "--out", tmp_path / "o2") == 2
    assert "img1.png" in capsys.readouterr().err and not (tmp_path / "o2").exists()
    (tmp_path / "v" / "transforms.json").write_text(json.dumps(
        {"fl_x": 60.0, "fl_y": 60.0, "cx": 32.0, "cy": 24.0, "w": 64, "h": 48,
         "frames": [{"file_path": "img0.png", "transform_matrix": np.eye(4).tolist()}]}))
    assert _run("--views", tmp_path / "v", "--poses", tmp_path / "v" / "transforms.json",
                "--model", "random:tiny-gs", "--out", tmp_path / "o3") == 2
    assert "no camera for img1.png" in capsys.readouterr().err
    assert _run("--views", tmp_path / "v", "--model", "does/not-exist-anywhere",
                "--out", tmp_path / "o4") == 2
    assert "huggingface-cli download" in capsys.readouterr().err


def test_overwrite_replaces(tmp_path):
    _make_views(tmp_path / "v")
    out = tmp_path / "out"
    assert _run("--views", tmp_path / "v", "--model", "random:tiny-gs", "--out", out,
                "--no-video", "--no-colmap") == 0
    assert not (out / "colmap").exists()
    assert _run("--views", tmp_path / "v", "--model", "random:tiny-gs", "--out", out,
                "--overwrite", "--no-video") == 0
    assert (out / "colmap").is_dir() and (out / "gaussians.ply").is_file()


@pytest.mark.skipif(not (FERN / "images_8").is_dir(), reason="../shared/data/llff_fern absent")
def test_render_llff_fern(tmp_path):
    out = tmp_path / "fern"
    assert _run("--views", FERN / "images_8", "--model", "random:tiny-gs", "--out", out,
                "--process-res", 126, "--frames", 3, "--max-views", 8) == 0
    names = sorted(p.stem for p in (out / "images").iterdir())
    assert len(names) == 8
    _check_outputs(out, names, frames=3)


@pytest.mark.skipif(not (FERN / "images_8").is_dir(), reason="../shared/data/llff_fern absent")
def test_render_llff_poses(tmp_path):
    out = tmp_path / "fern_posed"
    assert _run("--views", FERN / "images_8", "--poses", FERN / "poses_bounds.npy", "--model",
                "random:tiny-gs", "--out", out, "--max-views", 4, "--no-video") == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["pose_conditioned"] and s["views"] == 4


def test_render_mixed_sizes_one_line(tmp_path, capsys):
    """A 4:3, a larger 4:3 and a 3:4 photo: processed at the common 4:3 size (not cropped to
    the smallest), and one console line says so (no warning with a source path)."""
    v = tmp_path / "v"
    for i, size in enumerate([(84, 63), (128, 96), (60, 80)]):
        _make_views(v / str(i), n=1, size=size)[0].rename(v / f"img{i}.png")
    out = tmp_path / "out"
    assert main(["render", "--device", "cpu", "--process-res", "84", "--views", str(v), "--model",
                 "random:tiny-gs", "--out", str(out), "--no-video", "--no-colmap"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "mixed image sizes" in ln]
    assert len(lines) == 1 and lines[0].startswith("da3gs render: note: mixed image sizes: 1 of 3")
    assert ".py" not in err and "Warning" not in err
    assert json.loads((out / "summary.json").read_text())["processed_size"] == [70, 84]


def test_render_without_ffmpeg_notes_up_front_and_writes_gif(tmp_path, capsys, monkeypatch):
    """No ffmpeg: said before the model loads (the model source here is bad, so the run stops
    right after the checks), and a real run writes video.gif, recorded in summary.json."""
    import da3gs.io.video as video

    monkeypatch.setattr(video, "ffmpeg_available", lambda: False)
    _make_views(tmp_path / "v")
    assert main(["render", "--device", "cpu", "--views", str(tmp_path / "v"), "--model",
                 str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert "note: ffmpeg not found" in err and err.index("ffmpeg") < err.index("error")
    out = tmp_path / "out"
    assert main(["render", "--device", "cpu", "--process-res", "42", "--views", str(tmp_path / "v"),
                 "--model", "random:tiny-gs", "--out", str(out), "--frames", "2", "--no-colmap"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert (out / "video.gif").is_file() and not (out / "video.mp4").exists()
    assert s["video"]["file"] == "video.gif" and "ffmpeg" in s["export_notes"]["video"]


def test_render_optional_export_failure_keeps_the_run(tmp_path, capsys, monkeypatch):
    """A failing optional export (COLMAP, video) warns and is recorded; the run exits 0 with
    every other output, and leaves no partial export behind."""
    import da3gs.io.cameras as cameras
    import da3gs.io.video as video

    def broken_colmap(path, *a, **k):
        Path(path).mkdir()
        (Path(path) / "cameras.txt").write_text("half")
        raise OSError("disk full")

    def broken_video(*a, **k):
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(cameras, "write_colmap", broken_colmap)
    monkeypatch.setattr(video, "write_video", broken_video)
    _make_views(tmp_path / "v")
    out = tmp_path / "out"
    assert _run("--views", tmp_path / "v", "--model", "random:tiny-gs", "--out", out, "--frames", 2) == 0
    s = json.loads((out / "summary.json").read_text())
    assert "disk full" in s["exports_failed"]["colmap"] and "encoder crashed" in s["exports_failed"]["video"]
    assert not (out / "colmap").exists() and not (out / "video.mp4").exists()
    assert (out / "gaussians.ply").is_file() and (out / "cameras.json").is_file()
    err = capsys.readouterr().err
    assert "warning: colmap not written (OSError: disk full)" in err and "Traceback" not in err


def test_render_failed_background_write_leaves_nothing(tmp_path, capsys, monkeypatch):
    """A required file that fails on a writer thread fails the run (exit 2, the error on one
    line); no output folder and no temporary are left behind."""
    import da3gs.io.splat_files as splat_files

    def broken(path, g, fmt=None, **options):
        Path(path).write_bytes(b"half")
        raise splat_files.InputError(f"{path}: disk full")

    monkeypatch.setattr(splat_files, "write_gaussians", broken)
    _make_views(tmp_path / "v")
    out = tmp_path / "out"
    assert _run("--views", tmp_path / "v", "--model", "random:tiny-gs", "--out", out, "--no-video") == 2
    assert "disk full" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]


def test_render_merges_across_views_by_default(tmp_path):
    """The footprint merge runs by default (random weights give scattered depths, so little merges
    at the default scale: a coarse --merge-scale shows the merged cloud is what gets written)."""
    _make_views(tmp_path / "v")
    common = ["--views", tmp_path / "v", "--model", "random:tiny-gs", "--no-video", "--splat-format", "ply"]
    assert _run(*common, "--out", tmp_path / "a") == 0
    assert _run(*common, "--out", tmp_path / "b", "--no-merge") == 0
    assert _run(*common, "--out", tmp_path / "c", "--merge-scale", "64") == 0
    runs = {k: json.loads((tmp_path / k / "summary.json").read_text())["gaussians"] for k in "abc"}
    step = [s for s in runs["a"]["steps"] if s["name"] == "merge"]
    assert step and step[0]["params"] == {"merge_scale": 1.0} and step[0]["after"] <= step[0]["before"]
    assert not any(s["name"] == "merge" for s in runs["b"]["steps"])
    assert runs["c"]["final"] < runs["a"]["final"] <= runs["b"]["final"]
    assert len(read_ply(tmp_path / "c" / "gaussians.ply")) == runs["c"]["final"]
    assert _run(*common, "--out", tmp_path / "d", "--merge-scale", "0") == 2


def test_render_video_scale(tmp_path, capsys):
    _make_views(tmp_path / "v")
    out = tmp_path / "out"
    assert _run("--views", tmp_path / "v", "--model", "random:tiny-gs", "--out", out,
                "--frames", 2, "--video-scale", 0.5) == 0
    s = _check_outputs(out, ["img0", "img1", "img2"], frames=2)
    H, W = s["processed_size"]
    h, w = round(H * 0.5), round(W * 0.5)
    assert s["video"]["size"] == [w, h]
    with imageio.get_reader(out / "video.mp4") as r:  # the encoder pads odd sizes by one
        assert r.get_data(0).shape[:2] == (h + h % 2, w + w % 2)
    cams = json.loads((out / "video_cameras.json").read_text())
    full = tmp_path / "full"
    assert _run("--views", tmp_path / "v", "--model", "random:tiny-gs", "--out", full,
                "--frames", 2) == 0
    ref = json.loads((full / "video_cameras.json").read_text())
    assert (cams[0]["width"], cams[0]["height"]) == (w, h) and (ref[0]["width"], ref[0]["height"]) == (W, H)
    K, K1 = np.array(cams[1]["K"]), np.array(ref[1]["K"])
    assert np.allclose(K[0], K1[0] * w / W) and np.allclose(K[1], K1[1] * h / H)
    assert np.allclose(cams[1]["c2w"], ref[1]["c2w"])
    for bad in ("0", "-1", "5", "nan"):
        assert _run("--views", tmp_path / "v", "--model", "random:tiny-gs", "--out",
                    tmp_path / f"o{bad}", "--video-scale", bad) == 2
        err = capsys.readouterr().err
        assert "--video-scale: expected a scale in (0, 4]" in err and "Traceback" not in err
        assert not (tmp_path / f"o{bad}").exists()


def test_render_cpu_video_note(tmp_path, capsys, monkeypatch):
    """A slow CPU video says how to shorten it once, after its third frame; -q silences it."""
    import itertools

    import da3gs.apps.render as render_app

    _make_views(tmp_path / "v")
    clock = itertools.count(0.0, 100.0)  # every clock reading is 100 s later than the last
    monkeypatch.setattr(render_app.time, "perf_counter", lambda: float(next(clock)))
    assert main(["render", "--device", "cpu", "--process-res", "70", "--views", str(tmp_path / "v"),
                 "--model", "random:tiny-gs", "--out", str(tmp_path / "out"), "--frames", "6"]) == 0
    err = capsys.readouterr().err
    assert err.count("the video on the CPU takes about") == 1
    assert "(6 frames of" in err and "--video-scale 0.5, fewer --frames or --no-video" in err
    assert _run("--views", tmp_path / "v", "--model", "random:tiny-gs", "--out", tmp_path / "q",
                "--frames", "6") == 0
    assert "takes about" not in capsys.readouterr().err
