"""Differentiable Gaussian-splatting renderers (gsplat on CUDA, pure torch anywhere).

Entry point: :func:`render` (see :mod:`da3gs.render.api`). gsplat is imported lazily, only
by :mod:`da3gs.render.gsplat_backend`.
"""

from da3gs.render.api import RenderOutput, render, resolve_backend
from da3gs.render.gsplat_backend import gsplat_available
from da3gs.render.sh import C0, eval_sh, rgb_to_sh0, sh0_to_rgb, sh_to_color

__all__ = ["render", "RenderOutput", "resolve_backend", "gsplat_available", "C0", "eval_sh",
           "sh_to_color", "rgb_to_sh0", "sh0_to_rgb"]
