"""AdamW parameter groups (lower backbone lr, no decay on norms/biases/tokens) and the
warm-up + cosine learning-rate schedule, as a pure function of the step."""

from __future__ import annotations

import math

import torch
from torch import nn

from da3gs.train.config import OptimConfig, ScheduleConfig

NO_DECAY_NAMES = ("cls_token", "camera_token", "pos_embed", "mask_token")


def freeze_unused(net: nn.Module, train_gs_head: bool) -> None:
    """Stages 1 and teacher: the GS head (if any) gets no gradients and no optimizer state."""
    gs = getattr(net, "gs_head", None)
    if gs is not None:
        gs.requires_grad_(train_gs_head)


def param_groups(net: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Four groups: {backbone, rest} x {decay, no decay}. Each group carries ``lr_scale``
    (backbone: ``backbone_lr_mult``) that :func:`set_lr` multiplies into the schedule's lr."""
    groups: dict[tuple[bool, bool], list] = {}
    names: dict[tuple[bool, bool], list] = {}
    for n, p in net.named_parameters():
        if not p.requires_grad:
            continue
        backbone = n.startswith("backbone.")
        decay = p.ndim >= 2 and not any(t in n for t in NO_DECAY_NAMES)
        groups.setdefault((backbone, decay), []).append(p)
        names.setdefault((backbone, decay), []).append(n)
    out = []
    for (backbone, decay), params in sorted(groups.items()):
        out.append({"params": params, "weight_decay": cfg.weight_decay if decay else 0.0,
                    "lr_scale": cfg.backbone_lr_mult if backbone else 1.0,
                    "name": ("backbone" if backbone else "heads") + ("" if decay else "_nodecay")})
    return out


def build_optimizer(net: nn.Module, cfg: OptimConfig, capturable: bool = False
                    ) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``net``: the fused kernels on CUDA (no per-tensor
    launches, no host syncs), the multi-tensor (``foreach``) path on the CPU. ``capturable``:
    fused and capturable on any device, the step may be captured in a CUDA graph
    (:mod:`da3gs.train.graphs`; on the CPU the same kernels run eagerly)."""
    groups = param_groups(net, cfg)
    dev = next(net.parameters()).device
    kw = ({"fused": True, "capturable": capturable} if dev.type == "cuda" or capturable
          else {"foreach": True})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **kw)


def lr_at(step: int, optim: OptimConfig, sched: ScheduleConfig) -> float:
    """Peak-lr-scaled schedule at optimizer step ``step`` (0-based): linear warm-up to
    ``optim.lr`` over ``warmup_steps`` (first step at lr / warmup), then cosine to
    ``min_lr_ratio * lr`` at ``steps``."""
    w, total = sched.warmup_steps, sched.steps
    if w > 0 and step < w:
        return optim.lr * (step + 1) / w
    t = min(1.0, (step - w) / max(1, total - w))
    lo = sched.min_lr_ratio
    return optim.lr * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Every group's lr = ``lr * lr_scale``; a learning rate held in a device tensor (a
    CUDA-graphed step reads it there) is filled in place, without a host sync."""
    for g in opt.param_groups:
        v = lr * g.get("lr_scale", 1.0)
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(v)
        else:
            g["lr"] = v


def optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """``opt.state_dict()`` with learning rates as floats (a graphed step keeps them in device
    tensors), so checkpoints load in any mode and on any device."""
    st = opt.state_dict()
    for g in st["param_groups"]:
        if isinstance(g.get("lr"), torch.Tensor):
            g["lr"] = float(g["lr"])
    return st
