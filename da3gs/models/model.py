"""``DA3Model``: a DA3 network plus pre/post-processing behind ``infer``."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch
from torch import nn

from da3gs.errors import Da3gsError
from da3gs.geometry import (align_cameras, align_cameras_batched, as_homogeneous, c2w_to_w2c,
                            w2c_to_c2w)
from da3gs.io.images import imagenet_normalize, prepare_images
from da3gs.models.gaussian_adapter import GEOMETRIES, build_gaussians
from da3gs.models.compile_cache import use_compile_cache
from da3gs.models.net import build_net, compile_network
from da3gs.models.presets import NestedPreset, Preset, get_preset
from da3gs.models.reference_view import STRATEGIES
from da3gs.types import Prediction

RANSAC_ALIGN_VIEWS = 10  # as the official package: robust alignment from 10 input views on


def normalize_input_poses(w2c: torch.Tensor,
                          check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-base ``w2c: (B, V, 4, 4)`` on view 0 and divide translations by the median camera
    distance from view 0 (the lower median for an even count, clamped to >= 0.1), per sample,
    as the official package does before conditioning (it runs one sample at a time). Training
    feeds pose-conditioned samples through this too, so the network sees poses in the units
    it gets at inference.

    ``check``: validate the rotations (a host sync; training passes False).
    Returns (normalised w2c, median distance ``(B,)``)."""
    w2c = w2c @ w2c_to_c2w(w2c[:, :1], check=check)
    dist = w2c_to_c2w(w2c, check=check)[..., :3, 3].norm(dim=-1)  # (B, V)
    median = dist.median(dim=1).values.clamp(min=0.1)  # (B,)
    w2c = w2c.clone()
    w2c[..., :3, 3] = w2c[..., :3, 3] / median[:, None, None]
    return w2c, median


def scale_to_input(pred_c2w: torch.Tensor, in_c2w: torch.Tensor) -> float:
    """Scale taking the network's camera frame to the input poses' frame (``(V, 4, 4)`` each).

    Umeyama on camera centres (RANSAC from 10 views on, as the official package); for one or
    two views or collinear centres, the ratio of centre spreads (1 for a single view)."""
    V = pred_c2w.shape[0]
    sim3, _ = align_cameras(pred_c2w.double(), in_c2w.double(), ransac=V >= RANSAC_ALIGN_VIEWS,
                            orientation_fallback=True)
    return float(sim3.s)


def scale_to_input_batched(pred_c2w: torch.Tensor, in_c2w: torch.Tensor) -> torch.Tensor:
    """:func:`scale_to_input` for ``(..., V, 4, 4)`` batches, on their device with no host reads
    (:func:`~da3gs.geometry.align_cameras_batched` with ``rotation="centres"``: Umeyama on the
    centres, the spread ratio where they are degenerate); float32 or float64. Returns ``(...)``.

    Raises Da3gsError from :data:`RANSAC_ALIGN_VIEWS` views on: :func:`scale_to_input` then
    fits by RANSAC, which only the per-sample path does."""
    V = pred_c2w.shape[-3]
    if V >= RANSAC_ALIGN_VIEWS:
        raise Da3gsError(f"scale_to_input_batched: {V} views take the RANSAC fit (from "
                         f"{RANSAC_ALIGN_VIEWS} on); use the per-sample scale_to_input")
    sim3, _ = align_cameras_batched(pred_c2w, in_c2w, rotation="centres")
    return sim3.s


class DA3Model(nn.Module):
    """A DA3 network (``self.net``) with image preparation and output conversion.

    ``model.net(x)`` runs the raw network on ImageNet-normalised ``x: (B, V, 3, H, W)`` and
    returns the official output names; ``model.infer`` is the user-level entry point.
    """

    def __init__(self, preset: Preset | NestedPreset | str, net: nn.Module | None = None,
                 gs_geometry: str = "da3gs"):
        super().__init__()
        if gs_geometry not in GEOMETRIES:
            raise Da3gsError(f"gs_geometry: expected one of {GEOMETRIES}, got {gs_geometry!r}")
        self.net = net if net is not None else build_net(preset)
        self.preset = self.net.preset
        #: how GS-head outputs become Gaussians: "official" for the published weights (trained
        #: with the official adapter's geometry), "da3gs" for heads trained here.
        self.gs_geometry = gs_geometry
        #: what ``precision="auto"`` means on CUDA: "fast" (default) or "exact" (``--exact``)
        self.auto_precision = "fast"
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def has_cameras(self) -> bool:
        return bool(self.net.has_cameras)

    @property
    def has_gs_head(self) -> bool:
        net = getattr(self.net, "anyview", self.net)
        return net.gs_head is not None

    @property
    def is_metric(self) -> bool:
        return isinstance(self.preset, NestedPreset) or self.preset.name.startswith("metric")

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute backbone blocks in the backward pass to save memory while training."""
        for m in self.modules():
            if hasattr(m, "grad_checkpointing"):
                m.grad_checkpointing = enabled

    OFFLOAD_VIEWS = 256  # infer(offload=None) keeps outputs in host memory above this

    PRECISIONS = ("auto", "fast", "exact", "bf16", "fp16", "fp32")

    def _precision(self, precision: str):
        """``(autocast context, fast heads)`` for a precision name (see :meth:`infer`)."""
        dev = self.device.type
        if precision not in self.PRECISIONS:
            raise Da3gsError(f"precision: expected one of {', '.join(self.PRECISIONS)}, got {precision!r}")
        if precision == "auto":
            precision = self.auto_precision if dev == "cuda" else "fp32"
        if precision == "fp32" or (precision in ("fast", "exact") and dev != "cuda"):
            return nullcontext(), False
        dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=dev, dtype=dtype), precision == "fast"

    def enable_compile(self, backend: str = "inductor", cache: bool = True) -> "DA3Model":
        """``torch.compile`` the transformer blocks and the heads' per-chunk forward in place
        (:func:`~da3gs.models.net.compile_network`; parameters and state dict unchanged) for
        inference throughput: on an H200 the large preset at 32 views runs 1.5x faster than
        uncompiled (docs/performance.md), after a first forward that compiles for tens of
        seconds; each new input shape may recompile). ``cache``: keep what Inductor generates
        in the persistent folder of :func:`~da3gs.models.compile_cache.use_compile_cache`
        (``$DA3GS_COMPILE_CACHE``, default ``~/.cache/da3gs/compile``), so a later process
        loads it instead of compiling again. ``backend``: any ``torch.compile`` backend (tests
        use ``"eager"``). Returns ``self``."""
        if cache and backend == "inductor":
            use_compile_cache()
        compile_network(self.net, backend=backend)
        return self

    @torch.no_grad()
    def infer(self, images: Sequence | torch.Tensor, c2w: torch.Tensor | None = None,
              K: torch.Tensor | None = None, *, process_res: int = 504,
              process_method: str = "upper_bound_resize", ref_view: str = "saddle_balanced",
              precision: str = "auto", infer_gs: bool = False,
              mixed_sizes: str = "cover", offload: bool | None = None,
              process_group=None) -> Prediction | None:
        """Depth, confidence and cameras for a set of views.

        Args:
          images: list of paths / arrays / PIL images, or ``(V, 3, H, W)`` float in [0, 1].
          c2w: optional ``(V, 4, 4)`` OpenCV camera-to-world poses (needs ``K``).
          K: optional ``(V, 3, 3)`` intrinsics in pixels of the input images.
          process_res, process_method: resize rule (see ``da3gs.io.images.prepare_images``).
          mixed_sizes: views of different sizes: ``cover`` (default; each resized by its own
            factor to one common size, minimal centre crop) or ``crop_to_smallest`` (official).
          ref_view: reference-view strategy for pose-free input (``saddle_balanced`` default).
          precision: ``auto`` (``fast`` on CUDA, ``fp32`` on the CPU); ``fast``: backbone and
            heads in bf16 (only the heads' last 1x1 convolutions and the camera head in fp32);
            ``exact`` (= ``bf16``): the official numerics, bf16 backbone and fp32 heads;
            ``fp16``: as ``bf16`` in float16; ``fp32``. On the CPU ``fast`` and ``exact`` run
            in fp32.
          infer_gs: also run the GS head and return ``pred.gaussians`` (models with a GS head;
            others raise). Gaussians live in the frame of the returned cameras.
          offload: move the per-view outputs to host memory as the heads make them (the
            prediction is then on the CPU); None (default): when more than
            :attr:`OFFLOAD_VIEWS` views run on a GPU.
          process_group: context parallelism (:mod:`da3gs.models.context_parallel`): one
            forward over the ranks of this ``torch.distributed`` group
            (``torch.distributed.group.WORLD``: all processes), each running the network on its
            share of the views (any-view presets; not nested metric ones). Every rank calls
            ``infer`` with the same arguments (each prepares every image: the common size and
            the pose normalisation are those of all views); rank 0 returns the Prediction of all
            views, the others None. None (default): one process.
        With poses, the camera encoder conditions the network (poses re-based on view 0 and
        scale-normalised) and the outputs come back in the frame and scale of the input poses.
        """
        if ref_view not in STRATEGIES:
            raise Da3gsError(f"ref_view: expected one of {', '.join(STRATEGIES)}, got {ref_view!r}")
        if (c2w is None) != (K is None):
            raise Da3gsError("c2w and K must be given together (the camera encoder needs both)")
        prep = prepare_images(images, K=K, process_res=process_res, method=process_method,
                              mixed_sizes=mixed_sizes)
        V = prep.images.shape[0]
        in_c2w = None
        if c2w is not None:
            in_c2w = _check_poses(c2w, V)
            if not self.has_cameras:
                raise Da3gsError(f"preset {self.preset.name} has no camera encoder; omit c2w and K")
        if infer_gs and not self.has_gs_head:
            raise Da3gsError(f"preset {self.preset.name} has no GS head; cannot predict Gaussians")
        dev = self.device
        shard = None
        if process_group is not None:
            from da3gs.models.context_parallel import make_shard

            if isinstance(self.preset, NestedPreset) or not self.has_cameras:
                raise Da3gsError(f"preset {self.preset.name}: context parallelism runs any-view "
                                 f"presets only (not nested metric or monocular ones)")
            shard = make_shard(V, process_group)
        x = imagenet_normalize(prep.images[shard.local_slice() if shard else slice(None)].to(dev))[None]
        ext = intr = None
        if in_c2w is not None:
            ext, _ = normalize_input_poses(c2w_to_w2c(in_c2w.to(dev, torch.float32))[None])
            intr = prep.K.to(dev, torch.float32)[None]
        autocast, fast = self._precision(precision)
        if offload is None:
            offload = dev.type != "cpu" and V > self.OFFLOAD_VIEWS
        self.net.set_output_device("cpu" if offload else None)
        try:
            with autocast:
                out = self.net(x, ext, intr, ref_view_strategy=ref_view, infer_gs=infer_gs,
                               fast=fast, **({} if shard is None else {"shard": shard}))
        finally:
            self.net.set_output_device(None)
        if shard is not None:
            from da3gs.models.context_parallel import gather_outputs

            out = gather_outputs(out, shard, device="cpu" if offload else None)
            if out is None:  # not rank 0: its views' outputs went there
                return None
        return self._to_prediction(out, prep, in_c2w)

    def _to_prediction(self, out: dict, prep, in_c2w: torch.Tensor | None) -> Prediction:
        f = {k: (v[0].float() if isinstance(v, torch.Tensor) and v.dim() > 0 else v)
             for k, v in out.items()}
        pred = Prediction(images=prep.images, depth=f["depth"], depth_conf=f.get("depth_conf"),
                          rays=f.get("ray"), ray_conf=f.get("ray_conf"), sky=f.get("sky"),
                          original_sizes=prep.original_sizes, paths=prep.paths,
                          is_metric=self.is_metric, resize_scale=list(prep.resize_scale),
                          crop_offsets=list(prep.crop_offsets))
        if "scale_factor" in out:
            pred.scale_factor = float(out["scale_factor"])
        if "ref_view" in out:
            pred.ref_view = int(out["ref_view"][0])
        if "extrinsics" in f:
            w2c = as_homogeneous(f["extrinsics"])
            pred.w2c, pred.c2w, pred.K = w2c, w2c_to_c2w(w2c), f["intrinsics"]
        if in_c2w is not None:
            s = scale_to_input(pred.c2w.double().cpu(), in_c2w.double().cpu())
            pred.depth = pred.depth * s
            pred.c2w = in_c2w.to(pred.depth.device, torch.float32)
            pred.w2c = c2w_to_w2c(pred.c2w)
            pred.K = prep.K.to(pred.depth.device, torch.float32)
            pred.scale_factor, pred.pose_conditioned = s, True
        if "raw_gs" in f:
            s = pred.scale_factor if pred.pose_conditioned else 1.0
            pred.gaussians = build_gaussians(
                f["raw_gs"], f["raw_gs_conf"], f["depth"], pred.c2w, pred.K, self.preset_sh_degree,
                self.gs_geometry, conf=pred.depth_conf, depth_scale=s)
        return pred

    @property
    def preset_sh_degree(self) -> int:
        sh = getattr(self.preset, "sh_degree", None)  # 0 is a valid degree: test for None
        return sh if sh is not None else get_preset(self.preset.anyview).sh_degree

    def set_cross_view_attention(self, pattern=None) -> None:
        """Sparse cross-view attention for long sequences: ``pattern`` a
        :class:`~da3gs.nn.sparse_attention.CrossViewPattern` (each view attends to the keyframe
        views plus its temporal neighbours, in the input order), or None for full attention
        (the default). Applies to every backbone of the network (both of a nested model)."""
        from da3gs.models.backbone import Backbone
        from da3gs.nn.sparse_attention import CrossViewPattern

        if pattern is not None and not isinstance(pattern, CrossViewPattern):
            raise Da3gsError(f"cross-view attention: expected a CrossViewPattern or None, got "
                             f"{type(pattern).__name__}")
        for m in self.modules():
            if isinstance(m, Backbone):
                m.cross_view_attention = pattern


def _check_poses(c2w, V: int) -> torch.Tensor:
    c2w = torch.as_tensor(c2w)
    if c2w.dim() != 3 or c2w.shape[-2:] not in ((4, 4), (3, 4)):
        raise Da3gsError(f"c2w: expected shape ({V}, 4, 4), got {tuple(c2w.shape)}")
    if c2w.shape[0] != V:
        raise Da3gsError(f"c2w: {c2w.shape[0]} poses for {V} images")
    if not torch.isfinite(c2w).all():
        raise Da3gsError("c2w: contains NaN or infinite values")
    c2w = as_homogeneous(c2w.double())
    R = c2w[:, :3, :3]
    err = (R.transpose(1, 2) @ R - torch.eye(3, dtype=R.dtype)).abs().amax()
    if err > 1e-3 or (torch.linalg.det(R) < 0).any():
        raise Da3gsError("c2w: rotation parts are not proper rotations (orthonormal, det +1)")
    return c2w
