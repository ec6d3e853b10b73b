"""Import the official benchmark utilities (``depth_anything_3.bench.utils``, test-only).

The module imports open3d at the top for its TSDF / mesh helpers. open3d does not import on
every machine (its wheel needs system libraries such as libusb), and the pose and point-cloud
functions never use it: when the real one fails to import, a stub module is registered whose
calls raise.
"""

from __future__ import annotations

import sys
import types

import pytest


def _stub_open3d() -> bool:
    """Register an open3d stub if the real one cannot be imported; True if stubbed."""
    if "open3d" in sys.modules:
        return getattr(sys.modules["open3d"], "_da3gs_stub", False)
    try:
        import open3d  # noqa: F401
        return False
    except Exception:
        sys.modules.pop("open3d", None)

    class _Missing(types.ModuleType):
        """Any attribute is another stub (annotations such as ``o3d.geometry.PointCloud`` are
        evaluated at import); calling one raises."""

        _da3gs_stub = True

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Missing(f"{self.__name__}.{name}")

        def __call__(self, *a, **k):
            raise RuntimeError(f"open3d stub: {self.__name__} is not available in these tests")

    sys.modules["open3d"] = _Missing("open3d")
    return True


def bench_utils():
    """``depth_anything_3.bench.utils``, or skip the test if the package is not installed."""
    _stub_open3d()
    try:
        import depth_anything_3.bench.utils as u
    except Exception as e:  # pragma: no cover - depends on the environment
        pytest.skip(f"official depth-anything-3 bench not importable: {e}")
    return u


def open3d_stubbed() -> bool:
    return _stub_open3d()
