"""Configuration of the procedural multi-view scene generator."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SCENE_KINDS", "CAMERA_MODES", "TEXTURE_KINDS", "ProceduralConfig"]

#: Scene kinds: a closed room box; an open ground plane under a sky; an object-centred
#: cluster on a ground inside a textured dome backdrop.
SCENE_KINDS = ("room", "ground_sky", "backdrop")
#: Camera modes (see :mod:`.cameras`).
CAMERA_MODES = ("orbit", "forward", "walkthrough", "stereo")
#: Object-space texture kinds (see :mod:`.textures`).
TEXTURE_KINDS = ("fbm", "dead_leaves", "stripes", "checker", "color_field")


@dataclass
class ProceduralConfig:
    """Everything the generator randomises, with its ranges.

    Probabilities are relative weights (normalised internally). Lengths are in scene units
    (roughly metres); angles in degrees.

    Attributes:
        scene_kinds: weights of ``SCENE_KINDS`` in order (room, ground_sky, backdrop).
        camera_modes: weights of ``CAMERA_MODES`` in order (orbit, forward, walkthrough, stereo).
        texture_kinds: weights of ``TEXTURE_KINDS`` for primitives and environment surfaces.
        num_primitives: inclusive range of analytic primitives per scene (at most 24, the number
            of slots: 5 spheres, 5 boxes, 4 cylinders, 3 quads, 3 tori, 4 SDF blends).
        fov_deg: range of the horizontal-or-vertical field of view (of the longer image side);
            ``fx = fy`` follows from it.
        focal_jitter: relative per-view jitter of the focal length around the sample's focal.
        principal_jitter: standard deviation of the principal point offset, in units of the
            image side (clipped to 3 sigma).
        num_lights: inclusive range of lights (1-2), each casting shadow rays.
        ambient: range of the ambient term (linear light).
        exposure: range of the per-view exposure multiplier (applied after shading).
        white_balance: maximum per-channel relative deviation of the per-view colour gain.
        gamma: range of the per-view gamma factor: linear shading is encoded as ``x ** (gamma / 2.2)``.
        noise_std: range of the per-view Gaussian pixel noise standard deviation.
        max_march_steps: sphere-tracing steps for tori and SDF blends (primary and shadow rays).
        march_eps: sphere-tracing hit tolerance relative to the distance travelled.
        min_overlap: fraction of view 0's (sub-sampled) valid pixels that must be seen, in
            front and not occluded, by every other view; camera sets below are resampled.
        min_valid: fraction of each view's pixels that must hit a surface (not sky).
        overlap_res: side of the low-resolution depth render used for the overlap check.
        camera_tries: resampling rounds for camera sets failing the checks (the best set is
            kept if none passes).
        stereo_baseline: range of stereo baselines relative to the distance to the focus.
        max_chunk_rays: rays traced per chunk (bounds memory; whole samples per chunk).
        compile: ``torch.compile`` the dense kernels (analytic intersections, sphere-tracing
            steps, surface attributes and textures, shading) on CUDA; off by default (ignored on
            the CPU; any compile error falls back to eager with a warning). Measured on an H200
            (2026-11-29) the first compiled call did not finish within 200 s, and a training
            run's varying shapes spent 148 s compiling in 8 steps, so eager is the default.
        static: the static path of ``sample``: fixed shapes and no host sync (every compaction
            is a fixed-capacity selection, the march runs exactly ``max_march_steps`` steps,
            ``scene_ids`` are read from the device only when first used), so the call is one
            fixed sequence of kernels per (B, V, H, W) that a CUDA graph can capture. Same
            outputs as the default path while no capacity overflows (see :mod:`.static`).
        graphs: on CUDA, capture the static path once per (B, V, H, W) in a CUDA graph and
            replay it (:class:`.generator.GraphedSampler`); implies ``static``. On the CPU:
            the static path, eager.
        static_capacity: multiplies the static path's capacities (:data:`.static.CAPACITY`,
            expected items per ray with margin); items beyond a capacity are dropped and counted
            (``ProceduralGenerator.overflow``).
        static_min_capacity: added to every capacity of the static path (calls this small are
            dense, hence exact).
        seed: seed of the generator's own RNG stream (used when ``sample(seed=None)``).
    """

    scene_kinds: tuple[float, float, float] = (0.35, 0.35, 0.3)
    camera_modes: tuple[float, float, float, float] = (0.3, 0.25, 0.25, 0.2)
    texture_kinds: tuple[float, ...] = (0.25, 0.2, 0.2, 0.15, 0.2)
    num_primitives: tuple[int, int] = (4, 24)
    fov_deg: tuple[float, float] = (45.0, 90.0)
    focal_jitter: float = 0.03
    principal_jitter: float = 0.02
    num_lights: tuple[int, int] = (1, 2)
    ambient: tuple[float, float] = (0.06, 0.2)
    exposure: tuple[float, float] = (0.7, 1.3)
    white_balance: float = 0.08
    gamma: tuple[float, float] = (0.9, 1.1)
    noise_std: tuple[float, float] = (0.0, 0.02)
    max_march_steps: int = 40
    march_eps: float = 2e-4
    min_overlap: float = 0.3
    min_valid: float = 0.3
    overlap_res: int = 24
    camera_tries: int = 4
    stereo_baseline: tuple[float, float] = (0.04, 0.15)
    max_chunk_rays: int = 1 << 24
    compile: bool = False
    static: bool = False
    graphs: bool = False
    static_capacity: float = 1.0
    static_min_capacity: int = 4096
    seed: int = 0

    def __post_init__(self):
        lo, hi = self.num_primitives
        if not (1 <= lo <= hi <= 24):
            raise ValueError(f"num_primitives: expected 1 <= lo <= hi <= 24, got {self.num_primitives}")
        for name, n in (("scene_kinds", len(SCENE_KINDS)), ("camera_modes", len(CAMERA_MODES)),
                        ("texture_kinds", len(TEXTURE_KINDS))):
            w = getattr(self, name)
            if len(w) != n or min(w) < 0 or sum(w) <= 0:
                raise ValueError(f"{name}: expected {n} non-negative weights with a positive sum, got {w}")
        if not (1 <= self.num_lights[0] <= self.num_lights[1] <= 2):
            raise ValueError(f"num_lights: expected a range within [1, 2], got {self.num_lights}")
        if not (0 < self.fov_deg[0] <= self.fov_deg[1] < 170):
            raise ValueError(f"fov_deg: expected 0 < lo <= hi < 170, got {self.fov_deg}")
        if self.max_march_steps < 1:
            raise ValueError("max_march_steps must be >= 1")
        if self.static_capacity <= 0 or self.static_min_capacity < 0:
            raise ValueError(f"static_capacity must be > 0 and static_min_capacity >= 0, got "
                             f"{self.static_capacity}, {self.static_min_capacity}")
