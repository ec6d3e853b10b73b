"""Training configuration: nested dataclasses, YAML presets and ``a.b.c=value`` overrides.

A config is a :class:`TrainConfig` tree. Presets live in ``da3gs/train/configs/NAME.yaml``
(package data) and are addressed by name (``stage1-compact``) or by path. A preset may start
with ``extends: OTHER`` to inherit another preset and override some of its keys. Unknown keys
(in YAML or on the command line) are errors that name the nearest valid key.

The ``data`` and ``loss`` sections are the dataclasses of :mod:`da3gs.data.multiview`
(``DataConfig``) and the loss configs of :mod:`da3gs.losses` (``LossConfig`` here): the trainer
hands them on unchanged.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from da3gs.errors import ConfigError
from da3gs.data.config import DataConfig, EvalDataConfig
from da3gs.losses import Stage1LossConfig, TeacherLossConfig
from da3gs.train.stage2 import Stage2Config

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


__all__ = ["ConfigError", "TrainConfig", "load_config", "config_from_dict", "save_config",
           "preset_names", "to_dict", "validate"]


@dataclass
class LossConfig:
    """Loss weights: ``stage1`` for the any-view student, ``teacher`` for the mono teacher
    (fields documented in da3gs/losses/stage1.py and teacher.py)."""

    stage1: Stage1LossConfig = field(default_factory=Stage1LossConfig)
    teacher: TeacherLossConfig = field(default_factory=TeacherLossConfig)


@dataclass
class ModelConfig:
    """The network.

    preset: network preset name (da3gs/models/presets.py) or a preset YAML path.
    init: weights loaded before training: any ``da3gs.load_model`` source (official folder,
      hub id such as ``depth-anything/DA3-SMALL``, da3gs checkpoint folder/file); None: random.
    grad_checkpointing: recompute backbone blocks in the backward pass (saves memory).
    train_gs_head: also train the GS head (stage 2 only; stages 1 and teacher freeze it).
    head_chunk: views per head chunk (0: all views of the batch at once).
    fast_heads: under bf16 autocast, the DPT heads also run in bf16 (their last 1x1
      convolutions and the outputs in fp32), as ``da3gs render``'s default fast path; False:
      the heads in fp32 (the official numerics).
    """

    preset: str = "compact"
    init: str | None = None
    grad_checkpointing: bool = False
    train_gs_head: bool = False
    head_chunk: int = 8
    fast_heads: bool = False


@dataclass
class OptimConfig:
    """AdamW with a lower backbone learning rate, gradient clipping and EMA weights.

    lr: peak learning rate of the heads (and the camera encoder/decoder).
    backbone_lr_mult: backbone lr = lr * this (1.0 from scratch; ~0.1 when fine-tuning).
    weight_decay: decoupled weight decay; never applied to biases, norms, tokens, embeddings.
    betas, eps: AdamW moments.
    grad_clip: clip the global gradient norm to this (0: no clipping).
    ema_decay: EMA of the weights (0: no EMA); the effective decay warms up as
      min(ema_decay, (1 + step) / (10 + step)).
    """

    lr: float = 2e-4
    backbone_lr_mult: float = 1.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0
    ema_decay: float = 0.999


@dataclass
class ScheduleConfig:
    """Linear warm-up from 0 to the peak lr over ``warmup_steps``, then cosine decay to
    ``min_lr_ratio * lr`` at ``steps`` (the total number of optimizer steps)."""

    steps: int = 10000
    warmup_steps: int = 500
    min_lr_ratio: float = 0.01


@dataclass
class EvalConfig(EvalDataConfig):
    """Held-out evaluation during training (and with ``--eval-only``).

    every: evaluate every N steps (0: only at the end of the run).
    The other fields are :class:`da3gs.data.config.EvalDataConfig`'s (the sets come from
    ``da3gs.data.sources.make_eval_sets``): ``scenes`` procedural scenes with fixed seeds
    outside the training range, ``views``/``height``/``width``, ``batch_size``, ``real`` scene
    entries (a folder, or ``{path: ..., factor: 8}`` with reader options), ``real_views``,
    ``real_res``, ``real_selection`` (overlap | even), ``seed``, ``procedural``.
    """

    every: int = 1000


@dataclass
class RunConfig:
    """Run folder, devices, precision and logging.

    out: run folder (None: ``runs/<config name>``). A folder da3gs did not write is never
      overwritten; ``--resume`` continues in an existing run folder.
    seed: base seed (torch, numpy, python; the data stream derives its own from it).
    device: auto | cpu | cuda (under torchrun each rank takes cuda:LOCAL_RANK).
    precision: bf16 (autocast; heads stay fp32) | fp32 | auto (bf16 on CUDA, fp32 on CPU).
    parallel: ddp | fsdp (several processes only).
    graphs: auto | on | off: run each training step as a replayed CUDA graph, one per batch
      shape (:mod:`da3gs.train.graphs`; stage 1, one process, CUDA). auto: on
      where it applies; on: an error where it does not; off: the eager step.
    log_every: scalars every N steps; image_every: image grids every N steps (0: never).
    ckpt_every: checkpoint every N steps (and at the end / the time limit).
    keep_checkpoints: checkpoints kept (oldest deleted first; at least 1).
    max_bad_steps: a run with this many non-finite losses in a row stops (last good
      checkpoint kept).
    max_minutes: stop cleanly with a checkpoint before this many minutes (0: no limit).
    tensorboard: also write TensorBoard events (skipped with one warning if unavailable).
    progress: print a progress line with ETA.
    """

    out: str | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    parallel: str = "ddp"
    graphs: str = "auto"
    log_every: int = 20
    image_every: int = 500
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    max_bad_steps: int = 20
    max_minutes: float = 0.0
    tensorboard: bool = True
    progress: bool = True


@dataclass
class TrainConfig:
    """One training run.

    name: run name (default: the preset name).
    stage: stage1 (multi-view student: depth, rays, cameras) | teacher (monocular teacher)
      | stage2 (GS head on the frozen network, :mod:`da3gs.train.stage2`).
    teacher: teacher model (any load_model source) whose depth, aligned to the ground truth
      with a robust scale and shift, replaces GT depth from step ``teacher_after_step`` on.
    stage2: options of ``stage: stage2`` (GS head trained by rendering, everything else
      frozen; :class:`da3gs.train.stage2.Stage2Config`: view split, geometry, precision and
      the loss weights ``stage2.loss.{mse,lpips,depth}_weight``); ``loss`` is then unused.
    """

    name: str = ""
    stage: str = "stage1"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    teacher: str | None = None
    teacher_after_step: int = 0
    stage2: Stage2Config = field(default_factory=Stage2Config)


STAGES = ("stage1", "teacher", "stage2")


# ---------------------------------------------------------------- dict <-> dataclass

def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _keys(cls, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass tree."""
    out = []
    for f in dataclasses.fields(cls):
        t = _hints(cls)[f.name]
        out.append(prefix + f.name)
        if dataclasses.is_dataclass(t):
            out += _keys(t, prefix + f.name + ".")
    return out


def _unknown(key: str, valid: list[str], where: str) -> ConfigError:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ConfigError(f"{where}unknown config key {key!r}{hint}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` (from YAML) as the field type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key) if len(inner) == 1 else value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"config key {key!r}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"config key {key!r}: expected {tp.__name__}, got {value!r}")
        try:
            out = tp(value)
        except ValueError:
            raise ConfigError(f"config key {key!r}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and out != value:
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
        return str(value)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if value else []
        if not isinstance(value, (list, tuple)):
            value = [value]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config key {key!r}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        elem = args[0] if args else Any
        return origin(_coerce(v, elem, key) for v in value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
        return from_dict(tp, value, key + ".")
    return value


def from_dict(cls, d: dict, prefix: str = "", where: str = ""):
    """A ``cls`` instance from a nested dict; unknown keys raise :class:`ConfigError`."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kw = {}
    for k, v in (d or {}).items():
        if k not in names:
            raise _unknown(prefix + str(k), _keys(cls, prefix), where)
        kw[k] = _coerce(v, hints[k], prefix + k)
    try:
        return cls(**kw)
    except (ValueError, TypeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where}{prefix or 'config'}: {e}") from None


def to_dict(cfg) -> dict:
    """Plain nested dict (tuples as lists) for YAML/JSON."""
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v
    return conv(cfg)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---------------------------------------------------------------- presets and overrides

def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _resolve(name_or_path: str) -> Path:
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise ConfigError(f"config file {name_or_path!r} not found")
        return p
    q = CONFIG_DIR / f"{name_or_path}.yaml"
    if q.is_file():
        return q
    near = difflib.get_close_matches(str(name_or_path), preset_names(), n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]!r}?" if near else f"; presets: {', '.join(preset_names())}"
    raise ConfigError(f"unknown config {name_or_path!r}{hint}")


def _load_yaml_tree(name_or_path: str, seen: tuple = ()) -> dict:
    import yaml

    path = _resolve(name_or_path)
    if path in seen:
        raise ConfigError(f"{path}: 'extends' cycle")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    parent = d.pop("extends", None)
    if parent:
        d = _merge(_load_yaml_tree(parent, seen + (path,)), d)
    return d


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b.c=value`` -> (key, YAML-parsed value)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value (e.g. schedule.steps=1000)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """Nested dict ``d`` with each ``a.b.c=value`` set (keys checked against TrainConfig)."""
    valid = _keys(TrainConfig)
    d = _merge({}, d)
    for text in overrides:
        key, value = parse_override(text)
        if key not in valid:
            tails = [k for k in valid if k.endswith("." + key)]
            if len(tails) == 1:  # a unique leaf name is enough: steps=3 -> schedule.steps=3
                key = tails[0]
            elif len(tails) > 1:
                raise ConfigError(f"config key {key!r} is ambiguous: {', '.join(tails)}")
            else:
                raise _unknown(key, valid, "")
        parts, node = key.split("."), d
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return d


def load_config(name_or_path: str, overrides: list[str] | None = None) -> TrainConfig:
    """Preset (name or YAML path) plus ``key=value`` overrides -> a checked :class:`TrainConfig`."""
    d = _load_yaml_tree(name_or_path)
    d.setdefault("name", Path(name_or_path).stem)
    cfg = from_dict(TrainConfig, apply_overrides(d, overrides or []), where=f"{name_or_path}: ")
    validate(cfg)
    return cfg


def config_from_dict(d: dict) -> TrainConfig:
    """A config saved in a run folder (``config.yaml``) back into a :class:`TrainConfig`."""
    cfg = from_dict(TrainConfig, d)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Value checks that typing cannot express."""
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage: expected one of {', '.join(STAGES)}, got {cfg.stage!r}")
    if cfg.run.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"run.precision: expected auto, bf16 or fp32, got {cfg.run.precision!r}")
    if str(cfg.run.graphs).lower() not in ("auto", "on", "off", "true", "false"):
        raise ConfigError(f"run.graphs: expected auto, on or off, got {cfg.run.graphs!r}")
    if cfg.run.parallel not in ("ddp", "fsdp"):
        raise ConfigError(f"run.parallel: expected ddp or fsdp, got {cfg.run.parallel!r}")
    if cfg.schedule.steps < 1 or cfg.schedule.warmup_steps < 0:
        raise ConfigError("schedule: steps must be >= 1 and warmup_steps >= 0")
    o = cfg.optim
    if not o.lr > 0 or o.backbone_lr_mult < 0 or o.weight_decay < 0 or not o.eps > 0:
        raise ConfigError("optim: lr and eps must be > 0, backbone_lr_mult and weight_decay "
                          f">= 0 (got lr={o.lr}, eps={o.eps}, backbone_lr_mult="
                          f"{o.backbone_lr_mult}, weight_decay={o.weight_decay})")
    if not all(0.0 <= b < 1.0 for b in o.betas) or o.grad_clip < 0:
        raise ConfigError(f"optim: betas must lie in [0, 1) and grad_clip >= 0 (got betas="
                          f"{list(o.betas)}, grad_clip={o.grad_clip})")
    if not 0.0 <= cfg.optim.ema_decay < 1.0:
        raise ConfigError(f"optim.ema_decay: expected 0 <= decay < 1, got {cfg.optim.ema_decay}")
    if cfg.run.keep_checkpoints < 1:
        raise ConfigError("run.keep_checkpoints: must be >= 1")
    if cfg.teacher and cfg.stage != "stage1":
        raise ConfigError("teacher: only a stage1 run takes teacher depth labels")


def save_config(cfg: TrainConfig, path: Path) -> None:
    import yaml

    from da3gs.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
