"""The trainer's view of its sibling packages (data, losses, geometry), in one place.

Every call the engine makes into ``da3gs.data``, ``da3gs.losses`` and the depth alignment goes
through the names below, resolved when called, so tests can replace any of them
(``monkeypatch.setattr(external, "stage1_loss", fake)``).

Interfaces:
  make_train_source(cfg: DataConfig, rank, world_size, device) -> Iterator[ViewBatch]
  stage1_loss(out, batch, cfg) -> (total, parts);  teacher_loss(out, batch, cfg) -> same
  normalize_batch(batch) -> (batch, scale (B,))
  robust_scale_shift(pred, target, mask) -> (s, t)
  make_eval_sets(cfg: EvalDataConfig, device) -> {name: [ViewBatch, ...]}
"""

from __future__ import annotations

from dataclasses import dataclass, field

from da3gs.data.config import DataConfig  # noqa: F401  (re-exported for config.py)
from da3gs.errors import Da3gsError
from da3gs.losses import Stage1LossConfig, TeacherLossConfig


class MissingComponent(Da3gsError):
    """A sibling package the trainer needs (data, losses) is not installed in this checkout."""


def _need(module: str, name: str):
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise MissingComponent(f"{module}.{name} is not available ({e})") from None


@dataclass
class LossConfig:
    """Loss weights: ``stage1`` for the any-view student, ``teacher`` for the mono teacher
    (fields documented in da3gs/losses/stage1.py and teacher.py)."""

    stage1: Stage1LossConfig = field(default_factory=Stage1LossConfig)
    teacher: TeacherLossConfig = field(default_factory=TeacherLossConfig)


def make_train_source(cfg, rank: int, world_size: int, device):
    try:
        fn = _need("da3gs.data.sources", "make_train_source")
    except MissingComponent:
        fn = _need("da3gs.data.multiview", "make_train_source")
    return fn(cfg, rank=rank, world_size=world_size, device=device)


def stage1_loss(out, batch, cfg: LossConfig):
    return _need("da3gs.losses", "stage1_loss")(out, batch, cfg.stage1)


def teacher_loss(out, batch, cfg: LossConfig):
    return _need("da3gs.losses", "teacher_loss")(out, batch, cfg.teacher)


def normalize_batch(batch):
    return _need("da3gs.losses", "normalize_batch")(batch)


def robust_scale_shift(pred, target, mask):
    return _need("da3gs.geometry.depth_align", "robust_scale_shift")(pred, target, mask)


def make_eval_sets(cfg, device):
    """``{name: [ViewBatch, ...]}`` held-out sets (procedural with fixed seeds; real scenes)."""
    return _need("da3gs.data.sources", "make_eval_sets")(cfg, device=device)
