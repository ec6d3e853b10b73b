"""Seconds and peak memory per GPU of one context-parallel forward (issue 26, part 3).

Run under torchrun, one process per GPU (NCCL); each rank makes only its own share of random
input views (``--views`` split as :func:`da3gs.nn.context_parallel.split_views` does), random
weights of ``--preset``, bf16 autocast (``fast``: bf16 heads too; ``--exact`` for fp32 heads),
inference mode, outputs offloaded to the host (``--offload``, the default above 256 views in
``DA3Model.infer``) and gathered to rank 0's host memory. Prints one JSON line per view count on
rank 0: seconds of the forward (``forward_s``, max over ranks), of the gather (``gather_s``),
peak ``torch.cuda.max_memory_allocated`` per rank (GiB) and an out-of-memory note when a rank
ran out. ``--nproc-per-node 1`` gives the one-GPU baseline with the same code path (one rank;
its all-gathers are copies).

Usage:
  torchrun --nproc-per-node 8 scripts/bench_context_parallel.py --preset large --views 4096 8192
  torchrun --nproc-per-node 1 scripts/bench_context_parallel.py --preset large --views 512 1024
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from da3gs.models.context_parallel import context_parallel_forward, gather_outputs, make_shard  # noqa: E402
from da3gs.models.net import build_net  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="large")
    p.add_argument("--views", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--height", type=int, default=336)
    p.add_argument("--width", type=int, default=504)
    p.add_argument("--gs", action="store_true", help="also run the GS head (a -gs preset)")
    p.add_argument("--exact", action="store_true", help="fp32 heads (the official numerics)")
    p.add_argument("--no-offload", dest="offload", action="store_false")
    p.add_argument("--json", help="append the rows to this file (rank 0)")
    a = p.parse_args()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cuda", local_rank)
    torch.manual_seed(0)
    net = build_net(a.preset).to(dev).eval()
    net.set_output_device("cpu" if a.offload else None)
    for V in a.views:
        shard = make_shard(V)
        row = {"preset": a.preset, "views": V, "gpus": world, "size": [a.height, a.width],
               "counts": list(shard.counts), "device": torch.cuda.get_device_name(dev)}
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        oom = torch.zeros(1, device=dev)
        fwd = gat = 0.0
        try:
            g = torch.Generator(device=dev).manual_seed(1000 + rank)
            x = torch.randn(1, shard.local_views, 3, a.height, a.width, device=dev, generator=g)
            dist.barrier()
            torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
                out = context_parallel_forward(net, x, shard, infer_gs=a.gs, fast=not a.exact)
            torch.cuda.synchronize()
            fwd = time.perf_counter() - t
            t = time.perf_counter()
            full = gather_outputs(out, shard, device="cpu")
            gat = time.perf_counter() - t
            if rank == 0:
                row["depth_shape"] = list(full["depth"].shape)
            del out, full, x
        except torch.OutOfMemoryError:
            oom.fill_(1)
        peak = torch.tensor([torch.cuda.max_memory_allocated(dev) / 2**30], device=dev)
        times = torch.tensor([fwd, gat], device=dev)
        peaks = [torch.zeros_like(peak) for _ in range(world)]
        dist.all_gather(peaks, peak)
        dist.all_reduce(times, op=dist.ReduceOp.MAX)
        dist.all_reduce(oom, op=dist.ReduceOp.MAX)
        row.update(forward_s=round(times[0].item(), 3), gather_s=round(times[1].item(), 3),
                   peak_gib_per_rank=[round(q.item(), 2) for q in peaks],
                   out_of_memory=bool(oom.item()))
        if rank == 0:
            print(json.dumps(row), flush=True)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
        if oom.item():
            break  # larger view counts will not fit either
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
