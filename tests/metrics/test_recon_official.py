"""The stages before the metrics against the official bench (test-only dependency).

* :data:`BENCH_RECON` = ``depth_anything_3.utils.constants`` per dataset;
* :func:`bench_sim3` = ``align_poses_umeyama(..., ransac=True, random_state=42)``;
* :func:`prepare_fusion` = ``SevenScenes._prep_posed`` / ``_prep_unposed`` (resize, 7-Scenes
  ground-truth depth mask, scale, cameras) on the same predictions and ground truth.

The official alignment runs on evo's ``PosePath3D.align``; evo is not installed, so a stand-in
with a textbook Umeyama (Umeyama 1991, written here from the paper, evo's scale-then-transform
order) takes its place: what is compared is the bench's RANSAC driver (numpy ``default_rng``
draws, inlier rule, refit) and everything after it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from da3gs.geometry import apply_sim3_to_c2w
from da3gs.metrics.recon import BENCH_RECON, bench_sim3, prepare_fusion
from tests.official_bench import bench_utils
from tests.official_ref import _stub_evo


def _umeyama(x, y):
    """x, y: (3, n); y ~= c R x + t."""
    n = x.shape[1]
    mx, my = x.mean(1, keepdims=True), y.mean(1, keepdims=True)
    sx = ((x - mx) ** 2).sum() / n
    U, D, Vt = np.linalg.svd((y - my) @ (x - mx).T / n)
    if np.count_nonzero(D > np.finfo(D.dtype).eps) < 2:
        raise ValueError("degenerate")
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1
    R = U @ S @ Vt
    c = np.trace(np.diag(D) @ S) / sx
    return R, (my - c * R @ mx)[:, 0], c


class _PosePath3D:
    def __init__(self, poses_se3):
        self.poses_se3 = [np.array(p, dtype=np.float64) for p in poses_se3]

    def align(self, ref, correct_scale=False):
        x = np.stack([p[:3, 3] for p in self.poses_se3], 1)
        y = np.stack([p[:3, 3] for p in ref.poses_se3], 1)
        R, t, c = _umeyama(x, y)
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, t
        out = []
        for p in self.poses_se3:
            q = p.copy()
            q[:3, 3] *= c
            out.append(T @ q)
        self.poses_se3 = out
        return R, t, c


@pytest.fixture
def official(monkeypatch):
    bench_utils()  # open3d stub where it does not import
    _stub_evo()
    try:
        import depth_anything_3.utils.pose_align as pa
        from depth_anything_3.bench.datasets import sevenscenes
    except Exception as e:  # pragma: no cover - depends on the environment
        pytest.skip(f"official bench datasets not importable: {e}")
    monkeypatch.setattr(pa, "PosePath3D", _PosePath3D)
    return pa, sevenscenes


def _rot(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _cameras(rng, n, noise, outliers=0):
    gt = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        gt[i, :3, :3], gt[i, :3, 3] = _rot(rng), rng.uniform(-2, 2, 3)
    R, s, t = _rot(rng), rng.uniform(0.2, 3), rng.normal(size=3)
    pred = gt.copy()
    pred[:, :3, :3] = R.T @ gt[:, :3, :3]
    pred[:, :3, 3] = ((gt[:, :3, 3] - t) @ R) / s + rng.normal(0, noise, (n, 3))
    pred[:outliers, :3, 3] += rng.normal(0, 3, (outliers, 3))
    return pred, gt


def test_presets_are_the_official_constants():
    try:
        import depth_anything_3.utils.constants as C
    except Exception as e:  # pragma: no cover
        pytest.skip(f"official package not importable: {e}")
    for name, pre in (("eth3d", "ETH3D"), ("7scenes", "SEVENSCENES"), ("scannetpp", "SCANNETPP"),
                      ("hiroom", "HIROOM")):
        p = BENCH_RECON[name]
        assert (p.voxel_length, p.sdf_trunc, p.max_depth, p.samples, p.threshold, p.down_sample) == (
            getattr(C, f"{pre}_VOXEL_LENGTH"), getattr(C, f"{pre}_SDF_TRUNC"), getattr(C, f"{pre}_MAX_DEPTH"),
            getattr(C, f"{pre}_SAMPLING_NUMBER"), getattr(C, f"{pre}_EVAL_THRESHOLD"),
            getattr(C, f"{pre}_DOWN_SAMPLE")), name
    assert BENCH_RECON["scannetpp"].crop_margin == 0.1
    assert all(BENCH_RECON[n].crop_margin is None for n in ("eth3d", "7scenes", "hiroom"))


@pytest.mark.parametrize("seed,n,noise,outliers", [(0, 8, 0.01, 0), (1, 12, 0.05, 3), (2, 3, 0.0, 0),
                                                   (3, 20, 0.02, 6), (4, 5, 0.2, 1)])
def test_bench_sim3_matches_official(official, seed, n, noise, outliers):
    pa, _ = official
    rng = np.random.default_rng(seed)
    pred, gt = _cameras(rng, n, noise, outliers)
    r, t, s, ext = pa.align_poses_umeyama(np.linalg.inv(gt), np.linalg.inv(pred), return_aligned=True,
                                          ransac=True, random_state=42)
    sim = bench_sim3(torch.from_numpy(pred), torch.from_numpy(gt))
    assert float(sim.s) == pytest.approx(s, rel=1e-9)
    np.testing.assert_allclose(sim.R.numpy(), r, atol=1e-9)
    np.testing.assert_allclose(sim.t.numpy(), t, atol=1e-9)
    ours = torch.linalg.inv(apply_sim3_to_c2w(sim, torch.from_numpy(pred))).numpy()
    np.testing.assert_allclose(ours, ext, atol=1e-9)


@pytest.mark.parametrize("mode", ["posed", "unposed"])
def test_prepare_fusion_matches_sevenscenes(official, tmp_path, mode):
    from addict import Dict

    _, sv = official
    rng = np.random.default_rng(7)
    V, h, w, H, W = 5, 21, 28, 48, 64
    pred_c2w, gt_c2w = _cameras(rng, V, 0.03, 1)
    depth = rng.uniform(0.5, 3, (V, h, w)).astype(np.float32)
    depth[0, 0, :5] = np.nan
    depth[1, 3, :4] = -1
    depth[2, 5, 5] = np.inf
    pK = np.tile(np.array([[30.0, 0, 14], [0, 31, 10.5], [0, 0, 1]], np.float32), (V, 1, 1))
    gK = np.tile(np.array([[585 / 10, 0, 32], [0, 585 / 10, 24], [0, 0, 1]], np.float32), (V, 1, 1))
    files, valid = [], []
    for i in range(V):
        g = rng.integers(500, 4000, (H, W)).astype(np.uint16)
        g[rng.random((H, W)) < 0.1] = 0
        g[rng.random((H, W)) < 0.05] = 65535  # 7-Scenes' invalid marker
        Image.fromarray(g).save(tmp_path / f"{i}.png")
        files.append(str(tmp_path / f"{i}.png"))
        valid.append((g > 0) & (g != 65535))
    pred_data = Dict(depth=depth, intrinsics=pK, extrinsics=np.linalg.inv(pred_c2w).astype(np.float32))
    gt_w2c = np.linalg.inv(gt_c2w).astype(np.float32)
    gt_data = Dict(extrinsics=gt_w2c, intrinsics=gK, aux=Dict(gt_depth_files=files))
    ds = sv.SevenScenes()
    prep = ds._prep_posed if mode == "posed" else ds._prep_unposed
    d_ref, K_ref, E_ref = prep(pred_data, gt_data, [(H, W)] * V, scene="x")
    # same float32 cameras as the official inputs
    pc = torch.linalg.inv(torch.from_numpy(pred_data.extrinsics).double())
    gc = torch.linalg.inv(torch.from_numpy(gt_w2c).double())
    d, K, E, sim = prepare_fusion(depth, torch.from_numpy(pK), pc, gc, torch.from_numpy(gK), [(H, W)] * V,
                                  mode, valid)
    np.testing.assert_allclose(np.nan_to_num(np.stack(d), nan=-7), np.nan_to_num(d_ref, nan=-7), rtol=1e-6)
    np.testing.assert_allclose(K.numpy(), K_ref, rtol=1e-6)
    np.testing.assert_allclose(E.numpy(), E_ref, atol=1e-5)
