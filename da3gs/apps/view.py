"""``da3gs view OUT_DIR``: the splats and cameras of a ``da3gs render`` folder in the browser.

A stdlib :class:`http.server.ThreadingHTTPServer` on 127.0.0.1 serves OUT_DIR and, under
``/_da3gs/``, the vendored viewer modules (:mod:`da3gs.viewer`); nothing is fetched from the
internet. Hand-written on the standard library because the job is a dozen lines of static
serving and a Python web framework would add dependencies that can clash with nerfstudio's pins.

Endpoints besides OUT_DIR's files: ``/`` (the viewer page), ``/_da3gs/scene.json`` (what the page
loads: splat file, ``cameras.json``, the fly-through path ``video_cameras.json`` and its frame
rate, whether a depth point cloud exists), ``/_da3gs/points.bin`` (the coloured depth point cloud
of ``depth/*.npy`` + ``cameras.json`` + ``images/``, built here on first request, subsampled, see
:func:`depth_points`; :func:`encode_points` gives the layout), ``POST /_da3gs/report`` (the page's state and console
errors, kept in ``server.reports`` and logged; the browser test reads them) and
``/_da3gs/wait`` (answers once the page has reported, at most 60 s: with ``?test=1`` the page
requests it, which holds the page's load event, so a headless ``chromium --screenshot`` waits
for the splats instead of shooting the first frame).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch

from da3gs.errors import Da3gsError

log = logging.getLogger(__name__)

SPLAT_NAMES = ("gaussians.spz", "gaussians.sog", "gaussians.ply", "gaussians.splat")
PATH_FILE = "video_cameras.json"
MAX_POINTS = 400_000  # depth points sent to the page (about 6 MB); the grid stride keeps fewer
CONF_PERCENTILE = 30.0


def add_view_parser(sub) -> None:
    """Register the ``view`` subcommand on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser("view", help="show a render folder (splats + cameras) in the browser",
                       description="Serve a da3gs render folder (or one .spz/.sog/.ply/.splat file) "
                       "with the Spark web viewer on 127.0.0.1 and open it in the browser. "
                       "Ctrl-C stops the server.")
    p.add_argument("target", metavar="OUT_DIR", help="da3gs render output folder, or a splat file")
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="only print the address")


def add_view_flags(p) -> None:
    """``--view``, ``--view-port``, ``--no-browser``: serve a job's output folder in the viewer
    when the job has finished (``da3gs render ... --view``), as ``da3gs view`` does."""
    p.add_argument("--view", action="store_true",
                   help="when done, show the output folder in the browser viewer (as da3gs view "
                   "OUT_DIR; Ctrl-C stops it)")
    p.add_argument("--view-port", type=int, default=0,
                   help="with --view: port on 127.0.0.1 (default: a free one)")
    p.add_argument("--no-browser", action="store_true",
                   help="with --view: only print the viewer's address, open no browser")


def check_view_flags(args) -> None:
    """``--view-port`` checked before the job runs (one line naming the flag): in range, and a
    fixed port must be free now (a bind test), not found busy after the whole render."""
    if not getattr(args, "view", False):
        return
    if not 0 <= args.view_port < 65536:
        raise Da3gsError(f"--view-port: expected 0-65535, got {args.view_port}")
    if args.view_port:
        check_port_free(args.view_port, "--view-port")


def check_port_free(port: int, flag: str = "--port") -> None:
    """Raise :class:`Da3gsError` naming ``flag`` unless 127.0.0.1:``port`` can be bound now (as
    the viewer server binds it, with SO_REUSEADDR). The port may still be taken meanwhile; the
    server's own bind reports that case the same way."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen(1)
        except OSError as e:
            raise Da3gsError(f"{flag} {port}: cannot listen on 127.0.0.1 ({e.strerror}); choose "
                             f"another port, or {flag} 0 for a free one") from None


def check_splat_file(path: Path) -> None:
    """Read ``path`` once as a splat file, so that a file the page cannot show (not a splat
    file, truncated, corrupt) is refused in one line before serving, not left on "loading..."."""
    from da3gs.io.splat_files import read_gaussians, splat_format_of

    if splat_format_of(path) is None:
        raise Da3gsError(f"{path}: not a splat file (da3gs view shows a .spz, .sog, .ply or .splat "
                         "file, or a da3gs render folder)")
    try:
        read_gaussians(path)
    except Da3gsError:
        raise
    except (OSError, ValueError, EOFError, KeyError, IndexError) as e:
        raise Da3gsError(f"{path}: cannot be read as a splat file ({e})") from None


def scene_info(folder: Path, splat: str | None = None) -> dict:
    """What the page loads from ``folder``: ``{"splat": name|None, "cameras": name|None,
    "path": name|None, "fps": float, "points": bool}``. ``path`` is the fly-through's cameras
    (``video_cameras.json``, written by ``da3gs render``); ``fps`` its frame rate (from
    ``summary.json``, default 30); ``points`` whether ``depth/`` has a map for the cameras."""
    if splat is None:
        splat = next((n for n in SPLAT_NAMES if (folder / n).is_file()), None)
    cams = "cameras.json" if (folder / "cameras.json").is_file() else None
    path = PATH_FILE if (folder / PATH_FILE).is_file() else None
    fps = 30.0
    try:
        video = json.loads((folder / "summary.json").read_text()).get("video", {})
        fps = float(video.get("fps", fps)) if isinstance(video, dict) else fps
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    points = cams is not None and any((folder / "depth").glob("*.npy"))
    return {"splat": splat, "cameras": cams, "path": path, "fps": fps if fps > 0 else 30.0,
            "points": points}


def depth_points(folder, max_points: int = MAX_POINTS,
                 conf_percentile: float = CONF_PERCENTILE) -> tuple[np.ndarray, np.ndarray]:
    """The coloured depth point cloud of a ``da3gs render`` folder: every camera of
    ``cameras.json`` lifted through its ``depth/STEM.npy`` (z-depth, OpenCV), coloured from
    ``images/NAME`` (grey where missing). Pixels are taken on a regular grid whose stride keeps at
    most ``max_points`` of all views; non-finite or non-positive depths are dropped, and, where
    ``depth/STEM_conf.npy`` exist, points below the ``conf_percentile`` percentile of the valid
    pixels' confidence (as ``da3gs render`` does for models without a Gaussian head). Returns ``xyz`` float32
    ``(N, 3)`` in the cameras' world frame and ``rgb`` uint8 ``(N, 3)``."""
    from PIL import Image

    from da3gs.geometry import unproject_depth
    from da3gs.io.cameras import read_cameras_json

    folder = Path(folder)
    cams = read_cameras_json(folder / "cameras.json")
    maps = []
    for i, name in enumerate(cams.names):
        f = folder / "depth" / f"{Path(name).stem}.npy"
        if f.is_file():
            conf = f.with_name(f"{f.stem}_conf.npy")
            maps.append((i, name, np.load(f).astype(np.float32),
                         np.load(conf).astype(np.float32) if conf.is_file() else None))
    if not maps:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    total = sum(d.size for _, _, d, _ in maps)
    stride = max(1, math.ceil(math.sqrt(total / max(1, max_points))))
    cut = None
    if all(c is not None for *_, c in maps) and conf_percentile > 0:
        valid = [c[np.isfinite(d) & (d > 0)] for _, _, d, c in maps]
        if sum(v.size for v in valid):
            cut = np.percentile(np.concatenate(valid), conf_percentile)
    xyz, rgb = [], []
    for i, name, depth, conf in maps:
        if depth.ndim != 2:
            raise Da3gsError(f"{folder / 'depth' / Path(name).stem}.npy: expected an (H, W) depth map")
        H, W = depth.shape
        h, w = cams.image_hw[i]
        K = cams.K[i].clone()
        K[0] *= W / w
        K[1] *= H / h
        pts = unproject_depth(torch.from_numpy(depth).double(), cams.c2w[i], K).numpy()
        keep = np.isfinite(depth) & (depth > 0)
        if cut is not None:
            keep &= conf >= cut
        sub = np.zeros_like(keep)
        sub[stride // 2::stride, stride // 2::stride] = True
        keep &= sub
        try:
            with Image.open(folder / "images" / name) as im:
                img = np.asarray(im.convert("RGB").resize((W, H)))
        except OSError:
            img = np.full((H, W, 3), 160, np.uint8)
        xyz.append(pts[keep].astype(np.float32))
        rgb.append(img[keep])
    return np.concatenate(xyz), np.concatenate(rgb)


def encode_points(xyz: np.ndarray, rgb: np.ndarray) -> bytes:
    """``points.bin``: ``b"D3PT"``, uint32 count N, then N x 3 float32 positions and N x 3 uint8
    colours (little-endian)."""
    n = len(xyz)
    return (b"D3PT" + np.uint32(n).astype("<u4").tobytes()
            + np.ascontiguousarray(xyz, "<f4").tobytes() + np.ascontiguousarray(rgb, np.uint8).tobytes())


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".spz": "application/octet-stream", ".splat": "application/octet-stream",
                      ".sog": "application/octet-stream", ".webp": "image/webp",
                      ".ply": "application/octet-stream"}

    def __init__(self, *a, scene: dict, **kw):
        self.scene = scene
        super().__init__(*a, **kw)

    def log_message(self, fmt, *args):  # quiet: through logging, not stderr
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, body: bytes, ctype: str, code: int = 200):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        from da3gs.viewer import STATIC_DIR, VIEWER_HTML

        path = self.path.split("?", 1)[0]
        if path in ("/", "/viewer.html"):
            return self._send(VIEWER_HTML.read_bytes(), "text/html; charset=utf-8")
        if path == "/_da3gs/scene.json":
            return self._send(json.dumps(self.scene).encode(), "application/json")
        if path == "/_da3gs/points.bin":
            try:
                body = self.server.points()
            except Exception as e:  # a broken depth map must not take the server down
                log.warning("viewer: no depth point cloud (%s)", e)
                return self._send(f"no depth point cloud: {e}".encode(), "text/plain", 500)
            return self._send(body, "application/octet-stream")
        if path == "/_da3gs/wait":
            self.server.reported.wait(60)
            return self._send(b"{}", "application/json")
        if path.startswith("/_da3gs/"):
            rel = Path(path[len("/_da3gs/"):])
            f = (STATIC_DIR / rel).resolve()
            if ".." in rel.parts or not f.is_file() or STATIC_DIR.resolve() not in f.parents:
                return self._send(b"not found", "text/plain", 404)
            return self._send(f.read_bytes(), self.guess_type(str(f)))
        return super().do_GET()

    def do_POST(self):
        if self.path != "/_da3gs/report":
            return self._send(b"not found", "text/plain", 404)
        n = int(self.headers.get("Content-Length", 0) or 0)
        try:
            rep = json.loads(self.rfile.read(min(n, 1 << 20)) or b"{}")
        except ValueError:
            rep = {"state": "bad report"}
        self.server.reports.append(rep)
        if rep.get("state") != "loading":
            self.server.reported.set()
        if rep.get("state") == "error":  # seen on the console, not only in the browser's
            log.warning("the viewer page reported an error: %s",
                        "; ".join(map(str, rep.get("errors") or []))[:500] or rep)
        else:
            log.info("viewer: %s", rep)
        return self._send(b"{}", "application/json")


class _Server(ThreadingHTTPServer):
    """The viewer's server: a browser that drops a connection mid-download (a reload, a closed
    tab) is normal, so those errors are logged at debug level instead of a traceback."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):  # reset, aborted, broken pipe
            log.debug("viewer: %s dropped the connection (%s)", client_address, exc)
            return
        super().handle_error(request, client_address)


def make_server(target, port: int = 0) -> ThreadingHTTPServer:
    """A viewer server for ``target`` (render folder or splat file) bound to 127.0.0.1:``port``.
    The splat file the page will load is read once first (:func:`check_splat_file`)."""
    target = Path(target)
    if target.is_file():
        check_splat_file(target)
        folder, scene = target.parent, scene_info(target.parent, target.name)
    elif target.is_dir():
        folder, scene = target, scene_info(target)
        if scene["splat"] is None and scene["cameras"] is None:
            raise Da3gsError(f"{target}: no gaussians.spz/.sog/.ply/.splat nor cameras.json to show")
        if scene["splat"] is not None:
            check_splat_file(target / scene["splat"])
    else:
        raise Da3gsError(f"{target}: no such folder or file")
    if not 0 <= port < 65536:
        raise Da3gsError(f"--port: expected 0-65535, got {port}")
    handler = partial(_Handler, directory=str(folder), scene=scene)
    try:
        server = _Server(("127.0.0.1", port), handler)
    except OSError as e:
        raise Da3gsError(f"--port {port}: cannot listen on 127.0.0.1 ({e.strerror})") from None
    server.reports = []
    server.reported = threading.Event()
    lock, cache = threading.Lock(), []

    def points() -> bytes:  # built once, on the page's first request
        with lock:
            if not cache:
                cache.append(encode_points(*depth_points(folder)))
            return cache[0]

    server.points = points
    server.daemon_threads = True
    return server


def serve_in_thread(target, port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start a server in a daemon thread; returns it and its base URL (tests, notebooks)."""
    server = make_server(target, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def serve(target, port: int = 0, open_browser: bool = True, command: str = "view") -> None:
    """Serve ``target`` until Ctrl-C, printing the address (and opening it in the default browser
    with ``open_browser``). Used by ``da3gs view`` and ``da3gs render --view``."""
    server = make_server(target, port)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print(f"da3gs {command}: viewer at {url} (Ctrl-C to stop)", flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def run_view(args: argparse.Namespace) -> None:
    """``da3gs view``: serve until Ctrl-C; opens the page in the browser unless ``--no-browser``."""
    serve(args.target, args.port, open_browser=not args.no_browser)
