"""``da3gs train --config NAME_OR_PATH [key=value ...]``: train a network (stage 1 or the
monocular teacher) from a config preset, or evaluate a checkpoint with ``--eval-only``.

Several GPUs or machines: launch the same command line with ``torchrun``
(``torchrun --nproc_per_node 8 -m da3gs.cli train --config ...``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["add_train_parser", "run_train"]


def add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a network from a config (stage 1, teacher); --eval-only to measure",
        description="Train from a config preset (name, e.g. stage1-compact, or a YAML path) with "
        "key=value overrides (e.g. schedule.steps=2000 data.batch_size=8). Writes a run folder "
        "(run.out, default runs/<config>) with checkpoints, metrics.jsonl and TensorBoard events.")
    p.add_argument("--config", help="config preset name or YAML file (required unless "
                   "--list-configs)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, typed by the config field (a.b.c=value)")
    p.add_argument("--out", default=None, help="run folder (same as run.out=...)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in its folder from the newest checkpoint (starts a new "
                   "run when the folder has none), so one command line can be repeated")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop cleanly with a checkpoint before this many minutes (run.max_minutes)")
    p.add_argument("--eval-only", action="store_true",
                   help="no training: evaluate --checkpoint (or the config's initialisation) on "
                   "the held-out sets and print the metrics as JSON")
    p.add_argument("--checkpoint", default=None,
                   help="with --eval-only: a model source (checkpoint folder, official model)")
    p.add_argument("--eval-out", default=None, help="with --eval-only: also write the JSON here")
    p.add_argument("--list-configs", action="store_true", help="print the config presets and exit")


def run_train(args) -> None:
    from da3gs.train.config import load_config, preset_names

    if args.list_configs:
        print("\n".join(preset_names()))
        return
    if not args.config:
        from da3gs.errors import Da3gsError

        raise Da3gsError("--config is required (a preset name from --list-configs, or a YAML)")
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"run.out={args.out}")
    if args.max_minutes is not None:
        overrides.append(f"run.max_minutes={args.max_minutes}")
    cfg = load_config(args.config, overrides)
    if args.eval_only:
        from da3gs.io.atomic import atomic_path
        from da3gs.train.loop import evaluate_only

        res = evaluate_only(cfg, args.checkpoint)
        rec = {"model": args.checkpoint or (cfg.model.init or f"random:{cfg.model.preset}"),
               "config": args.config, "metrics": res}
        text = json.dumps(rec, indent=2)
        print(text)
        if args.eval_out:
            with atomic_path(args.eval_out) as tmp:
                Path(tmp).write_text(text + "\n")
        return
    from da3gs.errors import Da3gsError
    from da3gs.train.loop import run_dir_of, train

    try:
        res = train(cfg, resume=args.resume)
    except OSError as e:  # the environment (disk full, read-only, a file where a folder goes)
        where = e.filename or run_dir_of(cfg)
        raise Da3gsError(f"{where}: {e.strerror or e} (run folder {run_dir_of(cfg)}; "
                         "the newest complete checkpoint there is intact)") from None
    print(json.dumps({"run_dir": str(res.run_dir), "step": res.step, "reason": res.reason,
                      "checkpoint": str(res.checkpoint) if res.checkpoint else None,
                      "bad_steps": res.bad_total, "metrics": res.last_metrics}),
          file=sys.stdout)
