"""Run logging: ``metrics.jsonl``, optional TensorBoard scalars and image grids, and a progress
line with throughput and ETA. Only rank 0 writes; other ranks get a logger that does nothing."""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

_TB_WARNED = False


def _tb_writer(log_dir: Path):
    global _TB_WARNED
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as e:  # tensorboard not installed (or broken): jsonl only
        if not _TB_WARNED:
            warnings.warn(f"TensorBoard unavailable ({type(e).__name__}); logging to "
                          "metrics.jsonl only", stacklevel=2)
            _TB_WARNED = True
        return None
    return SummaryWriter(str(log_dir))


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s"


class RunLogger:
    """Writes events of one run. ``active=False`` (ranks > 0) makes every method a no-op.

    scalars(step, values, prefix): one jsonl line ``{"step", "kind": prefix, **values}`` and a
      TensorBoard scalar per value (``prefix/name``).
    image(step, tag, img): ``img`` (3, H, W) float in [0, 1] or (H, W, 3) uint8, to TensorBoard
      and as ``RUN/images/<tag>_<step>.png``.
    progress(step, total, images_per_s, text): one progress line with ETA to stderr.
    """

    def __init__(self, run_dir: Path, active: bool = True, tensorboard: bool = True,
                 progress: bool = True):
        self.run_dir, self.active, self.show = Path(run_dir), active, progress
        self.tb = _tb_writer(self.run_dir / "tb") if active and tensorboard else None
        self.t0 = time.time()
        self.start_step: int | None = None

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if not self.active:
            return
        rec = {"step": step, "kind": prefix, "time": round(time.time() - self.t0, 2)}
        rec.update({k: (float(v) if isinstance(v, (int, float)) else v) for k, v in values.items()})
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(float(v)):
                    self.tb.add_scalar(f"{prefix}/{k}", float(v), step)

    def image(self, step: int, tag: str, img) -> None:
        if not self.active:
            return
        if isinstance(img, torch.Tensor):
            img = (img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255
                   ).round().astype(np.uint8)
        from PIL import Image

        d = self.run_dir / "images"
        d.mkdir(exist_ok=True)
        Image.fromarray(img).save(d / f"{tag.replace('/', '_')}_{step:08d}.png")
        if self.tb is not None:
            self.tb.add_image(tag, img, step, dataformats="HWC")

    def progress(self, step: int, total: int, images_per_s: float, text: str) -> None:
        if not (self.active and self.show):
            return
        if self.start_step is None:
            self.start_step, self.t_start = step, time.time()
        done = step - self.start_step
        el = time.time() - self.t_start
        eta = el / done * (total - step) if done > 0 else float("nan")
        pct = 100.0 * step / max(1, total)
        print(f"[{pct:5.1f}%] step {step}/{total} | {text} | {images_per_s:.1f} img/s | "
              f"elapsed {format_duration(el)} | ETA {format_duration(eta)}",
              file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.active:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            self.tb = None


def depth_grid(images: torch.Tensor, gt: torch.Tensor, pred: torch.Tensor,
               valid: torch.Tensor | None = None, max_views: int = 4) -> np.ndarray:
    """One sample as an (rows*H, 3*W, 3) uint8 grid: per view [image | GT depth | predicted
    depth]. images (V, 3, H, W) in [0, 1]; gt, pred (V, H, W); valid (V, H, W) bool."""
    from da3gs.io.depth import colorize_depth

    rows = []
    for v in range(min(max_views, images.shape[0])):
        img = (images[v].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255
               ).round().astype(np.uint8)
        m = valid[v].cpu().numpy() if valid is not None else None
        g = colorize_depth(gt[v].detach().float().cpu().numpy(), m)
        p = colorize_depth(pred[v].detach().float().cpu().numpy())
        rows.append(np.concatenate([img, g, p], axis=1))
    return np.concatenate(rows, axis=0)
