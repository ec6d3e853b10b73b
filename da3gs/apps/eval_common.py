"""What ``da3gs eval nvs`` (:mod:`da3gs.apps.eval_nvs`), ``eval recon``
(:mod:`da3gs.apps.eval_recon`) and ``eval pose | depth`` (:mod:`da3gs.apps.eval`) share: their
common flags, scene loading, output folder, the protocols' hooks (:mod:`da3gs.eval`) and the
metrics.json header and writer."""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from da3gs.apps.common import (add_gpus_flag, add_model_flags, add_run_flags, check_number,
                               job_infer, sparse_attention_pattern, versions)
from da3gs.apps.outputs import check_output_dir, write_output_dir
from da3gs.errors import Da3gsError
from da3gs.eval.common import EvalSceneError, Hooks

__all__ = ["NERF_FORMATS", "add_eval_flags", "check_eval_args", "scene_opts", "load_eval_scene",
           "eval_out_dir", "eval_hooks", "scene_errors", "metrics_header", "write_metrics"]

NERF_FORMATS = ("blender", "nerfstudio", "nerf", "instant-ngp", "ngp")


def add_eval_flags(p) -> None:
    """Flags of every ``eval`` task: scene, model, run and output."""
    p.add_argument("--scene", required=True, help="scene folder or camera file (any da3gs format)")
    p.add_argument("--format", default="auto", help="scene format (default: auto-detect)")
    p.add_argument("--scene-opt", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="scene reader options, e.g. factor=8 (LLFF images_8), split=all")
    add_model_flags(p, "network input size (default 504)")
    add_run_flags(p, "<scene>_eval_<task>", "random seed (random: models, refinement)")
    add_gpus_flag(p)


def check_eval_args(args) -> None:
    """Flag values shared by the eval tasks, before anything is read (errors name the flag)."""
    check_number(args.process_res, "--process-res", 14, what="an integer >= 14")
    sparse_attention_pattern(args)


def scene_opts(items: list[str]) -> dict:
    """``--scene-opt KEY=VALUE ...`` -> reader options (values parsed as JSON when they are)."""
    opts = {}
    for it in items:
        if "=" not in it:
            raise Da3gsError(f"--scene-opt: expected KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            opts[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            opts[k.strip()] = v
    return opts


def load_eval_scene(args, targets: str | None = None):
    """The ``--scene`` (``split=all`` for Blender-style scenes with ``split:`` targets)."""
    from da3gs.data import detect_format, load_scene
    from da3gs.data.scene import SceneError

    opts = scene_opts(args.scene_opt)
    fmt = str(args.format).lower()
    if targets and targets.startswith("split:") and "split" not in opts:
        fam = detect_format(args.scene) if fmt == "auto" else ("nerf" if fmt in NERF_FORMATS else fmt)
        if fam == "nerf":
            opts["split"] = "all"
    try:
        return load_scene(args.scene, args.format, **opts)
    except SceneError as e:  # reader options are --scene-opt KEY=VALUE on the command line
        raise Da3gsError(re.sub(r"(?<![-\w])(factor|images_dir|split|holdout)=",
                                r"--scene-opt \1=", str(e))) from None


def eval_out_dir(args, task: str) -> Path:
    """``--out`` (default ``<scene>_eval_<task>``), checked (:func:`check_output_dir`)."""
    scene = Path(args.scene)
    base = scene if scene.is_dir() else scene.parent
    out = Path(args.out) if args.out else base.parent / f"{base.name}_eval_{task}"
    check_output_dir(out, [("--scene", scene), ("--scene", base), ("--checkpoint", args.checkpoint),
                           ("--model", args.model)], args.overwrite)
    return out


def eval_hooks(args, timer, progress=None) -> Hooks:
    """The app's hooks of a protocol (:class:`da3gs.eval.Hooks`): ``timer`` stages, ``progress``
    bars and the context-parallel inference of ``--gpus`` (:func:`job_infer`)."""
    return Hooks(timer=timer, progress=progress,
                 infer=lambda model, *a, **kw: job_infer(model, args, *a, **kw))


@contextmanager
def scene_errors(args):
    """:class:`da3gs.eval.EvalSceneError` -> one-line error naming ``--scene``."""
    try:
        yield
    except EvalSceneError as e:
        raise Da3gsError(f"--scene {args.scene}: {e}") from None


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(type(o).__name__)


def metrics_header(args, task, scene, source, device) -> dict:
    """The fields every metrics.json starts with: task, scene, model, device, date, args."""
    return {"task": task, "scene": str(args.scene), "format": scene.format, "model": source,
            "device": str(device), "process_res": args.process_res,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "args": {k: v for k, v in vars(args).items() if k not in ("command", "eval_task")},
            "versions": versions()}


def write_metrics(out: Path, metrics: dict, t0: float, timer, files: dict | None = None) -> None:
    """Write ``metrics.json`` (with timings) and the image ``files`` {relative path: uint8
    array} into ``out`` atomically."""
    import time

    from PIL import Image

    metrics["timings_s"] = dict(timer.times, total=round(time.perf_counter() - t0, 4))
    with write_output_dir(out, f"eval {metrics.get('task', '')}".strip()) as tmp:
        for rel, arr in (files or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(tmp / rel)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default))
