#!/usr/bin/env python
"""Sparse cross-view attention (:mod:`da3gs.nn.sparse_attention`): its cost in quality against
full attention, and its speed on long sequences.

quality: the bundled trained model (``--model mini``) on real scenes of ``../shared/data``
(LLFF fern, lego train views, ICL-NUIM living room) and procedural scenes (orbits and
walkthroughs, views in trajectory order), full attention and each sparse pattern on the same
views: pose AUC@30 (the official benchmark's AUC, as ``da3gs eval pose``) and, where the scene
has ground-truth depth, AbsRel / delta1 (median-aligned per image, as ``da3gs eval depth``); plus
the sparse output's difference to the full one (mean relative depth difference, mean camera
rotation difference in degrees, both in the network's own frame)::

    python scripts/bench_sparse_attention.py quality --views 16 --process-res 252 \
        --patterns k4w1 k8w2 k0w2 n4w1 --json quality.json

speed: forward time and peak memory of a preset with random weights (``build_net``) at
``--views`` views of ``--height x --width`` (bf16 autocast on CUDA), sparse patterns and, up to
``--full-max-views``, full attention. The first forward of each setting builds the block mask
(cached) and compiles flex attention; it is reported apart (``first_s``)::

    python scripts/bench_sparse_attention.py speed --preset large --views 128 512 2048 8192 \
        --height 336 --width 504 --patterns k16w2 n128w2 --full-max-views 1024 --json speed.json

Patterns: ``kKwW`` = keyframe every K views (0: the reference view only) and W neighbours each
side; ``nMwW`` = M keyframes evenly spaced. The markdown table goes to stdout; ``--json`` also
writes every number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from da3gs.nn.sparse_attention import CrossViewPattern, resolve_impl  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
REAL_SCENES = ("fern", "lego", "icl")


def parse_pattern(text: str) -> CrossViewPattern:
    """``k8w2`` -> keyframe every 8, window 2; ``n64w2`` -> 64 keyframes, window 2."""
    m = re.fullmatch(r"([kn])(\d+)w(\d+)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"pattern {text!r}: expected kKwW or nMwW, e.g. k8w2")
    n, w = int(m.group(2)), int(m.group(3))
    if m.group(1) == "k":
        return CrossViewPattern(keyframe_every=n, window=w)
    if n < 1:
        raise argparse.ArgumentTypeError(f"pattern {text!r}: at least one keyframe")
    return CrossViewPattern(num_keyframes=n, window=w)


def pattern_name(p: CrossViewPattern | None) -> str:
    if p is None:
        return "full"
    return (f"n{p.num_keyframes}" if p.num_keyframes is not None else f"k{p.keyframe_every}") + f"w{p.window}"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ----------------------------------------------------------------------------- quality

def _real_scene(name: str, views: int):
    """(images, gt c2w (V, 4, 4) float64, gt depth list or None, note) of a shared scene, the
    views evenly spaced in their capture order."""
    from da3gs.data import load_scene

    if name == "fern":
        scene = load_scene(DATA / "llff_fern", factor=8)
    elif name == "lego":
        scene = load_scene(DATA / "lego_400" / "transforms_train.json")
    elif name == "icl":
        scene = load_scene(DATA / "icl_nuim_livingroom_rgbd5")
    else:
        raise ValueError(name)
    n = len(scene)
    k = min(views, n)
    idx = sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})
    sub = scene.subset(idx)
    imgs = sub.load_images(scene.background or (1.0, 1.0, 1.0))
    depth = None
    if scene.depth_paths is not None:
        depth = [torch.from_numpy(scene.load_depth(i)).float() for i in idx]
    return imgs, scene.c2w[idx].double(), depth, len(idx)


def _procedural(seed: int, views: int, height: int, width: int):
    from da3gs.data.procedural import ProceduralConfig, ProceduralGenerator

    cfg = ProceduralConfig(camera_modes=(0.5, 0.0, 0.5, 0.0))  # orbits, walkthroughs: sequences
    b = ProceduralGenerator(cfg).sample(1, views, height, width, seed=seed)
    depth = [torch.where(b.valid[0, i], b.depth[0, i], torch.zeros(())) for i in range(views)]
    return b.images[0], b.c2w[0].double(), depth, views


def _scores(pred, gt_c2w, gt_depth) -> dict:
    from da3gs.metrics import depth_metrics, pose_auc

    r = {"auc30": pose_auc(pred.c2w.double().cpu(), gt_c2w, thresholds=(30,), mode="bench")["auc@30"]}
    if gt_depth is not None:
        rel, d1 = [], []
        for j, g in enumerate(gt_depth):
            p = F.interpolate(pred.depth[j][None, None].float().cpu(), size=tuple(g.shape),
                              mode="bilinear", align_corners=False)[0, 0]
            m = depth_metrics(p, g, align="median", reduction="none")
            if not math.isnan(float(m["abs_rel"][0])):
                rel.append(float(m["abs_rel"][0]))
                d1.append(float(m["delta1"][0]))
        r["abs_rel"] = sum(rel) / len(rel) if rel else float("nan")
        r["delta1"] = sum(d1) / len(d1) if d1 else float("nan")
    return r


def _difference(pred, full) -> dict:
    from da3gs.metrics.pose import rotation_angle_deg

    d = ((pred.depth - full.depth).abs() / full.depth.abs().clamp(min=1e-6)).mean()
    R = pred.c2w[:, :3, :3].double()
    Rf = full.c2w[:, :3, :3].double()
    rot = rotation_angle_deg(Rf.transpose(1, 2) @ R).mean()
    return {"depth_diff": float(d), "rot_diff_deg": float(rot)}


def run_quality(args) -> dict:
    from da3gs import load_model

    dev = torch.device(args.device)
    model = load_model(args.model, device=dev)
    scenes = []
    for name in args.real:
        if not DATA.exists():
            print(f"note: {DATA} not found; real scenes skipped", file=sys.stderr)
            break
        scenes.append((name, lambda name=name: _real_scene(name, args.views)))
    for s in range(args.procedural):
        scenes.append((f"procedural-{s}", lambda s=s: _procedural(
            s, args.views, args.proc_height, args.proc_width)))
    rows = []
    for name, load in scenes:
        imgs, gt_c2w, gt_depth, V = load()
        full = None
        for pattern in [None, *args.patterns]:
            model.set_cross_view_attention(pattern)
            t0 = time.perf_counter()
            pred = model.infer(imgs, process_res=args.process_res, ref_view=args.ref_view,
                               precision="fp32" if dev.type == "cpu" else "auto")
            row = {"scene": name, "views": V, "pattern": pattern_name(pattern),
                   "time_s": round(time.perf_counter() - t0, 3), **_scores(pred, gt_c2w, gt_depth)}
            if pattern is None:
                full = pred
            else:
                row.update(_difference(pred, full))
            rows.append(row)
            print(f"  {name} {row['pattern']}: {row}", file=sys.stderr)
    model.set_cross_view_attention(None)
    return {"task": "quality", "model": args.model, "device": str(dev), "views": args.views,
            "process_res": args.process_res, "ref_view": args.ref_view, "rows": rows}


def quality_table(res: dict) -> str:
    lines = ["| scene | views | attention | AUC@30 | AbsRel | delta1 | depth diff vs full | "
             "rotation diff vs full (deg) | time (s) |", "|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, p=3: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{p}f}"  # noqa: E731
    for r in res["rows"]:
        lines.append(f"| {r['scene']} | {r['views']} | {r['pattern']} | {f(r['auc30'])} | "
                     f"{f(r.get('abs_rel'), 4)} | {f(r.get('delta1'))} | {f(r.get('depth_diff'), 4)} | "
                     f"{f(r.get('rot_diff_deg'), 3)} | {r['time_s']:.2f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- speed

def run_speed(args) -> dict:
    from da3gs.models.net import build_net
    from da3gs.nn.sparse_attention import clear_cache

    dev = torch.device(args.device)
    torch.manual_seed(0)
    net = build_net(args.preset).to(dev).eval()
    backbones = [m for m in net.modules() if type(m).__name__ == "Backbone"]
    ps = backbones[0].patch_size
    if args.height % ps or args.width % ps:
        raise SystemExit(f"--height/--width must be multiples of the patch size {ps}")
    amp = dev.type == "cuda" and not args.fp32
    rows = []
    for V in args.views:
        x = torch.randn(1, V, 3, args.height, args.width, device=dev)
        settings = ([None] if V <= args.full_max_views else []) + [
            dataclasses.replace(p, impl=args.impl, chunk_views=args.chunk_views) for p in args.patterns]
        for pattern in settings:
            for b in backbones:
                b.cross_view_attention = pattern
            clear_cache()
            row = {"views": V, "pattern": pattern_name(pattern),
                   "impl": "sdpa" if pattern is None else resolve_impl(pattern, dev)}
            try:
                times = []
                for r in range(args.repeats + 1):
                    if dev.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(dev)
                    _sync(dev)
                    t0 = time.perf_counter()
                    with torch.inference_mode(), torch.autocast(dev.type, torch.bfloat16, enabled=amp):
                        out = net.backbone(x) if args.backbone_only and hasattr(net, "backbone") else net(x)
                    _sync(dev)
                    times.append(time.perf_counter() - t0)
                    del out
                row["first_s"] = round(times[0], 3)
                row["time_s"] = round(min(times[1:] or times), 3)
                if dev.type == "cuda":
                    row["peak_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
            except torch.OutOfMemoryError:
                row["error"] = "out of memory"
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(f"  {row}", file=sys.stderr)
        del x
    return {"task": "speed", "preset": args.preset, "device": str(dev),
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor(),
            "size": [args.height, args.width], "bf16": amp, "backbone_only": args.backbone_only,
            "torch": torch.__version__, "rows": rows}


def speed_table(res: dict) -> str:
    lines = ["| views | attention | impl | time (s) | first call (s) | peak memory (GiB) |",
             "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['views']} | {r['pattern']} | {r['impl']} | {r['error']} | - | - |")
            continue
        lines.append(f"| {r['views']} | {r['pattern']} | {r['impl']} | {r['time_s']:.3f} | "
                     f"{r['first_s']:.3f} | {r.get('peak_gib', '-')} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="task", required=True)
    q = sub.add_parser("quality", help="pose AUC and depth error, sparse vs full attention")
    q.add_argument("--model", default="mini")
    q.add_argument("--views", type=int, default=16)
    q.add_argument("--process-res", type=int, default=252)
    q.add_argument("--ref-view", default="saddle_balanced")
    q.add_argument("--real", nargs="*", default=list(REAL_SCENES), choices=REAL_SCENES)
    q.add_argument("--procedural", type=int, default=2, help="procedural scenes (seeds 0..n-1)")
    q.add_argument("--proc-height", type=int, default=168)
    q.add_argument("--proc-width", type=int, default=252)
    q.add_argument("--patterns", nargs="+", type=parse_pattern,
                   default=[parse_pattern(s) for s in ("k4w1", "k8w2", "k0w2", "n4w1")])
    s = sub.add_parser("speed", help="forward time and peak memory at many views")
    s.add_argument("--preset", default="large")
    s.add_argument("--views", type=int, nargs="+", default=[128, 512, 2048, 8192])
    s.add_argument("--height", type=int, default=336)
    s.add_argument("--width", type=int, default=504)
    s.add_argument("--patterns", nargs="+", type=parse_pattern,
                   default=[parse_pattern(s) for s in ("k16w2", "n128w2")])
    s.add_argument("--full-max-views", type=int, default=1024,
                   help="full attention only up to this many views (default 1024)")
    s.add_argument("--repeats", type=int, default=1, help="timed forwards after the first")
    s.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    s.add_argument("--impl", default="auto", choices=["auto", "flex", "chunked"],
                   help="sparse attention implementation (default auto: flex on CUDA)")
    s.add_argument("--chunk-views", type=int, default=None,
                   help="query views per chunk of the chunked implementation (default: auto)")
    s.add_argument("--backbone-only", action="store_true", help="time the backbone, not the heads")
    for a in (q, s):
        a.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        a.add_argument("--json", default=None, help="also write the results here")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    res = run_quality(args) if args.task == "quality" else run_speed(args)
    print(quality_table(res) if args.task == "quality" else speed_table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
