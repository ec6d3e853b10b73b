"""From image files to outputs: our preprocessing and network vs the official package.

Both packages read the same files through their own input pipelines (ours:
``da3gs.io.prepare_images`` / ``Da3gsModel.infer``; official: ``InputProcessor``, the
preprocessor that ``DepthAnything3.inference`` calls). The processed, ImageNet-normalised
tensors must be bit-identical (uint8 OpenCV resizes, same rounding of sizes, same crops), the
adjusted intrinsics equal, and the network outputs (random ``small`` weights, fp32, CPU) within
relative error 1e-4.

Deliberate differences, compared against the official pipeline fed the image we mean:
  * EXIF orientation: we turn photos upright, the official reader does not -> official fed the
    upright PIL image.
  * 16-bit grayscale: we keep 16 bits (v / 65535, resized in float32), the official reader clips
    values above 255 -> official fed the 8-bit rounding ``round(v / 257)``; within 1 grey level
    for one shrink, 1.6 for enlarge + shrink (rounding of the input and of each official uint8
    resize; measured 1.44 max, 0.33 mean).
  * RGBA / LA / transparent palette: alpha dropped by default, as official (no tolerance);
    ``background=`` composites instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from da3gs import load_model
from da3gs.io import imagenet_normalize, prepare_images
from tests.official_ref import build_official, rel_err, requires_official, save_official

pytestmark = requires_official
METHODS = ("upper_bound_resize", "upper_bound_crop", "lower_bound_resize", "lower_bound_crop")
TOL = 1e-4


# ----------------------------------------------------------------------------- test images
def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """``(h, w, 3)`` uint8 photo-like image: gradients, hard-edged shapes, 1-px lines, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([30 + 200 * x / w, 40 + 180 * y / h, 60 + 150 * (x + y) / (w + h)], -1)
    for _ in range(14):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        img[y0:y0 + int(rng.integers(4, max(5, h // 3))), x0:x0 + int(rng.integers(4, max(5, w // 3)))] = (
            rng.integers(0, 256, 3))
    cy, cx, r = h * 0.6, w * 0.3, min(h, w) * 0.2
    img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = (250, 250, 20)
    img[::7, :] = 0  # thin lines: the worst case for kernel differences
    img[:, ::11] = 255
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _save(arr: np.ndarray, path, **kw):
    Image.fromarray(arr).save(path, **kw)
    return path


def official_tensor(images, method="upper_bound_resize", process_res=504, K=None):
    """Official ``InputProcessor`` (as ``DepthAnything3.inference`` calls it): ``(N, 3, H, W)``
    normalised, and the adjusted ``(N, 3, 3)`` float32 intrinsics or None."""
    from depth_anything_3.utils.io.input_processor import InputProcessor

    imgs = [str(p) if not isinstance(p, (Image.Image, np.ndarray)) else p for p in images]
    x, _, k = InputProcessor()(imgs, None, None if K is None else np.asarray(K, np.float32),
                               process_res, method, num_workers=1)
    return x, k


def ours_tensor(images, method="upper_bound_resize", process_res=504, K=None, **kw):
    p = prepare_images(images, K=K, process_res=process_res, method=method, **kw)
    return imagenet_normalize(p.images), p


def grey_levels(ours_norm: torch.Tensor, off_norm: torch.Tensor) -> tuple[float, float]:
    """(max, mean) |difference| in 8-bit grey levels of two normalised tensors."""
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    d = ((ours_norm - off_norm) * std).abs() * 255
    return float(d.max()), float(d.mean())


def _K(w, h):
    return np.array([[1.1 * w, 0.0, w / 2 + 3.0], [0.0, 1.05 * w, h / 2 - 2.0], [0.0, 0.0, 1.0]])


# (name, (h, w), suffix): files written from ``photo``; 640x480 and 1008x756 shrink, 270x480
# enlarges to 280x504, the others are odd sizes that need rounding on both axes.
FILES = {
    "shrink_jpg": ((480, 640), ".jpg"),
    "shrink_2x": ((756, 1008), ".png"),
    "enlarge": ((270, 480), ".png"),
    "odd": ((333, 517), ".png"),
    "odd_small": ((101, 77), ".jpg"),
    "portrait": ((701, 389), ".jpg"),
}


def _file(tmp_path, name: str):
    (h, w), suffix = FILES[name]
    return _save(photo(h, w, seed=len(name)), tmp_path / f"{name}{suffix}", **({"quality": 92} if suffix == ".jpg" else {}))


def _exact(ours, off):
    assert ours.shape == off.shape, (tuple(ours.shape), tuple(off.shape))
    assert torch.equal(ours, off), grey_levels(ours, off)


# ----------------------------------------------------------------------------- processed tensors
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(FILES))
def test_files_processed_equal(tmp_path, name, method):
    path = _file(tmp_path, name)
    (h, w), _ = FILES[name]
    K = _K(w, h)[None]
    off, off_K = official_tensor([path], method, K=K)
    ours, p = ours_tensor([path], method, K=K)
    _exact(ours, off)
    np.testing.assert_allclose(p.K.numpy(), off_K.numpy(), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("process_res", [280, 518, 1024])
def test_other_process_res(tmp_path, process_res):
    paths = [_file(tmp_path, "odd"), _file(tmp_path, "enlarge")]
    for path in paths:
        _exact(ours_tensor([path], process_res=process_res)[0], official_tensor([path], process_res=process_res)[0])


def test_mixed_batch_unified_like_official(tmp_path):
    paths = [_file(tmp_path, n) for n in ("shrink_jpg", "portrait", "enlarge")]
    K = np.stack([_K(w, h) for (h, w), _ in (FILES[n] for n in ("shrink_jpg", "portrait", "enlarge"))])
    off, off_K = official_tensor(paths, K=K)
    ours, p = ours_tensor(paths, K=K, mixed_sizes="crop_to_smallest")  # the official rule, kept as an option
    _exact(ours, off)
    np.testing.assert_allclose(p.K.numpy(), off_K.numpy(), rtol=1e-6, atol=1e-4)


def test_grayscale(tmp_path):
    g = photo(270, 480, seed=3)[..., 1]
    path = _save(g, tmp_path / "g.png")
    _exact(ours_tensor([path])[0], official_tensor([path])[0])
    path = _save(g, tmp_path / "g.jpg", quality=90)
    _exact(ours_tensor([path])[0], official_tensor([path])[0])


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_vs_official_upright(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"r{orientation}.jpg"
    Image.fromarray(photo(270, 480, seed=orientation)).save(path, exif=exif.tobytes(), quality=92)
    with Image.open(path) as im:
        upright = ImageOps.exif_transpose(im)
    ours, p = ours_tensor([path])
    expected_hw = (480, 270) if orientation in (6, 8) else (270, 480)
    assert p.original_sizes == [expected_hw]
    _exact(ours, official_tensor([upright])[0])


@pytest.mark.parametrize("hw,method,bound", [
    ((756, 1008), "upper_bound_resize", 1.0),  # one 2x INTER_AREA shrink
    ((270, 480), "upper_bound_resize", 1.6),  # INTER_CUBIC enlarge, then INTER_AREA 284 -> 280
    ((270, 480), "lower_bound_crop", 1.6),  # INTER_CUBIC enlarge 270 -> 504
])
def test_16bit_png_vs_official_fed_8bit(tmp_path, hw, method, bound):
    """We keep 16 bits; the official reader would clip every value above 255. Against the official
    pipeline fed ``round(v / 257)``: the 8-bit rounding of the input (<= 0.5 level; bicubic's
    negative lobes amplify it to <= 0.6) plus the official's uint8 rounding after each resize
    (0.5 level each) bound the difference: 1 level for one shrink, 1.6 for enlarge + shrink."""
    g8 = photo(*hw, seed=5)[..., 0].astype(np.int32)
    noise = np.random.default_rng(5).integers(-128, 128, g8.shape)
    g16 = np.clip(g8 * 257 + noise, 0, 65535).astype(np.uint16)
    path = _save(g16, tmp_path / "d16.png")
    as8 = np.round(g16 / 257.0).astype(np.uint8)
    ours, _ = ours_tensor([path], method)
    off, _ = official_tensor([Image.fromarray(as8)], method)
    assert ours.shape == off.shape
    mx, mean = grey_levels(ours, off)
    assert mx <= bound + 1e-3 and mean < 0.5, (mx, mean)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_alpha_dropped_like_official(tmp_path, mode):
    rgb = photo(270, 480, seed=7)
    alpha = np.where(np.arange(480)[None, :] < 240, 0, 255).astype(np.uint8).repeat(270, 0)
    if mode == "RGBA":
        img = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    elif mode == "LA":
        img = Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA")
    else:
        img = Image.fromarray(rgb).quantize(64)
    path = tmp_path / f"a_{mode}.png"
    img.save(path, **({"transparency": 0} if mode == "P" else {}))
    ours, _ = ours_tensor([path])
    _exact(ours, official_tensor([path])[0])
    # opt-in compositing: the transparent half becomes the background colour
    white, _ = ours_tensor([path], background=(1.0, 1.0, 1.0))
    if mode != "P":
        assert float((white[:, :, :, 10:200] - ours[:, :, :, 10:200]).abs().max()) > 0.1
        x = white[0, :, :, 10:200] * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) + torch.tensor(
            [0.485, 0.456, 0.406]).view(3, 1, 1)
        assert float(x.min()) > 1 - 1e-5


def test_arrays_and_pil_like_official(tmp_path):
    rgb = photo(270, 480, seed=9)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    for item in (rgb, Image.fromarray(rgb), rgba):
        _exact(ours_tensor([item])[0], official_tensor([item])[0])


# ----------------------------------------------------------------------------- network outputs
# The network runs at process_res 126 to keep each test a few seconds on 2 CPU cores; the same
# kernels and rounding rules are checked bit-exactly at 280-1024 above. 640x480 shrinks to
# 126x94 (-> 126x98, enlarging), 100x60 enlarges to 126x76 (-> 126x70, shrinking), 77x101
# enlarges to 96x126 (-> 98x126, enlarging again).
NET_RES = 126
@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    off = build_official("da3-small", seed=3)
    folder = save_official(off, tmp_path_factory.mktemp("small"), "da3-small")
    return off, load_model(folder, device="cpu")


def _outputs_close(pair, ours_inputs, off_inputs, method="upper_bound_resize", process_res=NET_RES):
    off_net, model = pair
    x, _ = official_tensor(off_inputs, method, process_res)
    with torch.no_grad():
        a = off_net(x[None].float(), None, None, export_feat_layers=[], ref_view_strategy="saddle_balanced")
    pred = model.infer(ours_inputs, process_res=process_res, process_method=method, precision="fp32",
                       mixed_sizes="crop_to_smallest")  # the official rule for mixed sizes
    torch.testing.assert_close(imagenet_normalize(pred.images), x, rtol=0, atol=0)
    errs = {
        "depth": rel_err(pred.depth, a["depth"][0]),
        "depth_conf": rel_err(pred.depth_conf, a["depth_conf"][0]),
        "extrinsics": rel_err(pred.w2c[:, :3], a["extrinsics"][0][:, :3]),
        "intrinsics": rel_err(pred.K, a["intrinsics"][0]),
    }
    assert all(e <= TOL for e in errs.values()), errs
    return errs


@pytest.mark.parametrize("name", ["shrink_jpg", "enlarge_small", "odd_small"])
def test_outputs_from_files(pair, tmp_path, name):
    if name == "enlarge_small":
        path = _save(photo(60, 100, seed=13), tmp_path / "e.png")
    else:
        path = _file(tmp_path, name)
    _outputs_close(pair, [path], [path])


def test_outputs_two_views_crop_method(pair, tmp_path):
    paths = [_file(tmp_path, "shrink_jpg"), _file(tmp_path, "odd")]
    _outputs_close(pair, paths, paths, method="upper_bound_crop")


def test_outputs_exif_and_grayscale(pair, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    rot = tmp_path / "rot.jpg"
    Image.fromarray(photo(150, 200, seed=11)).save(rot, exif=exif.tobytes(), quality=92)
    with Image.open(rot) as im:
        upright = ImageOps.exif_transpose(im)
    gray = _save(photo(200, 150, seed=12)[..., 2], tmp_path / "gray.png")
    _outputs_close(pair, [rot, gray], [upright, str(gray)])
