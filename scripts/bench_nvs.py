#!/usr/bin/env python
"""Novel-view-synthesis benchmark: ``da3gs eval nvs`` over scenes, results as a markdown table.

    python scripts/bench_nvs.py --scenes ../shared/data/llff_fern ../shared/data/lego_400 \
        --model depth-anything/DA3-GIANT --pose-mode free conditioned --refine-steps 0 500

Each scene is ``PATH`` or ``PATH:PRESET``; presets (auto-detected when omitted):
  * ``llff`` (``poses_bounds.npy``): every 8th view a target, context = all the other views
    (``--context`` set to their number, so the 16-view default cap does not apply), images
    ``images_{--llff-factor}`` (default 8: 504 x 378 for the LLFF release);
  * ``blender`` (``transforms_test.json``): ``split:test`` targets, ``--blender-context`` (default
    4) train views by farthest-point sampling, white background;
  * ``default``: ``every8`` targets and eval's default context.
Every (scene, pose mode, refine steps) combination runs as its own ``da3gs eval nvs`` process;
outputs go to ``--out-root/<scene>_<mode>_r<steps>``. The table (``--output``, default
``docs/nvs_results.md``) lists scene, model, pose mode, context, refine steps, PSNR / SSIM /
LPIPS (before -> after when refined), time, device, date and the exact command. Without
``--append`` the file is rewritten (intro and table); with ``--append`` the new rows go under
the file's existing table of this header (a new table at the end when there is none) and the
rest of the file, prose and other tables, is kept.

Per-scene optimisation baseline: ``--inits model random`` also runs, for each scene and each
refine-steps value K > 0, ``da3gs eval nvs --init random --refine-steps K`` (randomly initialised
Gaussians fitted to the same context views with their ground-truth cameras for the same K steps,
no network; K = 0 is skipped, random Gaussians unrefined mean nothing), in
``--out-root/<scene>_random_r<steps>``; its rows read ``random init (N)`` in the model column
and ``gt`` in the pose-mode column, so the table compares the model with per-scene optimisation
at equal refinement steps::

    python scripts/bench_nvs.py --scenes ../shared/data/llff_fern --model mini \
        --pose-mode conditioned free --refine-steps 0 100 --inits model random --append

Densification: ``--strategies none default mcmc`` runs every refined (K > 0) combination once per
strategy (``da3gs eval nvs --refine-strategy S``, folder suffix ``_S``); the refine-steps
column then reads ``K S``. One command thus gives both inits at the same steps and strategies::

    python scripts/bench_nvs.py --scenes ../shared/data/llff_fern --model mini \
        --pose-mode conditioned --refine-steps 100 500 2000 --inits model random \
        --strategies none default mcmc --append

After the runs a comparison is printed (and returned by :func:`comparison`): for each scene,
steps and strategy, the model's PSNR / LPIPS after refinement beside random init's and the
difference (model - random; the issue-21 bar: PSNR >= 0 and LPIPS <= 0).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = ("| scene | model | pose mode | context | refine steps | PSNR | SSIM | LPIPS-vgg | "
          "LPIPS-alex | time (s) | device | date | command |")
INTRO = """# Novel-view synthesis results

Written by `scripts/bench_nvs.py` (`da3gs eval nvs`). PSNR per target image, then the mean;
SSIM in the mode stated in each run's metrics.json (default: Gaussian window 11, sigma 1.5,
torchmetrics convention); LPIPS v0.1 with VGG and AlexNet. Pose-free runs are Sim(3)-aligned
to the ground-truth context cameras before the targets are rendered. With refinement the
columns read `before -> after`. Time: the eval's total from metrics.json (model load,
inference, alignment, refinement, rendering and scoring; not the process start-up).

"""


def preset_of(path: Path, name: str | None) -> str:
    if name:
        if name not in ("llff", "blender", "default"):
            raise SystemExit(f"bench_nvs: unknown preset {name!r} (llff, blender, default)")
        return name
    if (path / "poses_bounds.npy").is_file():
        return "llff"
    if (path / "transforms_test.json").is_file():
        return "blender"
    return "default"


def protocol_args(path: Path, preset: str, args) -> list[str]:
    if preset == "llff":
        from da3gs.data import load_scene

        n = len(load_scene(path, "llff", factor=args.llff_factor))
        return ["--targets", "every8", "--scene-opt", f"factor={args.llff_factor}",
                "--context", str(n - math.ceil(n / 8)), "--select", "fps"]
    if preset == "blender":
        return ["--targets", "split:test", "--context", str(args.blender_context), "--select", "fps"]
    return ["--targets", "every8"]


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.get_device_name(torch.device("cuda" if device == "auto" else device))
    return "cpu"


def cell(mean: dict, before: dict | None, key: str, fmt: str) -> str:
    if key not in mean:
        return "-"
    after = fmt.format(mean[key])
    return f"{fmt.format(before[key])} -> {after}" if before and key in before else after


def row(m: dict, cmd: list[str], steps: int, device: str, strategy: str = "none") -> str:
    mean, before = m["mean"], m.get("mean_before_refinement")
    p = m["protocol"]
    model = m["model"]
    if p.get("init") == "random":
        model = f"random init ({p['init_points']}, extent x{p['init_extent']:g})"
    cols = [Path(m["scene"]).name, model, p["pose_mode"],
            f"{len(p['context_indices'])} ({p['context_select']})",
            str(steps) + (f" {strategy}" if strategy != "none" else ""),
            cell(mean, before, "psnr", "{:.2f}"), cell(mean, before, "ssim", "{:.4f}"),
            cell(mean, before, "lpips_vgg", "{:.4f}"), cell(mean, before, "lpips_alex", "{:.4f}"),
            f"{m['timings_s']['total']:.1f}", device, m["date"][:10],
            "`" + " ".join(shlex.quote(c) for c in cmd) + "`"]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cols) + " |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", nargs="+", required=True, help="PATH or PATH:PRESET (llff, blender, default)")
    ap.add_argument("--model", default="depth-anything/DA3-GIANT")
    ap.add_argument("--pose-mode", nargs="+", default=["free"], choices=["free", "conditioned"])
    ap.add_argument("--refine-steps", nargs="+", type=int, default=[0])
    ap.add_argument("--refine-cameras", action="store_true")
    ap.add_argument("--process-res", type=int, default=504)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--llff-factor", type=int, default=8)
    ap.add_argument("--blender-context", type=int, default=4)
    ap.add_argument("--lpips", default="vgg,alex")
    ap.add_argument("--max-targets", type=int, default=None, help="quick runs: score at most N targets")
    ap.add_argument("--inits", nargs="+", default=["model"], choices=["model", "random"],
                    help="model: the network's Gaussians (default); random: also the per-scene "
                    "baseline from random Gaussians at each refine-steps value > 0")
    ap.add_argument("--init-points", type=int, default=100_000,
                    help="--inits random: number of random Gaussians (eval's --init-points)")
    ap.add_argument("--init-extent", type=float, default=3.0,
                    help="--inits random: cube half-side in camera extents (eval's --init-extent)")
    ap.add_argument("--strategies", nargs="+", default=["none"], choices=["none", "default", "mcmc"],
                    help="densification strategies of the refined runs (eval's --refine-strategy); "
                    "each K > 0 run is repeated per strategy")
    ap.add_argument("--out-root", default="bench_out/nvs", help="folder for the eval outputs")
    ap.add_argument("--output", default=str(ROOT / "docs" / "nvs_results.md"))
    ap.add_argument("--append", action="store_true", help="keep the rows already in --output")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)

    if args.init_points < 4:
        ap.error(f"--init-points: expected at least 4, got {args.init_points}")
    if not (math.isfinite(args.init_extent) and args.init_extent > 0):
        ap.error(f"--init-extent: expected a positive number, got {args.init_extent}")
    rows, failed, results = [], 0, []
    dev = device_name(args.device) if not args.dry_run else args.device
    for spec in args.scenes:
        path_s, _, name = spec.rpartition(":") if ":" in spec and not Path(spec).exists() else (spec, "", "")
        path = Path(path_s)
        preset = preset_of(path, name or None)
        proto = protocol_args(path, preset, args)
        runs = []  # (label, eval flags, refine steps, output folder, strategy)
        strats = lambda steps: args.strategies if steps > 0 else ["none"]  # noqa: E731
        sfx = lambda s: "" if s == "none" else f"_{s}"  # noqa: E731
        if "model" in args.inits:
            runs += [(mode, ["--model", args.model, "--pose-mode", mode], steps,
                      f"{path.name}_{mode}_r{steps}{sfx(st)}", st)
                     for mode in args.pose_mode for steps in args.refine_steps for st in strats(steps)]
        if "random" in args.inits:
            if 0 in args.refine_steps:
                print(f"bench_nvs: {path.name}: random init is not run at 0 refine steps",
                      file=sys.stderr)
            runs += [("random init", ["--init", "random", "--init-points", str(args.init_points),
                                      "--init-extent", f"{args.init_extent:g}"], steps,
                      f"{path.name}_random_r{steps}{sfx(st)}", st)
                     for steps in args.refine_steps if steps > 0 for st in strats(steps)]
        for label, flags, steps, folder, strat in runs:
            out = Path(args.out_root) / folder
            cmd = ["da3gs", "eval", "nvs", "--scene", str(path), *flags,
                   "--process-res", str(args.process_res),
                   "--device", args.device, "--lpips", args.lpips, *proto,
                   "--out", str(out), "--overwrite", "-q"]
            if steps:
                cmd += ["--refine-steps", str(steps)]
                cmd += ["--refine-cameras"] if args.refine_cameras else []
                cmd += ["--refine-strategy", strat] if strat != "none" else []
            if args.max_targets:
                cmd += ["--max-targets", str(args.max_targets)]
            print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
            if args.dry_run:
                continue
            res = subprocess.run([sys.executable, "-m", "da3gs.cli", *cmd[1:]])
            if res.returncode != 0:
                print(f"bench_nvs: {path.name} ({label}, {steps} steps) failed with status "
                      f"{res.returncode}", file=sys.stderr)
                failed += 1
                continue
            m = json.loads((out / "metrics.json").read_text())
            rows.append(row(m, cmd, steps, dev, strat))
            results.append((path.name, label, steps, strat, m))
            print(rows[-1], flush=True)
    if args.dry_run:
        return 0
    print(comparison(results))
    output = Path(args.output)
    write_table(output, rows, args.append)
    print(f"bench_nvs: {len(rows)} rows -> {output}" + (f"; {failed} runs failed" if failed else ""))
    return 1 if failed else 0


def comparison(results: list[tuple]) -> str:
    """Markdown table: per (scene, pose mode, steps, strategy) the model's PSNR / LPIPS after
    refinement, random init's at the same steps and strategy, and model - random.

    ``results``: ``(scene, label, steps, strategy, metrics.json dict)`` per run, label
    ``"random init"`` for the baseline and the pose mode otherwise."""
    def lp(mean):
        return mean.get("lpips_vgg", mean.get("lpips_alex", float("nan")))

    rand = {(sc, st, s): m["mean"] for sc, lab, st, s, m in results if lab == "random init"}
    out = ["| scene | pose mode | steps | strategy | model PSNR | random PSNR | dPSNR | "
           "model LPIPS | random LPIPS | dLPIPS |", "|---|---|---|---|---|---|---|---|---|---|"]
    for sc, lab, st, s, m in results:
        if lab == "random init" or st == 0:
            continue
        r, mm = rand.get((sc, st, s)), m["mean"]
        if r is None:
            cells = [f"{mm['psnr']:.2f}", "-", "-", f"{lp(mm):.4f}", "-", "-"]
        else:
            cells = [f"{mm['psnr']:.2f}", f"{r['psnr']:.2f}", f"{mm['psnr'] - r['psnr']:+.2f}",
                     f"{lp(mm):.4f}", f"{lp(r):.4f}", f"{lp(mm) - lp(r):+.4f}"]
        out.append("| " + " | ".join([sc, lab, str(st), s, *cells]) + " |")
    return "\n".join(out)


def table_text(old: str | None, rows: list[str]) -> str:
    """The results file: ``INTRO`` and a fresh table when ``old`` is None; else ``old`` with
    ``rows`` inserted after the last row of its table headed by ``HEADER`` (or, when it has
    none, a new table of that header appended at its end), the rest of ``old`` unchanged."""
    sep = "|" + "---|" * HEADER.count(" | ") + "---|"
    if old is None:
        return INTRO + "\n".join([HEADER, sep, *rows]) + "\n"
    lines = old.splitlines()
    if HEADER not in lines:
        body = old.rstrip("\n")
        return (body + "\n\n" if body else "") + "\n".join([HEADER, sep, *rows]) + "\n"
    end = lines.index(HEADER) + 1
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[:end] + rows + lines[end:]) + "\n"


def write_table(output: Path, rows: list[str], append: bool) -> None:
    """Write the results file atomically (:func:`table_text`; ``append`` keeps the file)."""
    from da3gs.io.atomic import atomic_path

    old = output.read_text() if append and output.is_file() else None
    text = table_text(old, rows)
    with atomic_path(output) as tmp:
        tmp.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
