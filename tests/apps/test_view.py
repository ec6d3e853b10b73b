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


def _scene(folder: Path, n: int = 4000) -> Path:
    """A ball of bright Gaussians at the origin seen by two cameras 3 units away (OpenCV)."""
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
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((120, 160, 3), 200, np.uint8)).save(folder / "images" / name)
    return folder


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
        assert json.loads(_get(url + "_da3gs/scene.json")[1]) == {"splat": "gaussians.spz",
                                                                  "cameras": "cameras.json"}
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


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (apt-get install chromium)")
@pytest.mark.parametrize("camera", [0, 1])
def test_viewer_draws_in_headless_chromium(tmp_path, camera):
    out = _scene(tmp_path / "out")
    srv, url = serve_in_thread(out)
    shot = tmp_path / "shot.png"
    try:
        r = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                            "--enable-unsafe-swiftshader", "--window-size=480,360",
                            f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                            "--virtual-time-budget=10000",
                            f"{url}?camera={camera}&cameras=0&test=1"],
                           capture_output=True, text=True, timeout=55)
    finally:
        srv.shutdown()
        srv.server_close()
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    reports = srv.reports
    assert reports and reports[-1]["state"] == "ready", reports
    assert reports[-1]["errors"] == [] and reports[-1]["camera"] == camera
    assert reports[-1]["splats"] == 4000 and reports[-1]["cameras"] == 2
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    h, w, _ = img.shape
    centre = img[h // 4: 3 * h // 4, w // 3: 2 * w // 3]  # the ball (the panel is top left)
    differs = (np.abs(centre - np.array(BACKGROUND)).sum(-1) > 30).mean()
    assert differs > 0.2, f"only {differs:.0%} of the centre differs from the background"
