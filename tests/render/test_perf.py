"""CPU speed of the torch rasteriser: 100k Gaussians at 256 x 256 (printed with -s).

Quiet 2-core CPU, measured: forward ~0.35 s, forward + backward ~1.2 s (after a first pass:
the very first backward in a process can take several seconds more, touching fresh memory).
Timings on a shared machine vary several-fold, hence the loose bounds.
"""

from __future__ import annotations

import time

import pytest
import torch

from da3gs.render import render
from tests.render.test_reference import frustum_cloud


def _scene():
    g, w2c, K = frustum_cloud(100_000, seed=0)
    render(g, w2c, K, 32, 32)                                 # warm-up
    return g, w2c, K


def test_100k_gaussians_256px_forward_time():
    g, w2c, K = _scene()
    times = []
    for _ in range(2):                                        # best of 2: shared machine
        t0 = time.perf_counter()
        with torch.no_grad():
            out = render(g, w2c, K, 256, 256, backend="torch")
        times.append(time.perf_counter() - t0)
    print(f"\ntorch backend forward, 100k Gaussians, 256x256, {torch.get_num_threads()} threads: "
          f"{min(times):.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)}); "
          f"{int(out.num_visible[0])} visible, mean alpha {out.alpha.mean():.3f}")
    assert out.alpha.mean() > 0.5
    assert min(times) < 10.0


@pytest.mark.slow
def test_100k_gaussians_256px_backward_time():
    g, w2c, K = _scene()
    for name in ("means", "quats", "scales", "opacities", "sh"):
        getattr(g, name).requires_grad_(True)
    render(g, w2c, K, 256, 256, backend="torch").color.sum().backward()  # first-touch memory
    for name in ("means", "quats", "scales", "opacities", "sh"):
        getattr(g, name).grad = None
    t0 = time.perf_counter()
    out = render(g, w2c, K, 256, 256, backend="torch")
    t_fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    (out.color.sum() + out.depth.mean()).backward()
    t_bwd = time.perf_counter() - t0
    print(f"\ntorch backend with grad, 100k Gaussians, 256x256, {torch.get_num_threads()} threads: "
          f"forward {t_fwd:.2f} s + backward {t_bwd:.2f} s")
    assert g.means.grad.abs().sum() > 0 and torch.isfinite(g.means.grad).all()
    assert t_fwd + t_bwd < 30.0
