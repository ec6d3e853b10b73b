"""Stage-2 losses: rendering (MSE + LPIPS) and a scale-shift-invariant depth term.

Paper section 5: the GS-DPT head is trained with MSE + LPIPS on rendered views and a
scale-shift-invariant depth loss on the inputs; the weights are not stated. Our choices
(:class:`Stage2LossConfig`): MSE 1, LPIPS 0.05 (the peers' value: AnySplat, DepthSplat,
NoPoSplat, MVSplat), depth 0.1.

The depth term follows MiDaS: each image's depth is normalised by its own median ``m``
(``torch.median``, the lower middle value for even counts) and mean absolute deviation
``a = mean |d - m|`` over the valid pixels, ``n(d) = (d - m) / a``; the loss is the mean of
``|n(pred) - n(gt)|`` over valid pixels, averaged over the images that have at least
``depth_min_valid`` valid pixels. It is invariant to a positive scale and any shift of
either depth map.

LPIPS uses :mod:`da3gs.metrics.lpips` (our implementation, weights never downloaded). VGG16
weights are 58.9 MB in fp32 (``lpips_vgg.safetensors``), 29.4 MB as an fp16 copy (which
loads the same way: the values are cast into the fp32 network); AlexNet is 9.9 MB.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from da3gs.errors import Da3gsError

__all__ = ["Stage2LossConfig", "ssi_depth_loss", "stage2_loss", "build_lpips_loss"]


@dataclass
class Stage2LossConfig:
    """Weights and options of :func:`stage2_loss`.

    Fields:
      mse_weight: weight of the mean squared colour error over the rendered views.
      lpips_weight: weight of LPIPS on the rendered views (0 turns it off and needs no
        weights). Peers use 0.05.
      lpips_net: "vgg" (as the paper and peers) or "alex" (9.9 MB of weights).
      lpips_weights: explicit LPIPS weight file (``lpips_{net}.safetensors``, fp32 or fp16,
        or a torchvision ``.pth``); None searches the da3gs cache
        (``$DA3GS_LPIPS_DIR`` or ``~/.cache/da3gs/lpips``) and the torch hub cache.
      depth_weight: weight of the scale-shift-invariant depth term on the context views
        (0 turns it off).
      depth_source: "rendered" (expected depth of the splats rendered into the context
        cameras; trains offsets, scales, opacities) or "predicted" (``D + dD`` of the head's
        depth offset; cheaper, trains dD only).
      depth_min_valid: images with fewer valid pixels are left out of the depth term.
      depth_min_alpha: with rendered depth, pixels whose accumulated opacity is below this
        are not valid (their expected depth is undefined).
    """

    mse_weight: float = 1.0
    lpips_weight: float = 0.05
    lpips_net: str = "vgg"
    lpips_weights: str | None = None
    depth_weight: float = 0.1
    depth_source: str = "rendered"
    depth_min_valid: int = 16
    depth_min_alpha: float = 0.5

    def __post_init__(self):
        if self.depth_source not in ("rendered", "predicted"):
            raise Da3gsError(f"loss.depth_source: expected 'rendered' or 'predicted', got "
                             f"{self.depth_source!r}")
        if self.lpips_net not in ("vgg", "alex"):
            raise Da3gsError(f"loss.lpips_net: expected 'vgg' or 'alex', got {self.lpips_net!r}")
        for name in ("mse_weight", "lpips_weight", "depth_weight"):
            if getattr(self, name) < 0:
                raise Da3gsError(f"loss.{name} must be >= 0, got {getattr(self, name)}")


def build_lpips_loss(cfg: Stage2LossConfig, device: str | torch.device = "cpu"):
    """The LPIPS network for ``cfg`` (eval mode, frozen, fp32, on ``device``), or None when
    ``cfg.lpips_weight == 0``.

    Raises:
      Da3gsError: the weights are not available offline (the message names the places
        searched, the fetch command, and that ``lpips_weight: 0`` trains without LPIPS).
    """
    if cfg.lpips_weight == 0:
        return None
    from da3gs.metrics.lpips import LPIPSWeightsError, load_lpips

    try:
        return load_lpips(cfg.lpips_net, weights=cfg.lpips_weights, device=device)
    except LPIPSWeightsError as e:
        raise Da3gsError(f"stage-2 LPIPS loss: {e}; or set loss.lpips_weight=0 to train "
                         "without LPIPS") from None


def _normalise(d: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``d, m: (N, P)``: ``(d - median) / mean |d - median|`` over the mask (0
    outside it) and a (N,) bool of rows with a non-zero deviation."""
    nan = torch.full_like(d, float("nan"))
    med = torch.nanmedian(torch.where(m, d, nan), dim=-1).values  # lower middle value
    med = torch.where(torch.isfinite(med), med, torch.zeros_like(med))
    cen = torch.where(m, d - med[:, None], torch.zeros_like(d))
    mad = cen.abs().sum(-1) / m.sum(-1).clamp_min(1)
    return cen / mad.clamp_min(1e-8)[:, None], mad > 1e-8


def ssi_depth_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
                   min_valid: int = 16) -> torch.Tensor:
    """Scale-shift-invariant depth loss (module docstring).

    Args:
      pred, gt: (N, H, W) depth maps (any positive scale and shift); valid: (N, H, W) bool.
      min_valid: images with fewer valid pixels (or constant depth) are left out.
    Returns:
      scalar: mean over the kept images of ``mean_valid |n(pred) - n(gt)|``; 0 (still
      attached to ``pred``) when no image is kept. No host reads of device values.
    """
    if pred.shape != gt.shape or valid.shape != pred.shape:
        raise Da3gsError(f"ssi_depth_loss: shapes differ: pred {tuple(pred.shape)}, gt "
                         f"{tuple(gt.shape)}, valid {tuple(valid.shape)}")
    N = pred.shape[0]
    p, g, m = pred.reshape(N, -1).float(), gt.reshape(N, -1).float(), valid.reshape(N, -1).bool()
    m = m & torch.isfinite(p).detach() & torch.isfinite(g)
    count = m.sum(-1)
    keep = count >= max(int(min_valid), 1)
    pn, okp = _normalise(torch.where(m, p, torch.zeros_like(p)), m)
    gn, okg = _normalise(torch.where(m, g, torch.zeros_like(g)), m)
    keep = keep & okp & okg
    err = ((pn - gn).abs() * m).sum(-1) / count.clamp_min(1)
    # mean over the kept images without reading ``keep`` on the host (no device sync)
    return torch.where(keep, err, torch.zeros_like(err)).sum() / keep.sum().clamp_min(1)


def stage2_loss(pred_rgb: torch.Tensor, gt_rgb: torch.Tensor,
                pred_depth: torch.Tensor | None = None, gt_depth: torch.Tensor | None = None,
                depth_valid: torch.Tensor | None = None,
                cfg: Stage2LossConfig | None = None, lpips_fn=None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stage-2 loss ``mse_weight * MSE + lpips_weight * LPIPS + depth_weight * L_ssi``.

    Args:
      pred_rgb: (N, 3, H, W) rendered colours (unclamped; LPIPS sees them clamped to [0, 1]).
      gt_rgb: (N, 3, H, W) ground-truth colours in [0, 1].
      pred_depth, gt_depth: (M, H, W) context-view depth (rendered or predicted) and ground
        truth; depth_valid: (M, H, W) bool. Omitted: no depth term.
      cfg: weights (default :class:`Stage2LossConfig`).
      lpips_fn: callable ``(pred (N, 3, H, W), gt) -> (N,)`` such as the network of
        :func:`build_lpips_loss`; required when ``cfg.lpips_weight > 0``.
    Returns:
      (scalar loss, logs ``{"loss", "mse", "psnr", "lpips", "depth"}`` as detached 0-d
      tensors on the loss's device, so computing them costs no device sync (read them with
      ``float`` when logging); terms with weight 0 are not computed and not logged).
    """
    cfg = cfg or Stage2LossConfig()
    if pred_rgb.shape != gt_rgb.shape or pred_rgb.dim() != 4 or pred_rgb.shape[1] != 3:
        raise Da3gsError(f"stage2_loss: pred_rgb and gt_rgb must both be (N, 3, H, W), got "
                         f"{tuple(pred_rgb.shape)} and {tuple(gt_rgb.shape)}")
    pred_rgb, gt_rgb = pred_rgb.float(), gt_rgb.float()
    mse = (pred_rgb - gt_rgb).square().mean()
    logs = {"mse": mse.detach(),
            "psnr": -10 * torch.log10((pred_rgb.detach().clamp(0, 1) - gt_rgb)
                                      .square().mean().clamp_min(1e-10))}
    loss = cfg.mse_weight * mse
    if cfg.lpips_weight > 0:
        if lpips_fn is None:
            raise Da3gsError("stage2_loss: lpips_weight > 0 needs lpips_fn (see build_lpips_loss)")
        lp = lpips_fn(pred_rgb.clamp(0, 1), gt_rgb).mean()
        loss = loss + cfg.lpips_weight * lp
        logs["lpips"] = lp.detach()
    if cfg.depth_weight > 0 and pred_depth is not None:
        if gt_depth is None or depth_valid is None:
            raise Da3gsError("stage2_loss: pred_depth needs gt_depth and depth_valid")
        dl = ssi_depth_loss(pred_depth, gt_depth, depth_valid, cfg.depth_min_valid)
        loss = loss + cfg.depth_weight * dl
        logs["depth"] = dl.detach()
    logs["loss"] = loss.detach()
    return loss, logs
