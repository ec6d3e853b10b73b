"""One line, not a traceback, for environment errors and friction of issue 23 (item 2-3):
``export --to``, ``fetch lpips``, ``view`` and ``render --view``."""

from __future__ import annotations

import errno
import os
import pathlib
import socket
import time
from pathlib import Path

import pytest
import torch

from da3gs.cli import main
from da3gs.io.ply import write_ply
from da3gs.types import Gaussians


def _gaussians(n: int = 50) -> Gaussians:
    g = torch.Generator().manual_seed(0)
    return Gaussians(means=torch.randn(n, 3, generator=g),
                     quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                     scales=torch.full((n, 3), 0.05), opacities=torch.full((n,), 0.9),
                     sh=torch.rand(n, 1, 3, generator=g))


def _ply(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_ply(path, _gaussians())
    return path


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def read_only(monkeypatch):
    """Make every new entry under a folder fail as on a read-only file system (the tests run as
    root, where chmod does not stop writes)."""
    roots: list[Path] = []
    real_mkdir, real_open = pathlib.Path.mkdir, os.open

    def under(p) -> bool:
        p = Path(os.path.abspath(p))
        return any(r == p or r in p.parents for r in roots)

    def mkdir(self, *a, **k):
        if under(self):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *a, **k)

    def fake_open(path, flags, *a, **k):
        if flags & os.O_CREAT and under(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", fake_open)
    return roots


# --------------------------------------------------------------------------- export --to


def test_export_to_long_output_name(tmp_path):
    """A 250-character name is valid; our temporary sibling must not make it fail."""
    src = _ply(tmp_path / "in.ply")
    out = tmp_path / ("s" * 246 + ".spz")
    assert main(["export", str(src), "--to", "spz", "--out", str(out)]) == 0
    assert out.is_file() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_to_read_only_target(tmp_path, capsys, read_only, monkeypatch):
    import da3gs.io.splat_files as splat_files

    src = _ply(tmp_path / "in.ply")
    (tmp_path / "ro").mkdir()
    read_only.append(tmp_path / "ro")
    monkeypatch.setattr(splat_files, "read_gaussians", lambda p: pytest.fail("input read first"))
    assert main(["export", str(src), "--to", "spz", "--out", str(tmp_path / "ro" / "a.spz")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--out" in line and "Read-only file system" in line


def test_export_to_disk_full(tmp_path, capsys, monkeypatch):
    src = _ply(tmp_path / "in.ply")
    real = pathlib.Path.write_bytes

    def full(self, data):
        if ".tmp-" in self.name:
            real(self, data[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    assert main(["export", str(src), "--to", "spz", "--out", str(tmp_path / "a.spz")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "No space left on device" in line and "a.spz" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ply"]


# --------------------------------------------------------------------------- fetch lpips


@pytest.fixture
def no_download(monkeypatch):
    import da3gs.apps.fetch as fetch

    monkeypatch.setattr(fetch, "download_sdist", lambda d: pytest.fail("download attempted"))


def test_fetch_out_is_a_file(tmp_path, capsys, no_download):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    assert main(["fetch", "lpips", "--out", str(f)]) == 2
    assert "is a file" in _one_line(capsys.readouterr().err)
    assert main(["fetch", "lpips", "--out", str(f / "lp")]) == 2
    assert "is a file, not a folder" in _one_line(capsys.readouterr().err)


def test_fetch_read_only_target(tmp_path, capsys, no_download, read_only):
    (tmp_path / "ro").mkdir()
    read_only.append(tmp_path / "ro")
    assert main(["fetch", "lpips", "--out", str(tmp_path / "ro" / "lpips")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--out" in line and "Read-only file system" in line


def test_fetch_offline_is_one_quick_line(tmp_path, capsys, monkeypatch):
    import subprocess

    for k in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "PIP_INDEX_URL"):
        monkeypatch.delenv(k, raising=False)

    def unreachable(*a, **k):
        raise OSError(errno.ENETUNREACH, os.strerror(errno.ENETUNREACH))

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip ran while offline"))
    t = time.perf_counter()
    assert main(["fetch", "lpips", "--out", str(tmp_path / "lp")]) == 2
    assert time.perf_counter() - t < 5
    out, err = capsys.readouterr()
    line = _one_line(err)
    assert out == "" and "unreachable" in line and "--sdist" in line


# --------------------------------------------------------------------------- view


def test_view_refuses_a_non_splat_file(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert main(["view", str(notes), "--no-browser"]) == 2
    assert "not a splat file" in _one_line(capsys.readouterr().err)


def test_view_refuses_a_truncated_ply(tmp_path, capsys):
    p = _ply(tmp_path / "g.ply")
    p.write_bytes(p.read_bytes()[:-100])
    assert main(["view", str(p), "--no-browser"]) == 2
    assert "g.ply" in _one_line(capsys.readouterr().err)
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "gaussians.ply").write_bytes(p.read_bytes())
    assert main(["view", str(folder), "--no-browser"]) == 2
    assert "gaussians.ply" in _one_line(capsys.readouterr().err)


def test_view_server_is_quiet_when_a_browser_aborts_a_download(tmp_path, capfd):
    import struct

    from da3gs.apps.view import serve_in_thread

    folder = tmp_path / "out"
    _ply(folder / "gaussians.ply")
    (folder / "big.bin").write_bytes(os.urandom(32 << 20))
    srv, url = serve_in_thread(folder)
    try:
        for _ in range(3):
            s = socket.create_connection(srv.server_address)
            s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(1024)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # RST: the server's write fails with ConnectionResetError / BrokenPipeError
        time.sleep(1.0)
    finally:
        srv.shutdown()
        srv.server_close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ConnectionResetError" not in err, err


def test_view_page_errors_reach_the_console(tmp_path, caplog):
    import json
    import urllib.request

    from da3gs.apps.view import serve_in_thread

    srv, url = serve_in_thread(_ply(tmp_path / "out" / "gaussians.ply").parent)
    try:
        req = urllib.request.Request(url + "_da3gs/report", method="POST", data=json.dumps(
            {"state": "error", "errors": ["failed to load gaussians.ply"]}).encode())
        with caplog.at_level("WARNING", logger="da3gs"):
            urllib.request.urlopen(req, timeout=10).read()
    finally:
        srv.shutdown()
        srv.server_close()
    assert any("failed to load gaussians.ply" in r.getMessage() for r in caplog.records)


def test_render_view_busy_port_refused_before_the_render(tmp_path, capsys, monkeypatch):
    import da3gs.models.loading

    monkeypatch.setattr(da3gs.models.loading, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    (tmp_path / "photos").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["render", "--views", str(tmp_path / "photos"), "--view", "--view-port",
                     str(port), "--out", str(tmp_path / "o")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"--view-port {port}" in line and "cannot listen" in line
