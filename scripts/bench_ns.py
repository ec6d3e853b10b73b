"""Held-out PSNR/SSIM/LPIPS of nerfstudio methods at given steps: `da3gs` vs `splatfacto`.

Both train on the same nerfstudio dataset folder (transforms.json + images) with the same split
(every --eval-interval-th image held out, nerfstudio's "interval" mode), through nerfstudio's
own Trainer (callbacks, densification and optimisers exactly as `ns-train` runs them); this
script only drives the step loop so it can evaluate all held-out images at step 0 too.
splatfacto starts from its usual initialisation for a dataset without SfM points (random).
LPIPS: AlexNet, da3gs' offline weights for both methods (nerfstudio's would download).

Usage: python scripts/bench_ns.py --data DIR --model depth-anything/DA3-GIANT --steps 0 500 2000
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _config(method: str, data: Path, args, out: Path):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from da3gs.ns_plugin.dataparser import Da3gsDataParserConfig

    if method == "splatfacto":
        from nerfstudio.configs.method_configs import method_configs

        cfg = copy.deepcopy(method_configs["splatfacto"])
        cfg.pipeline.datamanager.dataparser = NerfstudioDataParserConfig(
            data=data, eval_mode="interval", eval_interval=args.eval_interval, load_3D_points=False)
    else:
        from da3gs.ns_plugin.configs import da3gs_method

        cfg = copy.deepcopy(da3gs_method.config)
        cfg.pipeline.datamanager.dataparser = Da3gsDataParserConfig(
            data=data, model=args.model, cameras=args.cameras, eval_interval=args.eval_interval)
    cfg.output_dir = out
    cfg.vis = "tensorboard"
    cfg.max_num_iterations = max(args.steps) + 1
    cfg.viewer.quit_on_train_completion = True
    cfg.set_timestamp()
    return cfg


def run(method: str, data: Path, args, out: Path) -> dict:
    from nerfstudio.engine.callbacks import TrainingCallbackLocation

    from da3gs.ns_plugin.model import _patch_lpips

    _patch_lpips()
    cfg = _config(method, data, args, out)
    t0 = time.perf_counter()
    trainer = cfg.setup(local_rank=0, world_size=1)
    trainer.setup()
    setup_s = time.perf_counter() - t0
    res, train_s = {}, 0.0
    for step in range(max(args.steps) + 1):
        if step in args.steps:
            trainer.pipeline.eval()
            with torch.no_grad():
                m = trainer.pipeline.get_average_eval_image_metrics(step=step)
            res[step] = {k: float(m[k]) for k in ("psnr", "ssim", "lpips") if k in m}
            res[step]["train_s"] = round(train_s, 2)
            res[step]["gaussians"] = int(trainer.pipeline.model.num_points)
            print(method, step, res[step], flush=True)
        if step == max(args.steps):
            break
        torch.cuda.synchronize()
        t = time.perf_counter()
        trainer.pipeline.train()
        for cb in trainer.callbacks:
            cb.run_callback_at_location(step, location=TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        trainer.train_iteration(step)
        for cb in trainer.callbacks:
            cb.run_callback_at_location(step, location=TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        torch.cuda.synchronize()
        train_s += time.perf_counter() - t
    return {"setup_s": round(setup_s, 2), "steps": res,
            "eval_images": len(trainer.pipeline.datamanager.eval_dataset)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="depth-anything/DA3-GIANT")
    ap.add_argument("--cameras", default="dataset", choices=["auto", "dataset", "predicted"])
    ap.add_argument("--methods", nargs="+", default=["da3gs", "splatfacto"])
    ap.add_argument("--steps", nargs="+", type=int, default=[0, 500, 2000])
    ap.add_argument("--eval-interval", type=int, default=8)
    ap.add_argument("--output", default=None, help="append markdown rows here")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    data = Path(args.data)
    results = {}
    for method in args.methods:
        with tempfile.TemporaryDirectory() as tmp:
            results[method] = run(method, data, args, Path(tmp))
    dev = torch.cuda.get_device_name()
    date = datetime.date.today().isoformat()
    rows = []
    for method, r in results.items():
        cells = " | ".join(f"{r['steps'][s]['psnr']:.2f}" for s in args.steps)
        last = r["steps"][max(args.steps)]
        rows.append(f"| {data.name} | {method} | {args.model if method == 'da3gs' else 'random init'} "
                    f"| {cells} | {last.get('ssim', float('nan')):.4f} | {last.get('lpips', float('nan')):.4f} "
                    f"| {last['gaussians']} | {r['setup_s']} | {last['train_s']} | {r['eval_images']} | {dev} | {date} |")
    print("\n".join(rows))
    if args.output:
        with open(args.output, "a") as f:
            f.write("\n".join(rows) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
