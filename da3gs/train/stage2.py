"""Stage 2: train the GS-DPT head with rendering losses; backbone, Dual-DPT and camera head frozen.

One step (:func:`stage2_forward`, :func:`stage2_train_step`; the trainer uses
:class:`Stage2Objective`):

1. **Split** each sample's V views into context views (the network input) and held-out
   target views (rendered, never fed to the network): :func:`split_views`.
2. **Frozen forward** (:func:`frozen_forward`): backbone, Dual-DPT and camera heads run once,
   under ``no_grad`` (no activations kept), in eval mode, the backbone in bf16 autocast on
   CUDA (heads in fp32 as at inference). Pose-conditioned samples (``batch.pose_conditioned``)
   get their ground-truth context poses through the camera encoder, normalised as
   ``DA3Model.infer`` does; the others run pose-free, their reference view chosen by
   ``ref_view_strategy`` (``"saddle_balanced"`` by default, as ``DA3Model.infer``). It also
   fixes each sample's *frame*, the cameras and depth scale the Gaussians are built with, in
   the ground-truth world:
   * with input poses: the ground-truth context cameras and the scale from the network's
     frame to theirs (:func:`~da3gs.models.model.scale_to_input`), as inference does;
   * pose-free: the *predicted* context cameras aligned to the ground truth by a Sim(3)
     (predicted context c2w -> GT context c2w; ``align``: by default the rotation from the
     cameras' orientations and scale + translation from their centres, or Umeyama on the
     centres alone), depth scaled by its scale.
     Building the Gaussians in the aligned cameras equals building them in the predicted
     frame and moving them by that Sim(3) (tested), at no extra cost.
   The :class:`FrozenOutputs` do not depend on the GS head: pass them back (``frozen=``) to
   reuse them when the same batch is seen again.
3. **GS head** with gradients on the detached features (fp32, or bf16 autocast on CUDA).
4. **Gaussians** (``t + (D + dD) d``, our corrected geometry, by default) rendered into the
   target views through their ground-truth cameras, and into the context views through the
   cameras the Gaussians were built with (``frame_c2w`` / ``frame_K``: ground truth with input
   poses, the aligned predicted cameras pose-free), so a context view renders back
   pixel-aligned however wrong the predicted cameras are; gsplat on CUDA, our torch
   rasteriser elsewhere (``render(..., backend="auto")``). ``oracle_geometry`` swaps the
   frozen depth and cameras for the ground truth (a check that the head itself learns).
5. **Loss** :func:`da3gs.losses.stage2.stage2_loss`: MSE + LPIPS on the rendered views,
   scale-shift-invariant depth on the context views.

Two implementations of steps 2-5, the same losses and gradients up to float rounding
(tests/train/test_stage2.py), chosen by ``Stage2Config.batched``:

* **batched** (default): the whole batch at once and no host reads of device values (the
  logs are 0-d device tensors; gsplat's own intersection counts are the only syncs). One
  frozen forward for all samples: ``DA3Net.forward_features(pose_mask=...)`` conditions the
  pose-conditioned samples by a device mask while the pose-free ones keep choosing their
  reference view by ``ref_view_strategy`` (``Backbone(ref_mask=...)``), so training keeps the
  reference choice of inference (a switch to ``"first"`` would have changed the frozen
  network's pose-free outputs, and the mask keeps the split path's results). Frames on the
  device (:func:`~da3gs.geometry.align_cameras_batched`,
  :func:`~da3gs.models.model.scale_to_input_batched`, float64, no SVD), Gaussians of all
  samples built at once (:func:`~da3gs.models.gaussian_adapter.build_gaussians_batched`) and
  rendered by one :func:`~da3gs.render.render_batch` (one gsplat call with gsplat >= 1.5).
* **per sample** (``batched=False``; the implementation before, kept as the benchmark's
  baseline and the tests' reference): two frozen forwards (pose groups split with
  ``nonzero``), each sample's cameras aligned on the host in float64, one Gaussian build and
  one render per sample, logs read as floats.

From :data:`~da3gs.models.model.RANSAC_ALIGN_VIEWS` context views on, the frames come from
the per-sample host alignment in both (RANSAC fits, which have no batched form): the slow path.

Only ``gs_head`` parameters require gradients and reach the optimizer (:func:`setup_stage2`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from da3gs.errors import Da3gsError
from da3gs.geometry import (align_cameras, align_cameras_batched, as_homogeneous, c2w_to_w2c,
                            w2c_to_c2w)
from da3gs.io.images import imagenet_normalize
from da3gs.losses.stage2 import Stage2LossConfig, stage2_loss
from da3gs.models.gaussian_adapter import build_gaussians, build_gaussians_batched
from da3gs.models.model import (RANSAC_ALIGN_VIEWS, normalize_input_poses, scale_to_input,
                                scale_to_input_batched)
from da3gs.models.net import DA3Net
from da3gs.render import render, render_batch
from da3gs.train.objectives import _index_on

__all__ = ["Stage2Config", "FrozenOutputs", "FROZEN_MODULES", "Stage2Objective", "setup_stage2",
           "set_stage2_modes", "stage2_param_groups", "init_gs_head_output", "check_optimizer",
           "split_views", "frozen_forward", "gs_head_forward", "stage2_forward",
           "stage2_train_step"]

FROZEN_MODULES = ("backbone", "depth_head", "camera_encoder", "camera_decoder")
_SELECT = ("random", "interleaved", "last")


@dataclass
class Stage2Config:
    """Stage-2 options.

    Fields:
      num_targets: held-out target views per sample; the other ``V - num_targets`` views are
        the context fed to the network (at least 1). 0: only the context views are rendered.
      target_select: which views are targets: "random" (seeded by ``seed`` and the step),
        "interleaved" (evenly spaced, never view 0), "last".
      rgb_on_context: the photometric loss also covers the context views rendered back.
      geometry: Gaussian geometry: "da3gs" (``t + (D + dD) d``, default), "official" (the
        compat geometry the official Giant GS weights were trained with), "model" (the
        loaded model's ``gs_geometry``). :func:`setup_stage2` records it on the model, so
        inference builds Gaussians the way they were trained.
      frozen_precision: backbone autocast: "auto" (bf16 on CUDA, fp32 on CPU), "bf16", "fp32".
      head_precision: GS head: "fp32" (as at inference) or "bf16" (autocast, CUDA only).
      backend: renderer: "auto" (gsplat on CUDA, torch elsewhere), "gsplat", "torch".
      background: (3,) colour under the splats, in [0, 1].
      ref_view_strategy: reference-view choice of the pose-free backbone (>= 3 views), in
        both implementations (module docstring).
      align: how pose-free samples' predicted context cameras are aligned to the GT before
        the targets are rendered: ``"orientations"`` (rotation from every camera's
        orientation, scale and translation from the centres; robust with few views or poor
        predicted centres) or ``"centres"`` (Umeyama on the centres, as the official pose
        evaluation); see :func:`~da3gs.geometry.align_cameras`.
      align_ransac: with ``align="centres"``, RANSAC from 10 context views on (else plain
        Umeyama on all centres).
      seed: seed of the random target selection.
      init_head: re-initialise the GS head's output biases in :func:`setup_stage2` so a
        fresh head starts with Gaussians of ``init_scale_px`` pixels (standard deviation) and
        opacity ``init_opacity`` (for a head left at random init, e.g. on a stage-1
        checkpoint; never for trained GS weights such as the official Giant's).
      init_scale_px, init_opacity: see ``init_head``.
      oracle_geometry: replace the frozen network's depth and cameras by the ground truth
        (depth where valid, else the view's largest valid depth; GT cameras; scale 1), so only
        the GS head's appearance, offsets, scales and opacities are tested. A diagnostic and
        test mode: the head still sees the frozen network's features.
      loss: weights of :func:`~da3gs.losses.stage2.stage2_loss`.
      batched: the batched, sync-free step (default) or the per-sample one of before
        (``False``: the benchmark's baseline; module docstring).
    """

    num_targets: int = 2
    target_select: str = "random"
    rgb_on_context: bool = True
    geometry: str = "da3gs"
    frozen_precision: str = "auto"
    head_precision: str = "fp32"
    backend: str = "auto"
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    ref_view_strategy: str = "saddle_balanced"
    align: str = "orientations"
    align_ransac: bool = False
    seed: int = 0
    init_head: bool = False
    init_scale_px: float = 1.0
    init_opacity: float = 0.5
    oracle_geometry: bool = False
    loss: Stage2LossConfig = field(default_factory=Stage2LossConfig)
    batched: bool = True

    def __post_init__(self):
        if isinstance(self.loss, dict):
            self.loss = Stage2LossConfig(**self.loss)
        choices = {"target_select": _SELECT, "geometry": ("da3gs", "official", "model"),
                   "frozen_precision": ("auto", "bf16", "fp32"), "head_precision": ("fp32", "bf16"),
                   "backend": ("auto", "gsplat", "torch"), "align": ("orientations", "centres")}
        for key, ok in choices.items():
            if getattr(self, key) not in ok:
                raise Da3gsError(f"stage2.{key}: expected one of {', '.join(ok)}, got "
                                 f"{getattr(self, key)!r}")
        if not 0 < self.init_scale_px < 6 or not 0 < self.init_opacity < 1:
            raise Da3gsError("stage2: init_scale_px must lie in (0, 6) and init_opacity in (0, 1)")
        if self.num_targets < 0:
            raise Da3gsError(f"stage2.num_targets must be >= 0, got {self.num_targets}")
        if self.num_targets == 0 and not self.rgb_on_context:
            raise Da3gsError("stage2: num_targets=0 with rgb_on_context=False renders nothing")


def _net(model: nn.Module) -> DA3Net:
    net = getattr(model, "net", model)
    if not isinstance(net, DA3Net) or not net.has_cameras:
        raise Da3gsError(f"stage 2 needs an any-view DA3 network, got {type(net).__name__}"
                         + (f" ({net.preset.name})" if isinstance(net, DA3Net) else ""))
    if net.gs_head is None:
        raise Da3gsError(f"stage 2: preset {net.preset.name!r} has no GS head (use a *-gs preset)")
    return net


def _geometry(model: nn.Module, cfg: Stage2Config) -> str:
    return getattr(model, "gs_geometry", "da3gs") if cfg.geometry == "model" else cfg.geometry


def set_stage2_modes(model: nn.Module, training: bool = True) -> None:
    """GS head in train (or eval) mode; the frozen modules always in eval mode."""
    net = _net(model)
    model.train(training)
    for name in FROZEN_MODULES:
        getattr(net, name).eval()


def setup_stage2(model: nn.Module, cfg: Stage2Config | None = None) -> list[nn.Parameter]:
    """Freeze everything but the GS head (``requires_grad`` False, eval mode), record the
    training geometry on the model (``gs_geometry``) and return the GS head's parameters."""
    net = _net(model)
    if cfg is not None:  # recorded for inference (DA3Model) and checkpoints (trainer)
        model.gs_geometry = _geometry(model, cfg)
    if cfg is not None and cfg.init_head:
        init_gs_head_output(model, cfg.init_scale_px, cfg.init_opacity)
    model.requires_grad_(False)
    net.gs_head.requires_grad_(True)
    set_stage2_modes(model)
    return list(net.gs_head.parameters())


@torch.no_grad()
def init_gs_head_output(model: nn.Module, scale_px: float = 1.0, opacity: float = 0.5) -> None:
    """Set the GS head's last conv biases: scale logits to ``logit(scale_px / 6)`` (the
    adapter's scale is ``30 sigmoid(l) * 0.1 (1/fx + 1/fy) * depth``, i.e. ``6 sigmoid(l)``
    pixels), xy and depth offsets to 0, density logit to ``logit(opacity)``."""
    conv = _net(model).gs_head.out2[-1]
    b = conv.bias
    b[0:2] = 0.0
    b[2:5] = torch.logit(torch.tensor(scale_px / 6.0))
    b[-2] = 0.0  # depth offset (the channel before the density)
    b[-1] = torch.logit(torch.tensor(opacity))


def stage2_param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0,
                        cfg: Stage2Config | None = None) -> list[dict]:
    """Optimizer groups for stage 2 (calls :func:`setup_stage2`): the GS head's weights
    (``weight_decay``) and its biases / norms (no decay). Frozen parameters are absent, so the
    optimizer keeps no state for them."""
    params = setup_stage2(model, cfg)
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    return [g for g in ({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": "gs_head"},
                        {"params": rest, "lr": lr, "weight_decay": 0.0, "name": "gs_head_no_decay"})
            if g["params"]]


def check_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Raise Da3gsError if ``optimizer`` holds any parameter outside the GS head."""
    head = {id(p) for p in _net(model).gs_head.parameters()}
    for g in optimizer.param_groups:
        for p in g["params"]:
            if id(p) not in head:
                raise Da3gsError("stage 2: the optimizer holds parameters outside gs_head "
                                 "(use stage2_param_groups)")


def split_views(V: int, cfg: Stage2Config, step: int | None = None) -> tuple[list[int], list[int]]:
    """(context indices, target indices), both sorted, for V views (same for the whole batch).
    "random" draws from a generator seeded by ``cfg.seed`` and ``step``, or from torch's
    global RNG when ``step`` is None (the trainer's choice: its RNG state is checkpointed)."""
    n = cfg.num_targets
    if V - n < 1:
        raise Da3gsError(f"stage 2: {V} views cannot give {n} targets and >= 1 context view")
    if n == 0:
        tgt: list[int] = []
    elif cfg.target_select == "last":
        tgt = list(range(V - n, V))
    elif cfg.target_select == "interleaved":
        tgt = sorted({min(V - 1, 1 + int((k + 0.5) * (V - 1) / n)) for k in range(n)})
        tgt += [i for i in range(V - 1, 0, -1) if i not in tgt][: n - len(tgt)]
        tgt = sorted(tgt)
    else:
        gen = None if step is None else torch.Generator().manual_seed(
            int(cfg.seed) * 1_000_003 + int(step))
        tgt = sorted(torch.randperm(V, generator=gen)[:n].tolist())
    return [i for i in range(V) if i not in tgt], tgt


def _autocast(device: torch.device, precision: str):
    on = precision in ("auto", "bf16") and device.type == "cuda"
    return torch.autocast("cuda", dtype=torch.bfloat16) if on else nullcontext()


@dataclass
class FrozenOutputs:
    """Frozen-network outputs for the B samples' Vc context views (no gradients).

    Fields:
      ctx, tgt: context / target view indices into the batch's V views.
      x: (B, Vc, 3, H, W) ImageNet-normalised context images (the GS head's image input).
      feats: features ``(B, Vc, h*w, 2C)`` per head layer, fp32.
      depth: (B, Vc, H, W) predicted z-depth, network units.
      frame_c2w: (B, Vc, 4, 4) cameras the Gaussians are built with, in the GT world frame.
      frame_K: (B, Vc, 3, 3) their intrinsics.
      depth_scale: (B,) network depth units -> GT world units.
      pose_conditioned: (B,) bool.
    """

    ctx: list[int]
    tgt: list[int]
    x: torch.Tensor
    feats: list[torch.Tensor]
    depth: torch.Tensor
    frame_c2w: torch.Tensor
    frame_K: torch.Tensor
    depth_scale: torch.Tensor
    pose_conditioned: torch.Tensor


def _index(ids: list[int], device: torch.device) -> torch.Tensor:
    """A view-index list as a long tensor on ``device`` (through pinned memory on CUDA, without
    blocking: indexing a CUDA tensor with a Python list copies the list synchronously)."""
    return _index_on(torch.tensor(ids, dtype=torch.long), device, {})


def _pose_flags(batch, device: torch.device) -> torch.Tensor:
    """``batch.pose_conditioned`` as a (B,) bool on ``device`` (all False when None), copied
    without a sync (the trainer keeps the flags on the host)."""
    pc = batch.pose_conditioned
    if pc is None:
        return torch.zeros(batch.images.shape[0], dtype=torch.bool, device=device)
    return _index_on(pc.bool(), device, {})


@torch.no_grad()
def frozen_forward(model: nn.Module, batch, cfg: Stage2Config, step: int | None = None
                   ) -> FrozenOutputs:
    """Run the frozen part on the context views of ``batch`` (a ViewBatch) and fix each
    sample's frame (module docstring; ``cfg.batched`` picks the implementation). Returns
    :class:`FrozenOutputs`."""
    net = _net(model)
    B, V, H, W = batch.shape
    ctx, tgt = split_views(V, cfg, step)
    dev = batch.images.device
    ci = _index(ctx, dev)
    x = imagenet_normalize(batch.images.index_select(1, ci).float())
    gt_c2w, gt_K = batch.c2w.index_select(1, ci).float(), batch.K.index_select(1, ci).float()
    pc = _pose_flags(batch, dev)
    run = _frozen_net_batched if cfg.batched else _frozen_net_split
    feats, depth, pred_c2w, pred_K = run(net, x, gt_c2w, gt_K, pc,
                                         batch.pose_conditioned is not None, cfg)
    if cfg.oracle_geometry:
        return FrozenOutputs(ctx, tgt, x, feats, _oracle_depth(batch, ci), gt_c2w.clone(),
                             gt_K.clone(), torch.ones(B, device=dev), pc)
    if cfg.batched and len(ctx) < RANSAC_ALIGN_VIEWS:
        frame = _frames_batched(pred_c2w, pred_K, gt_c2w, gt_K, pc, cfg)
    else:
        frame = _frames_per_sample(pred_c2w, pred_K, gt_c2w, gt_K, pc, cfg)
    return FrozenOutputs(ctx, tgt, x, feats, depth, *frame, pc)


def _frozen_net_batched(net: DA3Net, x, gt_c2w, gt_K, pc, conditioned: bool, cfg: Stage2Config):
    """One forward of the frozen network over the whole batch, pose conditioning selected by
    the device mask ``pc`` (the GT poses of every sample go through the camera encoder; the
    pose-free samples' tokens are replaced by the learned ones). ``conditioned``: the batch
    has pose flags (else no camera encoder at all). Returns ``(feats, depth (B, Vc, H, W),
    c2w (B, Vc, 4, 4), K (B, Vc, 3, 3))`` of the predictions, fp32."""
    ext = intr = mask = None
    if conditioned:
        ext, _ = normalize_input_poses(c2w_to_w2c(gt_c2w, check=False), check=False)
        intr, mask = gt_K, pc
    with _autocast(x.device, cfg.frozen_precision):
        out, f = net.forward_features(x, ext, intr, cfg.ref_view_strategy, pose_mask=mask)
    c2w = w2c_to_c2w(as_homogeneous(out["extrinsics"].float()), check=False)
    return [t.float() for t in f], out["depth"].float(), c2w, out["intrinsics"].float()


def _frozen_net_split(net: DA3Net, x, gt_c2w, gt_K, pc, conditioned: bool, cfg: Stage2Config):
    """:func:`_frozen_net_batched` as two forwards, the pose-free and the pose-conditioned
    samples apart (selected with ``nonzero``: host reads); the per-sample implementation."""
    B, Vc, _, H, W = x.shape
    dev = x.device
    depth = torch.empty(B, Vc, H, W, device=dev)
    pred_c2w = torch.empty(B, Vc, 4, 4, device=dev)
    pred_K = torch.empty(B, Vc, 3, 3, device=dev)
    feats: list[torch.Tensor] | None = None
    for flag in (False, True):
        idx = (pc == flag).nonzero()[:, 0]
        if idx.numel() == 0:
            continue
        ext = intr = None
        if flag:
            ext, _ = normalize_input_poses(c2w_to_w2c(gt_c2w[idx]))  # per sample
            intr = gt_K[idx]
        with _autocast(dev, cfg.frozen_precision):
            out, f = net.forward_features(x[idx], ext, intr, cfg.ref_view_strategy)
        if feats is None:
            feats = [torch.empty((B,) + t.shape[1:], dtype=torch.float32, device=dev) for t in f]
        for full, part in zip(feats, f):
            full[idx] = part.float()
        depth[idx] = out["depth"].float()
        pred_c2w[idx] = w2c_to_c2w(as_homogeneous(out["extrinsics"].float()))
        pred_K[idx] = out["intrinsics"].float()
    return feats, depth, pred_c2w, pred_K


def _frames_batched(pred_c2w, pred_K, gt_c2w, gt_K, pc, cfg: Stage2Config):
    """Every sample's frame (module docstring) on the device, float64, no host reads: both
    the pose-conditioned choice (GT cameras, :func:`scale_to_input_batched`) and the pose-free
    one (aligned predicted cameras, :func:`align_cameras_batched`) for every sample, selected
    by ``pc``. Returns ``(frame_c2w (B, Vc, 4, 4), frame_K (B, Vc, 3, 3), depth_scale (B,))``."""
    p64, g64 = pred_c2w.double(), gt_c2w.double()
    sim3, aligned = align_cameras_batched(p64, g64, rotation=cfg.align)
    s_in = scale_to_input_batched(p64, g64)
    m = pc[:, None, None, None]
    return (torch.where(m, gt_c2w, aligned.float()), torch.where(m, gt_K, pred_K),
            torch.where(pc, s_in, sim3.s).float())


def _frames_per_sample(pred_c2w, pred_K, gt_c2w, gt_K, pc, cfg: Stage2Config):
    """:func:`_frames_batched` one sample at a time on the host in float64 (with RANSAC where
    due): the per-sample implementation, and the slow path of the batched one from
    :data:`RANSAC_ALIGN_VIEWS` context views on."""
    B, Vc = gt_c2w.shape[:2]
    dev = gt_c2w.device
    frame_c2w, frame_K = gt_c2w.clone(), gt_K.clone()
    scale = torch.ones(B, device=dev)
    flags = pc.cpu().tolist()
    for b in range(B):
        pc64, gt64 = pred_c2w[b].double().cpu(), gt_c2w[b].double().cpu()
        if flags[b]:
            scale[b] = scale_to_input(pc64, gt64)
        else:
            sim3, aligned = align_cameras(pc64, gt64, ransac=cfg.align_ransac and Vc >= 10,
                                          orientation_fallback=True, rotation=cfg.align)
            frame_c2w[b], frame_K[b] = aligned.to(dev, torch.float32), pred_K[b]
            scale[b] = float(sim3.s)
    return frame_c2w, frame_K, scale


def _oracle_depth(batch, ctx: torch.Tensor) -> torch.Tensor:
    """(B, Vc, H, W) ground-truth z-depth of the context views ``ctx`` (index tensor); pixels
    without it (sky, invalid) get their view's largest valid depth (1 when the view has none)."""
    d = batch.depth.index_select(1, ctx).float()
    ok = batch.valid.index_select(1, ctx).bool() & torch.isfinite(d) & (d > 0)
    far = torch.where(ok, d, torch.zeros_like(d)).flatten(2).amax(-1)
    far = torch.where(far > 0, far, torch.ones_like(far))
    return torch.where(ok, d, far[..., None, None].expand_as(d))


def gs_head_forward(model: nn.Module, fo: FrozenOutputs, cfg: Stage2Config
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """GS head on the frozen features, with gradients: ``raw (B, Vc, H, W, C)`` and
    ``density (B, Vc, H, W)``, fp32."""
    dev = fo.x.device.type
    bf16 = cfg.head_precision == "bf16" and dev == "cuda"
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
        out = _net(model).gs_from_features(fo.feats, fo.x)
    return out["raw_gs"].float(), out["raw_gs_conf"].float()


def _render_cameras(batch, fo: FrozenOutputs, tgt: torch.Tensor, with_context: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """w2c (B, n, 4, 4) and K (B, n, 3, 3) of the rendered views, the targets ``tgt`` (index
    tensor) then, ``with_context``, the context views: targets through their ground-truth
    cameras, context views through the cameras their Gaussians were built with
    (``fo.frame_c2w`` / ``fo.frame_K``: the GT cameras with input poses; pose-free, the
    predicted cameras aligned to the GT), so a context pixel's Gaussian lands on that pixel
    whatever the quality of the predicted cameras."""
    c2w, K = batch.c2w.index_select(1, tgt).float(), batch.K.index_select(1, tgt).float()
    if with_context:
        c2w, K = torch.cat([c2w, fo.frame_c2w], dim=1), torch.cat([K, fo.frame_K], dim=1)
    return c2w_to_w2c(c2w, check=False), K


def _render_all(net: DA3Net, fo: FrozenOutputs, raw, density, w2c, K, W: int, H: int,
                geometry: str, cfg: Stage2Config, bg: torch.Tensor):
    """Each sample's Gaussians rendered into its cameras ``w2c (B, n, 4, 4)``, ``K``:
    ``(color (B, n, H, W, 3), alpha (B, n, H, W, 1), depth (B, n, H, W, 1), Gaussians per
    sample)``; batched (one build, one :func:`render_batch`) or per sample (``cfg.batched``)."""
    sh = net.preset.sh_degree
    if cfg.batched:
        g = build_gaussians_batched(raw, density, fo.depth, fo.frame_c2w, fo.frame_K, sh,
                                    geometry, depth_scale=fo.depth_scale)
        out = render_batch(g, w2c, K, W, H, backend=cfg.backend, background=bg, radii=False)
        return out.color, out.alpha, out.depth, g.means.shape[1]
    outs = []
    for b in range(raw.shape[0]):
        g = build_gaussians(raw[b], density[b], fo.depth[b], fo.frame_c2w[b], fo.frame_K[b], sh,
                            geometry, depth_scale=float(fo.depth_scale[b]))
        o = render(g, w2c[b], K[b], W, H, backend=cfg.backend, background=bg)
        outs.append((o.color, o.alpha, o.depth))
    color, alpha, depth = (torch.stack(t) for t in zip(*outs))
    return color, alpha, depth, len(g)


@dataclass
class Stage2Result:
    """loss (scalar, with grad); logs: 0-d detached device tensors (floats with
    ``batched=False``; ``num_gaussians`` always a float); images: first sample's rendered and
    GT target (or context) views ``(n, 3, H, W)`` under "render" / "gt", detached, for image
    grids."""

    loss: torch.Tensor
    logs: dict
    images: dict


def stage2_forward(model: nn.Module, batch, cfg: Stage2Config | None = None, lpips_fn=None,
                   step: int | None = None, frozen: FrozenOutputs | None = None) -> Stage2Result:
    """Stage-2 loss on a ViewBatch ``batch`` (B, V, H, W) (module docstring). With
    ``cfg.batched`` (default) nothing here reads a device value on the host."""
    cfg = cfg or Stage2Config()
    net = _net(model)
    set_stage2_modes(model, True)
    fo = frozen if frozen is not None else frozen_forward(model, batch, cfg, step)
    raw, density = gs_head_forward(model, fo, cfg)
    B, V, H, W = batch.shape
    dev = raw.device
    ci, ti = _index(fo.ctx, dev), _index(fo.tgt, dev)
    ssi = cfg.loss.depth_weight > 0
    rendered_depth = ssi and cfg.loss.depth_source == "rendered"
    with_context = cfg.rgb_on_context or rendered_depth
    nt = len(fo.tgt)
    n_rgb = nt + (len(fo.ctx) if cfg.rgb_on_context else 0)
    bg = torch.tensor(cfg.background, dtype=torch.float32).to(dev, non_blocking=True)
    w2c, K = _render_cameras(batch, fo, ti, with_context)
    color, alpha, depth, n_gauss = _render_all(net, fo, raw, density, w2c, K, W, H,
                                               _geometry(model, cfg), cfg, bg)
    p_rgb = color[:, :n_rgb].permute(0, 1, 4, 2, 3).flatten(0, 1)  # (B * n_rgb, 3, H, W)
    g_rgb = batch.images.index_select(1, torch.cat([ti, ci])[:n_rgb]).float().flatten(0, 1)
    depth_args = (None, None, None)
    if ssi:
        valid = batch.valid.index_select(1, ci)
        if rendered_depth:
            p_d = depth[:, nt:, ..., 0]
            valid = valid & (alpha[:, nt:, ..., 0].detach() > cfg.loss.depth_min_alpha)
        else:
            p_d = (fo.depth + raw[..., -1]) * fo.depth_scale[:, None, None, None]
        g_d = batch.depth.index_select(1, ci).float()
        depth_args = (p_d.flatten(0, 1), g_d.flatten(0, 1), valid.flatten(0, 1))
    loss, logs = stage2_loss(p_rgb, g_rgb, *depth_args, cfg=cfg.loss, lpips_fn=lpips_fn)
    loss = loss + 0.0 * (raw.sum() + density.sum())  # every head output in the graph (DDP)
    logs.update(num_gaussians=float(n_gauss), pose_conditioned=fo.pose_conditioned.float().mean(),
                opacity=density.detach().mean())
    if not cfg.batched:  # the per-sample implementation read its logs on the host
        logs = {k: float(v) for k, v in logs.items()}
    images = {"render": p_rgb[:n_rgb].detach().clamp(0, 1), "gt": g_rgb[:n_rgb]}
    return Stage2Result(loss, logs, images)


def stage2_train_step(model: nn.Module, batch, optimizer: torch.optim.Optimizer,
                      cfg: Stage2Config | None = None, lpips_fn=None, step: int | None = None,
                      grad_clip: float = 1.0, frozen: FrozenOutputs | None = None) -> dict:
    """One optimizer step of stage 2 on ``batch``; returns the logs (floats: read on the host,
    a sync, unlike the trainer's step). A non-finite loss skips the update and logs
    ``skipped: 1``. ``grad_clip`` <= 0 disables clipping."""
    optimizer.zero_grad(set_to_none=True)
    res = stage2_forward(model, batch, cfg, lpips_fn, step, frozen)
    logs = {k: float(v) for k, v in res.logs.items()}
    if not torch.isfinite(res.loss):
        logs["skipped"] = 1.0
        return logs
    if not res.loss.requires_grad:  # no Gaussian reached any rendered view
        logs["skipped"] = 1.0
        return logs
    res.loss.backward()
    params = [p for p in _net(model).gs_head.parameters() if p.grad is not None]
    if grad_clip > 0 and params:
        logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    optimizer.step()
    logs["skipped"] = 0.0
    return logs


class Stage2Objective:
    """The trainer's stage-2 objective (:mod:`da3gs.train.objectives`): ``objective(net,
    batch) -> (loss, parts)`` with the LPIPS network built once per device (a plain object, so
    the LPIPS weights stay out of the trained module, its state dict and DDP); ``prepare``
    freezes all but the GS head; ``extra_metrics`` adds held-out novel-view metrics."""

    stage = "stage2"
    capture_fields = None
    needs_cameras = True
    not_capturable = "stage 2 renders with gsplat, whose sizes are data-dependent"

    def __init__(self, cfg: Stage2Config):
        self.cfg, self._lpips = cfg, {}

    def adapt_loaded(self, net: nn.Module, preset, train_cfg) -> nn.Module:
        """A loaded network without a GS head whose preset has one (e.g. official DA3-SMALL
        with ``model.preset=small-gs``) gets a fresh head; anything else is returned as is
        (a preset mismatch is reported by the caller)."""
        if getattr(net, "gs_head", 0) is None and preset.gs_head:
            from da3gs.models.net import with_gs_head

            try:
                return with_gs_head(net, preset, train_cfg.model.head_chunk)
            except ValueError:
                return net
        return net

    def prepare(self, net: nn.Module, train_cfg=None) -> nn.Module:
        """Only the GS head trains (:func:`setup_stage2`; a Da3gsError without one)."""
        setup_stage2(net, self.cfg)
        return net

    def extra_metrics(self, net: nn.Module, sets: dict, device) -> dict:
        """Novel-view PSNR / SSIM / LPIPS of held-out targets per evaluation set, both pose
        modes (:func:`da3gs.train.stage2_eval.nvs_metrics`), keyed ``SET/metric``."""
        from da3gs.train.stage2_eval import nvs_metrics

        return {f"{name}/{k}": v for name, batches in sets.items()
                for k, v in nvs_metrics(net, batches, self.cfg, device).items()}

    def __call__(self, net: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from da3gs.losses.stage2 import build_lpips_loss

        dev = str(batch.images.device)
        if dev not in self._lpips:
            self._lpips[dev] = build_lpips_loss(self.cfg.loss, dev)
        res = stage2_forward(net, batch, self.cfg, self._lpips[dev])
        return res.loss, res.logs
