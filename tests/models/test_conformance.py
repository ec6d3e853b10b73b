"""Our network vs the official depth-anything-3 package on random weights (float32, CPU).

The official network is built with random weights, saved in the official hub layout, loaded
with ``da3gs.load_model`` and both are run on the same inputs. Relative error <= 1e-4.
"""

from __future__ import annotations

import pytest
import torch

from da3gs import load_model
from da3gs.geometry import c2w_to_w2c
from tests.official_ref import build_official, rel_err, requires_official, save_official

pytestmark = requires_official
TOL = 1e-4
H, W = 56, 70  # 4 x 5 patches: non-square to catch H/W swaps
KEYS = ("depth", "depth_conf", "extrinsics", "intrinsics")


def _random_cameras(V: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(V, 3, 3, generator=g, dtype=torch.float64)
    Q, R = torch.linalg.qr(A)
    Q = Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))[:, None, :]
    Q[torch.linalg.det(Q) < 0, :, 0] *= -1
    c2w = torch.eye(4, dtype=torch.float64).repeat(V, 1, 1)
    c2w[:, :3, :3] = Q
    c2w[:, :3, 3] = torch.randn(V, 3, generator=g, dtype=torch.float64) * 2
    K = torch.tensor([[60.0, 0, W / 2], [0, 58.0, H / 2], [0, 0, 1]]).repeat(V, 1, 1)
    K[:, 0, 0] += torch.rand(V, generator=g) * 10
    return c2w.float(), K.float()


def _pair(name: str, tmp_path_factory):
    off = build_official(name, seed=1)
    folder = save_official(off, tmp_path_factory.mktemp(name), name)
    ours = load_model(folder)
    return off, ours


@pytest.fixture(scope="module", params=["da3-small", "da3-base"])
def pair(request, tmp_path_factory):
    return _pair(request.param, tmp_path_factory)


def _images(V: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, V, 3, H, W, generator=g)


def _compare(off, ours, x, ext=None, K=None, strategy="saddle_balanced", keys=KEYS):
    with torch.no_grad():
        a = off(x, ext, K, export_feat_layers=[], ref_view_strategy=strategy)
        b = ours.net(x, ext, K, ref_view_strategy=strategy)
    errs = {k: rel_err(b[k], a[k]) for k in keys}
    assert all(e <= TOL for e in errs.values()), errs
    return errs


@pytest.mark.parametrize("V", [1, 2, 5])
def test_pose_free(pair, V):
    off, ours = pair
    _compare(off, ours, _images(V, V))


@pytest.mark.parametrize("strategy", ["first", "middle", "saddle_balanced", "saddle_sim_range"])
def test_reference_strategies(pair, strategy):
    off, ours = pair
    _compare(off, ours, _images(5, 7), strategy=strategy)


@pytest.mark.parametrize("V", [1, 2, 5])
def test_pose_conditioned(pair, V):
    off, ours = pair
    c2w, K = _random_cameras(V, seed=V)
    _compare(off, ours, _images(V, 10 + V), c2w_to_w2c(c2w)[None], K[None])


def test_ray_head_matches(pair):
    """Rays are dropped by the official forward; compare the Dual-DPT head directly."""
    off, ours = pair
    x = _images(3, 3)
    with torch.no_grad():
        feats, _ = off.backbone(x, cam_token=None, export_feat_layers=[], ref_view_strategy="first")
        a = off.head(feats, H, W, patch_start_idx=0)
        b = ours.net.depth_head([f.float() for f in ours.net.backbone(x, None, "first").feats], H, W)
    for k in ("ray", "ray_conf", "depth", "depth_conf"):
        assert rel_err(b[k], a[k]) <= TOL, k


@pytest.mark.slow
@pytest.mark.parametrize("name", ["da3-large", "da3-giant", "da3mono-large", "da3metric-large",
                                  "da3nested-giant-large"])
def test_large_presets(name, tmp_path_factory):
    off, ours = _pair(name, tmp_path_factory)
    has_cam = "mono" not in name and "metric" not in name
    keys = KEYS if has_cam else ("depth",)
    for V in ([1, 2, 5] if has_cam else [1, 3]):
        errs = _compare(off, ours, _images(V, V), keys=keys)
        print(name, "pose-free", V, errs)
    if name == "da3-giant":
        _compare_gaussians(off, ours, _images(2, 9))
    if has_cam:
        c2w, K = _random_cameras(3, seed=3)
        errs = _compare(off, ours, _images(3, 4), c2w_to_w2c(c2w)[None], K[None])
        print(name, "posed", 3, errs)


def _compare_gaussians(off, ours, x):
    """Official forward with infer_gs vs our GS head + "official" geometry on the same cameras."""
    from da3gs.geometry import as_homogeneous, w2c_to_c2w
    from da3gs.models.gaussian_adapter import build_gaussians

    pytest.importorskip("e3nn")
    with torch.no_grad():
        a = off(x, None, None, export_feat_layers=[], infer_gs=True)
        b = ours.net(x, infer_gs=True)
        c2w = w2c_to_c2w(as_homogeneous(b["extrinsics"][0]))
        g = build_gaussians(b["raw_gs"][0], b["raw_gs_conf"][0], b["depth"][0], c2w,
                            b["intrinsics"][0], 2, "official")
    ref = a["gaussians"]
    errs = {"means": rel_err(g.means, ref.means[0]), "scales": rel_err(g.scales, ref.scales[0]),
            "quats": rel_err(g.quats, ref.rotations[0]),
            "opacities": rel_err(g.opacities, ref.opacities[0].reshape(-1)),
            "sh": rel_err(g.sh, ref.harmonics[0].transpose(-1, -2))}
    print("giant gaussians", errs)
    assert all(e <= 1e-4 for e in errs.values()), errs
