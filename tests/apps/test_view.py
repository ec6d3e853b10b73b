"""``da3gs view``: the local server (always) and the page in a real headless Chromium (when
/usr/bin/chromium or ``chromium`` is installed: ``apt-get install chromium``; skipped otherwise)."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from da3gs.apps.view import serve_in_thread
from da3gs.errors import Da3gsError
from da3gs.io.cameras import write_cameras_json
from da3gs.io.spz import write_spz
from da3gs.types import Gaussians

BACKGROUND = (0x20, 0x21, 0x24)
PATH_FRAMES = 10


def _scene(folder: Path, n: int = 4000) -> Path:
    """A ball of bright Gaussians at the origin seen by two cameras 3 units away (OpenCV); depth
    maps of a plane through the origin (camera a) and of nothing valid (camera b), and a
    10-frame path between the cameras."""
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    d = torch.randn(n, 3, generator=g)
    means = d / d.norm(dim=1, keepdim=True) * torch.rand(n, 1, generator=g) ** (1 / 3)
    rgb = 0.5 + 0.5 * means.clamp(-1, 1)
    write_spz(folder / "gaussians.spz", Gaussians(
        means=means, quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
        scales=torch.full((n, 3), 0.05), opacities=torch.full((n,), 0.9),
        sh=((rgb - 0.5) / 0.28209479177387814)[:, None]))
    c2w = torch.eye(4).repeat(2, 1, 1).double()
    c2w[0, 2, 3] = -3.0  # looks down +z at the origin
    c2w[1, :3, :3] = torch.tensor([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]])  # looks down -x
    c2w[1, 0, 3] = 3.0
    K = torch.tensor([[80.0, 0, 80], [0, 80, 60], [0, 0, 1]]).double().repeat(2, 1, 1)
    write_cameras_json(folder / "cameras.json", c2w, K, [(120, 160)] * 2, ["a.png", "b.png"])
    (folder / "images").mkdir()
    for name, value in (("a.png", 230), ("b.png", 40)):
        Image.fromarray(np.full((120, 160, 3), value, np.uint8)).save(folder / "images" / name)
    (folder / "depth").mkdir()
    np.save(folder / "depth" / "a.npy", np.full((120, 160), 3.0, np.float32))
    np.save(folder / "depth" / "a_conf.npy", np.tile(np.arange(160, dtype=np.float32), (120, 1)))
    np.save(folder / "depth" / "b.npy", np.full((120, 160), np.nan, np.float32))
    np.save(folder / "depth" / "b_conf.npy", np.ones((120, 160), np.float32))
    t = torch.linspace(0, 1, PATH_FRAMES, dtype=torch.float64)
    path = c2w[0].repeat(PATH_FRAMES, 1, 1)
    path[:, 0, 3] = 3 * t
    write_cameras_json(folder / "video_cameras.json", path, K[:1].repeat(PATH_FRAMES, 1, 1),
                       [(120, 160)] * PATH_FRAMES, [f"frame_{i:04d}" for i in range(PATH_FRAMES)])
    (folder / "summary.json").write_text(json.dumps({"video": {"fps": 20}}))
    return folder


def test_depth_points(tmp_path):
    from da3gs.apps.view import depth_points

    out = _scene(tmp_path / "out")
    xyz, rgb = depth_points(out, max_points=1000, conf_percentile=0)
    # 2 x 120 x 160 pixels for 1000 points: a grid of stride 7 from pixel 3, 17 x 23 in camera a
    # (camera b has no valid depth); plane z = 0 seen from (0, 0, -3) with fx = 80, cx = 80
    assert len(xyz) == 17 * 23 and xyz.dtype == np.float32 and rgb.dtype == np.uint8
    assert np.abs(xyz[:, 2]).max() < 1e-5 and (rgb == 230).all()
    u = np.unique(xyz[:, 0]) * 80 / 3 + 80 - 0.5  # x = (u + 0.5 - cx) / fx * depth
    assert np.allclose(u, np.arange(3, 160, 7), atol=1e-3)
    (out / "depth" / "a.npy").write_bytes(b"broken")
    with pytest.raises(ValueError):
        depth_points(out)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_server_endpoints(tmp_path):
    out = _scene(tmp_path / "out")
    srv, url = serve_in_thread(out)
    try:
        assert url.startswith("http://127.0.0.1:")
        code, body = _get(url)
        assert code == 200 and b"@sparkjsdev/spark" in body
        assert json.loads(_get(url + "_da3gs/scene.json")[1]) == {
            "splat": "gaussians.spz", "cameras": "cameras.json", "path": "video_cameras.json",
            "fps": 20.0, "points": True}
        code, body = _get(url + "_da3gs/points.bin")
        assert code == 200 and body[:4] == b"D3PT"
        n = int(np.frombuffer(body[4:8], "<u4")[0])
        xyz = np.frombuffer(body[8:8 + 12 * n], "<f4").reshape(n, 3)
        rgb = np.frombuffer(body[8 + 12 * n:], np.uint8).reshape(n, 3)
        assert len(body) == 8 + 15 * n
        assert n == 120 * 160 * 7 // 10  # camera a minus its lowest 30% confidence; b: no depth
        assert np.allclose(xyz[:, 2], 0.0, atol=1e-5) and (rgb == 230).all()
        code, body = _get(url + "_da3gs/spark.module.min.js")
        assert code == 200 and body.startswith(b"import")
        assert _get(url + "_da3gs/addons/controls/OrbitControls.js")[0] == 200
        assert _get(url + "_da3gs/../../apps/view.py")[0] == 404
        assert _get(url + "gaussians.spz")[1] == (out / "gaussians.spz").read_bytes()
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(Da3gsError, match="no such"):
        serve_in_thread(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Da3gsError, match="nothing|no gaussians"):
        serve_in_thread(tmp_path / "empty")


def test_view_cli_errors(tmp_path, capsys):
    from da3gs.cli import main

    assert main(["view", str(tmp_path / "nope"), "--no-browser"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["view", str(_scene(tmp_path / "o")), "--port", "70000", "--no-browser"]) == 2


def test_vendored_files_are_modest():
    from da3gs.viewer import STATIC_DIR

    total = sum(f.stat().st_size for f in STATIC_DIR.rglob("*") if f.is_file())
    assert total < 5e6
    assert (STATIC_DIR / "LICENSE-spark").is_file() and (STATIC_DIR / "LICENSE-three").is_file()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def _shoot(tmp_path: Path, out: Path, query: str) -> tuple[dict, np.ndarray]:
    """The page at ``?query`` in headless Chromium: its last report and the screenshot."""
    srv, url = serve_in_thread(out)
    shot = tmp_path / "shot.png"
    shot.unlink(missing_ok=True)
    try:
        r = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                            "--enable-unsafe-swiftshader", "--window-size=480,360",
                            f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                            "--virtual-time-budget=10000", f"{url}?{query}&test=1"],
                           capture_output=True, text=True, timeout=55)
    finally:
        srv.shutdown()
        srv.server_close()
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    assert srv.reports, "the page never reported"
    rep = srv.reports[-1]
    assert rep["state"] == "ready" and rep["errors"] == [], srv.reports
    return rep, np.asarray(Image.open(shot).convert("RGB")).astype(int)


def _centre_differs(img: np.ndarray) -> float:
    """Share of the centre right of the middle (in the ball seen from either camera, clear of the
    panel at the top left) that differs from the background."""
    h, w, _ = img.shape
    centre = img[h // 3: 2 * h // 3, w // 2: 2 * w // 3]
    return float((np.abs(centre - np.array(BACKGROUND)).sum(-1) > 30).mean())


needs_chromium = pytest.mark.skipif(_chromium() is None,
                                    reason="chromium not installed (apt-get install chromium)")


@needs_chromium
@pytest.mark.parametrize("camera", [0, 1])
def test_viewer_draws_in_headless_chromium(tmp_path, camera):
    out = _scene(tmp_path / "out")
    rep, img = _shoot(tmp_path, out, f"camera={camera}&cameras=0&path=0")
    assert rep["camera"] == camera and rep["splats"] == 4000 and rep["cameras"] == 2
    assert rep["path"] == PATH_FRAMES and rep["points"] == 0 and rep["controls"] == "orbit"
    assert _centre_differs(img) > 0.2, "the splats do not draw"


@needs_chromium
def test_viewer_first_view_is_novel_and_photo_free(tmp_path):
    """No camera=N: the page opens near camera 0 but not on it (camera -2), photos off, and the
    splats draw; with the splats off and the frustums on, no photo covers the centre."""
    out = _scene(tmp_path / "out")
    rep, img = _shoot(tmp_path, out, "cameras=0&path=0")
    assert rep["camera"] == -2 and rep["splats"] == 4000
    assert _centre_differs(img) > 0.2, "the splats do not draw in the first view"
    rep, img = _shoot(tmp_path, out, "splats=0&path=0")
    assert _centre_differs(img) < 0.05, "something (a photo?) covers the first view with splats off"


@needs_chromium
def test_viewer_depth_points_toggle(tmp_path):
    """Splats off: the depth points (a bright plane filling camera a's view) draw only when
    toggled on."""
    out = _scene(tmp_path / "out")
    rep, img = _shoot(tmp_path, out, "splats=0&cameras=0&path=0&points=1")
    assert rep["points"] == 120 * 160 * 7 // 10
    assert _centre_differs(img) > 0.3, "the depth points do not draw"  # 2 px dots, 3 px apart
    rep, img = _shoot(tmp_path, out, "splats=0&cameras=0&path=0&points=0")
    assert rep["points"] == 0
    assert _centre_differs(img) < 0.01, "something draws with splats and points off"


@needs_chromium
def test_viewer_path_play_and_fly(tmp_path):
    """Fly controls on, the path played to its end (camera at its last frame, 3 units along +x
    from camera 0, looking past the ball's side: the centre shows the path and background)."""
    out = _scene(tmp_path / "out")
    rep, img = _shoot(tmp_path, out, "controls=fly&play=1&cameras=0")
    assert rep["controls"] == "fly" and rep["played"] == 1 and rep["path"] == PATH_FRAMES
    assert _centre_differs(img) < 0.2, "the view did not move along the path"


def test_render_view_serves_the_output(tmp_path):
    """``da3gs render ... --view --no-browser -q``: the run finishes, then the viewer serves the
    output folder (path and depth points included) until Ctrl-C, which ends with status 0;
    ``-q`` leaves stderr empty (no progress lines or bars)."""
    import shutil
    import signal
    import sys

    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((Path(__file__).resolve().parents[2] / "examples" / "toy_scene").glob("*.png"))[:3]:
        shutil.copy(p, photos / p.name)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "da3gs.cli", "render", "--views", str(photos),
                             "--model", "random:tiny-gs", "--process-res", "42", "--frames", "4",
                             "--no-colmap", "--device", "cpu", "--out", str(out), "-q", "--view",
                             "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        assert "viewer at http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() else "")
        url = line.split("viewer at ", 1)[1].split()[0]
        info = json.loads(_get(url + "_da3gs/scene.json")[1])
        assert info["splat"] == "gaussians.spz" and info["path"] == "video_cameras.json"
        assert info["points"] is True and _get(url + "_da3gs/points.bin")[0] == 200
        assert len(json.loads((out / "video_cameras.json").read_text())) == 4
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and err == "", err


def test_render_view_port_checked_first(tmp_path, capsys):
    from da3gs.cli import main

    (tmp_path / "photos").mkdir()
    assert main(["render", "--views", str(tmp_path / "photos"), "--model", "random:tiny-gs",
                 "--view", "--view-port", "-1", "--out", str(tmp_path / "o")]) == 2
    assert "--view-port" in capsys.readouterr().err
