"""antimatter15 ``.splat`` files: write and read.

Hand-written because the format has no specification or Python package: it is defined by the
converter of the reference web viewer (github.com/antimatter15/splat, ``convert.py``), which is a
script, not a library. 32 bytes per Gaussian, no header, little endian::

    position 3 x f32 | scale 3 x f32 (linear) | RGBA 4 x u8 | rotation 4 x u8

RGB is ``clip(0.5 + C0 * sh_dc) * 255`` (view-independent: higher SH bands are dropped), A the
opacity * 255, the rotation the unit quaternion wxyz as ``clip(q * 128 + 128)``. Gaussians are
sorted by ``opacity * volume`` descending, as the reference converter does (viewers stream the
file and draw the big, opaque ones first).

Round-trip precision: positions and scales exact (float32); colour 1/510 within [0, 1]; opacity
1/510; quaternion components 1/256. Out-of-range colours and the view-dependent SH are lost.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from da3gs.types import Gaussians

from .errors import InputError

__all__ = ["write_splat", "read_splat", "splat_bytes", "SPLAT_DTYPE"]

C0 = 0.28209479177387814
SPLAT_DTYPE = np.dtype([("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])


def splat_bytes(g: Gaussians) -> bytes:
    """The ``.splat`` encoding of ``g`` (sorted by opacity * volume, descending)."""
    n = len(g)
    scales = g.scales.detach().cpu().double().numpy()
    opa = g.opacities.detach().cpu().double().numpy()
    order = np.argsort(-(np.prod(scales, axis=1) * opa), kind="stable")
    rec = np.zeros(n, SPLAT_DTYPE)
    rec["pos"] = g.means.detach().cpu().float().numpy()[order]
    rec["scale"] = scales[order].astype(np.float32)
    rgb = 0.5 + C0 * g.sh[:, 0, :].detach().cpu().double().numpy()
    rgba = np.concatenate([rgb, opa[:, None]], axis=1)
    rec["rgba"] = np.clip(np.round(rgba * 255.0), 0, 255).astype(np.uint8)[order]
    q = g.quats.detach().cpu().double().numpy()
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), np.array([1.0, 0, 0, 0]))
    rec["rot"] = np.clip(np.round(q * 128.0 + 128.0), 0, 255).astype(np.uint8)[order]
    return rec.tobytes()


def write_splat(path, gaussians: Gaussians) -> Path:
    """Write ``gaussians`` as a ``.splat`` file (atomically). Returns the path."""
    from .splat_files import write_encoded

    return write_encoded(path, gaussians, splat_bytes)


def read_splat(path) -> Gaussians:
    """Read a ``.splat`` file -> float32 CPU ``Gaussians`` of SH degree 0 (in file order)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    data = path.read_bytes()
    if len(data) % SPLAT_DTYPE.itemsize:
        raise InputError(f"{path}: {len(data)} bytes is not a whole number of 32-byte .splat records")
    rec = np.frombuffer(data, SPLAT_DTYPE)
    q = rec["rot"].astype(np.float64) - 128.0
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), np.array([1.0, 0, 0, 0]))
    rgba = rec["rgba"].astype(np.float64) / 255.0
    return Gaussians(
        means=torch.from_numpy(rec["pos"].astype(np.float32)),
        quats=torch.from_numpy(q.astype(np.float32)),
        scales=torch.from_numpy(rec["scale"].astype(np.float32)),
        opacities=torch.from_numpy(rgba[:, 3].astype(np.float32)),
        sh=torch.from_numpy(((rgba[:, None, :3] - 0.5) / C0).astype(np.float32)),
    )
