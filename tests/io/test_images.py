"""Tests for da3gs.io: reading, listing, official-style resizing and batch preparation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from da3gs.io import (
    InputError,
    imagenet_denormalize,
    imagenet_normalize,
    list_images,
    output_size,
    prepare_images,
    read_image,
)

METHODS = ["upper_bound_resize", "upper_bound_crop", "lower_bound_resize", "lower_bound_crop"]


def _rgb(w, h, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _K(w, h, fx=1200.0, fy=1100.0):
    return np.array([[fx, 0.0, w / 2.0], [0.0, fy, h / 2.0], [0.0, 0.0, 1.0]])


# ----------------------------------------------------------------------------- read_image
def test_exif_orientation_6_transposes(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW for display
    img.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3) and out.dtype == np.float32
    assert out[5, 10, 0] > 0.9 and out[35, 10, 0] < 0.1  # left half -> top half


def test_grayscale_to_three_channels(tmp_path):
    Image.fromarray(np.full((8, 9), 100, np.uint8), mode="L").save(tmp_path / "g.png")
    out, alpha = read_image(tmp_path / "g.png", return_alpha=True)
    assert out.shape == (8, 9, 3) and alpha is None
    np.testing.assert_allclose(out, 100 / 255, atol=1e-7)


def test_rgba_composited_on_background(tmp_path):
    Image.fromarray(np.tile(np.array([255, 0, 0, 128], np.uint8), (4, 5, 1)), "RGBA").save(tmp_path / "a.png")
    out, alpha = read_image(tmp_path / "a.png", return_alpha=True)
    a = 128 / 255
    np.testing.assert_allclose(out[0, 0], [1.0, 1 - a, 1 - a], atol=1e-6)
    np.testing.assert_allclose(alpha, a, atol=1e-7)
    black = read_image(tmp_path / "a.png", background=(0, 0, 0))
    np.testing.assert_allclose(black[0, 0], [a, 0, 0], atol=1e-6)
    with pytest.raises(InputError, match="background"):
        read_image(tmp_path / "a.png", background=(2, 0, 0))


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    img.putpixel((1, 1), 1)
    img.save(tmp_path / "p.png", transparency=0)
    out, alpha = read_image(tmp_path / "p.png", return_alpha=True)
    np.testing.assert_allclose(out[0, 0], [1, 1, 1], atol=1e-6)  # transparent -> white
    np.testing.assert_allclose(out[1, 1], np.array([200, 100, 50]) / 255, atol=1e-6)
    assert alpha[0, 0] == 0 and alpha[1, 1] == 1


def test_16bit_png_keeps_precision(tmp_path):
    vals = np.array([[0, 1000, 1001, 65535]], np.uint16)
    Image.fromarray(vals).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    np.testing.assert_allclose(out[0, :, 0], vals[0] / 65535, atol=1e-6)
    assert out[0, 2, 0] - out[0, 1, 0] == pytest.approx(1 / 65535, abs=1e-7)  # no 8-bit truncation
    # precision survives resizing in prepare_images (float path)
    Image.fromarray(np.full((300, 400), 1000, np.uint16)).save(tmp_path / "c.png")
    p = prepare_images([tmp_path / "c.png"])
    assert p.images.shape == (1, 3, 378, 504)
    np.testing.assert_allclose(p.images.numpy(), 1000 / 65535, atol=1e-6)


def test_cmyk_converted(tmp_path):
    Image.new("CMYK", (6, 5), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    out = read_image(tmp_path / "c.jpg")
    assert out.shape == (5, 6, 3) and out[2, 2, 0] > 0.9 and out[2, 2, 1] < 0.1


def test_truncated_jpeg_raises(tmp_path):
    path = tmp_path / "broken.jpg"
    Image.fromarray(_rgb(256, 256)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="broken.jpg"):
        read_image(path)


@pytest.mark.parametrize("name,content", [("notes.jpg", b"hello, not an image"), ("empty.png", b"")])
def test_non_image_raises(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=name):
        read_image(tmp_path / name)


def test_missing_and_directory_raise(tmp_path):
    with pytest.raises(InputError, match="nope.png: file not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="directory"):
        read_image(tmp_path)


# ----------------------------------------------------------------------------- list_images
def test_list_images_natural_sort(tmp_path):
    for n in ["img10.jpg", "img2.PNG", "img1.jpeg", "IMG3.TIF", "b.webp", "a.bmp", "x.tiff"]:
        (tmp_path / n).write_bytes(b"")
    (tmp_path / ".hidden.jpg").write_bytes(b"")
    (tmp_path / "readme.txt").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    images, skipped = list_images(tmp_path)
    assert [p.name for p in images] == [
        "a.bmp", "b.webp", "img1.jpeg", "img2.PNG", "IMG3.TIF", "img10.jpg", "x.tiff"
    ]
    assert [p.name for p in skipped] == ["readme.txt"]


def _no_heif(monkeypatch):
    import da3gs.io.images as images

    monkeypatch.setitem(images._HEIF_STATE, "ok", False)


def test_heic_without_pillow_heif_skipped_with_hint(tmp_path, monkeypatch):
    from da3gs.io.images import skipped_note

    _no_heif(monkeypatch)
    Image.fromarray(_rgb(32, 24)).save(tmp_path / "a.png")
    (tmp_path / "IMG_0001.HEIC").write_bytes(b"not read")
    images, skipped = list_images(tmp_path)
    assert [p.name for p in images] == ["a.png"] and [p.name for p in skipped] == ["IMG_0001.HEIC"]
    note = skipped_note(skipped, tmp_path)
    assert "IMG_0001.HEIC" in note and "pip install 'da3gs[heif]'" in note and "\n" not in note
    assert "da3gs[heif]" not in skipped_note([tmp_path / "Thumbs.db"], tmp_path)
    with pytest.raises(InputError, match=r"IMG_0001.HEIC: HEIC/HEIF photos need pillow-heif"):
        read_image(tmp_path / "IMG_0001.HEIC")
    (tmp_path / "a.png").unlink()
    with pytest.raises(InputError, match="no images found.*da3gs\\[heif\\]"):
        list_images(tmp_path)


def test_heic_read_with_pillow_heif(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    from da3gs.io.images import heif_available

    assert heif_available()
    yy, xx = np.mgrid[0:48, 0:64]
    arr = np.stack([xx * 4, yy * 5, 128 + 0 * xx], -1).astype(np.uint8)  # smooth: codec-friendly
    pillow_heif.from_pillow(Image.fromarray(arr)).save(str(tmp_path / "IMG_2.heic"), quality=-1)
    Image.fromarray(arr).save(tmp_path / "IMG_1.png")
    images, skipped = list_images(tmp_path)
    assert [p.name for p in images] == ["IMG_1.png", "IMG_2.heic"] and not skipped
    rgb = read_image(tmp_path / "IMG_2.heic")
    assert rgb.shape == (48, 64, 3)
    assert np.abs(rgb * 255 - arr).mean() < 4  # the pixels, up to HEVC/YCbCr rounding
    p = prepare_images(images, process_res=56)
    assert p.images.shape == (2, 3, 42, 56) and p.original_sizes == [(48, 64)] * 2


def test_list_images_errors(tmp_path):
    with pytest.raises(InputError, match="missing"):
        list_images(tmp_path / "missing")
    (tmp_path / "only.txt").write_bytes(b"")
    with pytest.raises(InputError, match="no images"):
        list_images(tmp_path)


# ----------------------------------------------------------------------------- resize semantics
@pytest.mark.parametrize(
    "wh,expected",
    [
        ((4032, 3024), [(504, 378), (504, 378), (672, 504), (672, 504)]),
        ((1008, 756), [(504, 378), (504, 378), (672, 504), (672, 504)]),
        ((504, 378), [(504, 378), (504, 378), (672, 504), (672, 504)]),
        ((640, 480), [(504, 378), (504, 378), (672, 504), (672, 504)]),
        # 1208x680 -> 504x284 (upper) / 895x504 (lower): 284 rounds to 280; 895 rounds to 896, floors to 882
        ((1208, 680), [(504, 280), (504, 280), (896, 504), (882, 504)]),
        ((680, 1208), [(280, 504), (280, 504), (504, 896), (504, 882)]),
    ],
)
def test_output_sizes(wh, expected):
    w, h = wh
    assert [output_size(w, h, 504, m) for m in METHODS] == expected
    for m, (ew, eh) in zip(METHODS, expected):
        p = prepare_images([np.zeros((h, w, 3), np.uint8)], method=m)
        assert p.images.shape == (1, 3, eh, ew) and p.original_sizes == [(h, w)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("wh", [(1208, 680), (640, 480), (300, 200)])
def test_intrinsics_consistent_with_pixel_mapping(method, wh):
    """A 3D point projected with the new K lands at u * sx - left (pixel-edge convention)."""
    w, h = wh
    K = _K(w, h)
    K[0, 1] = 3.0  # skew is scaled with row 0 as well
    p = prepare_images([_rgb(w, h)], K=K[None], method=method)
    X = np.array([[0.3, -0.2, 2.0], [-1.0, 0.5, 4.0]])
    uv = (X @ K.T)[:, :2] / X[:, 2:]
    uv_new = (X @ p.K[0].numpy().T)[:, :2] / X[:, 2:]
    (sx, sy), (left, top) = p.resize_scale[0], p.crop_offsets[0]
    H, W = p.images.shape[-2:]
    if method.endswith("resize"):
        assert (sx, sy) == (W / w, H / h) and (left, top) == (0, 0)
    else:  # centred floor-crop of the boundary-resized image
        assert round(sx * w) - W - 2 * left in (0, 1) and round(sy * h) - H - 2 * top in (0, 1)
    np.testing.assert_allclose(uv_new[:, 0], uv[:, 0] * sx - left, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(uv_new[:, 1], uv[:, 1] * sy - top, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(p.to_original(uv_new, 0), uv, atol=1e-9)


def test_pixel_content_follows_edge_convention():
    """A 2x2 block at pixels 100..101 lands on pixel 50 after a 0.5 downscale (u' = u * s)."""
    img = np.zeros((756, 1008, 3), np.uint8)
    img[50:52, 100:102] = 255
    p = prepare_images([img])
    assert p.resize_scale[0] == (0.5, 0.5)
    y, x = np.unravel_index(int(p.images[0, 0].argmax()), p.images.shape[-2:])
    assert (x, y) == (50, 25) and p.images[0, 0, 25, 50] == pytest.approx(1.0)


def test_mixed_sizes_official_crop_to_smallest(caplog):
    K = np.stack([_K(480, 640), _K(640, 480)])  # portrait -> 378x504, landscape -> 504x378
    with caplog.at_level("WARNING", logger="da3gs"):
        p = prepare_images([_rgb(480, 640), _rgb(640, 480)], K=K, mixed_sizes="crop_to_smallest")
    assert "centre-cropped 2 of 2 views" in caplog.text
    assert p.images.shape == (2, 3, 378, 378)
    assert p.crop_offsets == [(0, 63), (63, 0)]
    s = 504 / 640
    np.testing.assert_allclose(p.K[0, :2, 2].numpy(), [240 * s, 320 * s - 63])
    np.testing.assert_allclose(p.K[1, :2, 2].numpy(), [320 * s - 63, 240 * s])
    np.testing.assert_allclose(p.K[:, 0, 0].numpy(), 1200 * s)


def _project(K, X):
    uvw = np.asarray(K, np.float64) @ X
    return uvw[:2] / uvw[2]


def test_mixed_sizes_cover_keeps_most_of_each_image(caplog):
    """504x378 + 640x480 + 300x400: the common size is 504x378 (not the 378x378 of the
    official rule, nor tiny); K and K_original stay exact (a known 3D point projects alike)."""
    from da3gs.types import Prediction

    sizes = [(504, 378), (640, 480), (300, 400)]
    K_in = np.stack([_K(w, h, fx=0.9 * w, fy=0.95 * w) for w, h in sizes])
    imgs = [_rgb(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    ref = prepare_images(imgs[:1], K=K_in[:1])  # the first view alone: untouched by the mix
    with caplog.at_level("WARNING", logger="da3gs"):
        p = prepare_images(imgs, K=K_in)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "1 of 3 views" in lines[0] and "504x378" in lines[0] and "56%" in lines[0]
    assert p.images.shape == (3, 3, 378, 504)
    assert torch.equal(p.images[0], ref.images[0])  # same-size views are bit-identical
    assert p.resize_scale[1] == (0.7875, 0.7875) and p.crop_offsets[1] == (0, 0)
    assert p.resize_scale[2] == (1.68, 1.68) and p.crop_offsets[2] == (0, (672 - 378) // 2)
    X = np.array([0.1, -0.05, 2.0])
    for i in range(3):  # the point lands where the pixel mapping says it should
        uv = _project(K_in[i], X)
        (sx, sy), (left, top) = p.resize_scale[i], p.crop_offsets[i]
        np.testing.assert_allclose(_project(p.K[i].numpy(), X), [uv[0] * sx - left, uv[1] * sy - top])
        np.testing.assert_allclose(p.to_original(_project(p.K[i].numpy(), X), i), uv)
    pred = Prediction(images=p.images, depth=torch.ones(3, 378, 504), K=p.K.float(),
                      resize_scale=p.resize_scale, crop_offsets=p.crop_offsets)
    Ko = pred.K_original().numpy()
    for i in range(3):
        np.testing.assert_allclose(_project(Ko[i], X), _project(K_in[i], X), rtol=1e-5)


def test_mixed_sizes_cover_content_is_the_centre():
    """The re-fitted view shows its own centre: a bright dot at the centre stays at the centre."""
    a = np.zeros((400, 300, 3), np.uint8)
    a[199:201, 149:151] = 255
    p = prepare_images([_rgb(504, 378), a])
    y, x = np.unravel_index(int(p.images[1, 0].argmax()), p.images.shape[-2:])
    assert abs(x - 252) <= 2 and abs(y - 189) <= 2


def test_mixed_sizes_same_aspect_nothing_cropped(caplog):
    with caplog.at_level("WARNING", logger="da3gs"):
        p = prepare_images([_rgb(640, 480), _rgb(1208, 680)])
    assert p.images.shape == (2, 3, 378, 504)
    assert "nothing cropped" not in caplog.text or p.crop_offsets[1] == (0, 0)
    assert len(caplog.records) == 1


def test_mixed_sizes_bad_mode():
    with pytest.raises(InputError, match="mixed_sizes"):
        prepare_images([_rgb(64, 48)], mixed_sizes="pad")


def test_same_sizes_no_warning(caplog):
    with warnings.catch_warnings(), caplog.at_level("WARNING", logger="da3gs"):
        warnings.simplefilter("error")
        prepare_images([_rgb(640, 480), _rgb(640, 480, seed=1)])
    assert not caplog.records


# ----------------------------------------------------------------------------- prepare_images inputs
def test_tensor_passthrough_and_resize():
    x = torch.rand(2, 3, 280, 504)
    K = np.stack([_K(504, 280)] * 2)
    p = prepare_images(x, K=K)
    assert torch.equal(p.images, x) and p.resize_scale == [(1.0, 1.0)] * 2
    np.testing.assert_array_equal(p.K.numpy(), K)
    assert p.K.dtype == torch.float64 and p.paths is None
    q = prepare_images(torch.rand(1, 3, 300, 400))  # not multiples of 14 -> official pipeline
    assert q.images.shape == (1, 3, 378, 504) and q.original_sizes == [(300, 400)]
    r = prepare_images(torch.rand(1, 3, 560, 700))  # multiples of 14 but larger than 504
    assert r.images.shape == (1, 3, 406, 504)


def test_paths_pil_and_float_arrays_agree(tmp_path):
    arr = _rgb(640, 480)
    Image.fromarray(arr).save(tmp_path / "a.png")
    p_path = prepare_images([str(tmp_path / "a.png")])
    p_pil = prepare_images([Image.fromarray(arr)])
    p_f = prepare_images([arr.astype(np.float32) / 255])
    assert p_path.paths == [tmp_path / "a.png"] and p_pil.paths is None
    assert p_path.images.dtype == torch.float32 and 0 <= p_path.images.min() and p_path.images.max() <= 1
    torch.testing.assert_close(p_path.images, p_pil.images)
    assert (p_path.images - p_f.images).abs().max() < 2 / 255


def test_validation_errors():
    img = _rgb(56, 56)
    with pytest.raises(InputError, match="no images given"):
        prepare_images([])
    with pytest.raises(InputError, match=r"K: .*\(V, 3, 3\) with V=2"):
        prepare_images([img, img], K=np.eye(3)[None])
    with pytest.raises(InputError, match=r"K: .*V=1"):
        prepare_images([img], K=np.eye(3))
    with pytest.raises(InputError, match="K: .*non-finite"):
        prepare_images([img], K=np.full((1, 3, 3), np.nan))
    with pytest.raises(InputError, match="images"):
        prepare_images(torch.rand(3, 56, 56))
    with pytest.raises(InputError, match="images"):
        prepare_images(torch.rand(1, 4, 56, 56))
    with pytest.raises(InputError, match="images"):
        prepare_images(torch.rand(1, 3, 56, 56) * 2)
    with pytest.raises(InputError, match="images\\[0\\]"):
        prepare_images([np.full((56, 56, 3), 1.5, np.float32)])
    with pytest.raises(InputError, match="method"):
        prepare_images([img], method="bilinear")
    with pytest.raises(InputError, match="too small"):
        prepare_images([_rgb(2000, 10)])
    prepare_images(torch.rand(1, 3, 56, 56) * (1 + 5e-4))  # within tolerance


def test_imagenet_normalize_roundtrip():
    x = torch.rand(2, 4, 3, 14, 28)
    y = imagenet_normalize(x)
    torch.testing.assert_close(y[0, 0, 1], (x[0, 0, 1] - 0.456) / 0.224)
    torch.testing.assert_close(imagenet_denormalize(y), x)


# ----------------------------------------------------------------------------- OpenCV kernels
def test_opencv_imported_lazily_and_missing_is_one_clear_error(monkeypatch):
    import subprocess
    import sys

    code = "import sys, da3gs, da3gs.io, da3gs.models; assert 'cv2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    from da3gs.errors import Da3gsError

    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError
    with pytest.raises(Da3gsError, match="pip install opencv-python-headless"):
        prepare_images([_rgb(100, 80)])
    x = torch.rand(1, 3, 56, 70)  # nothing to resize: no OpenCV needed
    assert torch.equal(prepare_images(x).images, x)


def test_kernels_are_opencv_area_and_cubic():
    cv2 = pytest.importorskip("cv2")
    img = _rgb(480, 270, seed=4)  # 270x480 -> 280x504: cubic enlarge, then area 284 -> 280
    p = prepare_images([img])
    step1 = cv2.resize(img, (504, 284), interpolation=cv2.INTER_CUBIC)
    step2 = cv2.resize(step1, (504, 280), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal((p.images[0].permute(1, 2, 0).numpy() * 255).round(), step2)
    q = prepare_images([_rgb(1008, 756, seed=5)])
    ref = cv2.resize(_rgb(1008, 756, seed=5), (504, 378), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal((q.images[0].permute(1, 2, 0).numpy() * 255).round(), ref)


def test_prepare_images_drops_alpha_by_default(tmp_path):
    rgba = np.dstack([_rgb(56, 42, seed=6), np.zeros((42, 56), np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    for item in (tmp_path / "a.png", rgba):
        p = prepare_images([item])  # 56x42 -> 504x378: alpha ignored, stored colours kept
        ref = prepare_images([rgba[..., :3]])
        assert torch.equal(p.images, ref.images)
        white = prepare_images([item], background=(1, 1, 1))  # opt-in compositing
        torch.testing.assert_close(white.images, torch.ones_like(white.images), rtol=0, atol=1e-5)


def test_camera_files_among_images_are_not_reported_as_skipped(tmp_path):
    """The demo's own example holds transforms.json; a "skipped ... transforms.json" note read as
    an error. Recognised camera files are neither images nor skipped; other files still are."""
    from PIL import Image

    from da3gs.io.images import list_images

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    for n in ("transforms.json", "transforms_train.json", "cameras.json", "poses_bounds.npy",
              "cameras.txt", "images.bin", "points3D.txt", "notes.txt"):
        (tmp_path / n).write_bytes(b"x")
    images, skipped = list_images(tmp_path)
    assert [p.name for p in images] == ["a.png"] and [p.name for p in skipped] == ["notes.txt"]
