"""Spherical harmonics: gsplat's constants, signs and colour clamp."""

from __future__ import annotations

import math

import pytest
import torch

from da3gs.render.sh import (C0, eval_sh, eval_sh_bases, rgb_to_sh0, sh0_to_rgb,
                             sh_degree_from_bases, sh_to_color)


def test_low_order_values_and_signs():
    c1 = 0.48860251190292
    for d, expect in [((1.0, 0, 0), [C0, 0, 0, -c1]), ((0, 1.0, 0), [C0, -c1, 0, 0]),
                      ((0, 0, 2.0), [C0, 0, c1, 0])]:
        got = eval_sh_bases(1, torch.tensor(d, dtype=torch.float64))
        assert torch.allclose(got, torch.tensor(expect, dtype=torch.float64))


def test_bases_are_orthonormal():
    """Real SH of degree <= 3 are orthonormal on the sphere (Fibonacci quadrature)."""
    n = 20000
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5 ** 0.5) * i
    r = (1 - z * z).sqrt()
    dirs = torch.stack([r * phi.cos(), r * phi.sin(), z], -1)
    Y = eval_sh_bases(3, dirs * 3.0)                      # length must not matter
    gram = Y.T @ Y * (4 * math.pi / n)
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=2e-3)


def test_matches_gsplat_torch_reference():
    """Same bases as gsplat's pure-torch SH (CPU-safe: no CUDA code is called)."""
    impl = pytest.importorskip("gsplat.cuda._torch_impl")
    dirs = torch.nn.functional.normalize(torch.randn(100, 3, dtype=torch.float64), dim=-1)
    for deg in range(4):
        k = (deg + 1) ** 2
        assert torch.allclose(eval_sh_bases(deg, dirs), impl._eval_sh_bases_fast(k, dirs),
                              atol=1e-12)
    coeffs = torch.randn(100, 16, 3, dtype=torch.float64)
    assert torch.allclose(eval_sh(3, dirs, coeffs), impl._spherical_harmonics(3, dirs, coeffs))


def test_color_clamp_and_dc_roundtrip():
    rgb = torch.tensor([0.0, 0.25, 1.0])
    sh0 = rgb_to_sh0(rgb)
    assert torch.allclose(sh0_to_rgb(sh0), rgb)
    coeffs = torch.zeros(1, 4, 3)
    coeffs[0, 0] = rgb_to_sh0(torch.tensor([-0.3, 0.5, 1.7]))
    col = sh_to_color(1, torch.tensor([[0.0, 0, 1]]), coeffs)
    assert torch.allclose(col, torch.tensor([[0.0, 0.5, 1.7]]))   # clamped at 0 only
    assert sh_degree_from_bases(9) == 2
    with pytest.raises(ValueError):
        sh_degree_from_bases(5)
    with pytest.raises(ValueError):
        eval_sh(2, torch.zeros(3), torch.zeros(4, 3))
