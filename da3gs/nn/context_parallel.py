"""Context parallelism: the views of one forward spread over the processes of a group.

Each of ``R`` processes holds a contiguous run of the views (``counts[r]`` of them, uneven
splits allowed; :func:`split_views`), in the input order: rank 0 the first ``counts[0]`` views,
and so on. Everything that works per view (patch embedding, within-view blocks, the heads) runs
locally on those views; the cross-view blocks attend over every view's tokens, so each of them
exchanges keys and values (:meth:`ViewShard.cross_view_attention`), and the reference-view
choice reads every view's class token (:meth:`ViewShard.gather_views`).

**All-gather of K/V, not ring attention** (the choice the module makes): each cross-view block
all-gathers its keys and values (post QK-norm and RoPE) into one token-major buffer
``(V*N, 2, B, heads, head_dim)`` and runs one :func:`~torch.nn.functional.scaled_dot_product_attention`
of the local queries against all keys. The collective writes straight into that buffer
(``all_gather_single`` when the split is even, one broadcast per rank into its slice when
it is not: gloo has no uneven all-gather), so K/V cost exactly one copy of every view's keys and
values per block, freed when the block ends, and the attention kernel is the single-process one
(flash attention on the GPU; its output is exact, not an online-softmax merge of partial results).

Memory, the trade-off: the large preset (dim 1024) at 504 x 336 has 865 tokens a view; at 8,192
views K plus V of one block are ``2 x 8192 x 865 x 1024 x 2 B = 29 GB`` in bf16, on every rank,
plus the rank's own activations (1,024 views: ~1.8 GB a tensor). That fits an 80 GB card, so
all-gather reaches the 8,192-view goal with the simplest exact code. Ring attention (each rank
passes its K/V block around the ring and merges per-block softmax statistics) would need only
two blocks in flight (2 x 3.6 GB at 8 ranks) and overlaps communication with compute; it is the
way past the point where every view's K/V no longer fit one card (about 20,000 views of the
large preset at 504 x 336 on 80 GB), at the price of a log-sum-exp merge and R kernel launches
per block. Not implemented here. (K plus V of every view alone fill 80 GB at about 22,000
views; the weights and the rank's activations bring the all-gather limit lower.)

The key order: keys and values sit in the input order of the views, not in the single-process
reference-first order. Attention sums over keys, so the order changes only the rounding of
that sum; keeping the input order saves a second full copy of K/V per block. Where the order
matters (the reference view's camera token) the backbone applies the reference-first order
explicitly (:class:`~da3gs.models.backbone.Backbone`, ``shard``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from da3gs.errors import ConfigError

__all__ = ["ViewShard", "split_views", "all_gather_rows"]


def split_views(num_views: int, world: int) -> tuple[int, ...]:
    """Views per rank for ``num_views`` views over ``world`` ranks: as even as possible, the
    first ``num_views % world`` ranks one more (e.g. 5 over 3: ``(2, 2, 1)``). Every rank needs
    at least one view."""
    if world < 1:
        raise ConfigError(f"context parallelism: {world} processes; need at least 1")
    if num_views < world:
        raise ConfigError(f"context parallelism: {num_views} views over {world} processes; "
                          f"each process needs at least one view")
    q, r = divmod(num_views, world)
    return tuple(q + (i < r) for i in range(world))


def all_gather_rows(local: torch.Tensor, counts: tuple[int, ...], rank: int, unit: int = 1,
                    group=None) -> torch.Tensor:
    """Concatenate along dim 0 every rank's ``local: (counts[rank] * unit, ...)`` into one new
    ``(sum(counts) * unit, ...)`` tensor on every rank, rank 0's rows first. One collective
    writing in place: ``all_gather_single`` for an even split, one broadcast per rank into
    its slice for an uneven one (gloo has no uneven all-gather)."""
    rows = [c * unit for c in counts]
    if local.shape[0] != rows[rank]:
        raise ValueError(f"all_gather_rows: rank {rank} holds {local.shape[0]} rows, "
                         f"expected {rows[rank]}")
    local = local.contiguous()
    out = torch.empty((sum(rows), *local.shape[1:]), dtype=local.dtype, device=local.device)
    if len(set(rows)) == 1:
        # all_gather_single: torch >= 2.13's name of all_gather_into_tensor (now deprecated)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(out, local, group=group)
        return out
    parts = out.split(rows)
    parts[rank].copy_(local)
    for r, part in enumerate(parts):
        dist.broadcast(part, group=group, group_src=r)
    return out


@dataclass(frozen=True)
class ViewShard:
    """This process's share of the views of a context-parallel forward.

    Attributes:
      counts: views held by each rank of ``group``, in rank order (:func:`split_views`); rank
        ``r`` holds the input views ``offset(r) .. offset(r) + counts[r] - 1``.
      rank: this process's rank in ``group``.
      group: the process group (None: the default group).
    """

    counts: tuple[int, ...]
    rank: int
    group: object = None

    def __post_init__(self):
        if not 0 <= self.rank < len(self.counts) or min(self.counts, default=0) < 1:
            raise ConfigError(f"ViewShard: rank {self.rank} of counts {self.counts}; every rank "
                              f"needs at least one view")

    @classmethod
    def of_group(cls, num_views: int, group=None) -> "ViewShard":
        """The even split (:func:`split_views`) of ``num_views`` over ``group`` for this rank."""
        world = dist.get_world_size(group)
        return cls(split_views(num_views, world), dist.get_rank(group), group)

    @property
    def num_views(self) -> int:
        """All views, over every rank."""
        return sum(self.counts)

    @property
    def local_views(self) -> int:
        return self.counts[self.rank]

    @property
    def offset(self) -> int:
        """Input index of this rank's first view."""
        return sum(self.counts[:self.rank])

    def local_slice(self) -> slice:
        """This rank's views along a ``V`` axis of all views."""
        return slice(self.offset, self.offset + self.local_views)

    def gather_views(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, V_local, ...)`` of this rank's views -> ``(B, V, ...)`` of all views in the
        input order, on every rank."""
        rows = all_gather_rows(x.transpose(0, 1), self.counts, self.rank, group=self.group)
        return rows.transpose(0, 1)

    def cross_view_attention(self, q: torch.Tensor, k: torch.Tensor,
                             v: torch.Tensor) -> torch.Tensor:
        """Attention of the local queries over every rank's keys: ``q, k, v: (B, heads,
        V_local * N, head_dim)`` (after QK-norm and RoPE) -> ``(B, heads, V_local * N,
        head_dim)``; a :class:`~da3gs.nn.transformer.Attention` ``attn_fn``. Gathers K and V
        in one collective (token-major buffer; see the module docstring)."""
        L = k.shape[2]
        if L % self.local_views:
            raise ValueError(f"cross_view_attention: {L} tokens are not {self.local_views} views")
        kv = torch.stack([k, v]).permute(3, 0, 1, 2, 4)  # (L, 2, B, heads, head_dim)
        kv = all_gather_rows(kv, self.counts, self.rank, unit=L // self.local_views,
                             group=self.group)
        keys, values = kv.permute(1, 2, 3, 0, 4).unbind(0)  # (B, heads, V*N, head_dim)
        return F.scaled_dot_product_attention(q, keys, values)
