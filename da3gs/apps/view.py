"""``da3gs view OUT_DIR``: the splats and cameras of a ``da3gs render`` folder in the browser.

A stdlib :class:`http.server.ThreadingHTTPServer` on 127.0.0.1 serves OUT_DIR and, under
``/_da3gs/``, the vendored viewer modules (:mod:`da3gs.viewer`); nothing is fetched from the
internet. Hand-written on the standard library because the job is a dozen lines of static
serving and a Python web framework would add dependencies that can clash with nerfstudio's pins.

Endpoints besides OUT_DIR's files: ``/`` (the viewer page), ``/_da3gs/scene.json`` (which splat
file and camera file the page loads), ``POST /_da3gs/report`` (the page's state and console
errors, kept in ``server.reports`` and logged; the browser test reads them) and
``/_da3gs/wait`` (answers once the page has reported, at most 60 s: with ``?test=1`` the page
requests it, which holds the page's load event, so a headless ``chromium --screenshot`` waits
for the splats instead of shooting the first frame).
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from da3gs.errors import Da3gsError

log = logging.getLogger(__name__)

SPLAT_NAMES = ("gaussians.spz", "gaussians.ply", "gaussians.splat")


def add_view_parser(sub) -> None:
    """Register the ``view`` subcommand on ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser("view", help="show a render folder (splats + cameras) in the browser",
                       description="Serve a da3gs render folder (or one .spz/.ply/.splat file) "
                       "with the Spark web viewer on 127.0.0.1 and open it in the browser. "
                       "Ctrl-C stops the server.")
    p.add_argument("target", metavar="OUT_DIR", help="da3gs render output folder, or a splat file")
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="only print the address")


def scene_info(folder: Path, splat: str | None = None) -> dict:
    """What the page loads from ``folder``: ``{"splat": name|None, "cameras": name|None}``."""
    if splat is None:
        splat = next((n for n in SPLAT_NAMES if (folder / n).is_file()), None)
    cams = "cameras.json" if (folder / "cameras.json").is_file() else None
    return {"splat": splat, "cameras": cams}


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".spz": "application/octet-stream", ".splat": "application/octet-stream",
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
        log.info("viewer: %s", rep)
        return self._send(b"{}", "application/json")


def make_server(target, port: int = 0) -> ThreadingHTTPServer:
    """A viewer server for ``target`` (render folder or splat file) bound to 127.0.0.1:``port``."""
    target = Path(target)
    if target.is_file():
        folder, scene = target.parent, scene_info(target.parent, target.name)
    elif target.is_dir():
        folder, scene = target, scene_info(target)
        if scene["splat"] is None and scene["cameras"] is None:
            raise Da3gsError(f"{target}: no gaussians.spz/.ply/.splat nor cameras.json to show")
    else:
        raise Da3gsError(f"{target}: no such folder or file")
    if not 0 <= port < 65536:
        raise Da3gsError(f"--port: expected 0-65535, got {port}")
    handler = partial(_Handler, directory=str(folder), scene=scene)
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as e:
        raise Da3gsError(f"--port {port}: cannot listen on 127.0.0.1 ({e.strerror})") from None
    server.reports = []
    server.reported = threading.Event()
    server.daemon_threads = True
    return server


def serve_in_thread(target, port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start a server in a daemon thread; returns it and its base URL (tests, notebooks)."""
    server = make_server(target, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def run_view(args: argparse.Namespace) -> None:
    """Serve until Ctrl-C; opens the page in the default browser unless ``--no-browser``."""
    server = make_server(args.target, args.port)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print(f"da3gs view: {url} (Ctrl-C to stop)", flush=True)
    if not args.no_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
