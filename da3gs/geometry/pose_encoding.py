"""The official Depth Anything 3 9-D camera encoding.

Official layout ``[t(3), q xyzw(4), fov_h, fov_w]``:

* ``t``: camera-to-world translation (the camera centre),
* ``q``: camera-to-world rotation as a quaternion, **xyzw** (scalar last),
  standardised to ``w >= 0`` (note: the rest of da3gs uses wxyz),
* ``fov_h = 2 atan((H / 2) / fy)``, ``fov_w = 2 atan((W / 2) / fx)`` in radians.

``encode_pose``/``decode_pose`` reproduce the numerics of the official
``extri_intri_to_pose_encoding`` / ``pose_encoding_to_extri_intri`` exactly
(same operations in the same order) for float32 inputs. Decoding accepts
non-unit quaternions (the rotation of ``q / |q|``) and always assumes a
centred principal point ``(W / 2, H / 2)``; ``image_hw`` is ``(H, W)``.
"""

from __future__ import annotations

import torch

from .conventions import as_homogeneous
from .errors import check_broadcast, check_hw, check_pose_matrix, check_shape
from .quaternion import rotation_from_components, mat_to_quat, wxyz_to_xyzw

__all__ = ["encode_pose", "decode_pose", "POSE_ENCODING_DIM"]

POSE_ENCODING_DIM = 9


def encode_pose(c2w: torch.Tensor, K: torch.Tensor, image_hw, keep_dtype: bool = False) -> torch.Tensor:
    """Camera to the official 9-D encoding ``[t(3), q xyzw(4), fov_h, fov_w]``.

    Args:
        c2w: (..., 4, 4) or (..., 3, 4) OpenCV camera-to-world.
        K: (..., 3, 3) pixels; only ``fx = K[0, 0]`` and ``fy = K[1, 1]`` are used.
        image_hw: (H, W) of the image ``K`` refers to.
        keep_dtype: if False (default, like the official code) the result is
            cast to float32; if True it keeps the promoted input dtype.
    Returns:
        enc: (..., 9)
    """
    check_pose_matrix(c2w, "c2w")
    check_shape(K, "K", (3, 3))
    check_broadcast("c2w", c2w, "K", K, 2, 2)
    H, W = check_hw(image_hw)
    R = c2w[..., :3, :3]
    T = c2w[..., :3, 3]
    quat = wxyz_to_xyzw(mat_to_quat(R))
    fov_h = 2 * torch.atan((H / 2) / K[..., 1, 1])
    fov_w = 2 * torch.atan((W / 2) / K[..., 0, 0])
    batch = torch.broadcast_shapes(T.shape[:-1], fov_h.shape)
    enc = torch.cat(
        [
            T.expand(batch + (3,)),
            quat.expand(batch + (4,)),
            fov_h[..., None].expand(batch + (1,)),
            fov_w[..., None].expand(batch + (1,)),
        ],
        dim=-1,
    )
    return enc if keep_dtype else enc.float()


def decode_pose(enc: torch.Tensor, image_hw) -> tuple[torch.Tensor, torch.Tensor]:
    """Official 9-D encoding ``[t(3), q xyzw(4), fov_h, fov_w]`` back to a camera.

    Args:
        enc: (..., 9); the quaternion need not be unit-norm.
        image_hw: (H, W) of the image the returned ``K`` refers to.
    Returns:
        c2w: (..., 4, 4) in ``enc.dtype``.
        K: (..., 3, 3) with ``fx = (W/2) / max(tan(fov_w/2), 1e-6)``,
            ``fy = (H/2) / max(tan(fov_h/2), 1e-6)``, ``c = (W/2, H/2)``; dtype
            is ``enc.dtype`` promoted to at least float32 (the official code
            always returns float32).
    """
    check_shape(enc, "enc", (POSE_ENCODING_DIM,))
    H, W = check_hw(image_hw)
    T = enc[..., :3]
    quat = enc[..., 3:7]
    fov_h = enc[..., 7]
    fov_w = enc[..., 8]

    i, j, k, r = torch.unbind(quat, -1)
    two_s = 2.0 / (quat * quat).sum(-1)
    R = rotation_from_components(r, i, j, k, two_s)
    c2w = as_homogeneous(torch.cat([R, T[..., None]], dim=-1))

    fy = (H / 2.0) / torch.clamp(torch.tan(fov_h / 2.0), 1e-6)
    fx = (W / 2.0) / torch.clamp(torch.tan(fov_w / 2.0), 1e-6)
    K = torch.zeros(enc.shape[:-1] + (3, 3), dtype=torch.promote_types(enc.dtype, torch.float32), device=enc.device)
    K[..., 0, 0] = fx
    K[..., 1, 1] = fy
    K[..., 0, 2] = W / 2
    K[..., 1, 2] = H / 2
    K[..., 2, 2] = 1.0
    return c2w, K
