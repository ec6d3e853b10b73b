"""One training step: the loss of a batch (:class:`StepModule`: the network under the stage's
objective, :mod:`da3gs.train.objectives`), backward, clipping, the non-finite check and the
update (:func:`train_step`); teacher labels (:func:`apply_teacher`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from da3gs.data.batch import ViewBatch
from da3gs.geometry.depth_align import robust_scale_shift
from da3gs.train.objectives import autocast_for, network_inputs


def batch_to_device(batch: ViewBatch, device) -> ViewBatch:
    """``batch`` on ``device`` (non-blocking), ``pose_conditioned`` left where it is (the
    sources keep it on the CPU, so :func:`~da3gs.train.objectives.split_by_conditioning`
    needs no device sync)."""
    return batch.to(device, non_blocking=True, keep_flags=True)


@torch.no_grad()
def apply_teacher(teacher: nn.Module, batch: ViewBatch, precision: str) -> ViewBatch:
    """Replace GT depth by the teacher's depth aligned per view to the GT with a robust scale
    and shift (on the GT-valid pixels). Pixels where GT is missing (not sky) get teacher labels.

    teacher: a network (mono preset) in eval mode; batch depth (B, V, H, W)."""
    x, _, _ = network_inputs(batch, False)
    with autocast_for(x.device, precision):
        pred = teacher(x)["depth"].float()
    B, V = pred.shape[:2]
    aligned = torch.empty_like(pred)
    for b in range(B):
        for v in range(V):
            m = batch.valid[b, v]
            if int(m.sum()) < 10:
                aligned[b, v] = batch.depth[b, v]
                continue
            s, t = robust_scale_shift(pred[b, v], batch.depth[b, v].float(), m)
            aligned[b, v] = pred[b, v] * s + t
    valid = aligned > 0
    if batch.sky is not None:
        valid &= ~batch.sky
    depth = torch.where(valid, aligned, torch.zeros_like(aligned))
    kw = {f.name: getattr(batch, f.name) for f in fields(ViewBatch)}
    kw.update(depth=depth.to(batch.depth.dtype), valid=valid)
    return ViewBatch(**kw)


class StepModule(nn.Module):
    """``forward(batch) -> (total loss, parts)``: the network ``net`` under the stage's
    ``objective`` (:mod:`da3gs.train.objectives`). DDP/FSDP wrap this module (one forward per
    backward, as they require); the objective stays a plain object, outside the state dict."""

    def __init__(self, net: nn.Module, objective):
        super().__init__()
        self.net = net
        self.objective = objective

    def forward(self, batch: ViewBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.objective(self.net, batch)


@dataclass
class StepResult:
    """loss: 0-d tensor (this rank, detached, on the device); parts: dict of such tensors
    (or floats, as stage 2 logs some);
    grad_norm: 0-d tensor (before clipping); skipped: the update was skipped (non-finite loss
    or gradients on some rank). The tensors stay on the device so that a step costs one host
    sync (``skipped``); :meth:`floats` converts them (one more sync) when they are logged.
    A CUDA-graphed step (:mod:`da3gs.train.graphs`) leaves ``skipped`` on the device too (a
    0-d float tensor, 1.0 when skipped) and costs no sync."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]
    grad_norm: torch.Tensor
    skipped: bool | torch.Tensor

    def floats(self) -> dict[str, float]:
        """``{"loss", **parts, "grad_norm"}`` as Python floats, in one device-to-host copy."""
        keys = ["loss", *self.parts, "grad_norm"]
        vals = [self.loss, *self.parts.values(), self.grad_norm]
        t = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.loss.device)
                         .reshape(()) for v in vals])
        return dict(zip(keys, t.tolist()))


def train_step(module: nn.Module, params: list[torch.Tensor], opt: torch.optim.Optimizer,
               batch: ViewBatch, grad_clip: float, mark=None) -> StepResult:
    """Forward, backward, clip, and update unless the loss or the gradients are non-finite.

    ``module`` is a :class:`StepModule` (possibly DDP/FSDP-wrapped); ``params`` its trainable
    parameters. Every rank runs the backward (DDP needs it); since gradients are averaged,
    a non-finite value on any rank makes every rank skip. One host sync per step (the skip
    decision). ``mark``: optional ``mark(phase)`` callback after the forward + loss
    (``"loss"``), the backward (``"backward"``) and the update (``"optim"``), for benchmarks."""
    mark = mark or (lambda name: None)
    opt.zero_grad(set_to_none=True)
    loss, parts = module(batch)
    mark("loss")
    loss.backward()
    mark("backward")
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    if hasattr(module, "clip_grad_norm_"):  # FSDP computes the norm over shards
        norm = module.clip_grad_norm_(max_norm)
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    lv = loss.detach().float()
    norm = torch.as_tensor(norm, dtype=torch.float32, device=lv.device).detach()
    bad = ~torch.isfinite(lv) | ~torch.isfinite(norm)
    flag = bad.float().reshape(1)
    from da3gs.train.dist import all_reduce_

    all_reduce_(flag, "max")
    skipped = bool(flag.item() > 0)
    if skipped:
        opt.zero_grad(set_to_none=True)
    else:
        opt.step()
    mark("optim")
    parts = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in parts.items()}
    return StepResult(lv, parts, norm, skipped)
