"""Processes and devices: one code path for one process, ``torchrun`` on one machine, or many.

``torchrun`` (or any launcher) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; with ``WORLD_SIZE > 1`` a process group is created (NCCL on CUDA, gloo on the
CPU) and each rank uses ``cuda:LOCAL_RANK``. Gradients are averaged over ranks by DDP (or
sharded by FSDP), so each rank's loss must be a mean over its own samples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from da3gs.errors import Da3gsError


@dataclass
class DistInfo:
    """rank / world_size / local_rank of this process and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise Da3gsError(f"run.device={pref}: CUDA is not available")
        return torch.device(pref if ":" in pref else f"cuda:{local_rank}")
    return torch.device(pref)


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Read the launcher's environment; start the process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = pick_device(device_pref, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kw = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kw)
    return DistInfo(rank, world, local, device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, info: DistInfo, parallel: str = "ddp") -> nn.Module:
    """DDP (default) or FSDP around ``module`` when several processes run; else ``module``.

    DDP uses ``find_unused_parameters`` because the camera encoder takes part only in steps
    with pose-conditioned samples."""
    if not info.enabled:
        return module
    if parallel == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        from da3gs.nn.transformer import Block

        return FSDP(module, auto_wrap_policy=ModuleWrapPolicy({Block}), use_orig_params=True,
                    device_id=info.device if info.device.type == "cuda" else None)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(module, device_ids=ids, find_unused_parameters=True)


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over ranks (same keys on every rank)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    all_reduce_(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def full_state_dict(wrapped: nn.Module, net: nn.Module) -> dict[str, torch.Tensor]:
    """The complete network state on every rank (gathered from FSDP shards when sharded)."""
    if type(wrapped).__name__ == "FullyShardedDataParallel":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        st = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True,
                                                                    cpu_offload=True))
        return {k.removeprefix("net."): v for k, v in st.items() if k.startswith("net.")}
    return net.state_dict()
