"""Depth alignment conventions against independent references, on random inputs (to 1e-6).

The official DA3 bench (depth-anything-3 0.1.1, ``depth_anything_3.bench``) has no depth metric
functions: it scores pose AUC and fused 3D reconstruction only. The references here are:

* ``lstsq_scale``: the official ``depth_anything_3.utils.alignment.least_squares_scale_scalar``
  (test-only import; skipped when the package is absent);
* ``median`` / ``lstsq`` / ``none`` and the metrics: a numpy transcription of the formulas of the
  multi-view (``np.median`` scale) and monocular (``np.linalg.lstsq`` on ``[pred, 1]``, as in
  Marigold's evaluation) conventions, with AbsRel = mean(|p - g| / g) and
  delta1 = mean(max(p / g, g / p) < 1.25) per image, then the mean over images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from da3gs.metrics.depth import ALIGN_MODES, align_depth, depth_metrics


def _ref_align(p: np.ndarray, g: np.ndarray, align: str) -> np.ndarray:
    if align == "median":
        return p * (np.median(g) / np.median(p))
    if align == "lstsq":
        A = np.stack([p, np.ones_like(p)], -1)
        s, t = np.linalg.lstsq(A, g, rcond=None)[0]
        return s * p + t
    if align == "lstsq_scale":
        return p * (p @ g) / max(p @ p, 1e-12)
    return p


def _ref_metrics(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, align: str) -> dict:
    rel, d = [], {1: [], 2: [], 3: []}
    for b in range(gt.shape[0]):
        v = valid[b]
        g = gt[b][v]
        p = _ref_align(pred[b][v], g, align)
        rel.append(np.mean(np.abs(p - g) / g))
        pc = np.maximum(p, 1e-8)
        r = np.maximum(pc / g, g / pc)
        for k in d:
            d[k].append(np.mean(r < 1.25**k))
    return {"abs_rel": np.mean(rel), **{f"delta{k}": np.mean(x) for k, x in d.items()}}


def _inputs(seed: int, B=3, H=17, W=23, affine=True):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(0.5, 10.0, (B, H, W))
    # prediction = affine distortion of gt plus noise, so that all alignments matter
    s, t = rng.uniform(0.2, 3.0), (rng.uniform(-0.5, 0.5) if affine else 0.0)
    pred = s * gt + t + rng.normal(0, 0.4, gt.shape)
    pred = np.abs(pred) + 0.05
    valid = rng.random(gt.shape) > 0.3
    if seed % 2:  # invalid gt pixels (0 / NaN) instead of a mask
        gt = np.where(valid, gt, np.where(rng.random(gt.shape) > 0.5, 0.0, np.nan))
    return pred, gt, valid


@pytest.mark.parametrize("align", ALIGN_MODES)
@pytest.mark.parametrize("seed", range(6))
def test_depth_metrics_match_reference(align, seed):
    pred, gt, valid = _inputs(seed, W=23 + seed)  # odd and even valid counts
    mask = None if seed % 2 else torch.from_numpy(valid)
    ours = depth_metrics(torch.from_numpy(pred), torch.from_numpy(gt), mask=mask, align=align)
    ref = _ref_metrics(pred, gt, valid, align)
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, abs=1e-6, rel=1e-6), k


@pytest.mark.parametrize("align", ["median", "lstsq"])
def test_even_count_median_and_constant_prediction(align):
    # 4 valid pixels: numpy's median averages the two middle values
    g = torch.tensor([[[1.0, 2.0, 4.0, 8.0]]], dtype=torch.float64)
    p = torch.tensor([[[1.0, 1.0, 3.0, 5.0]]], dtype=torch.float64)
    out = align_depth(p, g, torch.ones_like(g, dtype=torch.bool), align)
    ref = _ref_align(p.numpy().ravel(), g.numpy().ravel(), align)
    np.testing.assert_allclose(out.numpy().ravel(), ref, atol=1e-9)
    # constant prediction: rank-deficient lstsq -> numpy's minimum-norm solution
    c = torch.full_like(g, 2.0)
    out = align_depth(c, g, torch.ones_like(g, dtype=torch.bool), align)
    ref = _ref_align(c.numpy().ravel(), g.numpy().ravel(), align)
    np.testing.assert_allclose(out.numpy().ravel(), ref, atol=1e-9)


def test_nan_prediction_is_visible():
    pred, gt, valid = _inputs(0)
    pred[0, 0, 0] = np.nan
    valid[0, 0, 0] = True
    for align in ALIGN_MODES:
        r = depth_metrics(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(valid),
                          align=align, reduction="none")
        assert np.isnan(float(r["abs_rel"][0])) and np.isfinite(float(r["abs_rel"][1])), align


def test_lstsq_scale_matches_official():
    try:
        from depth_anything_3.utils.alignment import least_squares_scale_scalar
    except Exception as e:  # pragma: no cover - depends on the environment
        pytest.skip(f"official depth-anything-3 not importable: {e}")
    for seed in range(5):
        pred, gt, valid = _inputs(seed, affine=False)
        gt = np.where(valid, gt, 0.0)
        P, G, V = torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(valid)
        ours = align_depth(P, G, V, "lstsq_scale")
        for b in range(P.shape[0]):
            s = least_squares_scale_scalar(G[b][V[b]], P[b][V[b]])
            torch.testing.assert_close(ours[b], s * P[b], atol=1e-9, rtol=1e-9)
