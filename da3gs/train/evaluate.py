"""Held-out evaluation on the sets of ``da3gs.data.sources.make_eval_sets``: procedural scenes
with fixed seeds outside the training range, and optional real scene folders.

Metrics (pose-free input, world frame = view 0):
  depth: AbsRel and delta1 per view after median scale alignment (da3gs.metrics.depth), on
    views with ground-truth depth;
  pose: AUC@30 (and @15, @5) of the predicted cameras against the ground truth
    (da3gs.metrics.pose), per sample, for any-view networks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from da3gs.data.batch import ViewBatch
from da3gs.geometry import as_homogeneous, w2c_to_c2w
from da3gs.data.sources import make_eval_sets
from da3gs.train.config import EvalConfig
from da3gs.train.objectives import autocast_for, network_inputs


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

    ``run(net) -> {"procedural/abs_rel": ..., "real/<scene>/auc@30": ...}``."""

    def __init__(self, cfg: EvalConfig, device: torch.device, precision: str = "auto"):
        self.cfg, self.device, self.precision = cfg, device, precision
        self.sets: dict[str, list[ViewBatch]] = {
            k: [b.to("cpu") for b in v] for k, v in make_eval_sets(cfg, device=device).items()}

    def run(self, net: nn.Module) -> dict[str, float]:
        out = {}
        for name, batches in self.sets.items():
            for k, v in evaluate_batches(net, batches, self.device, self.precision).items():
                out[f"{name}/{k}"] = v
        return out
