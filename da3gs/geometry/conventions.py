"""Camera conventions. Everything in da3gs is OpenCV; conversions live here.

Project convention: camera axes x right, y down, z forward (OpenCV/COLMAP);
``c2w``/``w2c``: (..., 4, 4); ``K``: (..., 3, 3) in pixels, with the centre of
the top-left pixel at (0.5, 0.5) (so an ideal centred camera has cx = W / 2).

Other conventions handled here:
* OpenGL / NeRF / Blender / nerfstudio: x right, y up, z backward. The camera
  axes y and z are flipped: ``c2w_gl = c2w_cv @ diag(1, -1, -1, 1)``.
* LLFF ``poses_bounds.npy``: (N, 17) rows; ``row[:15].reshape(3, 5)`` is
  ``[R | t | hwf]`` with camera axes (x down, y right, z backward) expressed
  in world, ``hwf = [H, W, f]`` at full resolution; ``row[15:17]`` = near/far.
* COLMAP: world-to-camera ``qvec`` (wxyz) + ``tvec``, already OpenCV axes.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import GeometryError, check_finite, check_hw, check_pose_matrix, check_shape
from .quaternion import mat_to_quat, quat_to_mat

__all__ = [
    "as_homogeneous",
    "c2w_to_w2c",
    "w2c_to_c2w",
    "c2w_opengl_to_opencv",
    "c2w_opencv_to_opengl",
    "llff_to_opencv",
    "opencv_to_llff",
    "colmap_to_c2w",
    "c2w_to_colmap",
]


def as_homogeneous(m: torch.Tensor) -> torch.Tensor:
    """``[R | t]`` (..., 3, 4) -> (..., 4, 4) with bottom row (0, 0, 0, 1).

    A (..., 4, 4) input is returned unchanged.
    """
    check_pose_matrix(m, "m")
    if m.shape[-2] == 4:
        return m
    bottom = torch.zeros(m.shape[:-2] + (1, 4), dtype=m.dtype, device=m.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([m, bottom], dim=-2)


def _rigid_inverse(m: torch.Tensor, name: str, check: bool = True) -> torch.Tensor:
    check_pose_matrix(m, name)
    if check:
        check_finite(m, name)
    R = m[..., :3, :3]
    t = m[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    return as_homogeneous(torch.cat([Rt, -(Rt @ t)], dim=-1))


def c2w_to_w2c(c2w: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Rigid inverse ``[R^T | -R^T t]``. ``c2w: (..., 4, 4)`` or (..., 3, 4) -> (..., 4, 4).

    Assumes the rotation block is orthonormal (no scale); exact transpose formula.
    ``check=False`` skips the finite-values check (a device sync; for internal hot paths such
    as training, where non-finite values surface in the loss instead). Shapes are always checked.
    """
    return _rigid_inverse(c2w, "c2w", check)


def w2c_to_c2w(w2c: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Rigid inverse ``[R^T | -R^T t]``. ``w2c: (..., 4, 4)`` or (..., 3, 4) -> (..., 4, 4).
    ``check``: as in :func:`c2w_to_w2c`."""
    return _rigid_inverse(w2c, "w2c", check)


def _flip_yz(c2w: torch.Tensor, name: str) -> torch.Tensor:
    check_shape(c2w, name, (4, 4))
    flip = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=c2w.dtype, device=c2w.device)
    return c2w * flip  # == c2w @ diag(flip): scales columns


def c2w_opengl_to_opencv(c2w_gl: torch.Tensor) -> torch.Tensor:
    """OpenGL/NeRF/Blender/nerfstudio camera-to-world -> OpenCV. (..., 4, 4) -> (..., 4, 4)."""
    return _flip_yz(c2w_gl, "c2w_gl")


def c2w_opencv_to_opengl(c2w: torch.Tensor) -> torch.Tensor:
    """OpenCV camera-to-world -> OpenGL/NeRF/Blender/nerfstudio. (..., 4, 4) -> (..., 4, 4)."""
    return _flip_yz(c2w, "c2w")


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise GeometryError(f"{name}: expected a numpy array or torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        x = x.to(torch.float64)
    return x


def llff_to_opencv(poses_bounds, downscale: float = 1.0):
    """Parse LLFF ``poses_bounds.npy`` rows.

    Args:
        poses_bounds: (N, 17) numpy array or tensor.
        downscale: image downscale factor (1 for ``images``, 4 for
            ``images_4``, 8 for ``images_8``). As in the LLFF loader, the focal
            length is divided by it; ``(H, W)`` become ``round(H / downscale)``,
            ``round(W / downscale)``; the principal point is the image centre.
    Returns:
        c2w: (N, 4, 4) OpenCV camera-to-world (float64 for a numpy float64 input).
        K: (N, 3, 3) pixels of the downscaled images.
        hw: (H, W) python ints of the downscaled images.
        bounds: (N, 2) near/far depths (not rescaled: depths are scale-free
            w.r.t. image resolution).
    """
    pb = _as_tensor(poses_bounds, "poses_bounds")
    if pb.ndim != 2 or pb.shape[-1] != 17:
        raise GeometryError(f"poses_bounds: expected shape (N, 17), got {tuple(pb.shape)}")
    check_finite(pb, "poses_bounds")
    if not downscale > 0:
        raise GeometryError(f"downscale: expected > 0, got {downscale}")
    n = pb.shape[0]
    mats = pb[:, :15].reshape(n, 3, 5)
    bounds = pb[:, 15:17].clone()
    hwf = mats[:, :, 4]
    if n > 0 and not bool((hwf[:, :2] == hwf[:1, :2]).all()):
        raise GeometryError("poses_bounds: rows have different image sizes (H, W)")
    H_full, W_full = (float(hwf[0, 0]), float(hwf[0, 1])) if n > 0 else (0.0, 0.0)
    H, W = int(round(H_full / downscale)), int(round(W_full / downscale))
    f = hwf[:, 2] / downscale

    down, right, back = mats[:, :, 0], mats[:, :, 1], mats[:, :, 2]
    # OpenCV x = LLFF y, OpenCV y = LLFF x, OpenCV z (forward) = -LLFF z
    c2w = as_homogeneous(torch.stack([right, down, -back, mats[:, :, 3]], dim=-1))

    K = torch.zeros(n, 3, 3, dtype=pb.dtype)
    K[:, 0, 0] = f
    K[:, 1, 1] = f
    K[:, 0, 2] = W / 2.0
    K[:, 1, 2] = H / 2.0
    K[:, 2, 2] = 1.0
    return c2w, K, (H, W), bounds


def opencv_to_llff(c2w: torch.Tensor, K: torch.Tensor, hw, bounds: torch.Tensor, downscale: float = 1.0) -> np.ndarray:
    """Inverse of :func:`llff_to_opencv`: build LLFF ``poses_bounds`` rows.

    Args:
        c2w: (N, 4, 4) OpenCV camera-to-world.
        K: (N, 3, 3) pixels of images of size ``hw``; LLFF stores a single
            focal length (``K[0, 0]`` is used) and no principal point.
        hw: (H, W) of the (downscaled) images.
        bounds: (N, 2) near/far.
        downscale: factor of ``hw`` w.r.t. the full resolution stored in the rows.
    Returns:
        (N, 17) float64 numpy array.
    """
    check_shape(c2w, "c2w", (4, 4))
    check_shape(K, "K", (3, 3))
    check_shape(bounds, "bounds", (2,))
    if c2w.ndim != 3 or K.shape[0] != c2w.shape[0] or bounds.shape != (c2w.shape[0], 2):
        raise GeometryError(
            f"c2w/K/bounds: expected (N, 4, 4), (N, 3, 3), (N, 2), got "
            f"{tuple(c2w.shape)}, {tuple(K.shape)}, {tuple(bounds.shape)}"
        )
    check_finite(c2w, "c2w")
    check_finite(K, "K")
    H, W = check_hw(hw, "hw")
    if not downscale > 0:
        raise GeometryError(f"downscale: expected > 0, got {downscale}")
    n = c2w.shape[0]
    c2w = c2w.detach().to("cpu", torch.float64)
    mats = torch.zeros(n, 3, 5, dtype=torch.float64)
    mats[:, :, 0] = c2w[:, :3, 1]  # LLFF x (down) = OpenCV y
    mats[:, :, 1] = c2w[:, :3, 0]  # LLFF y (right) = OpenCV x
    mats[:, :, 2] = -c2w[:, :3, 2]  # LLFF z (backward) = -OpenCV z
    mats[:, :, 3] = c2w[:, :3, 3]
    mats[:, 0, 4] = float(H) * downscale
    mats[:, 1, 4] = float(W) * downscale
    mats[:, 2, 4] = K.detach().to("cpu", torch.float64)[:, 0, 0] * downscale
    out = torch.cat([mats.reshape(n, 15), bounds.detach().to("cpu", torch.float64)], dim=-1)
    return out.numpy()


def colmap_to_c2w(qvec: torch.Tensor, tvec: torch.Tensor) -> torch.Tensor:
    """COLMAP image pose (world-to-camera) -> OpenCV camera-to-world.

    Args:
        qvec: (..., 4) world-to-camera rotation, wxyz (normalised internally).
        tvec: (..., 3) world-to-camera translation.
    Returns:
        c2w: (..., 4, 4)
    """
    check_shape(qvec, "qvec", (4,))
    check_shape(tvec, "tvec", (3,))
    check_finite(qvec, "qvec")
    check_finite(tvec, "tvec")
    try:
        batch = torch.broadcast_shapes(qvec.shape[:-1], tvec.shape[:-1])
    except RuntimeError:
        raise GeometryError(
            f"qvec {tuple(qvec.shape)} and tvec {tuple(tvec.shape)}: batch dimensions do not broadcast"
        ) from None
    R = quat_to_mat(qvec).expand(batch + (3, 3))
    t = tvec.to(R.dtype).expand(batch + (3,))
    w2c = torch.cat([R, t[..., None]], dim=-1)
    return w2c_to_c2w(w2c)


def c2w_to_colmap(c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV camera-to-world -> COLMAP ``(qvec wxyz (..., 4), tvec (..., 3))`` (world-to-camera).

    ``qvec`` is standardised to ``w >= 0``.
    """
    w2c = c2w_to_w2c(c2w)
    return mat_to_quat(w2c[..., :3, :3]), w2c[..., :3, 3]
