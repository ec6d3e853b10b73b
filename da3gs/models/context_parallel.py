"""Context-parallel inference: one forward of ``V`` views spread over the ranks of a process group.

Each rank runs the network (:class:`~da3gs.models.net.DA3Net`, any-view presets) on its
contiguous run of the views (:func:`~da3gs.nn.context_parallel.split_views`, uneven splits
allowed); the backbone's cross-view blocks all-gather keys and values and the reference view is
chosen from every rank's class tokens (:mod:`da3gs.nn.context_parallel` explains the all-gather
choice and its memory; :mod:`da3gs.models.backbone` the reference view); heads run locally;
:func:`gather_outputs` then collects the per-view outputs on one rank in the input view order.
The camera encoder, which attends across the views' 9-number pose encodings, runs on every
view's poses on every rank. The result equals the single-process forward to rounding
(tests/models/test_context_parallel.py, gloo with 2 and 3 processes).

Entry points: :func:`context_parallel_forward` (the network level) and
``DA3Model.infer(..., process_group=...)`` (images in, a Prediction on rank 0 out).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from da3gs.errors import Da3gsError
from da3gs.nn.context_parallel import ViewShard, split_views

__all__ = ["ViewShard", "split_views", "make_shard", "context_parallel_forward", "gather_outputs"]


def make_shard(num_views: int, group=None, counts: tuple[int, ...] | None = None) -> ViewShard:
    """This rank's :class:`ViewShard` of ``num_views`` views over ``group`` (None: the default
    group): ``counts`` views per rank, default the even split."""
    if not dist.is_initialized():
        raise Da3gsError("context parallelism needs an initialised torch.distributed process "
                         "group (torchrun, or torch.distributed.init_process_group)")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    counts = split_views(num_views, world) if counts is None else tuple(int(c) for c in counts)
    if len(counts) != world or sum(counts) != num_views:
        raise Da3gsError(f"context parallelism: counts {counts} do not split {num_views} views "
                         f"over {world} processes")
    return ViewShard(counts, rank, group)


def context_parallel_forward(net: nn.Module, x: torch.Tensor, shard: ViewShard,
                             extrinsics: torch.Tensor | None = None,
                             intrinsics: torch.Tensor | None = None, *,
                             ref_view_strategy: str = "saddle_balanced", infer_gs: bool = False,
                             fast: bool = False) -> dict[str, torch.Tensor]:
    """This rank's share of one forward of ``net`` over every rank's views.

    Args:
      net: a :class:`~da3gs.models.net.DA3Net` of an any-view preset, the same weights on
        every rank (nested metric models are refused: their metric scale fits all views).
      x: ``(B, shard.local_views, 3, H, W)`` ImageNet-normalised, this rank's views (input
        views ``shard.local_slice()``).
      shard: this rank's share (:func:`make_shard`).
      extrinsics, intrinsics: optional ``(B, V, 4, 4)`` w2c and ``(B, V, 3, 3)`` of *every*
        view (``V = shard.num_views``), as for the single-process forward.
    Returns the network's outputs for this rank's views (``depth: (B, V_local, H, W)`` ...,
    ``ref_view: (B,)`` the same on every rank), to be collected by :func:`gather_outputs`.
    Every rank of ``shard.group`` must call this together with the same arguments but ``x``.
    """
    from da3gs.models.net import DA3Net

    if not isinstance(net, DA3Net):
        raise Da3gsError(f"context parallelism runs a DA3Net (any-view preset), not "
                         f"{type(net).__name__} (nested metric models fit their scale on all views)")
    if x.dim() != 5 or x.shape[1] != shard.local_views:
        raise Da3gsError(f"context parallelism: rank {shard.rank} got images of shape "
                         f"{tuple(x.shape)}, expected (B, {shard.local_views}, 3, H, W)")
    for name, t in (("extrinsics", extrinsics), ("intrinsics", intrinsics)):
        if t is not None and t.shape[:2] != (x.shape[0], shard.num_views):
            raise Da3gsError(f"context parallelism: {name} of shape {tuple(t.shape)}; every "
                             f"view's are needed, ({x.shape[0]}, {shard.num_views}, ...)")
    return net(x, extrinsics, intrinsics, ref_view_strategy=ref_view_strategy,
               infer_gs=infer_gs, fast=fast, shard=shard)


def gather_outputs(out: dict[str, torch.Tensor], shard: ViewShard, dst: int = 0,
                   device: torch.device | str | None = None) -> dict[str, torch.Tensor] | None:
    """Collect every rank's per-view outputs on rank ``dst`` (of ``shard.group``) in the input
    view order: each tensor of ``out`` with a view axis (``(B, V_local, ...)``) becomes ``(B, V,
    ...)`` on ``device`` (default: where rank ``dst``'s outputs are; ``"cpu"`` keeps thousands of
    views in host memory); the others (``ref_view``) are kept. Returns the dict on ``dst`` and
    None elsewhere. Point-to-point: rank ``dst`` receives one rank's part at a time (on the
    communication device: the outputs' own, or the current CUDA device for NCCL) and copies it
    into place, so no rank holds more than its own outputs plus one other rank's part."""
    keys = sorted(k for k, v in out.items() if k != "ref_view" and v.dim() >= 2)
    nccl = dist.get_backend(shard.group) == "nccl"
    comm = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    result = {k: v for k, v in out.items() if k not in keys} if shard.rank == dst else None
    for k in keys:
        local = out[k]
        if local.shape[1] != shard.local_views:
            raise ValueError(f"gather_outputs: {k} has {local.shape[1]} views on rank "
                             f"{shard.rank}, expected {shard.local_views}")
        if shard.rank != dst:
            dist.send(local.to(comm).contiguous(), group=shard.group, group_dst=dst)
            continue
        full = torch.empty((local.shape[0], shard.num_views, *local.shape[2:]), dtype=local.dtype,
                           device=device if device is not None else local.device)
        offset = 0
        for r, c in enumerate(shard.counts):
            if r == dst:
                part = local
            else:
                part = torch.empty((local.shape[0], c, *local.shape[2:]), dtype=local.dtype,
                                   device=comm)
                dist.recv(part, group=shard.group, group_src=r)
            full[:, offset:offset + c] = part
            offset += c
        result[k] = full
    return result
