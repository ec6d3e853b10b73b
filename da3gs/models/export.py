"""Write a da3gs model in the official Depth Anything 3 layout, so the official package loads it.

The folder holds ``config.json`` (``{"model_name": "da3-large"}``, the hub mixin's config) and
``model.safetensors`` with the official names under ``model.``, each tied tensor once under the
name the release keeps (see :mod:`da3gs.models.convert`); the safetensors metadata records the
dropped aliases as ``safetensors.torch.save_model`` does, plus ``da3gs_export`` (the mark by
which a later export may replace the folder). ``DepthAnything3.from_pretrained(DIR)`` of the
official package loads it.

:func:`save_official` (the API) writes atomically: into a temporary name beside the target,
renamed at the end. An existing folder is written into only when it is empty or holds an earlier
export (and then only with ``overwrite``); only ``config.json`` and ``model.safetensors`` are
ever replaced, no other file is touched. The ``da3gs export`` command follows the rules of every
da3gs output folder instead (:mod:`da3gs.apps.outputs`: checked before the model loads, never
inside or around an input, replaced only when da3gs wrote it and it holds no foreign files).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from da3gs._version import __version__
from da3gs.errors import Da3gsError
from da3gs.models.convert import TIED, ours_to_official, unique_state

WEIGHTS, CONFIG = "model.safetensors", "config.json"
MARK = "da3gs_export"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ExportError(Da3gsError):
    """An export cannot be written (no official counterpart, target folder in the way)."""


def is_da3gs_export(folder: Path) -> bool:
    """True when ``folder/model.safetensors`` carries the mark of an earlier export."""
    from safetensors import safe_open

    try:
        with safe_open(str(folder / WEIGHTS), framework="pt") as f:
            return MARK in (f.metadata() or {})
    except Exception:
        return False


def official_state(model, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The state dict a release file would hold for ``model`` (a ``DA3Model`` or network):
    official names under ``model.``, tied tensors once, contiguous CPU tensors of ``dtype``."""
    net = getattr(model, "net", model)
    state = unique_state(net)
    out = ours_to_official(state)
    return {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
            for k, v in out.items()}


def _aliases(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Dropped alias -> kept name, as ``save_model`` records them in the metadata."""
    meta = {}
    for key in state:
        for group in TIED:
            if key.endswith(group[0]):
                p = key[:-len(group[0])]
                meta.update({p + n: key for n in group[1:]})
    return meta


def check_export_target(folder: Path, overwrite: bool) -> None:
    """Raise :class:`ExportError` unless ``folder`` may receive an export (see the module
    docstring)."""
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder}: exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not is_da3gs_export(folder):
            raise ExportError(f"{folder}: folder is not empty and was not written by da3gs "
                              "export; choose a new or empty folder")
        if not overwrite:
            raise ExportError(f"{folder}: holds an earlier da3gs export; pass --overwrite "
                              "(overwrite=True) to replace its config.json and model.safetensors")


def official_name(model) -> str:
    """The official ``model_name`` of ``model``'s preset (``da3-large``...); raises
    :class:`ExportError` for presets without an official network."""
    preset = getattr(model, "preset", None)
    name = getattr(preset, "official_name", "")
    if not name:
        raise ExportError(f"preset {getattr(preset, 'name', '?')!r} has no official network; "
                          "only small, base, large, giant, mono-large, metric-large and "
                          "nested-giant-large can be exported")
    return name


def write_official_files(model, folder: str | Path, dtype: str = "fp32") -> None:
    """Write ``config.json`` + ``model.safetensors`` of ``model`` into the existing ``folder``,
    with no checks of the folder (callers check and write atomically: :func:`save_official`,
    ``da3gs export``). Raises :class:`ExportError` for a preset without an official network or
    an unknown ``dtype``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    preset = model.preset
    name = official_name(model)
    if dtype not in DTYPES:
        raise ExportError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    state = official_state(model, DTYPES[dtype])
    meta = {**_aliases(state), MARK: "official", "da3gs_version": __version__,
            "da3gs_preset": preset.name}
    save_file(state, str(folder / WEIGHTS), metadata=meta)
    (folder / CONFIG).write_text(json.dumps({"model_name": name}, indent=2) + "\n")


def save_official(model, folder: str | Path, overwrite: bool = False,
                  dtype: str = "fp32") -> Path:
    """Write ``model`` (a ``DA3Model`` of a preset with an official counterpart) as
    ``folder/config.json`` + ``folder/model.safetensors`` in the official layout.

    ``dtype``: ``fp32`` (default), ``fp16`` or ``bf16``. Raises :class:`ExportError` for a
    preset without an official network (``tiny``...) or a folder in the way (see the module
    docstring). Returns ``folder``."""
    folder = Path(folder).expanduser()
    check_export_target(folder, overwrite)
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.da3gs-tmp-", dir=parent))
    try:
        write_official_files(model, tmp, dtype)
        if not folder.exists():
            tmp.rename(folder)
            return folder
        check_export_target(folder, overwrite)  # again: it may have changed while we wrote
        for fname in (WEIGHTS, CONFIG):
            os.replace(tmp / fname, folder / fname)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
