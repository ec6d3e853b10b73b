"""Time and profile one network forward of da3gs (random weights) in each inference mode.

Modes: ``--exact`` (the official numerics: bf16 backbone, fp32 heads) or the fast path (bf16
heads, the default), optionally with ``--compile blocks`` / ``--compile blocks,heads``
(``da3gs.models.net.compile_network``: the transformer blocks, and the heads' per-chunk
forward, as ``DA3Model.enable_compile`` does). Prints the first call's time (it compiles), the median of
``--repeats`` forwards after ``--warmup``, images/s and peak memory, and with ``--profile`` the
top CUDA kernels of one more forward (``torch.profiler``). CUDA only; bf16 autocast, 504 x 336.
Against the official package, use ``bench_inference.py`` (same run, accuracy checked).

Usage: python scripts/bench_profile.py --preset large --views 32 [--exact] [--compile blocks,heads]
    [--gs] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="large")
    ap.add_argument("--views", type=int, default=32)
    ap.add_argument("--height", type=int, default=336)
    ap.add_argument("--width", type=int, default=504)
    ap.add_argument("--gs", action="store_true", help="run the GS head too (presets with one)")
    ap.add_argument("--exact", action="store_true", help="the official numerics (fp32 heads)")
    ap.add_argument("--compile", default="", help="comma list: blocks, heads")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    from da3gs.models.net import build_net, compile_network

    net = build_net(a.preset).cuda().eval()
    t0 = time.perf_counter()
    if a.compile:
        compile_network(net, blocks="blocks" in a.compile, heads="heads" in a.compile)
    x = torch.randn(1, a.views, 3, a.height, a.width, device="cuda")

    def forward():
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
            return net(x, infer_gs=a.gs, fast=not a.exact)

    forward()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for _ in range(a.warmup):
        forward()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        forward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    mode = ("exact" if a.exact else "fast") + (f" + compile {a.compile}" if a.compile else "")
    print(f"| {a.preset}{' + GS' if a.gs else ''} | {a.views} | {mode} | first call {first:.1f} s | "
          f"{med:.4f} s | {a.views / med:.1f} images/s | peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB |",
          flush=True)
    if a.profile:
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            forward()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70))


if __name__ == "__main__":
    main()
