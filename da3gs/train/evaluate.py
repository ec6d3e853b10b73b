"""Held-out evaluation: procedural scenes with fixed seeds and optional real scene folders.

Metrics (pose-free input, world frame = view 0):
  depth: AbsRel and delta1 per view after median scale alignment (da3gs.metrics.depth), on
    views with ground-truth depth;
  pose: AUC@30 (and @15, @5) of the predicted cameras against the ground truth
    (da3gs.metrics.pose), per sample, for any-view networks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from da3gs.data.batch import ViewBatch
from da3gs.geometry import as_homogeneous, w2c_to_c2w
from da3gs.train import external
from da3gs.train.config import EvalConfig
from da3gs.train.step import autocast_for, network_inputs

PATCH = 14


def procedural_eval_set(cfg: EvalConfig, device: torch.device) -> list[ViewBatch]:
    """``cfg.scenes`` held-out procedural samples (seeds ``cfg.seed + i``), kept on the CPU,
    grouped in batches of ``cfg.batch_size``."""
    out = []
    for i in range(0, cfg.scenes, cfg.batch_size):
        n = min(cfg.batch_size, cfg.scenes - i)
        items = [external.procedural_sample(device, 1, cfg.views, cfg.height, cfg.width,
                                            seed=cfg.seed + i + j).to("cpu") for j in range(n)]
        out.append(ViewBatch.collate(items))
    return out


def _resize_hw(h: int, w: int, res: int) -> tuple[int, int]:
    s = res / max(h, w)
    return max(PATCH, round(h * s / PATCH) * PATCH), max(PATCH, round(w * s / PATCH) * PATCH)


def real_scene_sample(entry, views: int, res: int) -> ViewBatch:
    """``views`` evenly spaced views of a scene: a folder (any format ``load_scene`` reads) or
    a dict ``{"path": ..., **reader_options}`` (e.g. ``{"path": "llff_fern", "factor": 8}``),
    resized with torch (no OpenCV) so the longest side is ``res`` and both sides are
    multiples of 14; intrinsics scaled per axis; depth (if the scene has it) resized nearest.
    Returns a ViewBatch with B = 1."""
    from da3gs.data import load_scene
    from da3gs.io.depth import load_depth_png
    from da3gs.io.images import read_image

    opts = dict(entry) if isinstance(entry, dict) else {"path": entry}
    path = opts.pop("path")
    scene = load_scene(path, **opts)
    idx = np.linspace(0, len(scene) - 1, min(views, len(scene))).round().astype(int).tolist()
    h0, w0 = scene.image_hw[idx[0]]
    H, W = _resize_hw(h0, w0, res)
    imgs, Ks, depths = [], [], []
    for i in idx:
        bg = scene.background if scene.background is not None else (1.0, 1.0, 1.0)
        img = torch.from_numpy(read_image(scene.image_paths[i], background=bg)).permute(2, 0, 1)
        h, w = img.shape[-2:]
        imgs.append(F.interpolate(img[None], (H, W), mode="bilinear", antialias=True,
                                  align_corners=False)[0].clamp(0, 1))
        K = scene.K[i].clone()
        K[0] *= W / w
        K[1] *= H / h
        Ks.append(K)
        if scene.depth_paths is not None:
            d = load_depth_png(scene.depth_paths[i], scale=1.0 / (scene.depth_scale or 1.0))
            d = torch.from_numpy(np.asarray(d, np.float32))[None, None]
            depths.append(F.interpolate(d, (H, W), mode="nearest")[0, 0])
        else:
            depths.append(torch.zeros(H, W))
    depth = torch.stack(depths)[None]
    return ViewBatch(images=torch.stack(imgs)[None].float(), depth=depth, valid=depth > 0,
                     c2w=scene.c2w[idx][None].float(), K=torch.stack(Ks)[None].float(),
                     pose_conditioned=torch.zeros(1, dtype=torch.bool),
                     scene_ids=[Path(path).name])


@torch.no_grad()
def predict(net: nn.Module, batch: ViewBatch, precision: str) -> dict[str, torch.Tensor]:
    """Pose-free forward with view 0 as the reference; outputs as float32."""
    x, _, _ = network_inputs(batch, False)
    with autocast_for(x.device, precision):
        out = net(x, ref_view_strategy="first")
    return {k: v.float() for k, v in out.items() if isinstance(v, torch.Tensor)}


@torch.no_grad()
def evaluate_batches(net: nn.Module, batches: list[ViewBatch], device: torch.device,
                     precision: str = "auto") -> dict[str, float]:
    """Mean depth AbsRel / delta1 over views with GT depth and mean pose AUC over samples.
    Keys absent when no view / sample qualifies. ``net`` is put in eval mode and restored."""
    from da3gs.metrics.depth import depth_metrics
    from da3gs.metrics.pose import pose_auc

    was = net.training
    net.eval()
    rel, d1, aucs = [], [], {}
    try:
        for batch in batches:
            batch = batch.to(device)
            out = predict(net, batch, precision)
            B, V = batch.depth.shape[:2]
            for b in range(B):
                for v in range(V):
                    m = batch.valid[b, v]
                    if int(m.sum()) < 16:
                        continue
                    r = depth_metrics(out["depth"][b, v].cpu(), batch.depth[b, v].cpu(),
                                      m.cpu(), align="median")
                    rel.append(r["abs_rel"])
                    d1.append(r["delta1"])
                if "extrinsics" in out and V >= 2:
                    c2w_pred = w2c_to_c2w(as_homogeneous(out["extrinsics"][b].double().cpu()))
                    res = pose_auc(c2w_pred, batch.c2w[b].double().cpu(), thresholds=(5, 15, 30))
                    for k, val in res.items():
                        aucs.setdefault(k, []).append(val)
    finally:
        net.train(was)
    res: dict[str, float] = {}
    if rel:
        res["abs_rel"], res["delta1"] = float(np.mean(rel)), float(np.mean(d1))
    for k, vals in aucs.items():
        res[k] = float(np.mean(vals))
    return res


class Evaluator:
    """Builds the held-out sets once and evaluates a network on all of them.

    ``run(net) -> {"procedural/abs_rel": ..., "<scene>/auc@30": ...}``."""

    def __init__(self, cfg: EvalConfig, device: torch.device, precision: str = "auto"):
        self.cfg, self.device, self.precision = cfg, device, precision
        self.sets: dict[str, list[ViewBatch]] = {}
        self.skipped: dict[str, str] = {}
        if cfg.scenes > 0:
            self.sets["procedural"] = procedural_eval_set(cfg, device)
        for entry in cfg.real:
            name = Path(entry["path"] if isinstance(entry, dict) else entry).name
            try:
                self.sets[name] = [real_scene_sample(entry, cfg.real_views, cfg.real_res)]
            except Exception as e:  # an unreadable scene is reported, never fatal
                self.skipped[name] = f"{type(e).__name__}: {e}"

    def run(self, net: nn.Module) -> dict[str, float]:
        out = {}
        for name, batches in self.sets.items():
            for k, v in evaluate_batches(net, batches, self.device, self.precision).items():
                out[f"{name}/{k}"] = v
        return out
