"""Teacher losses: hand-computed values, scale/shift invariance, masks, gradients."""

import math

import pytest
import torch

from da3gs.data.batch import ViewBatch
from da3gs.losses import TeacherLossConfig, teacher_loss
from da3gs.losses.teacher import (
    angle,
    global_local_loss,
    normal_loss,
    relative_gradient_loss,
    sky_loss,
    triangle_normals,
)

D64 = torch.float64


def _batch(B=1, V=2, H=12, W=16, seed=0, dtype=D64):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(H, dtype=dtype), torch.arange(W, dtype=dtype), indexing="ij")
    depth = 2 + 0.05 * xx + 0.03 * yy + 0.2 * torch.sin(xx / 3) * torch.cos(yy / 4)
    depth = depth.expand(B, V, H, W).clone() * (1 + torch.rand(B, V, 1, 1, generator=g, dtype=dtype))
    valid = torch.rand(B, V, H, W, generator=g) > 0.1
    sky = torch.zeros(B, V, H, W, dtype=torch.bool)
    sky[..., :2, :] = True
    valid &= ~sky
    K = torch.tensor([[20.0, 0, W / 2], [0, 18.0, H / 2], [0, 0, 1]], dtype=dtype).expand(B, V, 3, 3)
    return ViewBatch(images=torch.rand(B, V, 3, H, W, dtype=dtype), depth=torch.where(valid, depth, 0 * depth),
                     valid=valid, c2w=torch.eye(4, dtype=dtype).expand(B, V, 4, 4), K=K, sky=sky)


def _pred(b, seed=1):
    g = torch.Generator().manual_seed(seed)
    d = torch.where(b.valid, b.depth, torch.full_like(b.depth, 3.0))
    return d * (1 + 0.1 * torch.rand(d.shape, generator=g, dtype=d.dtype)) + 0.1


def test_invariant_to_scale_and_shift_of_the_prediction():
    b = _batch()
    p = _pred(b)
    sky = torch.rand(b.depth.shape, generator=torch.Generator().manual_seed(3), dtype=D64)
    l1, p1 = teacher_loss({"depth": p, "sky": sky}, b, generator=torch.Generator().manual_seed(5))
    _l2, p2 = teacher_loss({"depth": 3.7 * p + 0.9, "sky": sky}, b, generator=torch.Generator().manual_seed(5))
    for k in p1:
        assert float(p2[k]) == pytest.approx(float(p1[k]), rel=1e-6, abs=1e-9), k
    assert float(l1) > 0
    # and to the GT's scale (relative errors)
    b2 = ViewBatch(**{**b.__dict__, "depth": b.depth * 5.0})
    l3, _ = teacher_loss({"depth": p, "sky": sky}, b2, generator=torch.Generator().manual_seed(5))
    assert float(l3) == pytest.approx(float(l1), rel=1e-6)


def test_global_term_by_hand():
    # prediction exactly affine to the GT except at one pixel: the L1 optimum ignores that pixel
    H, W = 6, 7
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(1, H, W, generator=g, dtype=D64) + 1
    m = torch.ones(1, H, W, dtype=torch.bool)
    m[0, 0, 0] = False
    pred = (gt - 0.4) / 2.0
    pred[0, 3, 3] += 0.5
    cfg = TeacherLossConfig(local_sizes=(), align_iters=60)
    glob, local, _A = global_local_loss(pred, gt, m, cfg)
    n = H * W - 1
    want = abs(2.0 * float(pred[0, 3, 3]) + 0.4 - float(gt[0, 3, 3])) / float(gt[0, 3, 3]) / n
    assert float(glob) == pytest.approx(want, rel=1e-4)
    assert float(local) == 0.0


def test_local_term_realigns_each_crop():
    H, W = 8, 16
    gt = 1 + torch.rand(1, H, W, generator=torch.Generator().manual_seed(0), dtype=D64)
    m = torch.ones(1, H, W, dtype=torch.bool)
    pred = gt + 0.3 * torch.rand(1, H, W, generator=torch.Generator().manual_seed(1), dtype=D64)
    # a crop covering the whole image is the global term
    whole = TeacherLossConfig(local_sizes=(1.0,), local_crops=3, min_local_pixels=4, align_iters=40)
    glob, local, _ = global_local_loss(pred[..., :8], gt[..., :8], m[..., :8], whole)
    assert float(local) == pytest.approx(float(glob), rel=1e-9)
    # a different affine map in each half: globally misaligned, exact in every crop of one half
    pred = gt.clone()
    pred[..., W // 2:] = 3 * gt[..., W // 2:] + 1
    cfg = TeacherLossConfig(local_sizes=(0.5,), local_crops=64, min_local_pixels=4, align_iters=40)
    glob, local, _ = global_local_loss(pred, gt, m, cfg, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    torch.randint(0, H - 4 + 1, (1, 64), generator=gen)
    x0 = torch.randint(0, W - 4 + 1, (1, 64), generator=gen)[0]
    straddle = ((x0 < W // 2) & (x0 + 4 > W // 2)).double().mean()
    assert float(glob) > 0.05 and 0 < float(straddle) < 1
    assert 0 < float(local) < float(glob)
    left = TeacherLossConfig(local_sizes=(0.5,), local_crops=16, min_local_pixels=4, align_iters=40)
    _, local_left, _ = global_local_loss(pred[..., :8], gt[..., :8], m[..., :8], left)
    assert float(local_left) < 1e-9


def test_relative_gradient_by_hand():
    g = torch.Generator().manual_seed(2)
    A, gt = torch.rand(1, 3, 4, generator=g, dtype=D64) + 1, torch.rand(1, 3, 4, generator=g, dtype=D64) + 1
    m = torch.rand(1, 3, 4, generator=g) > 0.2
    a, d, mm = A[0], gt[0], m[0]
    ex = [abs(float((a[i, j + 1] - a[i, j]) - (d[i, j + 1] - d[i, j]))) / float((d[i, j + 1] + d[i, j]) / 2)
          for i in range(3) for j in range(3) if mm[i, j] and mm[i, j + 1]]
    ey = [abs(float((a[i + 1, j] - a[i, j]) - (d[i + 1, j] - d[i, j]))) / float((d[i + 1, j] + d[i, j]) / 2)
          for i in range(2) for j in range(4) if mm[i, j] and mm[i + 1, j]]
    assert float(relative_gradient_loss(A, gt, m)) == pytest.approx(sum(ex) / len(ex) + sum(ey) / len(ey))


def _cross(a, b):
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def _ang(a, b):
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    c = sum(x * y for x, y in zip(a, b)) / (na * nb)
    return math.acos(max(-1.0, min(1.0, c)))


def _hand_normals(D, K, i, j):
    def P(r, c):
        z = float(D[r, c])
        return [z * ((c + 0.5) - float(K[0, 2])) / float(K[0, 0]), z * ((r + 0.5) - float(K[1, 2])) / float(K[1, 1]), z]
    c = P(i, j)
    e = {k: [x - y for x, y in zip(P(*rc), c)] for k, rc in
         {"r": (i, j + 1), "l": (i, j - 1), "d": (i + 1, j), "u": (i - 1, j)}.items()}
    ns = [_cross(e["d"], e["r"]), _cross(e["l"], e["d"]), _cross(e["u"], e["l"]), _cross(e["r"], e["u"])]
    norms = [math.sqrt(sum(x * x for x in n)) for n in ns]
    w = [sum(norms) - nn for nn in norms]
    nm = [sum(w[k] * ns[k][a] / norms[k] for k in range(4)) for a in range(3)]
    return ns, nm


def test_normal_loss_by_hand():
    g = torch.Generator().manual_seed(4)
    H, W = 4, 5
    gt = torch.rand(1, H, W, generator=g, dtype=D64) + 2
    A = gt + 0.2 * torch.rand(1, H, W, generator=g, dtype=D64)
    m = torch.ones(1, H, W, dtype=torch.bool)
    m[0, 1, 3] = False
    K = torch.tensor([[[4.0, 0, 2.5], [0, 3.5, 2.0], [0, 0, 1]]], dtype=D64)
    vals = []
    for i in range(1, H - 1):
        for j in range(1, W - 1):
            if not all(m[0, r, c] for r, c in ((i, j), (i, j + 1), (i, j - 1), (i + 1, j), (i - 1, j))):
                continue
            ns_h, nm_h = _hand_normals(A[0], K[0], i, j)
            ns_g, nm_g = _hand_normals(gt[0], K[0], i, j)
            vals.append(_ang(nm_h, nm_g) + sum(_ang(a, b) for a, b in zip(ns_h, ns_g)))
    assert float(normal_loss(A, gt, m, K)) == pytest.approx(sum(vals) / len(vals), rel=1e-6)


def test_triangle_normals_face_the_camera_on_a_plane():
    K = torch.tensor([[[10.0, 0, 4], [0, 10.0, 4], [0, 0, 1]]], dtype=D64)
    pts = torch.stack(torch.meshgrid(torch.arange(5.0), torch.arange(6.0), indexing="ij")[::-1], -1)
    P = torch.cat([pts, torch.full_like(pts[..., :1], 3.0)], -1)[None].double()
    n = triangle_normals(P)
    assert (n[..., 2] < 0).all() and torch.allclose(n[..., :2], torch.zeros_like(n[..., :2]))
    gt = torch.full((1, 5, 6), 3.0, dtype=D64)
    assert float(normal_loss(gt * 1.0, gt, torch.ones(1, 5, 6, dtype=torch.bool), K)) < 1e-8
    a = torch.tensor([1.0, 0, 0], dtype=D64, requires_grad=True)
    angle(a, torch.tensor([1.0, 0, 0], dtype=D64)).backward()
    assert torch.isfinite(a.grad).all()


def test_sky_loss_by_hand():
    s = torch.tensor([[0.0, 0.5], [1.2, 0.1]])
    gt = torch.tensor([[False, True], [True, False]])
    assert float(sky_loss(s, gt)) == pytest.approx((0 + 0.25 + 0.04 + 0.01) / 4)


def test_masks_respected_and_gradients_flow():
    b = _batch()
    p = _pred(b).requires_grad_(True)
    sky = torch.rand(b.depth.shape, dtype=D64, requires_grad=True)
    total, parts = teacher_loss({"depth": p, "sky": sky}, b, generator=torch.Generator().manual_seed(0))
    total.backward()
    m = b.valid & ~b.sky
    assert float(p.grad[~m].abs().max()) == 0.0 and float(p.grad[m].abs().max()) > 0
    assert float(sky.grad.abs().min()) >= 0 and float(sky.grad.abs().max()) > 0
    p2 = p.detach().clone()
    p2[~m] = 1e3
    _, parts2 = teacher_loss({"depth": p2, "sky": sky.detach()}, b, generator=torch.Generator().manual_seed(0))
    for k in parts:
        assert float(parts2[k]) == pytest.approx(float(parts[k]), rel=1e-6), k


def test_with_the_tiny_mono_network():
    from da3gs.models.net import build_net

    torch.manual_seed(0)
    net = build_net("tiny-mono")
    b = _batch(B=1, V=2, H=28, W=28, dtype=torch.float32)
    out = net(b.images)
    total, parts = teacher_loss(out, b, TeacherLossConfig(), torch.Generator().manual_seed(0))
    assert torch.isfinite(total) and set(parts) >= {"gl", "grad", "normal", "sky", "total"}
    total.backward()
    assert sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None) > 0
