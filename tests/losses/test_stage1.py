"""Stage-1 losses and GT normalisation against values computed by explicit float64 loops."""

import math

import pytest
import torch

from da3gs.data.batch import ViewBatch
from da3gs.geometry import encode_pose, quat_to_mat
from da3gs.losses import Stage1LossConfig, normalize_batch, stage1_loss
from da3gs.losses.stage1 import (
    camera_loss,
    depth_conf_loss,
    gradient_loss,
    gt_ray_map,
    point_loss,
    ray_loss,
    upsample_ray_map,
)

D64 = torch.float64


def _rot(seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(4, generator=g, dtype=D64)
    return quat_to_mat(q / q.norm())


def _batch(B=2, V=3, H=5, W=7, seed=0, dtype=D64):
    g = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4, dtype=dtype).repeat(B, V, 1, 1)
    for b in range(B):
        for v in range(V):
            c2w[b, v, :3, :3] = _rot(10 * b + v + seed)
            c2w[b, v, :3, 3] = torch.randn(3, generator=g, dtype=dtype)
    K = torch.zeros(B, V, 3, 3, dtype=dtype)
    K[..., 0, 0], K[..., 1, 1] = 6.0, 5.5
    K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = W / 2 + 0.3, H / 2 - 0.2, 1.0
    depth = torch.rand(B, V, H, W, generator=g, dtype=dtype) * 3 + 1
    valid = torch.rand(B, V, H, W, generator=g) > 0.25
    sky = torch.rand(B, V, H, W, generator=g) > 0.85
    depth = torch.where(valid, depth, torch.zeros_like(depth))
    return ViewBatch(images=torch.rand(B, V, 3, H, W, dtype=dtype), depth=depth, valid=valid,
                     c2w=c2w, K=K, sky=sky)


def _point(c2w, K, u, v, z):
    """P = t + z R K^-1 (u, v, 1) by hand (K without skew)."""
    x = (u - float(K[0, 2])) / float(K[0, 0])
    y = (v - float(K[1, 2])) / float(K[1, 1])
    return [float(c2w[r, 3]) + z * (float(c2w[r, 0]) * x + float(c2w[r, 1]) * y + float(c2w[r, 2]))
            for r in range(3)]


def test_normalize_batch_by_hand():
    b = _batch()
    nb, scale = normalize_batch(b)
    B, V, H, W = b.shape
    for bi in range(B):
        inv0 = torch.linalg.inv(b.c2w[bi, 0])
        tot, n = 0.0, 0
        for v in range(V):
            rel = inv0 @ b.c2w[bi, v]
            for i in range(H):
                for j in range(W):
                    if b.valid[bi, v, i, j] and not b.sky[bi, v, i, j]:
                        p = _point(rel, b.K[bi, v], j + 0.5, i + 0.5, float(b.depth[bi, v, i, j]))
                        tot += math.sqrt(sum(c * c for c in p))
                        n += 1
        s = tot / n
        assert float(scale[bi]) == pytest.approx(s, rel=1e-5)
        for v in range(V):
            rel = inv0 @ b.c2w[bi, v]
            assert torch.allclose(nb.c2w[bi, v, :3, :3].double(), rel[:3, :3], atol=1e-5)
            assert torch.allclose(nb.c2w[bi, v, :3, 3].double(), rel[:3, 3] / s, atol=1e-5)
    assert torch.equal(nb.c2w[:, 0], torch.eye(4, dtype=D64).expand(B, 4, 4))
    m = b.valid & ~b.sky
    assert torch.allclose(nb.depth[m].double(), (b.depth / scale.double()[:, None, None, None])[m], rtol=1e-5)
    assert not nb.valid[b.sky].any()
    nb2, s2 = normalize_batch(nb)  # idempotent
    assert torch.allclose(s2, torch.ones(B, dtype=D64), atol=1e-12)
    assert torch.allclose(nb2.depth, nb.depth, atol=1e-12)


def test_normalize_without_valid_depth_uses_camera_distances():
    b = _batch(B=1, V=2)
    b.valid[:] = False
    _nb, scale = normalize_batch(b)
    d = torch.linalg.inv(b.c2w[0, 0]) @ b.c2w[0, 1]
    assert float(scale[0]) == pytest.approx(float(d[:3, 3].norm()) / 2, rel=1e-5)


def test_depth_conf_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    pred, gt = torch.rand(2, 1, 3, 4, generator=g, dtype=D64), torch.rand(2, 1, 3, 4, generator=g, dtype=D64)
    conf = 1 + torch.rand(2, 1, 3, 4, generator=g, dtype=D64) * 3
    m = torch.rand(2, 1, 3, 4, generator=g) > 0.3
    lam = 0.2
    per = []
    for b in range(2):
        terms = [float(conf[b, 0, i, j]) * abs(float(pred[b, 0, i, j] - gt[b, 0, i, j]))
                 - lam * math.log(float(conf[b, 0, i, j]))
                 for i in range(3) for j in range(4) if m[b, 0, i, j]]
        per.append(sum(terms) / len(terms))
    assert float(depth_conf_loss(pred, conf, gt, m, lam)) == pytest.approx(sum(per) / 2, rel=1e-12)
    m[1] = False  # a sample without valid depth is left out of the mean
    assert float(depth_conf_loss(pred, conf, gt, m, lam)) == pytest.approx(per[0] if m[0].sum() else 0.0)


def test_gradient_loss_by_hand():
    g = torch.Generator().manual_seed(1)
    pred, gt = torch.rand(1, 1, 4, 5, generator=g, dtype=D64), torch.rand(1, 1, 4, 5, generator=g, dtype=D64)
    m = torch.rand(1, 1, 4, 5, generator=g) > 0.3
    P, G, M = pred[0, 0], gt[0, 0], m[0, 0]
    ex = [abs(float((P[i, j + 1] - P[i, j]) - (G[i, j + 1] - G[i, j])))
          for i in range(4) for j in range(4) if M[i, j] and M[i, j + 1]]
    ey = [abs(float((P[i + 1, j] - P[i, j]) - (G[i + 1, j] - G[i, j])))
          for i in range(3) for j in range(5) if M[i, j] and M[i + 1, j]]
    want = sum(ex) / len(ex) + sum(ey) / len(ey)
    assert float(gradient_loss(pred, gt, m)) == pytest.approx(want, rel=1e-12)


def test_gt_ray_map_by_hand_at_the_ray_grid():
    b = _batch(B=1, V=1, H=14, W=21)
    c2w, K = b.c2w[0, 0], b.K[0, 0]
    h, w = 8, 12
    rm = gt_ray_map(b.c2w, b.K, (14, 21), (h, w))[0, 0]
    Ks = K.clone()
    Ks[0] *= w / 21
    Ks[1] *= h / 14
    for i in (0, 3, 7):
        for j in (0, 5, 11):
            want = _point(c2w, Ks, j + 0.5, i + 0.5, 1.0)
            d = [want[r] - float(c2w[r, 3]) for r in range(3)]
            assert rm[i, j, :3].tolist() == pytest.approx(d, abs=1e-12)
            assert rm[i, j, 3:].tolist() == pytest.approx(c2w[:3, 3].tolist(), abs=1e-12)
    # the same physical ray as the full-resolution pixel at that position
    full = gt_ray_map(b.c2w, b.K, (14, 21), (14, 21))[0, 0]
    u, v = (5 + 0.5) * 21 / w, (3 + 0.5) * 14 / h  # (9.625, 6.125): between full-res centres
    want = [x - float(c2w[r, 3]) for r, x in enumerate(_point(c2w, K, u, v, 1.0))]
    assert rm[3, 5, :3].tolist() == pytest.approx(want, abs=1e-12)
    assert full.shape == (14, 21, 6)


def test_upsample_ray_map_is_exact_for_pinhole_rays():
    b = _batch(B=2, V=2, H=14, W=21)
    low = gt_ray_map(b.c2w, b.K, (14, 21), (8, 12))
    full = gt_ray_map(b.c2w, b.K, (14, 21), (14, 21))
    up = upsample_ray_map(low, 14, 21)
    assert torch.allclose(up, full, atol=1e-10)


def test_ray_and_point_and_camera_losses_by_hand():
    g = torch.Generator().manual_seed(2)
    ray, gt = torch.randn(1, 1, 2, 3, 6, generator=g, dtype=D64), torch.randn(1, 1, 2, 3, 6, generator=g, dtype=D64)
    conf = 1 + torch.rand(1, 1, 2, 3, generator=g, dtype=D64)
    vals = [float(conf[0, 0, i, j]) * sum(abs(float(ray[0, 0, i, j, c] - gt[0, 0, i, j, c])) for c in range(6))
            - 0.2 * math.log(float(conf[0, 0, i, j])) for i in range(2) for j in range(3)]
    assert float(ray_loss(ray, conf, gt, 0.2)) == pytest.approx(sum(vals) / 6, rel=1e-12)
    plain = [sum(abs(float(ray[0, 0, i, j, c] - gt[0, 0, i, j, c])) for c in range(6))
             for i in range(2) for j in range(3)]
    assert float(ray_loss(ray, conf, gt, 0.2, conf=False)) == pytest.approx(sum(plain) / 6, rel=1e-12)

    depth = torch.rand(1, 1, 2, 3, generator=g, dtype=D64) + 1
    P = torch.randn(1, 1, 2, 3, 3, generator=g, dtype=D64)
    m = torch.tensor([[[[True, False, True], [True, True, False]]]])
    vals = [sum(abs(float(ray[0, 0, i, j, 3 + c] + depth[0, 0, i, j] * ray[0, 0, i, j, c] - P[0, 0, i, j, c]))
                for c in range(3)) for i in range(2) for j in range(3) if m[0, 0, i, j]]
    assert float(point_loss(depth, ray, P, m)) == pytest.approx(sum(vals) / len(vals), rel=1e-12)

    enc, genc = torch.randn(1, 2, 9, generator=g, dtype=D64), torch.randn(1, 2, 9, generator=g, dtype=D64)
    lt, lq, lf = camera_loss(enc, genc)
    e, ge = enc[0].tolist(), genc[0].tolist()
    assert float(lt) == pytest.approx(sum(sum(abs(e[v][k] - ge[v][k]) for k in range(3)) for v in range(2)) / 2)
    assert float(lq) == pytest.approx(sum(min(sum(abs(e[v][k] - ge[v][k]) for k in range(3, 7)),
                                              sum(abs(e[v][k] + ge[v][k]) for k in range(3, 7)))
                                          for v in range(2)) / 2)
    assert float(lf) == pytest.approx(sum(sum(abs(e[v][k] - ge[v][k]) for k in (7, 8)) for v in range(2)) / 2)
    flipped = genc.clone()
    flipped[..., 3:7] *= -1  # q ~ -q
    assert torch.allclose(camera_loss(enc, flipped)[1], lq)


def _perfect_out(b, ray_hw=(8, 12)):
    nb, _ = normalize_batch(b)
    _, _, H, W = nb.shape
    return {"depth": nb.depth.clone(), "depth_conf": torch.ones_like(nb.depth),
            "ray": gt_ray_map(nb.c2w, nb.K, (H, W), ray_hw), "ray_conf": torch.ones(ray_hw).expand(nb.shape[:2] + ray_hw),
            "pose_enc": encode_pose(nb.c2w, nb.K, (H, W), keep_dtype=True)}


def test_perfect_prediction_has_zero_loss_and_parts_add_up():
    b = _batch(H=14, W=21)
    total, parts = stage1_loss(_perfect_out(b), b)
    for k in ("depth", "grad", "ray", "point", "cam"):
        assert abs(float(parts[k])) < 1e-5, k
    out = _perfect_out(b)
    out["depth"] = out["depth"] * 1.1 + 0.05
    out["pose_enc"] = out["pose_enc"] + 0.01
    cfg = Stage1LossConfig(alpha=2.0, beta=3.0)
    total, p = stage1_loss(out, b, cfg)
    want = p["depth"] + p["ray"] + p["point"] + 3.0 * p["cam"] + 2.0 * p["grad"]
    assert float(total) == pytest.approx(float(want), rel=1e-6)
    assert float(p["cam"]) == pytest.approx(0.09, rel=1e-5)  # 9 components x 0.01


def test_masks_respected_and_gradients_flow():
    b = _batch(H=14, W=21)
    out = {k: v.clone().requires_grad_(True) for k, v in _perfect_out(b).items()}
    out["depth"].data += 0.1 * torch.rand_like(out["depth"])
    total, parts = stage1_loss(out, b)
    total.backward()
    for k, v in out.items():
        assert v.grad is not None and torch.isfinite(v.grad).all(), k
    m = b.valid & ~b.sky
    assert float(out["depth"].grad[~m].abs().max()) == 0.0  # invalid and sky pixels get no gradient
    assert float(out["depth"].grad[m].abs().max()) > 0
    # changing predictions at unsupervised pixels changes nothing
    out2 = {k: v.detach().clone() for k, v in out.items()}
    out2["depth"][~m] = 123.0
    _, parts2 = stage1_loss(out2, b)
    for k in ("depth", "grad", "point"):
        assert float(parts2[k]) == pytest.approx(float(parts[k]), rel=1e-6)


def test_sample_without_depth_contributes_only_camera_and_rays():
    b = _batch(H=14, W=21)
    out = _perfect_out(b)
    out["depth"] = out["depth"] + 0.3
    b.valid[1] = False
    _, p_both = stage1_loss(out, b)
    b0 = ViewBatch(**{k: (v[:1] if torch.is_tensor(v) else v) for k, v in b.__dict__.items()})
    out0 = {k: v[:1] for k, v in out.items()}
    _, p_first = stage1_loss(out0, b0)
    for k in ("depth", "grad", "point"):
        assert float(p_both[k]) == pytest.approx(float(p_first[k]), rel=1e-6)


def test_with_the_tiny_network():
    from da3gs.models.net import build_net

    torch.manual_seed(0)
    net = build_net("tiny")
    b = _batch(B=1, V=2, H=28, W=42, dtype=torch.float32)
    out = net(b.images, ref_view_strategy="first")
    assert out["pose_enc"].shape == (1, 2, 9)
    total, _parts = stage1_loss(out, b)
    assert torch.isfinite(total)
    total.backward()
    assert net.camera_decoder.fc_qvec.weight.grad.abs().sum() > 0
    assert net.depth_head.ray_out2[-1][-1].weight.grad.abs().sum() > 0
