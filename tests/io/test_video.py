"""Video writing (MP4 via imageio-ffmpeg, GIF fallback) and side-by-side frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import da3gs.io.video as video
from da3gs.errors import Da3gsError
from da3gs.io import ffmpeg_available, side_by_side, write_video

needs_ffmpeg = pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg (imageio-ffmpeg) not available")


def _frames(n=10, h=49, w=65, as_float=False):
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[:, : (i + 1) * w // n] = (200, 50, 20)
        yield f.astype(np.float32) / 255 if as_float else f


@needs_ffmpeg
@pytest.mark.parametrize("as_float", [False, True])
def test_mp4_round_trip(tmp_path, as_float):
    import imageio.v2 as iio

    out = write_video(tmp_path / "v.mp4", _frames(as_float=as_float), fps=10)
    assert out == tmp_path / "v.mp4" and [p.name for p in tmp_path.iterdir()] == ["v.mp4"]
    reader = iio.get_reader(out, format="FFMPEG")
    frames = [f for f in reader]
    reader.close()
    assert len(frames) == 10
    assert frames[0].shape == (50, 66, 3)  # padded to even sizes
    assert abs(int(frames[-1][20, 30, 0]) - 200) < 12 and int(frames[0][20, 60, 0]) < 12


@needs_ffmpeg
def test_bad_frame_leaves_nothing(tmp_path):
    def frames():
        yield np.zeros((48, 64, 3), np.uint8)
        yield np.zeros((48, 64, 3), np.uint8)
        yield np.zeros((40, 64, 3), np.uint8)

    with pytest.raises(Da3gsError, match="frame 2"):
        write_video(tmp_path / "v.mp4", frames())
    with pytest.raises(Da3gsError, match="no frames"):
        write_video(tmp_path / "v.mp4", [])
    assert list(tmp_path.iterdir()) == []


def test_no_ffmpeg_error_and_gif_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "ffmpeg_available", lambda: False)
    with pytest.raises(Da3gsError, match="ffmpeg"):
        write_video(tmp_path / "v.mp4", _frames())
    assert list(tmp_path.iterdir()) == []
    out = write_video(tmp_path / "v.mp4", _frames(n=4), fps=5, fallback_gif=True)
    assert out == tmp_path / "v.gif"
    with Image.open(out) as im:
        assert im.n_frames == 4 and im.size == (65, 49)


def test_gif_path(tmp_path):
    out = write_video(tmp_path / "a.gif", [torch.rand(8, 9, 3) for _ in range(3)])
    with Image.open(out) as im:
        assert im.n_frames == 3


def test_side_by_side():
    rgb = np.zeros((20, 30, 3), np.uint8)
    depth = np.linspace(1, 5, 10 * 12, dtype=np.float32).reshape(10, 12)
    out = side_by_side(rgb, depth)
    assert out.shape == (20, 30 + 24, 3) and out.dtype == np.uint8
    out = side_by_side(torch.rand(20, 30, 3), np.full((20, 16, 3), 255, np.uint8))
    assert out.shape == (20, 46, 3) and np.all(out[:, 30:] == 255)
