"""Conversion between da3gs :class:`Gaussians` and splatfacto's parameter tensors.

Free of nerfstudio imports so it can be used and tested without the extra. Splatfacto stores
``means (N,3)``, ``scales`` as log, ``quats`` wxyz (normalised when rendering), ``opacities`` as
logit ``(N,1)``, ``features_dc (N,3)`` and ``features_rest (N, K-1, 3)`` for its SH degree.
"""

from __future__ import annotations

import torch

from da3gs.geometry.sh import num_sh_bases
from da3gs.types import Gaussians


def to_splatfacto(g: Gaussians, sh_degree: int) -> dict[str, torch.Tensor]:
    """Splatfacto parameters (float32) for ``g``; SH bands above ``g``'s degree are zero and
    bands beyond ``sh_degree`` are dropped."""
    K = num_sh_bases(sh_degree)
    n = len(g)
    sh = torch.zeros(n, K, 3, dtype=torch.float32)
    k = min(K, g.sh.shape[1])
    sh[:, :k] = g.sh[:, :k].float().cpu()
    op = g.opacities.float().cpu().clamp(1e-6, 1 - 1e-6)
    return {
        "means": g.means.float().cpu().clone(),
        "scales": torch.log(g.scales.float().cpu().clamp_min(1e-12)),
        "quats": torch.nn.functional.normalize(g.quats.float().cpu(), dim=-1),
        "opacities": torch.logit(op)[:, None],
        "features_dc": sh[:, 0].clone(),
        "features_rest": sh[:, 1:].clone(),
    }


def from_splatfacto(params: dict[str, torch.Tensor]) -> Gaussians:
    """Inverse of :func:`to_splatfacto` (for checks and exports)."""
    sh = torch.cat([params["features_dc"][:, None], params["features_rest"]], dim=1)
    return Gaussians(means=params["means"], quats=torch.nn.functional.normalize(params["quats"], dim=-1),
                     scales=params["scales"].exp(), opacities=torch.sigmoid(params["opacities"][:, 0]),
                     sh=sh)
