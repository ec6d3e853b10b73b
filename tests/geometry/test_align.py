import pytest
import torch

from da3gs.geometry import GeometryError, Sim3, align_cameras, apply_sim3_to_c2w, umeyama

from .helpers import device_param, random_c2w, random_rotation

F64 = torch.float64


def _sim3(seed=0, s=2.3):
    g = torch.Generator().manual_seed(seed)
    return Sim3(random_rotation(g), torch.randn(3, generator=g, dtype=F64) * 5, torch.tensor(s, dtype=F64))


@device_param
def test_umeyama_recovers_known_sim3(device):
    gt = _sim3()
    src = torch.randn(50, 3, generator=torch.Generator().manual_seed(1), dtype=F64).to(device)
    dst = gt.apply(src.cpu()).to(device)
    est = umeyama(src, dst)
    assert est.R.device.type == device
    torch.testing.assert_close(est.R.cpu(), gt.R, atol=1e-10, rtol=0)
    torch.testing.assert_close(est.t.cpu(), gt.t, atol=1e-10, rtol=0)
    torch.testing.assert_close(est.s.cpu(), gt.s, atol=1e-10, rtol=0)


def test_umeyama_minimal_weights_rigid_and_float32():
    gt = _sim3(2, s=0.4)
    g = torch.Generator().manual_seed(3)
    src = torch.randn(3, 3, generator=g, dtype=F64)  # minimal: 3 non-collinear points
    est = umeyama(src, gt.apply(src))
    torch.testing.assert_close(est.matrix(), gt.matrix(), atol=1e-10, rtol=0)
    # outliers with zero weight are ignored
    src = torch.randn(20, 3, generator=g, dtype=F64)
    dst = gt.apply(src)
    dst[:5] += 10.0
    wts = torch.ones(20, dtype=F64)
    wts[:5] = 0
    torch.testing.assert_close(umeyama(src, dst, wts).matrix(), gt.matrix(), atol=1e-10, rtol=0)
    # rigid
    rigid = Sim3(gt.R, gt.t, torch.tensor(1.0, dtype=F64))
    est = umeyama(src, rigid.apply(src), with_scale=False)
    assert float(est.s) == 1.0
    torch.testing.assert_close(est.matrix(), rigid.matrix(), atol=1e-10, rtol=0)
    # float32 in -> float32 out, float64 inside
    est32 = umeyama(src.float(), gt.apply(src).float())
    assert est32.R.dtype == torch.float32
    torch.testing.assert_close(est32.R.double(), gt.R, atol=1e-5, rtol=0)


def test_umeyama_reflection_gives_rotation():
    src = torch.randn(10, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    dst = src * torch.tensor([1.0, 1.0, -1.0], dtype=F64)  # mirror: best proper rotation, det = +1
    est = umeyama(src, dst)
    assert float(torch.linalg.det(est.R)) == pytest.approx(1.0)


def test_umeyama_batched():
    g = torch.Generator().manual_seed(5)
    gts = [_sim3(10 + i, s=1.0 + i) for i in range(4)]
    src = torch.randn(4, 30, 3, generator=g, dtype=F64)
    dst = torch.stack([gt.apply(src[i]) for i, gt in enumerate(gts)])
    est = umeyama(src, dst)
    assert est.R.shape == (4, 3, 3) and est.t.shape == (4, 3) and est.s.shape == (4,)
    torch.testing.assert_close(est.apply(src), dst, atol=1e-10, rtol=0)


def test_sim3_helpers():
    gt = _sim3(6)
    p = torch.randn(7, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    torch.testing.assert_close(gt.inverse().apply(gt.apply(p)), p, atol=1e-12, rtol=0)
    ph = torch.cat([p, torch.ones(7, 1, dtype=F64)], dim=-1)
    torch.testing.assert_close((ph @ gt.matrix().T)[:, :3], gt.apply(p), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "pts",
    [
        torch.tensor([[0.0, 0, 0], [1, 2, 3]], dtype=F64),  # 2 points
        torch.tensor([[0.0, 0, 0], [1, 1, 1], [2, 2, 2], [5, 5, 5]], dtype=F64),  # collinear
        torch.ones(5, 3, dtype=F64),  # coincident
    ],
)
def test_umeyama_degenerate_raises(pts):
    with pytest.raises(GeometryError, match="at least 3 non-collinear"):
        umeyama(pts, pts * 2 + 1)


def test_umeyama_errors():
    with pytest.raises(GeometryError, match="src/dst: expected equal shapes"):
        umeyama(torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(GeometryError, match="weights: must be non-negative"):
        umeyama(torch.randn(4, 3), torch.randn(4, 3), -torch.ones(4))
    with pytest.raises(GeometryError, match="src: contains NaN"):
        umeyama(torch.full((4, 3), float("nan")), torch.randn(4, 3))


def test_apply_sim3_to_c2w():
    gt = _sim3(8)
    c2w = random_c2w(5, torch.Generator().manual_seed(9))
    out = apply_sim3_to_c2w(gt, c2w)
    R = out[:, :3, :3]
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=F64).expand(5, 3, 3), atol=1e-13, rtol=0)
    assert out[:, 3].tolist() == [[0.0, 0.0, 0.0, 1.0]] * 5
    # a point at camera coords x in the source world is at camera coords s*x in the aligned camera
    x = torch.tensor([0.3, -0.2, 1.5, 1.0], dtype=F64)
    xs = torch.cat([gt.s * x[:3], x[3:]])
    torch.testing.assert_close((out @ xs)[:, :3], gt.apply((c2w @ x)[:, :3]), atol=1e-12, rtol=0)


@device_param
def test_align_cameras(device):
    gt = _sim3(10)
    c2w_dst = random_c2w(8, torch.Generator().manual_seed(11)).to(device)
    c2w_src = apply_sim3_to_c2w(Sim3(gt.R.to(device), gt.t.to(device), gt.s.to(device)).inverse(), c2w_dst)
    sim, aligned = align_cameras(c2w_src.float(), c2w_dst)
    assert aligned.dtype == torch.float32 and aligned.device.type == device
    sim, aligned = align_cameras(c2w_src, c2w_dst)
    torch.testing.assert_close(aligned, c2w_dst, atol=1e-10, rtol=0)
    torch.testing.assert_close(sim.s.cpu(), gt.s, atol=1e-10, rtol=0)


def test_align_cameras_ransac():
    gt = _sim3(12)
    c2w_dst = random_c2w(12, torch.Generator().manual_seed(13))
    c2w_src = apply_sim3_to_c2w(gt.inverse(), c2w_dst)
    c2w_src[[2, 7], :3, 3] += torch.tensor([[30.0, -5, 4], [-20.0, 12, 9]], dtype=F64)  # outlier centres
    _, plain = align_cameras(c2w_src, c2w_dst)
    assert (plain[:, :3, 3] - c2w_dst[:, :3, 3]).norm(dim=-1).max() > 1.0
    sim, robust = align_cameras(c2w_src, c2w_dst, ransac=True, seed=0)
    inl = [i for i in range(12) if i not in (2, 7)]
    torch.testing.assert_close(robust[inl], c2w_dst[inl], atol=1e-9, rtol=0)
    sim2, _ = align_cameras(c2w_src, c2w_dst, ransac=True, seed=0)
    assert torch.equal(sim.R, sim2.R) and torch.equal(sim.t, sim2.t)


@pytest.mark.parametrize("n", [1, 2])
def test_align_cameras_orientation_fallback(n):
    gt = _sim3(14, s=1.0 if n == 1 else 3.0)
    c2w_dst = random_c2w(n, torch.Generator().manual_seed(15))
    c2w_src = apply_sim3_to_c2w(gt.inverse(), c2w_dst)
    with pytest.raises(GeometryError, match="at least 3 non-collinear camera centres.*orientation_fallback"):
        align_cameras(c2w_src, c2w_dst)
    sim, aligned = align_cameras(c2w_src, c2w_dst, orientation_fallback=True)
    torch.testing.assert_close(aligned, c2w_dst, atol=1e-10, rtol=0)
    torch.testing.assert_close(sim.R, gt.R, atol=1e-10, rtol=0)


def test_align_cameras_errors():
    with pytest.raises(GeometryError, match="c2w_src: expected shape"):
        align_cameras(torch.eye(4), torch.eye(4))
    with pytest.raises(GeometryError, match="shapes differ"):
        align_cameras(torch.eye(4).repeat(3, 1, 1), torch.eye(4).repeat(4, 1, 1))


def test_align_cameras_by_orientations_exact_and_least_squares():
    gt = _sim3(16, s=2.5)
    c2w_dst = random_c2w(6, torch.Generator().manual_seed(17))
    c2w_src = apply_sim3_to_c2w(gt.inverse(), c2w_dst)
    sim, aligned = align_cameras(c2w_src, c2w_dst, rotation="orientations")
    torch.testing.assert_close(aligned, c2w_dst, atol=1e-10, rtol=0)
    torch.testing.assert_close(sim.s, gt.s, atol=1e-10, rtol=0)
    # for the fitted rotation, scale and translation minimise the centre residual (float64 LSQ)
    noisy = c2w_src.clone()
    noisy[:, :3, 3] += 0.05 * torch.randn(6, 3, generator=torch.Generator().manual_seed(18), dtype=F64)
    sim, _ = align_cameras(noisy, c2w_dst, rotation="orientations")
    cs, cd = noisy[:, :3, 3], c2w_dst[:, :3, 3]
    A = torch.cat([(cs @ sim.R.T).reshape(-1, 1), torch.eye(3, dtype=F64).repeat(6, 1)], 1)
    x = torch.linalg.lstsq(A, cd.reshape(-1, 1)).solution[:, 0]
    torch.testing.assert_close(sim.s, x[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(sim.t, x[1:], atol=1e-10, rtol=0)


def test_align_cameras_by_orientations_survives_coincident_predicted_centres():
    """Predicted centres collapsed to almost one point (an undertrained camera head): a
    centre-only fit leaves the rotation free and turns the cameras away; the orientation
    fit keeps every aligned camera looking where its ground truth looks."""
    c2w_dst = random_c2w(3, torch.Generator().manual_seed(19))
    c2w_src = c2w_dst.clone()
    c2w_src[:, :3, 3] = 1e-3 * torch.randn(3, 3, generator=torch.Generator().manual_seed(20), dtype=F64)
    _, by_centres = align_cameras(c2w_src, c2w_dst, orientation_fallback=True)
    _, by_orient = align_cameras(c2w_src, c2w_dst, rotation="orientations")
    def view_angle(a):  # degrees between aligned and GT optical axes
        cos = (a[:, :3, 2] * c2w_dst[:, :3, 2]).sum(-1).clamp(-1, 1)
        return torch.rad2deg(torch.acos(cos))
    assert view_angle(by_orient).max() < 1e-4  # acos near 1: float64 rounding
    assert view_angle(by_centres).max() > 10
    with pytest.raises(GeometryError, match="rotation: expected"):
        align_cameras(c2w_src, c2w_dst, rotation="both")


# --- batched, sync-free alignment (training) against the per-sample float64 functions ---

def _noisy_pairs(seed: int, B: int = 6, n: int = 6):
    """(B, n, 4, 4) GT cameras and predictions: a known Sim(3) away, with rotation and centre
    noise; sample 0 coincident predicted centres, sample 1 collinear ones, sample 2 n=... as
    given (degenerate cases of the centre fit)."""
    g = torch.Generator().manual_seed(seed)
    from da3gs.train.refine import so3_exp

    dst = torch.stack([random_c2w(n, g) for _ in range(B)])
    src = torch.empty_like(dst)
    for b in range(B):
        sim = _sim3(seed * 100 + b, s=0.5 + b)
        src[b] = apply_sim3_to_c2w(sim.inverse(), dst[b])
        for i in range(n):
            src[b, i, :3, :3] = so3_exp(0.05 * torch.randn(3, generator=g, dtype=F64)) @ src[b, i, :3, :3]
        src[b, :, :3, 3] += 0.05 * torch.randn(n, 3, generator=g, dtype=F64)
    if B > 1 and n > 1:
        src[0, :, :3, 3] = src[0, :1, :3, 3]  # coincident
        line = torch.linspace(-1, 1, n, dtype=F64)[:, None] * torch.tensor([0.3, -0.2, 0.5], dtype=F64)
        src[1, :, :3, 3] = line
        dst[1, :, :3, 3] = 2.0 * line + 1.0  # collinear in both
    return src, dst


def test_max_trace_rotation_equals_svd_projection():
    from da3gs.geometry import max_trace_rotation

    M = torch.randn(500, 3, 3, generator=torch.Generator().manual_seed(30), dtype=F64)
    M[0] = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=F64))  # reflection: det < 0
    M[1] = torch.eye(3, dtype=F64) * 4.0  # the noise-free chordal mean (triple eigenvalues)
    U, S, Vh = torch.linalg.svd(M)
    d = torch.sign(torch.linalg.det(M))
    ref = U @ torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1)) @ Vh
    R, trace = max_trace_rotation(M)
    torch.testing.assert_close(R[1:], ref[1:], atol=1e-10, rtol=0)
    torch.testing.assert_close(trace, S[:, 0] + S[:, 1] + d * S[:, 2], atol=1e-10, rtol=0)
    # M[0]: every rotation about z by pi is... a maximiser has trace 1 and det +1
    assert float(torch.linalg.det(R[0])) == pytest.approx(1.0)
    R32, _ = max_trace_rotation(M.float())
    torch.testing.assert_close(R32[1:].double(), ref[1:], atol=1e-4, rtol=0)
    assert torch.equal(max_trace_rotation(torch.zeros(3, 3))[0], torch.eye(3))


@pytest.mark.parametrize("rotation", ["orientations", "centres"])
@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_align_cameras_batched_equals_per_sample(rotation, n):
    from da3gs.geometry import align_cameras_batched

    src, dst = _noisy_pairs(40 + n, B=5, n=n)
    sim, aligned = align_cameras_batched(src, dst, rotation=rotation)
    assert sim.s.shape == (5,) and aligned.shape == src.shape
    for dtype, tol in ((F64, 1e-9), (torch.float32, 2e-4)):
        sim, aligned = align_cameras_batched(src.to(dtype), dst.to(dtype), rotation=rotation)
        assert aligned.dtype == dtype
        for b in range(5):
            ref, ref_aligned = align_cameras(src[b], dst[b], orientation_fallback=True,
                                             rotation=rotation)
            torch.testing.assert_close(sim.R[b].double(), ref.R, atol=tol, rtol=0)
            torch.testing.assert_close(sim.s[b].double(), ref.s, atol=tol, rtol=tol)
            torch.testing.assert_close(aligned[b].double(), ref_aligned, atol=tol * 10, rtol=tol)


def test_align_cameras_batched_no_host_reads_and_errors():
    from da3gs.geometry import align_cameras_batched
    from tests.syncs import SyncRecorder

    src, dst = _noisy_pairs(50, B=3, n=4)
    with SyncRecorder() as rec:
        for rotation in ("orientations", "centres"):
            align_cameras_batched(src, dst, rotation=rotation)
    assert rec.syncs == []
    with pytest.raises(GeometryError, match="expected shape"):
        align_cameras_batched(torch.eye(4), torch.eye(4))
    with pytest.raises(GeometryError, match="shapes differ"):
        align_cameras_batched(src, dst[:, :3])
    with pytest.raises(GeometryError, match="rotation: expected"):
        align_cameras_batched(src, dst, rotation="both")


@pytest.mark.parametrize("n", [1, 2, 6])
def test_scale_to_input_batched_equals_per_sample(n):
    from da3gs.errors import Da3gsError
    from da3gs.models.model import scale_to_input, scale_to_input_batched

    src, dst = _noisy_pairs(60 + n, B=4, n=n)
    ref = torch.tensor([scale_to_input(src[b], dst[b]) for b in range(4)], dtype=F64)
    torch.testing.assert_close(scale_to_input_batched(src, dst), ref, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(scale_to_input_batched(src.float(), dst.float()).double(), ref,
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(Da3gsError, match="RANSAC"):
        scale_to_input_batched(*_noisy_pairs(1, B=1, n=10))
