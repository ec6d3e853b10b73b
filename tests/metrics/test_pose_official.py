"""``pose_auc`` (default ``mode="bench"``) against the official DA3 benchmark functions
(``depth_anything_3.bench.utils.compute_pose``, test-only) on random and degenerate cameras."""

import math

import numpy as np
import pytest
import torch

from da3gs.geometry import c2w_to_w2c, quat_to_mat
from da3gs.metrics import MetricsError, pose_auc, relative_pose_errors
from tests.official_bench import bench_utils

KEYS = {"auc@3": "auc03", "auc@5": "auc05", "auc@15": "auc15", "auc@30": "auc30"}


def _random_c2w(n, g, t_scale=2.0):
    q = torch.randn(n, 4, generator=g, dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    c2w[:, :3, :3] = quat_to_mat(q / q.norm(dim=-1, keepdim=True))
    c2w[:, :3, 3] = torch.randn(n, 3, generator=g, dtype=torch.float64) * t_scale
    return c2w


def _perturb(c2w, g, rot_deg, t_sigma, scale=1.7):
    """Random rotation of about rot_deg per camera, centre noise t_sigma, then a Sim(3) of the whole
    trajectory (the bench is invariant to it)."""
    n = c2w.shape[0]
    axis = torch.randn(n, 3, generator=g, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    ang = torch.deg2rad(torch.rand(n, generator=g, dtype=torch.float64) * 2 * rot_deg)
    q = torch.cat([torch.cos(ang / 2)[:, None], torch.sin(ang / 2)[:, None] * axis], -1)
    out = c2w.clone()
    out[:, :3, :3] = c2w[:, :3, :3] @ quat_to_mat(q)
    out[:, :3, 3] += torch.randn(n, 3, generator=g, dtype=torch.float64) * t_sigma
    S = _random_c2w(1, g)[0]
    out[:, :3, :3] = S[:3, :3] @ out[:, :3, :3]
    out[:, :3, 3] = scale * out[:, :3, 3] @ S[:3, :3].T + S[:3, 3]
    return out


def _official(c2w_pred, c2w_gt):
    u = bench_utils()
    return u.compute_pose(c2w_to_w2c(c2w_pred, check=False), c2w_to_w2c(c2w_gt))


def _official_errors(c2w_pred, c2w_gt):
    u = bench_utils()
    p = u.align_to_first_camera(c2w_to_w2c(c2w_pred, check=False))
    g = u.align_to_first_camera(c2w_to_w2c(c2w_gt))
    return u.se3_to_relative_pose_error(p, g, len(p))


def _assert_equal(c2w_pred, c2w_gt):
    ours = pose_auc(c2w_pred, c2w_gt)
    ref = _official(c2w_pred, c2w_gt)
    for k, rk in KEYS.items():
        assert ours[k] == pytest.approx(float(ref[rk]), abs=1e-6), (k, ours, dict(ref))
    # the w2c entry point gives the same numbers
    w = pose_auc(c2w_to_w2c(c2w_pred, check=False), c2w_to_w2c(c2w_gt), convention="w2c")
    assert w == pytest.approx(ours, abs=1e-12)
    return ours, ref


def _assert_errors_close(c2w_pred, c2w_gt):
    r, t = relative_pose_errors(c2w_pred, c2w_gt)
    rr, tr = _official_errors(c2w_pred, c2w_gt)
    assert torch.allclose(r, rr, atol=1e-9, rtol=0) and torch.allclose(t, tr, atol=1e-9, rtol=0)


@pytest.mark.parametrize("n", [2, 3, 12, 40])
@pytest.mark.parametrize("rot_deg,t_sigma", [(0.5, 0.01), (2.0, 0.05), (6.0, 0.3), (30.0, 2.0)])
def test_random_cameras_match_official(n, rot_deg, t_sigma):
    g = torch.Generator().manual_seed(1000 * n + int(10 * rot_deg))
    gt = _random_c2w(n, g)
    pred = _perturb(gt, g, rot_deg, t_sigma)
    _assert_equal(pred, gt)
    _assert_errors_close(pred, gt)


def test_spread_of_values_is_exercised():
    """The random sets above are not all 0 or all 1: collect the AUCs over many seeds."""
    vals = []
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        gt = _random_c2w(12, g)
        ours, _ = _assert_equal(_perturb(gt, g, 1.0 + seed, 0.02 * (1 + seed)), gt)
        vals += list(ours.values())
    vals = np.asarray(vals)
    assert (vals > 0.05).sum() > 10 and ((vals > 0.05) & (vals < 0.95)).sum() > 10


def test_degenerate_sets_match_official():
    g = torch.Generator().manual_seed(7)
    gt = _random_c2w(6, g)
    same = gt[:1].repeat(5, 1, 1)
    # identical cameras: every relative translation is zero -> 90 degrees -> AUC 0 (official)
    ours, _ = _assert_equal(same, same)
    assert all(v == 0.0 for v in ours.values())
    _assert_equal(_perturb(same, g, 2.0, 0.0), same)
    # pure rotation about a common centre (zero baseline), exact and perturbed predictions
    rot = gt.clone()
    rot[:, :3, 3] = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    _assert_equal(rot, rot)
    _assert_equal(_perturb(rot, g, 3.0, 0.0), rot)
    _assert_equal(_perturb(rot, g, 3.0, 0.1), rot)  # pred has a baseline, gt none
    _assert_equal(rot, _perturb(rot, g, 3.0, 0.1))  # gt has a baseline, pred none
    # two coincident centres among distinct ones; camera j at camera 0's centre
    part = gt.clone()
    part[3, :3, 3] = part[0, :3, 3]
    part[4, :3, 3] = part[1, :3, 3]
    _assert_equal(part, part)
    _assert_equal(_perturb(part, g, 1.0, 0.01), part)
    # perfect poses: AUC 1 up to a similarity, as the official
    ours, _ = _assert_equal(_perturb(gt, g, 0.0, 0.0), gt)
    assert all(v == 1.0 for v in ours.values())
    # 2 views, collinear centres, a 180-degree relative rotation
    _assert_equal(_perturb(gt[:2], g, 4.0, 0.1), gt[:2])
    line = gt.clone()
    line[:, :3, 3] = torch.linspace(0, 1, 6, dtype=torch.float64)[:, None] * torch.tensor([1.0, 2.0, 0.0],
                                                                                          dtype=torch.float64)
    _assert_equal(_perturb(line, g, 2.0, 0.02), line)
    flip = gt.clone()
    flip[1, :3, :3] = flip[0, :3, :3] @ quat_to_mat(torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64))
    _assert_equal(flip, flip)
    _assert_equal(_perturb(flip, g, 1.0, 0.01), flip)


def test_nonfinite_prediction_counts_as_failure():
    g = torch.Generator().manual_seed(3)
    gt = _random_c2w(6, g)
    pred = _perturb(gt, g, 0.2, 0.001)
    for k in (0, 3):  # camera 0 poisons every pair through the first-camera alignment
        bad = pred.clone()
        bad[k, 0, 3] = float("nan")
        ours, ref = _assert_equal(bad, gt)
        if k == 0:
            assert all(v == 0.0 for v in ours.values())
        else:  # 5 of the 15 pairs involve camera 3 and fail
            assert ours["auc@30"] <= 10 / 15 + 1e-12
    with pytest.raises(MetricsError, match="c2w_gt: contains NaN"):
        pose_auc(gt, bad)
    with pytest.raises(MetricsError, match="NaN"):
        pose_auc(bad, gt, mode="relative")


def test_relative_mode_differs_and_options():
    g = torch.Generator().manual_seed(11)
    gt = _random_c2w(8, g)
    pred = _perturb(gt, g, 3.0, 0.1)
    b, r = pose_auc(pred, gt), pose_auc(pred, gt, mode="relative")
    assert b != r  # different quantities (issue 14)
    # relative mode: a pair's errors depend on its two cameras only; bench: also on camera 0
    P = torch.combinations(torch.arange(8), 2)
    keep = (P != 0).all(-1)
    for mode, same in (("relative", True), ("bench", False)):
        full = relative_pose_errors(pred, gt, mode=mode)
        sub = relative_pose_errors(pred[1:], gt[1:], mode=mode)
        eq = all(torch.allclose(f[keep], s, atol=1e-9) for f, s in zip(full, sub))
        assert eq == same, mode
    with pytest.raises(MetricsError, match="mode"):
        pose_auc(pred, gt, mode="vggt")
    with pytest.raises(MetricsError, match="convention"):
        pose_auc(pred, gt, convention="opengl")
    with pytest.raises(MetricsError, match="sign_ambiguity"):
        pose_auc(pred, gt, sign_ambiguity=False)
    assert math.isfinite(pose_auc(pred, gt, mode="relative", sign_ambiguity=False)["auc@30"])
