"""GS-DPT head and the "official" Gaussian geometry vs the official GSDPT + GaussianAdapter."""

from __future__ import annotations

import pytest
import torch

from da3gs.models.convert import official_to_ours
from da3gs.models.gaussian_adapter import build_gaussians
from da3gs.models.heads.gs_dpt import GSDPT
from tests.official_ref import rel_err, requires_official

pytestmark = requires_official


def _official_modules(seed=0):
    e3nn = pytest.importorskip("e3nn")  # noqa: F841  (the official SH rotation needs it)
    from depth_anything_3.model.gs_adapter import GaussianAdapter
    from depth_anything_3.model.gsdpt import GSDPT as OffGSDPT

    torch.manual_seed(seed)
    head = OffGSDPT(dim_in=64, output_dim=38, features=16, out_channels=[8, 8, 16, 16]).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.02 + 0.5 * float(p.std() if p.numel() > 1 else 0)))
    adapter = GaussianAdapter(sh_degree=2, pred_color=False, pred_offset_depth=True,
                              pred_offset_xy=True, gaussian_scale_min=1e-5, gaussian_scale_max=30.0)
    return head, adapter


def test_gs_head_and_official_adapter_match():
    head, adapter = _official_modules()
    V, H, W = 3, 28, 42
    feats = [(torch.randn(1, V, 6, 64), None) for _ in range(4)]
    images = torch.randn(1, V, 3, H, W)
    ours = GSDPT(64, 16, (8, 8, 16, 16), out_dim=38)
    state = official_to_ours({f"gs_head.{k}": v for k, v in head.state_dict().items()})
    ours.load_state_dict({k[len("gs_head."):]: v for k, v in state.items()}, strict=True)
    with torch.no_grad():
        a = head(feats=feats, H=H, W=W, patch_start_idx=0, images=images)
        b = ours([f[0] for f in feats], images, H, W)
    assert rel_err(b["raw_gs"], a["raw_gs"]) <= 1e-5
    assert rel_err(b["raw_gs_conf"], a["raw_gs_conf"]) <= 1e-5

    # adapter: random cameras and depths
    gen = torch.Generator().manual_seed(3)
    A = torch.linalg.qr(torch.randn(V, 3, 3, generator=gen))[0]
    A[torch.linalg.det(A) < 0, :, 0] *= -1
    c2w = torch.eye(4).repeat(V, 1, 1)
    c2w[:, :3, :3], c2w[:, :3, 3] = A, torch.randn(V, 3, generator=gen)
    K = torch.tensor([[40.0, 0, 21], [0, 38.0, 14], [0, 0, 1]]).repeat(V, 1, 1)
    depth = 1 + torch.rand(V, H, W, generator=gen)
    from depth_anything_3.utils.geometry import affine_inverse, map_pdf_to_opacity

    with torch.no_grad():
        ref = adapter(extrinsics=affine_inverse(c2w)[None], intrinsics=K[None], depths=depth[None],
                      opacities=map_pdf_to_opacity(a["raw_gs_conf"]), raw_gaussians=a["raw_gs"],
                      image_shape=(H, W))
        g = build_gaussians(b["raw_gs"][0], b["raw_gs_conf"][0], depth, c2w, K, 2, "official")
    assert rel_err(g.means, ref.means[0]) <= 1e-5
    assert rel_err(g.scales, ref.scales[0]) <= 1e-5
    assert rel_err(g.quats, ref.rotations[0]) <= 1e-5
    assert torch.equal(g.opacities, ref.opacities[0].reshape(-1))
    # official harmonics: (N, 3, d_sh); ours: (N, d_sh, 3); SH rotation is exact in both
    assert rel_err(g.sh, ref.harmonics[0].transpose(-1, -2)) <= 1e-4
