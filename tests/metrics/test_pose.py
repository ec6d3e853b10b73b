import math

import numpy as np
import pytest
import torch

from da3gs.geometry import quat_to_mat
from da3gs.metrics import MetricsError, ate, auc_from_errors, pose_auc, relative_pose_errors


def _rot(axis, deg):
    axis = torch.tensor(axis, dtype=torch.float64)
    axis = axis / axis.norm()
    h = math.radians(deg) / 2
    q = torch.cat([torch.tensor([math.cos(h)], dtype=torch.float64), math.sin(h) * axis])
    return quat_to_mat(q)


def _trajectory(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    for i in range(n):
        q = torch.randn(4, generator=g, dtype=torch.float64)
        c2w[i, :3, :3] = quat_to_mat(q / q.norm())
        c2w[i, :3, 3] = torch.randn(3, generator=g, dtype=torch.float64) * 2
    return c2w


def _sim3(c2w, s=2.5, axis=(1, 2, 3), deg=40.0, t=(1.0, -2.0, 0.5)):
    R = _rot(axis, deg)
    out = c2w.clone()
    out[:, :3, :3] = R @ c2w[:, :3, :3]
    out[:, :3, 3] = s * (c2w[:, :3, 3] @ R.T) + torch.tensor(t, dtype=torch.float64)
    return out


def test_perfect_poses_auc_one_and_similarity_invariant():
    gt = _trajectory(7)
    for pred in (gt, _sim3(gt)):
        rot, trans = relative_pose_errors(pred, gt, mode="relative")
        assert rot.shape == trans.shape == (21,)
        assert rot.max() < 1e-6 and trans.max() < 1e-6
        rot, trans = relative_pose_errors(pred, gt)  # bench: the clamp floor of ~3.6e-6 degrees
        assert rot.max() < 1e-5 and trans.max() < 1e-5
        auc = pose_auc(pred, gt)
        assert set(auc) == {"auc@3", "auc@5", "auc@15", "auc@30"}
        assert all(v == 1.0 for v in auc.values())


def test_one_camera_rotated_by_10_degrees():
    gt = _trajectory(5, seed=1)
    pred = gt.clone()
    k = 2
    pred[k, :3, :3] = gt[k, :3, :3] @ _rot((0.3, -1.0, 0.2), 10.0)  # rotate camera k about its centre
    rot, trans = relative_pose_errors(pred, gt, mode="relative")
    pairs = torch.combinations(torch.arange(5), 2)
    involves = (pairs == k).any(-1)
    assert torch.allclose(rot[involves], torch.full((int(involves.sum()),), 10.0, dtype=torch.float64), atol=1e-9)
    assert rot[~involves].abs().max() < 1e-9 and trans[~involves].abs().max() < 1e-6
    # pairs (i, k) with i < k see camera k's centre in camera i's frame: unchanged
    assert trans[pairs[:, 1] == k].abs().max() < 1e-6
    assert (trans[pairs[:, 0] == k] <= 10.0 + 1e-9).all()
    auc = pose_auc(pred, gt, thresholds=(3, 30), mode="relative")
    assert auc["auc@3"] == pytest.approx(1 - int(involves.sum()) / len(pairs))  # those pairs fall beyond 3 deg
    assert 0 < auc["auc@30"] < 1


def test_translation_direction_angle_and_sign_ambiguity():
    gt = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    gt[1, 0, 3] = 1.0
    for a in (20.0, 120.0):
        pred = gt.clone()
        pred[1, :3, 3] = torch.tensor([math.cos(math.radians(a)), math.sin(math.radians(a)), 0.0]) * 3.0
        _, t_amb = relative_pose_errors(pred, gt, mode="relative")
        _, t_raw = relative_pose_errors(pred, gt, sign_ambiguity=False, mode="relative")
        assert float(t_raw[0]) == pytest.approx(a)
        assert float(t_amb[0]) == pytest.approx(min(a, 180 - a))


def test_zero_length_translations():
    gt = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    gt[2, 0, 3] = 1.0  # cameras 0 and 1 coincide
    pred = gt.clone()
    _, trans = relative_pose_errors(pred, gt, mode="relative")
    assert trans[0] == 0.0  # pair (0, 1): both zero
    pred[1, 1, 3] = 0.5  # now pred separates 0 and 1
    _, trans = relative_pose_errors(pred, gt, mode="relative")
    assert trans[0] == 90.0


def test_auc_matches_vggt_histogram_definition():
    rng = np.random.default_rng(0)
    r, t = rng.uniform(0, 40, 200), rng.uniform(0, 40, 200)
    for thr in (3, 5, 15, 30):
        e = np.maximum(r, t)
        hist, _ = np.histogram(e, bins=np.arange(thr + 1))
        ref = np.mean(np.cumsum(hist / len(e)))
        assert auc_from_errors(torch.from_numpy(r), torch.from_numpy(t), thr) == pytest.approx(ref, abs=1e-12)
    # all pairs at 2.5 degrees: accuracy 0 for t = 1, 2 and 1 for t = 3, 4, 5
    assert auc_from_errors(torch.full((4,), 2.5), torch.zeros(4), 5) == pytest.approx(0.6)
    with pytest.raises(MetricsError, match="thresholds"):
        auc_from_errors(torch.zeros(3), torch.zeros(3), 2.5)


def test_ate():
    gt = _trajectory(8, seed=3)
    assert ate(_sim3(gt), gt) < 1e-9
    assert ate(_sim3(gt), gt, align="none") > 1.0
    assert ate(_sim3(gt, s=1.0), gt, align="se3") < 1e-9
    pred = gt.clone()
    pred[:, :3, 3] += 0.1  # a pure shift is removed by the alignment
    assert ate(pred, gt) < 1e-9
    assert ate(pred, gt, align="none") == pytest.approx(0.1 * math.sqrt(3))
    assert ate(gt[:1], gt[:1]) == pytest.approx(0.0)
    with pytest.raises(MetricsError, match="align"):
        ate(gt, gt, align="affine")


def test_pose_errors_bad_input():
    gt = _trajectory(4)
    with pytest.raises(MetricsError, match="camera counts"):
        relative_pose_errors(gt[:3], gt)
    with pytest.raises(MetricsError, match="c2w_pred"):
        relative_pose_errors(gt[:, :3, :3], gt)
    with pytest.raises(MetricsError, match="at least 2"):
        pose_auc(gt[:1], gt[:1])
    bad = gt.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(MetricsError, match="NaN"):
        pose_auc(bad, gt, mode="relative")
    with pytest.raises(MetricsError, match="NaN"):
        pose_auc(gt, bad)
    # (N, 3, 4) input is accepted
    rot, _ = relative_pose_errors(gt[:, :3], gt)
    assert rot.max() < 1e-5
