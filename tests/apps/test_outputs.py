"""Output folders: never a user's file lost (da3gs.apps.outputs, used by render and eval)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from da3gs.models import loading
from da3gs.cli import main

ROOT = Path(__file__).resolve().parents[2]
MARKER = ".da3gs-output.json"


def _views(folder: Path, n: int = 3, size=(40, 30)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
            folder / f"img{i}.png")
    return folder


def _transforms(path: Path, n: int = 3, size=(40, 30)) -> Path:
    frames = []
    for i in range(n):
        c2w = np.eye(4)
        c2w[0, 3] = 0.3 * i
        frames.append({"file_path": f"img{i}.png", "transform_matrix": c2w.tolist()})
    path.write_text(json.dumps({"fl_x": 40.0, "fl_y": 40.0, "cx": size[0] / 2, "cy": size[1] / 2,
                                "w": size[0], "h": size[1], "frames": frames}))
    return path


def _render(*args) -> int:
    return main(["render", "--device", "cpu", "-q", "--process-res", "42", "--no-video",
                 "--model", "random:tiny-gs", *map(str, args)])


def _render_ckpt(*args) -> int:
    return main(["render", "--device", "cpu", "-q", "--process-res", "42", "--no-video",
                 *map(str, args)])


@pytest.fixture
def no_model(monkeypatch):
    """Fail if a model is loaded: output checks must come before any expensive work."""
    def boom(*a, **k):
        raise AssertionError("model loaded before the output folder was checked")

    monkeypatch.setattr(loading, "load_model", boom)


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _refused(capsys, *words):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


# ----------------------------------------------------------------- inputs inside/around --out


def test_render_out_contains_views_is_refused(tmp_path, capsys, no_model):
    shoot = tmp_path / "shoot"
    _views(shoot / "photos")
    (shoot / "notes.txt").write_text("mine")
    before = _snapshot(shoot)
    assert _render("--views", shoot / "photos", "--out", shoot, "--overwrite") == 2
    _refused(capsys, "--out", "--views", "contains")
    assert _snapshot(shoot) == before


def test_render_out_equals_or_inside_views_is_refused(tmp_path, capsys, no_model):
    v = _views(tmp_path / "v")
    before = _snapshot(v)
    assert _render("--views", v, "--out", v, "--overwrite") == 2
    _refused(capsys, "--out", "--views")
    assert _render("--views", v, "--out", v / "result") == 2
    _refused(capsys, "--out", "--views", "inside")
    assert _snapshot(v) == before


def test_render_out_holding_poses_file_is_refused(tmp_path, capsys, no_model):
    v = _views(tmp_path / "v")
    scene = tmp_path / "scene"
    scene.mkdir()
    poses = _transforms(scene / "transforms.json")
    (scene / "keep.txt").write_text("mine")
    before = _snapshot(scene)
    assert _render("--views", v, "--poses", poses, "--out", scene, "--overwrite") == 2
    _refused(capsys, "--out", "--poses", "contains")
    assert _snapshot(scene) == before


def test_render_out_is_poses_folder_is_refused(tmp_path, capsys, no_model):
    v = _views(tmp_path / "v")
    sparse = tmp_path / "sparse" / "0"
    sparse.mkdir(parents=True)
    (sparse / "cameras.txt").write_text("# none\n")
    before = _snapshot(tmp_path / "sparse")
    assert _render("--views", v, "--poses", sparse, "--out", sparse, "--overwrite") == 2
    _refused(capsys, "--out", "--poses")
    assert _render("--views", v, "--poses", sparse, "--out", sparse / "x") == 2
    _refused(capsys, "--out", "--poses", "inside")
    assert _snapshot(tmp_path / "sparse") == before


def test_render_out_and_checkpoint(tmp_path, capsys, no_model):
    v = _views(tmp_path / "v")
    ck = tmp_path / "ckpt"
    ck.mkdir()
    (ck / "model.safetensors").write_bytes(b"weights")
    (ck / "config.json").write_text("{}")
    before = _snapshot(ck)
    assert _render_ckpt("--views", v, "--checkpoint", ck / "model.safetensors", "--out", ck,
                        "--overwrite") == 2
    _refused(capsys, "--out", "--checkpoint", "contains")
    assert _render_ckpt("--views", v, "--checkpoint", ck, "--out", ck, "--overwrite") == 2
    _refused(capsys, "--out", "--checkpoint")
    assert _render_ckpt("--views", v, "--checkpoint", ck, "--out", ck / "sub") == 2
    _refused(capsys, "--out", "--checkpoint", "inside")
    assert _render_ckpt("--views", v, "--checkpoint", ck / "model.safetensors",
                        "--out", ck / "model.safetensors", "--overwrite") == 2
    _refused(capsys, "--out", "--checkpoint")
    assert _snapshot(ck) == before


def test_eval_out_and_scene(tmp_path, capsys, no_model):
    scene = _views(tmp_path / "scene")
    _transforms(scene / "transforms.json")
    before = _snapshot(scene)
    for out in (tmp_path, scene, scene / "eval"):
        assert main(["eval", "pose", "--scene", str(scene), "--model", "random:tiny-gs",
                     "--device", "cpu", "--out", str(out), "--overwrite"]) == 2
        _refused(capsys, "--out", "--scene")
    # the scene given as its camera file: its folder is protected too
    assert main(["eval", "pose", "--scene", str(scene / "transforms.json"), "--model",
                 "random:tiny-gs", "--device", "cpu", "--out", str(scene), "--overwrite"]) == 2
    _refused(capsys, "--out", "--scene")
    ck = tmp_path / "ck.safetensors"
    ck.write_bytes(b"x")
    assert main(["eval", "pose", "--scene", str(scene), "--checkpoint", str(ck), "--device",
                 "cpu", "--out", str(ck), "--overwrite"]) == 2
    _refused(capsys, "--out", "--checkpoint")
    assert _snapshot(scene) == before and ck.read_bytes() == b"x"


# ----------------------------------------------------------------- --overwrite


def test_overwrite_refuses_folder_not_written_by_da3gs(tmp_path, capsys, no_model):
    v = _views(tmp_path / "v")
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert _render("--views", v, "--out", out, "--overwrite") == 2
    _refused(capsys, "--overwrite", "not a folder that da3gs wrote")
    assert (out / "thesis.tex").read_text() == "years of work"
    f = tmp_path / "file.txt"
    f.write_text("mine")
    assert _render("--views", v, "--out", f, "--overwrite") == 2
    _refused(capsys, "is a file")
    assert f.read_text() == "mine"


def test_overwrite_replaces_da3gs_output_only_when_clean(tmp_path, capsys):
    v = _views(tmp_path / "v")
    out = tmp_path / "out"
    assert _render("--views", v, "--out", out) == 0
    from da3gs.apps.outputs import is_da3gs_output

    assert is_da3gs_output(out)
    m = json.loads((out / MARKER).read_text())
    assert m["command"] == "render" and "summary.json" in m["files"]
    assert _render("--views", v, "--out", out) == 2
    _refused(capsys, "already exists", "--overwrite")
    assert _render("--views", v, "--out", out, "--overwrite") == 0
    assert (out / "gaussians.ply").is_file() and is_da3gs_output(out)
    (out / "my_notes.txt").write_text("added by the user")
    assert _render("--views", v, "--out", out, "--overwrite") == 2
    _refused(capsys, "my_notes.txt", "did not write")
    assert (out / "my_notes.txt").is_file()
    # an empty folder holds nothing to lose
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _render("--views", v, "--out", empty, "--overwrite") == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------- --out checked up front


def test_out_parent_is_a_file(tmp_path, capsys, no_model):
    v = _views(tmp_path / "v")
    (tmp_path / "afile").write_text("x")
    assert _render("--views", v, "--out", tmp_path / "afile" / "out") == 2
    _refused(capsys, "--out", "is a file, not a folder")
    assert main(["eval", "pose", "--scene", str(_transforms(v / "transforms.json")), "--model",
                 "random:tiny-gs", "--out", str(tmp_path / "afile" / "o")]) == 2
    _refused(capsys, "--out", "is a file, not a folder")


def test_out_dot_is_refused(tmp_path, capsys, no_model, monkeypatch):
    v = _views(tmp_path / "v")
    work = tmp_path / "work"
    work.mkdir()
    (work / "file.txt").write_text("mine")
    monkeypatch.chdir(work)
    for extra in ([], ["--overwrite"]):
        assert _render("--views", v, "--out", ".", *extra) == 2
        _refused(capsys, "--out .", "current folder")
    assert (work / "file.txt").read_text() == "mine"


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux /sys (unwritable even as root)")
def test_unwritable_out(tmp_path, capsys, no_model):
    v = _views(tmp_path / "v")
    assert _render("--views", v, "--out", "/sys/kernel/da3gs_out") == 2
    _refused(capsys, "--out /sys/kernel/da3gs_out", "cannot write")


# ----------------------------------------------------------------- signals and stale temporaries


_SIGTERM_SCRIPT = r"""
import os, signal, sys
import da3gs.apps.render as r
real = r._write_cameras
def killed(tmp, *a, **k):
    real(tmp, *a, **k)
    assert any(tmp.iterdir())
    os.kill(os.getpid(), signal.SIGTERM)
    raise SystemExit("SIGTERM was not delivered")
r._write_cameras = killed
from da3gs.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_removes_temporary(tmp_path):
    v = _views(tmp_path / "v")
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-c", _SIGTERM_SCRIPT, "render", "--device", "cpu", "-q",
                        "--process-res", "42", "--no-video", "--model", "random:tiny-gs",
                        "--views", str(v), "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 128 + 15, p.stderr
    assert "terminated" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["v"]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_removed_only_when_provably_ours(tmp_path):
    import socket

    dead = _dead_pid()

    def temp(name: str, pid: int, marker: bool, host=None) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "big.bin").write_bytes(b"0" * 100)
        if marker:
            (d / MARKER).write_text(json.dumps({"signature": "da3gs output folder", "pid": pid,
                                                "host": host or socket.gethostname()}))
        return d

    stale = temp(f".out.da3gs-tmp-{dead}-0123abcd", dead, True)
    stale_old = temp(f".out.da3gs-old-{dead}-0123abce", 1234567, True)
    live = temp(f".out.da3gs-tmp-{os.getpid()}-0123abcf", os.getpid(), True)
    unmarked = temp(f".out.da3gs-tmp-{dead}-0123abd0", dead, False)
    other_host = temp(f".out.da3gs-tmp-{dead}-0123abd1", dead, True, host="elsewhere")
    users = temp(".photos-backup", dead, True)
    from da3gs.apps.outputs import remove_stale_temporaries

    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([stale, stale_old])
    assert not stale.exists() and not stale_old.exists()
    for keep in (live, unmarked, other_host, users):
        assert keep.is_dir()


def test_render_removes_stale_temporaries(tmp_path):
    import socket

    v = _views(tmp_path / "v")
    dead = _dead_pid()
    stale = tmp_path / f".out.da3gs-tmp-{dead}-89abcdef"
    stale.mkdir()
    (stale / MARKER).write_text(json.dumps({"signature": "da3gs output folder", "pid": dead,
                                            "host": socket.gethostname()}))
    assert _render("--views", v, "--out", tmp_path / "out") == 0
    assert not stale.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_writer_pool_writes_and_times(tmp_path):
    from da3gs.apps.outputs import WriterPool, write_output_dir

    with write_output_dir(tmp_path / "out", "test") as tmp, WriterPool(workers=2) as pool:
        for i in range(6):
            pool.submit("file", (tmp / f"{i}.txt").write_text, str(i))
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != MARKER) == [f"{i}.txt" for i in range(6)]
    assert set(pool.times) == {"file"} and pool.times["file"] >= 0
    marker = json.loads((tmp_path / "out" / MARKER).read_text())
    assert sorted(marker["files"]) == [f"{i}.txt" for i in range(6)]  # all written before the marker


def test_writer_pool_error_propagates_after_running_writes_finish(tmp_path):
    """The first failed write is raised when the pool is left; a write that was still running
    finished first, so the temporary folder is removed with nothing writing into it."""
    import threading

    from da3gs.apps.outputs import WriterPool, write_output_dir

    started, finished = threading.Event(), []

    def slow(path):
        started.set()
        threading.Event().wait(0.3)
        path.write_text("x")
        finished.append(path)

    def fail():
        started.wait(5)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with write_output_dir(tmp_path / "out", "test") as tmp, WriterPool(workers=2) as pool:
            pool.submit("slow", slow, tmp / "slow.txt")
            pool.submit("fail", fail)
    assert finished and not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_pool_body_exception_cancels_queued_writes(tmp_path):
    """An exception in the body (Ctrl-C here) drops the queued writes and waits for the running
    one before the temporary folder goes."""
    import threading

    from da3gs.apps.outputs import WriterPool, write_output_dir

    gate, ran = threading.Event(), []
    with pytest.raises(KeyboardInterrupt):
        with write_output_dir(tmp_path / "out", "test"), WriterPool(workers=1) as pool:
            pool.submit("block", lambda: (gate.wait(5), ran.append("block")))
            for i in range(5):
                pool.submit("queued", ran.append, i)
            threading.Timer(0.2, gate.set).start()  # the running write ends after the cancel
            raise KeyboardInterrupt
    assert ran == ["block"]
    assert list(tmp_path.iterdir()) == []
