"""One training step, in parts: network inputs, forward of a whole batch (pose-conditioned and
pose-free samples as two sub-batches), loss, backward with clipping and the non-finite check.

:class:`StepModule` wraps the network and the loss so that one call computes the loss of a
batch; DDP/FSDP wrap this module (one forward per backward, as they require).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, fields

import torch
from torch import nn

from da3gs.data.batch import ViewBatch
from da3gs.geometry import c2w_to_w2c
from da3gs.io.images import imagenet_normalize
from da3gs.models.model import normalize_input_poses
from da3gs.train import external


def _index_on(idx: torch.Tensor, device: torch.device, cache: dict) -> torch.Tensor:
    """``idx`` on ``device``, copied once per device; a CPU index goes to the GPU through
    pinned memory without blocking (a blocking copy would wait for the GPU queue)."""
    if device not in cache:
        if device.type == "cuda" and idx.device.type == "cpu":
            cache[device] = idx.pin_memory().to(device, non_blocking=True)
        else:
            cache[device] = idx.to(device)
    return cache[device]


def take(batch: ViewBatch, idx: torch.Tensor) -> ViewBatch:
    """Samples ``idx`` (a 1-D index tensor) of ``batch``."""
    kw = {}
    ids = idx.tolist()
    on: dict = {}
    for f in fields(ViewBatch):
        v = getattr(batch, f.name)
        if isinstance(v, torch.Tensor):
            kw[f.name] = v[_index_on(idx, v.device, on)]
        elif isinstance(v, list):
            kw[f.name] = [v[i] for i in ids]
        else:
            kw[f.name] = v
    return ViewBatch(**kw)


def network_inputs(batch: ViewBatch, conditioned: bool):
    """``x (B, V, 3, H, W)`` ImageNet-normalised, and for pose-conditioned samples the GT
    ``w2c (B, V, 4, 4)`` and ``K (B, V, 3, 3)`` (else None, None).

    The GT poses go through :func:`~da3gs.models.model.normalize_input_poses`, the
    normalisation ``DA3Model.infer`` applies to a user's poses (view 0 at the identity,
    translations divided by the median camera distance), so the camera tokens see the same
    distribution in training and at inference. The targets stay in the loss frame (the
    per-sample point scale): the network learns the scene scale from the images, as it does
    without poses, and inference rescales its output to the given poses."""
    x = imagenet_normalize(batch.images.float())
    if not conditioned:
        return x, None, None
    w2c, _ = normalize_input_poses(c2w_to_w2c(batch.c2w.float(), check=False), check=False)
    return x, w2c, batch.K.float()


def autocast_for(device: torch.device, precision: str, cache: bool = True):
    """bf16 autocast on CUDA for ``precision`` bf16/auto; fp32 otherwise (the network keeps
    its heads in fp32 inside). ``cache=False`` turns off autocast's cache of cast weights,
    which CUDA-graph capture requires."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return nullcontext()


def split_by_conditioning(batch: ViewBatch) -> list[tuple[bool, torch.Tensor]]:
    """[(conditioned, sample indices)] for the non-empty groups, pose-free first.

    The indices are CPU tensors. The training sources keep ``pose_conditioned`` on the CPU (the
    trainer leaves it there when it moves a batch), so the split costs no device sync; a
    ``pose_conditioned`` on the GPU still works, at the price of one sync."""
    B = batch.images.shape[0]
    pc = batch.pose_conditioned
    if pc is None:
        return [(False, torch.arange(B))]
    flags = pc.bool().cpu().tolist()
    out = []
    for cond in (False, True):
        idx = [i for i, f in enumerate(flags) if f == cond]
        if idx:
            out.append((cond, torch.tensor(idx, dtype=torch.long)))
    return out


def batch_to_device(batch: ViewBatch, device) -> ViewBatch:
    """``batch`` on ``device`` (non-blocking), ``pose_conditioned`` left where it is (the
    sources keep it on the CPU, so :func:`split_by_conditioning` needs no device sync)."""
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
            s, t = external.robust_scale_shift(pred[b, v], batch.depth[b, v].float(), m)
            aligned[b, v] = pred[b, v] * s + t
    valid = aligned > 0
    if batch.sky is not None:
        valid &= ~batch.sky
    depth = torch.where(valid, aligned, torch.zeros_like(aligned))
    kw = {f.name: getattr(batch, f.name) for f in fields(ViewBatch)}
    kw.update(depth=depth.to(batch.depth.dtype), valid=valid)
    return ViewBatch(**kw)


class StepModule(nn.Module):
    """``forward(batch) -> (total loss, parts)``: normalise the batch, run the network on the
    pose-free and pose-conditioned sub-batches, and weight each group's loss by its share of
    the samples (so the loss is a mean over samples, as DDP's gradient averaging assumes).

    stage: ``stage1`` (any-view network, :func:`external.stage1_loss`), ``teacher``
    (monocular network, :func:`external.teacher_loss`) or ``stage2`` (``loss_cfg`` a
    :class:`~da3gs.train.stage2.Stage2Config`; :class:`~da3gs.train.stage2.Stage2Objective`).

    ``fast_heads``: the network's ``fast`` mode (heads in bf16 under bf16 autocast).

    ``mixed`` (stage 1): one forward over the whole batch, the pose-conditioned samples
    selected by a per-sample mask on the device (``DA3Net.forward(pose_mask=...)``) instead of
    two sub-batches split on the host: the same kernels whatever the split, no host reads,
    as CUDA-graph capture needs (:mod:`da3gs.train.graphs`). The loss is then one mean over
    the batch's samples, equal to the group-weighted sum whenever every sample has supervised
    depth (always so for procedural data)."""

    def __init__(self, net: nn.Module, stage: str, loss_cfg, precision: str = "auto",
                 mixed: bool = False, fast_heads: bool = False):
        super().__init__()
        self.net, self.stage, self.loss_cfg, self.precision = net, stage, loss_cfg, precision
        self.mixed, self.fast_heads = mixed, fast_heads
        #: autocast's weight-cast cache (off while a CUDA graph is captured)
        self.autocast_cache = True
        if stage == "stage2":
            from da3gs.train.stage2 import Stage2Objective

            self.stage2 = Stage2Objective(loss_cfg)

    def run_net(self, batch: ViewBatch, conditioned: bool) -> dict[str, torch.Tensor]:
        mixed = self.mixed and self.stage == "stage1" and batch.pose_conditioned is not None
        x, w2c, K = network_inputs(batch, (conditioned or mixed) and self.stage == "stage1")
        kw = {"pose_mask": batch.pose_conditioned.to(x.device, non_blocking=True).bool()} \
            if mixed else {}
        if self.fast_heads:
            kw["fast"] = True
        with autocast_for(x.device, self.precision, self.autocast_cache):
            return self.net(x, w2c, K, ref_view_strategy="first", **kw)

    def forward(self, batch: ViewBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.stage == "stage2":  # GT units kept: rendering and its losses are scale-free
            return self.stage2(self.net, batch)
        batch, _ = external.normalize_batch(batch)
        loss_fn = external.stage1_loss if self.stage == "stage1" else external.teacher_loss
        if self.mixed:
            out = self.run_net(batch, False)
            loss, p = loss_fn(out, batch, self.loss_cfg)
            return loss, {k: torch.as_tensor(v, dtype=torch.float32).detach().float()
                          for k, v in p.items()}
        B = batch.images.shape[0]
        total = None
        parts: dict[str, torch.Tensor] = {}
        groups = split_by_conditioning(batch) if self.stage == "stage1" else \
            [(False, torch.arange(B))]
        for cond, idx in groups:
            sub = batch if idx.numel() == B else take(batch, idx)
            out = self.run_net(sub, cond)
            loss, p = loss_fn(out, sub, self.loss_cfg)
            w = idx.numel() / B
            total = loss * w if total is None else total + loss * w
            for k, v in p.items():
                v = torch.as_tensor(v, dtype=torch.float32).detach().float()
                parts[k] = parts.get(k, 0.0) + v * w
        return total, parts


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
