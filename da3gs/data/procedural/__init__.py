"""Procedural multi-view scenes with exact depth, cameras, normals and masks, on GPU or CPU.

Why hand-written: no library generates batched random multi-view scenes on the GPU with exact
z-depth, normals and masks (renderers such as Blender, Kubric or Mitsuba are offline, CPU-bound
or need assets and downloads; gsplat / nvdiffrast rasterise given meshes). Training here needs
endless scenes with no downloads, thousands of images per second so the generator never starves
the model, and the same code on the CPU for tests; a small batched ray caster over analytic
primitives in plain torch does that.

Usage::

    from da3gs.data.procedural import ProceduralConfig, ProceduralGenerator
    gen = ProceduralGenerator(ProceduralConfig(), device="cuda")
    batch = gen.sample(batch_size=8, num_views=4, height=256, width=256, seed=0)  # ViewBatch

Modules: :mod:`.config` (what is randomised), :mod:`.scene` (scene sampling),
:mod:`.primitives` and :mod:`.sdf` (intersections, sphere tracing), :mod:`.textures` (solid
textures, surface patterns, sky), :mod:`.trace` (batched ray casting), :mod:`.shading` (normals,
Lambert + Phong, shadows), :mod:`.cameras` (camera modes, intrinsics), :mod:`.photo`
(photographic effects, distorted rays), :mod:`.generator` (the public API).
See docs/procedural.md.
"""

from .config import CAMERA_MODES, SCENE_KINDS, TEXTURE_KINDS, ProceduralConfig
from .generator import ProceduralGenerator, render

__all__ = ["CAMERA_MODES", "SCENE_KINDS", "TEXTURE_KINDS", "ProceduralConfig", "ProceduralGenerator", "render"]
