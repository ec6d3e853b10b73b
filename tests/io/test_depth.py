"""Depth maps: exact .npy, 16-bit PNG with its scale, turbo preview."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from da3gs.errors import Da3gsError
from da3gs.io import colorize_depth, load_depth, load_depth_png, save_depth, turbo_colormap


def _depth(h=24, w=32, seed=0):
    return (np.random.default_rng(seed).random((h, w)) * 9 + 0.5).astype(np.float32)


def test_save_and_load(tmp_path):
    d = _depth()
    d[0, 0], d[1, 1], d[2, 2] = 0.0, np.nan, -1.0
    conf = np.ones_like(d) * 2
    paths = save_depth(tmp_path / "depth", "frame_0001", torch.from_numpy(d), conf=conf)
    assert {p.name for p in (tmp_path / "depth").iterdir()} == {
        "frame_0001.npy", "frame_0001.png", "frame_0001_vis.png", "frame_0001_conf.npy"}
    npy = np.load(paths["npy"])
    assert npy.dtype == np.float32
    np.testing.assert_array_equal(npy, d)  # exact, NaN included
    np.testing.assert_array_equal(load_depth(paths["npy"]), d)
    np.testing.assert_array_equal(np.load(paths["conf"]), conf)

    with Image.open(paths["png"]) as im:
        assert im.mode.startswith("I") and np.array(im).max() == 65535
        scale = float(im.text["depth_scale"])
    assert scale == pytest.approx(float(np.nanmax(d)) / 65535)
    back = load_depth_png(paths["png"])
    valid = np.isfinite(d) & (d > 0)
    assert back.dtype == np.float32 and back.shape == d.shape
    assert np.abs(back[valid] - d[valid]).max() <= scale / 2 + 1e-6
    assert np.all(back[~valid] == 0)
    np.testing.assert_array_equal(load_depth(paths["png"]), back)

    vis = np.array(Image.open(paths["vis"]))
    assert vis.shape == (24, 32, 3) and vis.dtype == np.uint8
    assert np.all(vis[0, 0] == 0) and np.all(vis[1, 1] == 0)


def test_png_without_scale(tmp_path):
    Image.fromarray(np.full((4, 5), 1500, np.uint16)).save(tmp_path / "mm.png")
    with pytest.raises(Da3gsError, match="depth_scale"):
        load_depth_png(tmp_path / "mm.png")
    np.testing.assert_allclose(load_depth_png(tmp_path / "mm.png", scale=0.001), 1.5)


def test_colorize_near_red_far_blue():
    d = np.tile(np.linspace(1.0, 10.0, 50, dtype=np.float32), (4, 1))
    vis = colorize_depth(d)
    near, far = vis[0, 0].astype(int), vis[0, 30].astype(int)  # depth ~6.5: inverse depth ~0.1 normalised
    assert near[0] > near[2] and far[2] > far[0]
    ramp = turbo_colormap(np.linspace(0.1, 0.9, 9)).astype(int)
    assert ramp[0, 2] > ramp[0, 0] and ramp[-1, 0] > ramp[-1, 2]  # blue -> red
    assert turbo_colormap(np.array([0.0, 0.5, 1.0])).shape == (3, 3)
    assert np.all(colorize_depth(np.zeros((3, 3))) == 0)


def test_bad_inputs(tmp_path):
    with pytest.raises(Da3gsError, match="depth"):
        save_depth(tmp_path, "x", np.zeros((2, 3, 4)))
    with pytest.raises(Da3gsError, match="conf"):
        save_depth(tmp_path, "x", np.ones((2, 3)), conf=np.ones((3, 2)))
    with pytest.raises(Da3gsError, match="no such file"):
        load_depth_png(tmp_path / "nope.png")


def test_png_level_changes_size_not_content(tmp_path):
    d = np.cumsum(np.random.default_rng(0).random((40, 60)), axis=1).astype(np.float32) + 1
    fast = save_depth(tmp_path / "l0", "a", d, png_level=0)
    small = save_depth(tmp_path / "l9", "a", d, png_level=9)
    for kind in ("png", "vis"):
        assert fast[kind].stat().st_size > small[kind].stat().st_size
        np.testing.assert_array_equal(np.array(Image.open(fast[kind])), np.array(Image.open(small[kind])))
    np.testing.assert_array_equal(load_depth_png(fast["png"]), load_depth_png(small["png"]))


def test_turbo_colormap_is_the_polynomial_fit():
    """The elementwise (Horner) evaluation equals the fit's power sum, 0 and 1 clipped."""
    from da3gs.io import depth as dm

    x = np.linspace(-0.2, 1.2, 100_001)
    xc = np.clip(x, 0, 1)
    ref = np.stack([sum(c * xc ** i for i, c in enumerate(c4 + c2))
                    for c4, c2 in ((dm._TURBO_R4, dm._TURBO_R2), (dm._TURBO_G4, dm._TURBO_G2),
                                   (dm._TURBO_B4, dm._TURBO_B2))], -1)
    ref = np.round(np.clip(ref, 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(turbo_colormap(x), ref)
    assert np.array_equal(turbo_colormap(x[:100_000].reshape(1000, 100)), ref[:100_000].reshape(1000, 100, 3))
