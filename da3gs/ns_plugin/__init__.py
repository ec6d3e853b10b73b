"""nerfstudio plugin: method ``da3gs`` / ``da3gs-fast`` and dataparser ``da3gs-data``.

This is the only package that imports nerfstudio. Install it with ``pip install 'da3gs[nerfstudio]'``.
"""

try:
    import nerfstudio  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "the da3gs nerfstudio plugin needs nerfstudio: pip install 'da3gs[nerfstudio]' "
        f"({e})") from None
