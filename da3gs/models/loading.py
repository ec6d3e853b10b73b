"""``load_model``: official Hugging Face repos, local official folders, da3gs checkpoints.

Accepted sources:
  * a preset name prefixed with ``random:`` (``random:small``): random weights, for tests;
  * a folder with ``config.json`` + ``model.safetensors`` in the official layout (config key
    ``model_name``, e.g. ``da3-large``, at the top or in a nested ``config`` dict; hub-style
    names such as ``DA3-LARGE-1.1`` are accepted; without it the preset is read off the weight
    shapes) or in ours (config key ``preset``). Official files hold each tied tensor once
    (see :mod:`da3gs.models.convert`); files that hold every name load too;
  * a ``.safetensors`` file written by da3gs (preset in its metadata);
  * a Hugging Face repo id (``depth-anything/DA3-LARGE``), fetched with ``huggingface_hub``
    into its cache (offline: the cache is used, else a one-line error says what to do);
  * a bundled model's name (:data:`BUNDLED`: ``mini``, the compact model trained by da3gs,
    shipped as package data, Apache-2.0), when no local file or folder has that name.
Weights are read with safetensors only; no pickle is ever loaded. Half-precision files (fp16,
bf16) are cast to the network's fp32 on load. A source that looks like a local path (a path
separator beyond the one of ``org/name``, a weights suffix, or a leading ``.``, ``/`` or ``~``)
and does not exist is reported as not found, never tried on the hub.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from da3gs.errors import ModelSourceError, ModelUnavailableError
from da3gs.models.convert import (CheckpointMismatch, is_official_state, load_into,
                                  official_to_ours, unique_state)
from da3gs.models.model import DA3Model
from da3gs.models.net import build_net
from da3gs.models.presets import NESTED, OFFICIAL_NAMES, PRESETS, get_preset

WEIGHTS, CONFIG = "model.safetensors", "config.json"
BUNDLED = {"mini": Path(__file__).resolve().parents[1] / "weights" / "mini"}
"""Models shipped inside the package: name -> folder (config.json + fp16 model.safetensors).
``mini``: the compact preset (7.8 M parameters, GS head) trained from scratch on procedural
scenes (docs/training.md); the offline fallback of the CLI."""
OFFICIAL_REPOS = {
    "small": "depth-anything/DA3-SMALL", "base": "depth-anything/DA3-BASE",
    "large": "depth-anything/DA3-LARGE-1.1", "giant": "depth-anything/DA3-GIANT-1.1",
    "nested-giant-large": "depth-anything/DA3NESTED-GIANT-LARGE-1.1",
    "mono-large": "depth-anything/DA3MONO-LARGE", "metric-large": "depth-anything/DA3METRIC-LARGE",
}


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:  # safetensors raises several types for bad files
        raise ModelSourceError(f"{path}: not a readable safetensors file ({e})") from None


WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def _not_da3(state: dict[str, torch.Tensor], what: str) -> ModelSourceError:
    keys = sorted(state)
    shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
    return ModelSourceError(f"{what}: not a DA3 checkpoint ({len(keys)} tensors"
                            + (f": {shown})" if keys else ")"))


def infer_preset_name(state: dict[str, torch.Tensor], source: str = "checkpoint") -> str:
    """Guess the preset from weight shapes (used when a config does not name it).

    A state dict of some other network, or one lacking the backbone (a partial file), raises
    :class:`ModelSourceError` naming ``source``."""
    try:
        ours = official_to_ours(state) if is_official_state(state) else state
    except CheckpointMismatch as e:
        raise ModelSourceError(f"{source}: {e}") from None
    if any(k.startswith("anyview.") for k in ours):
        ours = {k[len("anyview."):]: v for k, v in ours.items() if k.startswith("anyview.")}
        nested = True
    else:
        nested = False
    blocks = {int(m.group(1)) for k in ours if (m := re.match(r"backbone\.blocks\.(\d+)\.", k))}
    cls = ours.get("backbone.cls_token")
    if cls is None or not blocks:
        if not any(k.startswith(("backbone.", "depth_head.")) for k in ours):
            raise _not_da3(state, source)
        lacks = "backbone.cls_token" if cls is None else "backbone.blocks"
        raise ModelSourceError(f"{source}: incomplete DA3 checkpoint ({len(state)} tensors; "
                               f"no {lacks}): a partial or truncated file?")
    dim, depth = cls.shape[-1], 1 + max(blocks)
    has_cam = "backbone.camera_token" in ours
    for name, p in PRESETS.items():
        if p.vit.dim == dim and p.vit.depth == depth and has_cam == (p.kind == "anyview"):
            if nested:
                for n, q in NESTED.items():
                    if q.anyview == name:
                        return n
                break
            return name
    raise ModelSourceError(f"{source}: weights of width {dim} and depth {depth} match no known "
                           "preset")


def _config_name(name: str) -> str:
    """Preset name from a config's ``model_name``: official registry names (``da3-large``) as
    they are; hub-style names (``depth-anything/DA3-LARGE-1.1``) lower-cased, without the
    organisation and the version suffix."""
    if name in PRESETS or name in NESTED or name in OFFICIAL_NAMES:
        return name
    base = re.sub(r"[-_]v?\d+(\.\d+)+$", "", name.rsplit("/", 1)[-1].lower())
    return base if base in OFFICIAL_NAMES or base in PRESETS or base in NESTED else name


def _preset_from_config(cfg, path: Path) -> str | None:
    if not isinstance(cfg, dict):
        raise ModelSourceError(f"{path}: expected a JSON object")
    name = cfg.get("preset") or cfg.get("model_name")
    if name is None and isinstance(cfg.get("config"), dict):
        name = cfg["config"].get("preset") or cfg["config"].get("model_name")
    if name is None:
        return None
    if not isinstance(name, str):
        raise ModelSourceError(f"{path}: model_name must be a string, got {name!r}")
    try:
        return get_preset(_config_name(name)).name
    except ValueError as e:
        raise ModelSourceError(f"{path}: {e}") from None


def _build(preset: str, state: dict[str, torch.Tensor], source: str,
           gs_geometry: str | None = None) -> DA3Model:
    official = is_official_state(state)
    if not any(k.startswith(("backbone.", "anyview.", "model.", "depth_head."))
               or ".pretrained." in k for k in state):
        raise _not_da3(state, source)
    try:
        if official:
            state = official_to_ours(state)
        net = build_net(preset)
        load_into(net, state, source)
    except CheckpointMismatch as e:
        msg = str(e)
        raise ModelSourceError(msg if msg.startswith(source) else f"{source}: {msg}") from None
    return DA3Model(net.preset, net, gs_geometry or ("official" if official else "da3gs"))


def load_folder(folder: Path, preset: str | None = None) -> DA3Model:
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ModelSourceError(f"{folder}: no {WEIGHTS} in this folder")
    cfg = {}
    if (folder / CONFIG).is_file():
        try:
            cfg = json.loads((folder / CONFIG).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelSourceError(f"{folder / CONFIG}: invalid JSON ({e})") from None
    state, meta = _read_safetensors(weights)
    name = preset or _preset_from_config(cfg, folder / CONFIG) or meta.get("da3gs_preset")
    geometry = cfg.get("gs_geometry") or meta.get("da3gs_gs_geometry")
    return _build(name or infer_preset_name(state, str(weights)), state, str(weights), geometry)


def load_file(path: Path, preset: str | None = None) -> DA3Model:
    if path.suffix != ".safetensors":
        raise ModelSourceError(f"{path}: expected a .safetensors file or a model folder")
    state, meta = _read_safetensors(path)
    name = preset or meta.get("da3gs_preset") or infer_preset_name(state, str(path))
    try:
        name = get_preset(name).name
    except ValueError as e:
        raise ModelSourceError(f"{path}: {e}") from None
    return _build(name, state, str(path), meta.get("da3gs_gs_geometry"))


def download(repo_id: str) -> Path:
    """Snapshot of ``repo_id`` (config + weights) from the local cache or the hub."""
    from huggingface_hub import snapshot_download

    patterns = [CONFIG, WEIGHTS]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:
        kind = type(e).__name__
        raise ModelUnavailableError(
            f"no local file or folder {repo_id!r}, and could not fetch it from the Hugging Face "
            f"hub ({kind}); offline? Download "
            f"it elsewhere (huggingface-cli download {repo_id} --local-dir DIR) and pass DIR "
            "as the model source") from None


def save_model(model: DA3Model, path: str | Path) -> Path:
    """Write ``model`` as a da3gs folder (config.json + model.safetensors), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    state = unique_state(model.net)  # tied tensors once (save_file refuses shared storage)
    meta = {"da3gs_preset": model.preset.name, "da3gs_gs_geometry": model.gs_geometry}
    save_file(state, str(tmp / WEIGHTS), metadata=meta)
    cfg = {"format": "da3gs", "preset": model.preset.name, "gs_geometry": model.gs_geometry}
    (tmp / CONFIG).write_text(json.dumps(cfg, indent=2))
    if path.exists():
        raise ModelSourceError(f"{path}: already exists; not overwriting")
    tmp.rename(path)
    return path


FALLBACK = "mini"
"""The bundled model (:data:`BUNDLED`) used when a default hub model is neither cached nor
fetchable and the user named no model (CLI, nerfstudio plugin): :func:`load_model_or_bundled`."""


def load_model_or_bundled(source: str | Path, device: str | torch.device = "cpu",
                          fallback: str = FALLBACK, note: str = "",
                          loader=None) -> tuple[DA3Model, str]:
    """``load_model(source)``, or, when it is unavailable (offline and not cached:
    :class:`ModelUnavailableError`), the bundled ``fallback`` with one warning on the ``da3gs``
    logger (``note`` appended: how to pick the fallback explicitly). Returns ``(model, the source
    used)``. For a *default* source only: a model the user named is never silently replaced.
    ``loader`` replaces :func:`load_model` (callers that let tests patch ``da3gs.load_model``)."""
    load = loader or load_model
    try:
        return load(source, device=device), str(source)
    except ModelUnavailableError:
        logging.getLogger("da3gs").warning(
            "%s is not cached and cannot be fetched (offline?); using the bundled model %r "
            "instead (7.8 M parameters trained by da3gs, far below DA3's quality%s)",
            source, fallback, f"; {note}" if note else "")
        return load(fallback, device=device), fallback


def _looks_local(src: str) -> bool:
    """A path a user meant as local: leading ``.``/``/``/``~``, a backslash, more than one
    ``/`` (hub ids are ``org/name``) or a weights suffix."""
    return (src.startswith((".", "/", "~")) or "\\" in src or src.count("/") > 1
            or src.lower().endswith(WEIGHT_SUFFIXES))


def load_model(source: str | Path, device: str | torch.device = "cpu",
               preset: str | None = None) -> DA3Model:
    """Load a model (see the module docstring for the accepted sources), in eval mode."""
    src = str(source)
    path = Path(src).expanduser()
    if src.startswith("random:"):
        try:
            preset = get_preset(src[len("random:"):])
        except ValueError as e:
            raise ModelSourceError(f"model source {src!r}: {e}") from None
        try:
            with torch.device(device):  # initialise in place: fast for large presets on GPU
                model = DA3Model(preset)
        except (RuntimeError, AssertionError) as e:
            raise ModelSourceError(f"device {device!r}: {e}") from None
    elif path.is_dir():
        model = load_folder(path, preset)
    elif path.is_file():
        model = load_file(path, preset)
    elif src in BUNDLED:
        model = load_folder(BUNDLED[src], preset)
    elif src in OFFICIAL_REPOS or src in OFFICIAL_NAMES:
        model = load_folder(download(OFFICIAL_REPOS[get_preset(src).name]), preset)
    elif _looks_local(src):
        raise ModelSourceError(f"model source {src!r}: not found (no such file or folder)")
    elif src.count("/") == 1:
        model = load_folder(download(src), preset)
    else:
        raise ModelSourceError(f"model source {src!r}: no such file or folder, and not a hub repo id")
    try:
        return model.to(device).eval()
    except (RuntimeError, AssertionError) as e:
        raise ModelSourceError(f"device {device!r}: {e}") from None
