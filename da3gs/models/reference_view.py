"""Reference-view selection for pose-free multi-view input.

The reference view defines the world frame. It is chosen from the class tokens entering
block ``alt_start - 1``, moved to the front, and the original order is restored at the outputs.
"""

from __future__ import annotations

import torch

from da3gs.errors import ConfigError

STRATEGIES = ("saddle_balanced", "first", "middle", "saddle_sim_range")
MIN_VIEWS = 3  # with fewer views the order is kept (the first view is the reference)


def select_reference_view(cls_tokens: torch.Tensor, strategy: str = "saddle_balanced") -> torch.Tensor:
    """Pick one view per batch item from ``cls_tokens: (B, V, C)``; returns ``(B,)`` long.

    - ``first`` / ``middle``: position based (``V // 2`` for middle).
    - ``saddle_balanced``: the view whose mean cosine similarity to the others, token norm and
      feature variance are each closest to the middle of their range across views.
    - ``saddle_sim_range``: the view with the largest spread of similarities to the others.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown reference view strategy {strategy!r}; use one of {STRATEGIES}")
    B, V, _ = cls_tokens.shape
    dev = cls_tokens.device
    if V <= 1 or strategy == "first":
        return torch.zeros(B, dtype=torch.long, device=dev)
    if strategy == "middle":
        return torch.full((B,), V // 2, dtype=torch.long, device=dev)
    unit = cls_tokens / cls_tokens.norm(dim=-1, keepdim=True)
    sim = unit @ unit.transpose(1, 2) - torch.eye(V, device=dev)[None]
    if strategy == "saddle_sim_range":
        return (sim.max(dim=-1).values - sim.min(dim=-1).values).argmax(dim=1)

    def unit_range(m: torch.Tensor) -> torch.Tensor:
        lo, hi = m.min(dim=1, keepdim=True).values, m.max(dim=1, keepdim=True).values
        return (m - lo) / (hi - lo + 1e-8)

    score = ((unit_range(sim.sum(dim=-1) / (V - 1)) - 0.5).abs()
             + (unit_range(cls_tokens.norm(dim=-1)) - 0.5).abs()
             + (unit_range(unit.var(dim=-1)) - 0.5).abs())
    return score.argmin(dim=1)


def reference_first_order(ref: torch.Tensor, V: int) -> torch.Tensor:
    """``(B, V)`` gather indices putting view ``ref[b]`` first, others in their order."""
    pos = torch.arange(V, device=ref.device)[None].expand(ref.shape[0], -1)
    order = torch.where((pos > 0) & (pos <= ref[:, None]), pos - 1, pos)
    order[:, 0] = ref
    return order


def gather_views(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``x: (B, V, ...)`` reordered along V by ``order: (B, V)``."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], order]


def inverse_order(order: torch.Tensor) -> torch.Tensor:
    """Inverse permutation of ``order: (B, V)``."""
    inv = torch.empty_like(order)
    inv.scatter_(1, order, torch.arange(order.shape[1], device=order.device)[None].expand_as(order))
    return inv
