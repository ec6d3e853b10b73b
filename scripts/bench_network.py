"""Network forward time: da3gs vs the official depth-anything-3 package, same run, same inputs.

Both networks get identical random weights (ours converted from the official state dict), run
under bf16 autocast on CUDA with inputs of 504 x 336 (as in docs/benchmarks.md). Reports the
median of --repeats timed forwards after --warmup, images/s and peak memory, as markdown rows.

Usage: python scripts/bench_network.py --presets small base large giant --views 8 32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _time(fn, repeats: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["small", "base", "large", "giant"])
    ap.add_argument("--views", nargs="+", type=int, default=[8, 32])
    ap.add_argument("--height", type=int, default=336)
    ap.add_argument("--width", type=int, default=504)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--gs", action="store_true", help="also run the GS head (giant)")
    args = ap.parse_args()
    from da3gs.models.convert import official_to_ours
    from da3gs.models.net import build_net
    from da3gs.models.presets import get_preset
    from tests.official_ref import build_official

    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 autocast, "
          f"{args.width}x{args.height}, median of {args.repeats}")
    print("| preset | views | official s | da3gs s | ratio da3gs/official | images/s (da3gs) | peak GiB official / da3gs |")
    print("|---|---|---|---|---|---|---|")
    for name in args.presets:
        preset = get_preset(name)
        off = build_official(preset.official_name, seed=0).to(dev)
        ours = build_net(preset)
        ours.load_state_dict(official_to_ours(off.state_dict()))
        ours = ours.to(dev).eval()
        for V in args.views:
            x = torch.randn(1, V, 3, args.height, args.width, device=dev)

            def run_off():
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    off(x, None, None, export_feat_layers=[], infer_gs=args.gs)

            def run_ours():
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    ours(x, infer_gs=args.gs)

            t_off, m_off = _time(run_off, args.repeats, args.warmup)
            t_ours, m_ours = _time(run_ours, args.repeats, args.warmup)
            print(f"| {name}{' + GS' if args.gs else ''} | {V} | {t_off:.4f} | {t_ours:.4f} | "
                  f"{t_ours / t_off:.3f} | {V / t_ours:.1f} | {m_off:.1f} / {m_ours:.1f} |",
                  flush=True)
        off = ours = None  # free the networks (not del: the closures above read them)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
