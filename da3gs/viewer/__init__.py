"""The da3gs web viewer: ``viewer.html`` and the vendored Spark + three.js ES modules it loads.

Spark (``@sparkjsdev/spark``, MIT) draws the splats; versions, sources and licences of the
vendored files are in ``static/README.md``. Served by :mod:`da3gs.apps.view`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["VIEWER_HTML", "STATIC_DIR"]

VIEWER_HTML = Path(__file__).with_name("viewer.html")
STATIC_DIR = Path(__file__).with_name("static")
