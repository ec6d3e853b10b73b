"""Exponential moving average of the weights (used for evaluation and saved with checkpoints)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    """fp32 shadow copies of every floating-point parameter and buffer of ``net``.

    ``update(net, step)`` after each optimizer step: ``ema = d * ema + (1 - d) * w`` with
    ``d = min(decay, (1 + step) / (10 + step))`` (a warm-up so early averages follow the weights).
    """

    def __init__(self, net: nn.Module, decay: float):
        from da3gs.train.checkpoint import alias_map

        self.decay = decay
        state = net.state_dict()
        self.aliases = alias_map(state)  # shared tensors are averaged once
        self.shadow = {k: v.detach().float().clone() for k, v in state.items()
                       if v.is_floating_point() and self.aliases[k] == k}

    def effective_decay(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    def tensors(self, net: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(shadow, current)``: the EMA tensors and ``net``'s matching weights (fp32), in
        one order, for :meth:`update` or a captured ``_foreach_lerp_``."""
        state = net.state_dict()
        keys = list(self.shadow)
        return [self.shadow[k] for k in keys], [state[k].detach().float() for k in keys]

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        ema, cur = self.tensors(net)
        torch._foreach_lerp_(ema, cur, 1.0 - self.effective_decay(step))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """From a (deduplicated) full state dict such as a checkpoint's model.safetensors."""
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} tensors, e.g. {sorted(missing)[0]}")
        for k in self.shadow:
            self.shadow[k].copy_(state[k])

    def full_state(self, net: nn.Module) -> dict[str, torch.Tensor]:
        """A complete ``net`` state dict with the EMA values (non-float buffers from ``net``)."""
        out = {}
        for k, v in net.state_dict().items():
            c = self.aliases.get(k, k)
            out[k] = self.shadow[c].to(v.dtype) if c in self.shadow else v
        return out

    @contextmanager
    def swapped_in(self, net: nn.Module):
        """Temporarily load the EMA weights into ``net`` (e.g. for evaluation)."""
        backup = {k: v.detach().clone() for k, v in net.state_dict().items()}
        net.load_state_dict(self.full_state(net))
        try:
            yield net
        finally:
            net.load_state_dict(backup)
