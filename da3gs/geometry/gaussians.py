"""Similarity transforms of Gaussian clouds.

:func:`transform_gaussians` moves a :class:`~da3gs.types.Gaussians` cloud by a
:class:`~da3gs.geometry.align.Sim3` ``x -> s R x + t`` so that rendering the transformed
cloud from transformed cameras (:func:`~da3gs.geometry.align.apply_sim3_to_c2w`) gives the
same images as the original cloud from the original cameras:

* means: ``s R mu + t``;
* scales (linear standard deviations): ``s * scales``;
* rotations (wxyz): ``q_R * q`` (Hamilton product, so the covariance becomes
  ``s^2 R Sigma R^T``);
* SH: rotated with :func:`~da3gs.geometry.sh.rotate_sh`, so that the colour seen along the
  world direction ``d`` after the transform equals the colour seen along ``R^T d`` before
  (the view-dependent colour turns with the cloud).

Used by ``da3gs eval nvs`` to bring pose-free predictions into the frame of the ground-truth
cameras (Sim(3) fitted on the context camera centres, as feed-forward NVS papers do).
"""

from __future__ import annotations

import torch

from .align import Sim3
from .errors import GeometryError
from .quaternion import mat_to_quat, quat_multiply, quat_normalize
from .sh import rotate_sh

__all__ = ["transform_gaussians"]


def transform_gaussians(g, sim3: Sim3):
    """Apply ``sim3`` (unbatched: R (3, 3), t (3,), s ()) to Gaussians ``g``; returns a new cloud.

    Optional fields (``conf``, ``view``, ``pixel``) are carried over unchanged. The result has
    the dtype and device of ``g.means``.
    """
    R, t, s = sim3.R, sim3.t, torch.as_tensor(sim3.s)
    if R.shape != (3, 3) or t.shape != (3,) or s.numel() != 1:
        raise GeometryError(f"sim3: expected an unbatched Sim3 (R (3, 3), t (3,), s ()), got "
                            f"R {tuple(R.shape)}, t {tuple(t.shape)}, s {tuple(s.shape)}")
    if float(s.reshape(())) <= 0:
        raise GeometryError(f"sim3: scale must be positive, got {float(s.reshape(()))}")
    dev, dtype = g.means.device, g.means.dtype
    R64 = R.to(dev, torch.float64)
    s64 = s.reshape(()).to(dev, torch.float64)
    means = (s64 * (g.means.double() @ R64.T) + t.to(dev, torch.float64)).to(dtype)
    q_r = mat_to_quat(R64)
    quats = quat_normalize(quat_multiply(q_r, g.quats.double())).to(dtype)
    scales = (g.scales.double() * s64).to(dtype)
    sh = g.sh
    if sh.shape[1] > 1:  # degree 0 is rotation invariant
        sh = rotate_sh(sh.double(), R64).to(sh.dtype)
    # the input's own class (da3gs.types.Gaussians, which sits above geometry in the layers)
    return type(g)(means=means, quats=quats, scales=scales, opacities=g.opacities.clone(),
                   sh=sh.clone(), conf=g.conf, view=g.view, pixel=g.pixel)
