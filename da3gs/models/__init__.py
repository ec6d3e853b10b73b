"""DA3 networks, loading and export.

``load_model`` / ``save_model`` (da3gs folders) and ``save_official`` (the official
``config.json`` + ``model.safetensors`` layout) are imported lazily, so that importing a
submodule stays light.
"""

from __future__ import annotations

__all__ = ["load_model", "save_model", "save_official"]


def __getattr__(name: str):
    if name in ("load_model", "save_model"):
        from da3gs.models import loading

        return getattr(loading, name)
    if name == "save_official":
        from da3gs.models.export import save_official

        return save_official
    raise AttributeError(f"module 'da3gs.models' has no attribute {name!r}")
