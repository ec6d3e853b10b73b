"""Training objectives, one object per stage: ``objective(net, batch) -> (loss, parts)``.

The trainer knows a stage only through its objective (:func:`make_objective`): what the network
needs before training (:meth:`prepare`), the loss of a batch (``__call__``), whether the step
can be captured as a CUDA graph (``capture_fields``: the batch fields the loss reads, None when
the loss reads device values on the host) and what evaluation adds (:meth:`extra_metrics`).
Tests and callers swap the loss or the normalisation through the attributes ``loss_fn`` and
``normalize``, or pass their own objective to :func:`da3gs.train.loop.train`.

- :class:`Stage1Objective`: the any-view student (DA3 stage 1: depth, rays, points, cameras);
  pose-conditioned and pose-free samples as two sub-batches, or ``mixed``: one forward with a
  per-sample mask (the graphed step's form).
- :class:`TeacherObjective`: the monocular teacher.
- :class:`~da3gs.train.stage2.Stage2Objective`: the GS head by rendering (stage 2).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from da3gs.data.batch import ViewBatch
from da3gs.geometry import c2w_to_w2c
from da3gs.io.images import imagenet_normalize
from da3gs.losses import Stage1LossConfig, TeacherLossConfig, normalize_batch, stage1_loss, teacher_loss
from da3gs.models.model import normalize_input_poses

__all__ = ["Stage1Objective", "TeacherObjective", "autocast_for", "make_objective",
           "network_inputs", "split_by_conditioning", "take"]


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
    from dataclasses import fields

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


def _parts(p: dict) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v, dtype=torch.float32).detach().float() for k, v in p.items()}


class _SupervisedObjective:
    """Shared by stage 1 and the teacher: normalise the batch (view 0's frame, per-sample
    scale), run the network under ``precision``'s autocast, apply ``loss_fn``."""

    stage = ""
    #: batch fields the loss reads, for a CUDA-graphed step; None: the step cannot be captured
    capture_fields: tuple[str, ...] | None = None
    #: the network must predict cameras (an any-view preset)
    needs_cameras = True

    def __init__(self, loss_cfg, loss_fn, precision: str = "auto", fast_heads: bool = False):
        self.loss_cfg, self.loss_fn = loss_cfg, loss_fn
        self.precision, self.fast_heads = precision, fast_heads
        self.normalize = normalize_batch
        #: autocast's weight-cast cache (off while a CUDA graph is captured)
        self.autocast_cache = True

    def adapt_loaded(self, net: nn.Module, preset, cfg) -> nn.Module:
        """A network loaded from ``model.init``, adapted to the stage (unchanged here)."""
        return net

    def prepare(self, net: nn.Module, cfg) -> nn.Module:
        """``net`` ready to train (trainable parameters chosen); ``cfg`` the TrainConfig."""
        from da3gs.train.optim import freeze_unused

        freeze_unused(net, cfg.model.train_gs_head)
        return net.train()

    def extra_metrics(self, net: nn.Module, sets: dict, device: torch.device) -> dict:
        """Held-out metrics beyond the evaluator's depth / pose numbers (none here)."""
        return {}

    def _forward(self, net: nn.Module, x, w2c=None, K=None, **kw):
        if self.fast_heads:
            kw["fast"] = True
        with autocast_for(x.device, self.precision, self.autocast_cache):
            return net(x, w2c, K, ref_view_strategy="first", **kw)


class Stage1Objective(_SupervisedObjective):
    """The any-view student's loss (:func:`da3gs.losses.stage1_loss`).

    Samples flagged ``pose_conditioned`` get their GT poses through the camera encoder. Default:
    the pose-free and pose-conditioned samples run as two sub-batches split on the host, each
    group's loss weighted by its share of the samples (a mean over samples, as DDP's gradient
    averaging assumes). ``mixed``: one forward over the whole batch, the conditioned samples
    selected by a per-sample mask on the device (``DA3Net.forward(pose_mask=...)``): the same
    kernels whatever the split and no host reads, as CUDA-graph capture needs
    (:mod:`da3gs.train.graphs`); the loss is then one mean over the samples, equal to the
    group-weighted sum whenever every sample has supervised depth (always so for procedural
    data). ``fast_heads``: the network's ``fast`` mode (heads in bf16 under bf16 autocast)."""

    stage = "stage1"

    def __init__(self, loss_cfg: Stage1LossConfig | None = None, precision: str = "auto",
                 fast_heads: bool = False, mixed: bool = False):
        super().__init__(loss_cfg or Stage1LossConfig(), stage1_loss, precision, fast_heads)
        self.mixed = mixed
        self.capture_fields = (("images", "depth", "valid", "c2w", "K", "sky", "pose_conditioned")
                               if mixed else None)
        self.not_capturable = "stage 1 with mixed=False splits the batch on the host"

    def run_net(self, net: nn.Module, batch: ViewBatch, conditioned: bool) -> dict:
        """The network on ``batch``: conditioned on its GT poses (all samples), or, ``mixed``,
        on those of the samples whose ``pose_conditioned`` is set."""
        mixed = self.mixed and batch.pose_conditioned is not None
        x, w2c, K = network_inputs(batch, conditioned or mixed)
        kw = {"pose_mask": batch.pose_conditioned.to(x.device, non_blocking=True).bool()} \
            if mixed else {}
        return self._forward(net, x, w2c, K, **kw)

    def __call__(self, net: nn.Module, batch: ViewBatch) -> tuple[torch.Tensor, dict]:
        batch, _ = self.normalize(batch)
        if self.mixed:
            loss, p = self.loss_fn(self.run_net(net, batch, False), batch, self.loss_cfg)
            return loss, _parts(p)
        B = batch.images.shape[0]
        total = None
        parts: dict[str, torch.Tensor] = {}
        for cond, idx in split_by_conditioning(batch):
            sub = batch if idx.numel() == B else take(batch, idx)
            loss, p = self.loss_fn(self.run_net(net, sub, cond), sub, self.loss_cfg)
            w = idx.numel() / B
            total = loss * w if total is None else total + loss * w
            for k, v in _parts(p).items():
                parts[k] = parts.get(k, 0.0) + v * w
        return total, parts


class TeacherObjective(_SupervisedObjective):
    """The monocular teacher's loss (:func:`da3gs.losses.teacher_loss`): one pose-free forward.
    Not capturable: the loss's global-local alignment reads device values on the host."""

    stage = "teacher"
    needs_cameras = False
    not_capturable = "the teacher loss reads device values on the host"

    def __init__(self, loss_cfg: TeacherLossConfig | None = None, precision: str = "auto",
                 fast_heads: bool = False):
        super().__init__(loss_cfg or TeacherLossConfig(), teacher_loss, precision, fast_heads)

    def run_net(self, net: nn.Module, batch: ViewBatch, conditioned: bool = False) -> dict:
        x, _, _ = network_inputs(batch, False)
        return self._forward(net, x)

    def __call__(self, net: nn.Module, batch: ViewBatch) -> tuple[torch.Tensor, dict]:
        batch, _ = self.normalize(batch)
        loss, p = self.loss_fn(self.run_net(net, batch), batch, self.loss_cfg)
        return loss, _parts(p)


def make_objective(cfg, mixed: bool = False):
    """The objective of ``cfg.stage`` (``cfg`` a TrainConfig); ``mixed``: stage 1's one-forward
    form (the graphed step's)."""
    if cfg.stage == "stage1":
        return Stage1Objective(cfg.loss.stage1, cfg.run.precision, cfg.model.fast_heads, mixed)
    if cfg.stage == "teacher":
        return TeacherObjective(cfg.loss.teacher, cfg.run.precision, cfg.model.fast_heads)
    from da3gs.train.stage2 import Stage2Objective

    return Stage2Objective(cfg.stage2)
