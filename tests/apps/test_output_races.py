"""Output folders under races, full disks and long names (issue 23, items 1-2).

The swap rule of :mod:`da3gs.apps.outputs`: the output is replaced only if it is as
``check_output_dir`` saw it at the start; anything that appeared or changed meanwhile is kept and
the run fails with one line.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from da3gs.apps.outputs import MARKER, OutputError, check_output_dir, write_output_dir
from da3gs.cli import main
from tests.apps.test_outputs import _views as photos


def _views(folder: Path) -> Path:
    return photos(folder, n=2, size=(64, 48))


def _render(*args) -> int:
    return main(["render", "--device", "cpu", "-q", "--process-res", "70", "--model",
                 "random:tiny-gs", "--no-video", "--no-colmap", *map(str, args)])


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def _leftovers(parent: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name not in keep)


def test_folder_appearing_during_the_run_is_kept(tmp_path):
    out = tmp_path / "race"
    check_output_dir(out, {}, overwrite=False)
    with pytest.raises(OutputError, match="appeared while da3gs test was running"):
        with write_output_dir(out, "test") as tmp:
            (tmp / "result.txt").write_text("ours")
            out.mkdir()
            (out / "thesis.txt").write_text("precious")
    assert (out / "thesis.txt").read_text() == "precious"
    assert _leftovers(tmp_path, {"race"}) == []


def test_empty_folder_appearing_is_not_replaced_either(tmp_path):
    out = tmp_path / "race"
    check_output_dir(out, {}, overwrite=False)
    with pytest.raises(OutputError, match="appeared"):
        with write_output_dir(out, "test") as tmp:
            (tmp / "result.txt").write_text("ours")
            out.mkdir()
    assert out.is_dir() and list(out.iterdir()) == []


def test_overwrite_refuses_a_folder_changed_during_the_run(tmp_path):
    out = tmp_path / "out"
    with write_output_dir(out, "test") as tmp:
        (tmp / "a.txt").write_text("first")
    check_output_dir(out, {}, overwrite=True)
    with pytest.raises(OutputError, match="changed while"):
        with write_output_dir(out, "test") as tmp:
            (tmp / "a.txt").write_text("second")
            (out / "thesis.txt").write_text("precious")
    assert (out / "thesis.txt").read_text() == "precious" and (out / "a.txt").read_text() == "first"
    assert _leftovers(tmp_path, {"out"}) == []


def test_overwrite_still_replaces_an_unchanged_da3gs_folder(tmp_path):
    out = tmp_path / "out"
    with write_output_dir(out, "test") as tmp:
        (tmp / "a.txt").write_text("first")
    check_output_dir(out, {}, overwrite=True)
    with write_output_dir(out, "test") as tmp:
        (tmp / "a.txt").write_text("second")
    assert (out / "a.txt").read_text() == "second"
    assert _leftovers(tmp_path, {"out"}) == []


def test_two_runs_into_one_out_first_finisher_wins(tmp_path):
    """Two runs started a second apart on an absent --out (separate processes: each has its own
    check): the first to finish is kept, the other fails instead of replacing it."""
    from da3gs.apps import outputs

    out = tmp_path / "out"
    check_output_dir(out, {}, overwrite=False)  # run A starts
    seen_a = outputs._SEEN.pop(out.resolve())
    check_output_dir(out, {}, overwrite=False)  # run B starts, and finishes first
    with write_output_dir(out, "B") as tmp:
        (tmp / "who.txt").write_text("B")
    outputs._SEEN[out.resolve()] = seen_a
    with pytest.raises(OutputError, match="appeared while da3gs A was running"):
        with write_output_dir(out, "A") as tmp:
            (tmp / "who.txt").write_text("A")
    assert (out / "who.txt").read_text() == "B"
    assert _leftovers(tmp_path, {"out"}) == []


def test_two_runs_with_overwrite_second_result_not_silently_replaced(tmp_path):
    """Two --overwrite runs over an old output started together: the first to finish replaces
    the old output; the other finds a changed folder and fails (exit 2 at the CLI)."""
    out = tmp_path / "out"
    with write_output_dir(out, "old") as tmp:
        (tmp / "who.txt").write_text("old")
    from da3gs.apps import outputs

    check_output_dir(out, {}, overwrite=True)
    seen_a = outputs._SEEN.pop(out.resolve())
    check_output_dir(out, {}, overwrite=True)  # run B
    with write_output_dir(out, "B") as tmp:
        (tmp / "who.txt").write_text("B")
    outputs._SEEN[out.resolve()] = seen_a  # run A finishes later
    with pytest.raises(OutputError, match="changed while da3gs A was running"):
        with write_output_dir(out, "A") as tmp:
            (tmp / "who.txt").write_text("A")
    assert (out / "who.txt").read_text() == "B"
    assert _leftovers(tmp_path, {"out"}) == []


def test_render_folder_appearing_mid_run_is_kept(tmp_path, capsys, monkeypatch):
    """The reported case: `render --out race &`, then `mkdir race; echo precious > race/thesis.txt`
    while it runs. The render fails with one line; thesis.txt stays."""
    import da3gs.apps.render as render

    out = tmp_path / "race"
    real = render._write_images_and_depth

    def meanwhile(*a, **k):
        out.mkdir()
        (out / "thesis.txt").write_text("precious")
        return real(*a, **k)

    monkeypatch.setattr(render, "_write_images_and_depth", meanwhile)
    assert _render("--views", _views(tmp_path / "v"), "--out", out) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "appeared" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert (out / "thesis.txt").read_text() == "precious" and sorted(os.listdir(out)) == ["thesis.txt"]
    assert _leftovers(tmp_path, {"race", "v"}) == []


def test_render_disk_full_after_inference_is_one_line(tmp_path, capsys, monkeypatch):
    import da3gs.apps.render as render

    def full(tmp, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "images" / "img0.png"))

    monkeypatch.setattr(render, "_write_images_and_depth", full)
    out = tmp_path / "out"
    assert _render("--views", _views(tmp_path / "v"), "--out", out) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "--out" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert _leftovers(tmp_path, {"v"}) == []


def test_render_long_out_name(tmp_path):
    """A 240-character --out is a valid name; our temporary siblings must fit NAME_MAX too."""
    out = tmp_path / ("r" * 240)
    assert _render("--views", _views(tmp_path / "v"), "--out", out) == 0
    assert (out / "summary.json").is_file() and (out / MARKER).is_file()


def test_out_name_too_long_refused_before_work(tmp_path, capsys, monkeypatch):
    import da3gs.models.loading

    monkeypatch.setattr(da3gs.models.loading, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    assert _render("--views", _views(tmp_path / "v"), "--out", tmp_path / ("r" * 256)) == 2
    assert "longer than 255 bytes" in capsys.readouterr().err


def test_outputs_get_umask_permissions(tmp_path):
    """safetensors (like tempfile.mkstemp) creates 0600 files; outputs follow the umask."""
    import torch
    from safetensors.torch import save_file

    from da3gs.io.atomic import atomic_dir, atomic_path

    want = 0o666 & ~_umask()
    with write_output_dir(tmp_path / "out", "test") as tmp:
        save_file({"a": torch.zeros(2)}, str(tmp / "model.safetensors"))
    with atomic_path(tmp_path / "w.safetensors") as tmp:
        save_file({"a": torch.zeros(2)}, str(tmp))
    with atomic_dir(tmp_path / "ckpt") as tmp:
        save_file({"a": torch.zeros(2)}, str(tmp / "model.safetensors"))
    for p in (tmp_path / "out" / "model.safetensors", tmp_path / "w.safetensors",
              tmp_path / "ckpt" / "model.safetensors"):
        assert stat.S_IMODE(p.stat().st_mode) == want, p


def test_export_official_model_is_not_private(tmp_path):
    assert main(["export", "--official", str(tmp_path / "off"), "--from", "random:small"]) == 0
    mode = stat.S_IMODE((tmp_path / "off" / "model.safetensors").stat().st_mode)
    assert mode == 0o666 & ~_umask()
    assert json.loads((tmp_path / "off" / "config.json").read_text())["model_name"]


def test_atomic_path_long_names(tmp_path):
    from da3gs.io.atomic import NAME_MAX, atomic_path, short_temp_name

    for n in (200, 250, 255):
        name = "x" * (n - 4) + ".spz"
        assert len(short_temp_name(name, "tmp-12345678", ".spz").encode()) <= NAME_MAX
        with atomic_path(tmp_path / name) as tmp:
            tmp.write_bytes(b"ok")
        assert (tmp_path / name).read_bytes() == b"ok"
