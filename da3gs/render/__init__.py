"""Differentiable Gaussian-splatting renderers (gsplat on CUDA, pure torch anywhere).

Entry points: :func:`render` and :func:`render_batch` (see :mod:`da3gs.render.api`). gsplat
is imported lazily, only by :mod:`da3gs.render.gsplat_backend`.
"""

from da3gs.render.api import RenderOutput, render, render_batch, resolve_backend
from da3gs.render.gsplat_backend import gsplat_available
from da3gs.render.sh import C0, eval_sh, rgb_to_sh0, sh0_to_rgb, sh_to_color

__all__ = ["render", "render_batch", "RenderOutput", "resolve_backend", "gsplat_available", "C0", "eval_sh",
           "sh_to_color", "rgb_to_sh0", "sh0_to_rgb"]
