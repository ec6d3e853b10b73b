"""Stage-2 training throughput, per-sample (``old``) against batched (``new``), in one run.

Usage:
    python scripts/bench_stage2.py [--config stage2-compact] [--impl old new] [--pool 8]
        [--passes 3] [--lpips auto|on|off] [--device cuda|cpu] [--set KEY=VALUE ...]

Each implementation is the trainer's stage-2 step built as :func:`da3gs.train.loop.train`
builds it (``load_config``, ``build_network``, :class:`~da3gs.train.step.StepModule`,
``build_optimizer``, EMA, ``train_step``), with ``stage2.batched`` set: ``old`` is the
per-sample implementation of commit 5efbbbb kept selectable (``stage2.batched=false``: two
frozen forwards split on the host, float64 alignment on the host per sample, one gsplat call
per sample, logs read as floats), ``new`` the batched one (``stage2.batched=true``, the
default). Both start from the same seed (same weights, so their first-step losses agree,
printed as a check: to float rounding with trained weights, to ~1e-3 with random ones, whose
odd cameras magnify it) and step through the same pool of ``--pool``
batches drawn once from the config's data stream and kept on the device. One pass over the
pool warms up (gsplat's kernels load, cuDNN picks its algorithms), then ``--passes`` timed
passes, synchronised only at the end of each: images/s is the median pass.

LPIPS (VGG) weights come from ``$DA3GS_LPIPS_DIR`` or ``~/.cache/da3gs/lpips``
(``lpips_vgg.safetensors``, or ``stage2.loss.lpips_weights=PATH``); ``--lpips auto`` (default)
sets ``stage2.loss.lpips_weight=0`` when they are absent (said in the output), ``off`` always.

Weights: random unless ``--set model.init=CHECKPOINT`` (a stage-1 checkpoint, as training
uses). A random frozen network predicts odd cameras and focal lengths, so its splats' screen
sizes, and with them gsplat's share of the step, are not those of training; the host-side
costs the batched step removes are the same. ``--config stage2-tiny --device cpu`` runs in
seconds (tests).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_train's shared timing

import torch  # noqa: E402

from da3gs.data.sources import make_train_source  # noqa: E402
from da3gs.train.config import load_config  # noqa: E402
from da3gs.train.ema import EMA  # noqa: E402
from da3gs.train.loop import build_network, configure_backends, seed_all  # noqa: E402
from da3gs.train.optim import build_optimizer, lr_at, set_lr  # noqa: E402
from da3gs.train.stage2 import Stage2Objective  # noqa: E402
from da3gs.train.step import StepModule, batch_to_device, train_step  # noqa: E402
from bench_train import time_passes  # noqa: E402

IMPLS = {"old": False, "new": True}  # stage2.batched


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def lpips_overrides(args, cfg) -> tuple[list[str], str]:
    """Overrides turning LPIPS off when asked or when its weights are absent; and a note."""
    from da3gs.metrics.lpips import lpips_cache_dir

    loss = cfg.stage2.loss
    if args.lpips == "off" or loss.lpips_weight == 0:
        return ["stage2.loss.lpips_weight=0"], "LPIPS off"
    path = Path(loss.lpips_weights) if loss.lpips_weights else \
        lpips_cache_dir() / f"lpips_{loss.lpips_net}.safetensors"
    if args.lpips == "auto" and not path.is_file():
        return ["stage2.loss.lpips_weight=0"], f"LPIPS off ({path} not found)"
    return [], f"LPIPS {loss.lpips_net} from {path}"


def config(args, impl: str | None = None):
    over = list(args.set)
    if args.device:
        over.append(f"run.device={args.device}")
    cfg = load_config(args.config, over)
    if cfg.stage != "stage2":
        raise SystemExit(f"--config {args.config}: stage {cfg.stage!r}, not stage2")
    extra, note = lpips_overrides(args, cfg)
    if impl is not None:
        extra.append(f"stage2.batched={str(IMPLS[impl]).lower()}")
    return load_config(args.config, over + extra), note


def device_of(cfg) -> torch.device:
    return torch.device(cfg.run.device if cfg.run.device != "auto" else
                        ("cuda" if torch.cuda.is_available() else "cpu"))


def draw_pool(args) -> list:
    """``--pool`` batches of the config's training stream, on the device (shared by impls)."""
    cfg, _ = config(args)
    dev = device_of(cfg)
    seed_all(cfg.run.seed + 7919)
    source = iter(make_train_source(cfg.data, 0, 1, dev))
    pool = [batch_to_device(next(source), dev) for _ in range(args.pool)]
    _sync(dev)
    return pool


def throughput(impl: str, pool: list, args) -> dict:
    """images/s of one implementation over ``pool`` (module docstring)."""
    cfg, note = config(args, impl)
    dev = device_of(cfg)
    configure_backends(dev)
    seed_all(cfg.run.seed)  # same weights for every implementation
    net = build_network(cfg, dev)
    ema = EMA(net, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    module = StepModule(net, Stage2Objective(cfg.stage2))
    opt = build_optimizer(net, cfg.optim)
    params = [p for p in net.parameters() if p.requires_grad]
    counter = [0]

    def step(batch):
        s = counter[0]
        set_lr(opt, lr_at(s, cfg.optim, cfg.schedule))
        res = train_step(module, params, opt, batch, cfg.optim.grad_clip)
        if ema is not None and not res.skipped:
            ema.update(net, s + 1)
        counter[0] += 1
        return res

    row = {"impl": impl, "note": note}
    imgs = sum(b.images.shape[0] * b.images.shape[1] for b in pool)
    _sync(dev)
    t0 = time.perf_counter()
    first = step(pool[0])
    row["first_loss"] = float(first.loss)
    row["first_step_s"] = time.perf_counter() - t0
    for b in pool[1:]:
        step(b)
    _sync(dev)
    row["warm_pass_s"] = time.perf_counter() - t0
    row["pass_s"] = time_passes(step, pool, args.passes, dev)
    row["images_per_s"] = imgs / row["pass_s"]
    row["images_per_step"] = imgs / len(pool)
    if dev.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        torch.cuda.reset_peak_memory_stats(dev)
    print(f"[{impl}] stage2.batched={IMPLS[impl]}, {note}: first step {row['first_step_s']:.2f} s "
          f"(loss {row['first_loss']:.6f}), warm-up pass {row['warm_pass_s']:.1f} s, "
          f"{args.passes} passes: median {row['pass_s']:.3f} s, {row['images_per_s']:.1f} "
          f"images/s ({row['images_per_step']:.0f} images/step)", flush=True)
    return row


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="stage2-compact")
    ap.add_argument("--impl", nargs="+", choices=list(IMPLS), default=["old", "new"])
    ap.add_argument("--pool", type=int, default=8, help="batches in the pool")
    ap.add_argument("--passes", type=int, default=3, help="timed passes over the pool")
    ap.add_argument("--lpips", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--device", default=None, help="run.device override (cuda, cpu)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = ap.parse_args(argv)
    if args.pool < 1 or args.passes < 1:
        raise SystemExit("--pool and --passes must be >= 1")
    t0 = time.perf_counter()
    pool = draw_pool(args)
    shapes = sorted({tuple(b.shape) for b in pool})
    dev = pool[0].images.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"config {args.config} on {name}: pool of {len(pool)} batches, shapes (B, V, H, W) "
          f"{shapes}, drawn in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for impl in args.impl:
        rows.append(throughput(impl, pool, args))
        gc.collect()  # the implementation's network and optimizer are gone: free their memory
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    base = rows[0]["images_per_s"]
    print(f"\n{'impl':6s} {'images/s':>9s} {'x':>6s} {'img/step':>8s} {'step ms':>8s} "
          f"{'first loss':>11s} {'peak GiB':>8s}")
    for r in rows:
        step_ms = 1e3 * r["pass_s"] / len(pool)
        print(f"{r['impl']:6s} {r['images_per_s']:9.1f} {r['images_per_s'] / base:6.2f} "
              f"{r['images_per_step']:8.0f} {step_ms:8.1f} {r['first_loss']:11.6f} "
              f"{r.get('peak_gib', float('nan')):8.2f}")
    return rows


if __name__ == "__main__":
    main()
