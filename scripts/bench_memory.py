"""Peak memory of one network forward for many views: plain blocks vs row-chunked blocks, fp32 or
bf16 features, outputs kept on the device or offloaded to the host.

Each configuration runs in its own subprocess (a clean high-water mark): random weights of
``--preset``, ``--views`` views of ``--height x --width``, inference mode. On CUDA the peak is
``torch.cuda.max_memory_allocated`` (bf16 autocast; ``--exact`` for fp32 heads); on the CPU it
is the process's peak resident memory (``ru_maxrss``) above its level just before the forward
(fp32). ``--chunk-rows`` sets ``Block.chunk_rows`` for the chunked rows (default: the library's
2^18; lower it to reach the chunked regime with few views on a small machine).

Usage:
  python scripts/bench_memory.py --preset large --views 512 1024 2048 --device cuda
  python scripts/bench_memory.py --preset small --views 16 --height 252 --width 378 --device cpu \\
      --chunk-rows 4096
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(cfg: dict) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from da3gs.models.net import build_net
    from da3gs.nn.transformer import Block

    dev = torch.device(cfg["device"])
    torch.manual_seed(0)
    net = build_net(cfg["preset"]).to(dev).eval()
    Block.chunk_rows = cfg["chunk_rows"] if cfg["chunked"] else 1 << 62
    net.set_output_device("cpu" if cfg["offload"] else None)
    x = torch.randn(1, cfg["views"], 3, cfg["height"], cfg["width"], device=dev)
    cuda = dev.type == "cuda"
    ctx = torch.autocast("cuda", torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    with torch.inference_mode(), ctx:
        out = net(x, fast=cfg["fast"])
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": time.perf_counter() - t, "peak_gib": peak / 2**30,
            "above_start_gib": (peak - base) / 2**30, "depth_device": str(out["depth"].device)}


CONFIGS = {  # name: (chunked blocks, fast path: bf16 features and heads, offload outputs)
    "plain": (False, False, False),
    "chunked": (True, False, False),
    "chunked+fast+offload": (True, True, True),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="large")
    ap.add_argument("--views", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--height", type=int, default=336)
    ap.add_argument("--width", type=int, default=504)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--chunk-rows", type=int, default=1 << 18)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return 0
    rows = []
    print("| preset | views | config | seconds | peak GiB | above start GiB | outputs on |")
    print("|---|---|---|---|---|---|---|")
    for V in args.views:
        for name in args.configs:
            chunked, fast, offload = CONFIGS[name]
            cfg = {"preset": args.preset, "views": V, "height": args.height, "width": args.width,
                   "device": args.device, "chunked": chunked, "fast": fast, "offload": offload,
                   "chunk_rows": args.chunk_rows}
            res = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)],
                                 capture_output=True, text=True)
            if res.returncode:
                err = (res.stderr.strip().splitlines() or ["failed"])[-1][:120]
                r = {**cfg, "config": name, "error": err}
                print(f"| {args.preset} | {V} | {name} | {err} | - | - | - |", flush=True)
            else:
                r = {**cfg, "config": name, **json.loads(res.stdout.strip().splitlines()[-1])}
                print(f"| {args.preset} | {V} | {name} | {r['seconds']:.2f} | {r['peak_gib']:.2f} | "
                      f"{r['above_start_gib']:.2f} | {r['depth_device']} |", flush=True)
            rows.append(r)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
