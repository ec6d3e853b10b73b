"""Run folders and atomic checkpoints.

A run folder (written only by da3gs; marked by ``.da3gs_run``)::

    RUN/config.yaml            the full config of the run
    RUN/metrics.jsonl          one JSON object per log / eval event
    RUN/tb/                    TensorBoard events (when available)
    RUN/checkpoints/step_00001234/
        config.json            {"format": "da3gs", "preset": ...}: the folder is a model that
        model.safetensors      ``da3gs.load_model`` reads (EMA weights when EMA is on)
        train_weights.safetensors   the raw (non-EMA) weights
        train_state.pt         optimizer state, step, counters, per-rank RNG and data state
                               (torch.save of plain tensors/containers; read with weights_only)

Checkpoint folders appear atomically (written under a temporary name, then renamed), so a
crash never leaves a half-written one; the newest complete one is the resume point.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import numpy as np
import torch

from da3gs.errors import Da3gsError
from da3gs.io.atomic import atomic_dir, atomic_path

RUN_MARKER = ".da3gs_run"
RUN_LOCK = ".da3gs_lock"
CKPT_RE = re.compile(r"^step_(\d{8})$")


class RunFolderError(Da3gsError):
    """The run folder cannot be used (exists and is not a da3gs run, or nothing to resume)."""


class RunLock:
    """An exclusive lock on a run folder for the life of one training run (rank 0).

    ``fcntl.flock`` on ``RUN/.da3gs_lock`` (created in the run folder, never replaced): a
    second process that tries the same folder gets a :class:`RunFolderError` naming the holder's
    pid, and since the operating system drops the lock when its process ends, a crashed run
    leaves no stale lock behind. Where ``fcntl`` does not exist (Windows) the lock is a no-op.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / RUN_LOCK
        self._f = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            who = f.read().strip() or "unknown"
            f.close()
            raise RunFolderError(f"{self.path.parent}: in use by another da3gs process ({who}); "
                                 "wait for it to end or choose another run.out") from None
        import os
        import socket

        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._f = f
        return self

    def release(self) -> None:
        if self._f is not None:
            self._f.close()  # closing drops the flock
            self._f = None


def prepare_run_dir(run_dir: Path, resume: bool, restart: bool = False) -> None:
    """Create ``run_dir`` for a new run, or check it for ``--resume``.

    A new run refuses a non-empty folder (use ``--resume`` for a da3gs run folder, or another
    ``run.out``); a resumed run needs a da3gs run folder with a checkpoint. A da3gs run folder
    without any checkpoint (a run that failed or stopped before its first one) is started again
    with or without ``--resume``: it holds nothing but that attempt's config and logs. (The
    ``restart`` argument is kept for callers; it no longer changes anything.)"""
    run_dir = Path(run_dir)
    marker = run_dir / RUN_MARKER
    if marker.is_file() and not list_checkpoints(run_dir, complete=False):
        return
    if resume:
        if not marker.is_file():
            raise RunFolderError(f"{run_dir}: not a da3gs run folder; nothing to resume")
        if latest_checkpoint(run_dir) is None:
            raise RunFolderError(f"{run_dir}: no complete checkpoint to resume from")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: exists and is not a folder (choose another run.out)")
    if run_dir.exists() and any(run_dir.iterdir()):
        what = "a da3gs run folder; pass --resume to continue it" if marker.is_file() else \
            "not empty and not written by da3gs; refusing to write into it"
        raise RunFolderError(f"{run_dir}: {what} (or choose another run.out=...)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # read-only, a file on the path, ...
        raise RunFolderError(f"{run_dir}: cannot create the run folder ({e.strerror or e})"
                             ) from None
    with atomic_path(marker) as tmp:
        Path(tmp).write_text(json.dumps({"format": "da3gs-run", "created": time.time()}) + "\n")


CKPT_FILES = ("model.safetensors", "train_weights.safetensors", "train_state.pt", "config.json")


def list_checkpoints(run_dir: Path, complete: bool = True) -> list[Path]:
    """``RUN/checkpoints/step_*`` folders, oldest first; ``complete``: only those holding every
    file a checkpoint has (a folder missing one was damaged after it was written)."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if p.is_dir() and CKPT_RE.match(p.name)
             and (not complete or all((p / f).is_file() for f in CKPT_FILES))]
    return sorted(found, key=lambda p: int(CKPT_RE.match(p.name).group(1)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    ck = list_checkpoints(run_dir)
    return ck[-1] if ck else None


def newest_loadable_checkpoint(run_dir: Path, note=print) -> tuple[Path, tuple] | None:
    """``(folder, load_checkpoint(folder))`` of the newest checkpoint that loads, trying older
    ones when a newer one is incomplete or unreadable (each skipped one is reported through
    ``note``, never deleted); None when there is none."""
    complete = set(list_checkpoints(run_dir))
    for p in reversed(list_checkpoints(run_dir, complete=False)):
        if p not in complete:
            missing = [f for f in CKPT_FILES if not (p / f).is_file()]
            note(f"resume: skipping {p} (missing {', '.join(missing)})")
            continue
        try:
            return p, load_checkpoint(p)
        except RunFolderError as e:
            note(f"resume: skipping {p}: {e}")
    return None


# ---------------------------------------------------------------- RNG state

def rng_state() -> dict:
    """torch (CPU and CUDA), numpy and python RNG states as weights_only-loadable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    st = {"torch": torch.get_rng_state(),
          "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                    "has_gauss": int(has_gauss), "gauss": float(gauss)},
          "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


# ---------------------------------------------------------------- save / load

def alias_map(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """name -> canonical name for tensors sharing storage (the canonical one is the first in
    sorted order, as the official files store shared tensors); unshared names map to
    themselves. (The Dual-DPT shares one LayerNorm across its ray output levels.)"""
    first: dict[tuple, str] = {}
    out = {}
    for k in sorted(state):
        v = state[k]
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.dtype) \
            if v.numel() else ("empty", k)
        out[k] = first.setdefault(key, k)
    return out


def dedupe(state: dict[str, torch.Tensor], aliases: dict[str, str]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if aliases.get(k, k) == k}


def load_weights(net: torch.nn.Module, state: dict[str, torch.Tensor], where: str = "") -> None:
    """Load a (deduplicated) state dict; missing names must be aliases of present ones."""
    aliases = alias_map(net.state_dict())
    full = {k: state[aliases[k]] for k in aliases if aliases[k] in state}
    missing = sorted(set(aliases) - set(full))
    extra = sorted(set(state) - set(aliases))
    if missing or extra:
        raise RunFolderError(f"{where}: weights do not match the network (missing "
                             f"{missing[:3]}, unexpected {extra[:3]})")
    net.load_state_dict(full)


def _save_tensors(state: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path),
              metadata=meta)


def save_checkpoint(run_dir: Path, step: int, preset_name: str, weights: dict, ema_weights,
                    train_state: dict, keep: int = 2, gs_geometry: str = "da3gs") -> Path:
    """Write ``checkpoints/step_{step:08d}`` atomically and prune to the newest ``keep``.

    weights / ema_weights: full state dicts of the network (ema_weights may be None);
    train_state: optimizer state dict, step, counters, per-rank RNG/data state;
    gs_geometry: the Gaussian geometry the GS head was trained with (stage 2).
    """
    final = Path(run_dir) / "checkpoints" / f"step_{step:08d}"
    meta = {"da3gs_preset": preset_name, "da3gs_gs_geometry": gs_geometry, "step": str(step)}
    aliases = alias_map(weights)
    with atomic_dir(final) as tmp:
        tmp = Path(tmp)
        _save_tensors(dedupe(ema_weights if ema_weights is not None else weights, aliases),
                      tmp / "model.safetensors", meta)
        _save_tensors(dedupe(weights, aliases), tmp / "train_weights.safetensors", meta)
        torch.save(train_state, tmp / "train_state.pt")
        (tmp / "config.json").write_text(json.dumps(
            {"format": "da3gs", "preset": preset_name, "gs_geometry": gs_geometry, "step": step,
             "weights": "ema" if ema_weights is not None else "raw"}, indent=2))
    for old in list_checkpoints(run_dir)[:-keep]:  # complete ones only: a damaged folder stays
        import shutil

        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt: Path) -> tuple[dict, dict, dict]:
    """(raw weights, model.safetensors weights, train state) of a checkpoint folder."""
    from safetensors.torch import load_file

    ckpt = Path(ckpt)
    try:
        raw = load_file(str(ckpt / "train_weights.safetensors"))
        ema = load_file(str(ckpt / "model.safetensors"))
        state = torch.load(ckpt / "train_state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors / unpickler raise several types on bad files
        raise RunFolderError(f"{ckpt}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    return raw, ema, state
