"""Posed multi-view datasets: the typed :class:`Scene` and :func:`load_scene`.

Readers (all return a ``Scene`` in OpenCV conventions, see :mod:`da3gs.data.scene`):
Blender / nerfstudio / instant-ngp (:mod:`.nerf`), COLMAP text and binary
(:mod:`.colmap`), LLFF (:mod:`.llff`), DTU IDR/NeuS (:mod:`.dtu`), TUM RGB-D and
Open3D / ICL-NUIM ``trajectory.log`` (:mod:`.rgbd`).
"""

from .colmap import read_colmap
from .dtu import decompose_projection, read_dtu
from .llff import read_llff
from .nerf import read_nerf
from .rgbd import read_trajectory_log, read_tum
from .scene import FORMATS, Scene, SceneError, detect_format, load_scene

__all__ = [
    "FORMATS",
    "Scene",
    "SceneError",
    "decompose_projection",
    "detect_format",
    "load_scene",
    "read_colmap",
    "read_dtu",
    "read_llff",
    "read_nerf",
    "read_trajectory_log",
    "read_tum",
]
